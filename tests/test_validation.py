"""Unit tests for tuneloop.validation: one test per check, the report's shape, and real data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from tuneloop.errors import DataError
from tuneloop.tables import COLUMNS, parse_table
from tuneloop.validation import Problem, ValidationReport, raise_for_problems, validate

EMOTION = Path("/work/shared/data/emotion")
EMOTION_LABELS = ["anger", "fear", "joy", "love", "sadness", "surprise"]


def frame(pairs, start=1, undecodable=()):
    """Build a normalized frame from (text, label) tuples; rows are numbered from `start`."""
    rows = range(start, start + len(pairs))
    return pd.DataFrame(
        {
            "row": list(rows),
            "text": [text for text, _ in pairs],
            "label": [label for _, label in pairs],
            "undecodable": [row in undecodable for row in rows],
        },
        columns=COLUMNS,
    )


TRAIN = [("the food was great", "pos"), ("awful service", "neg"), ("loved it", "pos"), ("never again", "neg")]
HELD_OUT = [("pretty good", "pos"), ("quite bad", "neg")]


def check(train, held_out=HELD_OUT, **kwargs) -> ValidationReport:
    return validate(frame(train), frame(held_out, start=101), source="data/train.csv@abc1234", **kwargs)


def found(report: ValidationReport) -> list[tuple[str, str, int | None]]:
    return [(p.check, p.split, p.row) for p in report.problems]


def only(report: ValidationReport, name: str) -> list[Problem]:
    return [p for p in report.problems if p.check == name]


def test_clean_dataset_passes():
    report = check(TRAIN, allowed_labels=["neg", "pos"], champion_labels=["pos", "neg"])
    assert report.ok
    assert report.problems == []
    assert report.labels == ["neg", "pos"]
    assert (report.train_rows, report.held_out_rows) == (4, 2)
    assert report.summary() == "no problems in data/train.csv@abc1234"


def test_empty_train_reports_only_that():
    report = validate(frame([]), frame([]), source="s")
    assert found(report) == [("empty_dataset", "", None)]
    with pytest.raises(DataError, match=r"train split of s has no rows; check data.path"):
        raise_for_problems(report)


def test_empty_held_out_is_a_dataset_problem_and_other_checks_still_run():
    report = check(TRAIN + [("loved it", "pos")], held_out=[])
    assert found(report) == [("empty_dataset", "", None), ("duplicate", "train", 5)]
    assert "held_out split of data/train.csv@abc1234 has no rows" in report.problems[0].message
    assert "data.eval_fraction" in report.problems[0].message


def test_undecodable_row():
    report = validate(frame(TRAIN, undecodable={3}), frame(HELD_OUT, start=101), source="s")
    assert found(report) == [("undecodable", "train", 3)]
    assert report.problems[0].message == "row 3 (train): bytes that are not UTF-8; re-save the file as UTF-8"


def test_undecodable_from_real_bytes():
    raw = b"text,label\nok,a\nbad \xff,b\n"
    parsed = parse_table(raw, "train.csv", "text", "label")
    report = validate(parsed, frame([("fine", "a")], start=9), source="train.csv")
    assert found(report) == [("undecodable", "train", 2)]
    assert report.problems[0].message.startswith("row 2 (train): bytes that are not UTF-8")


@pytest.mark.parametrize("text", [None, "", "   \t"])
def test_missing_text(text):
    report = check(TRAIN + [(text, "pos")])
    assert found(report) == [("missing_text", "train", 5)]
    assert report.problems[0].message == "row 5 (train): text is empty; fill in the text or remove the row"


def test_missing_texts_are_not_duplicates_of_each_other():
    report = check(TRAIN + [(None, "pos"), ("", "pos"), (" ", "pos")])
    assert [p.check for p in report.problems] == ["missing_text"] * 3


@pytest.mark.parametrize("label", [None, "", "  "])
def test_missing_label(label):
    report = check(TRAIN, held_out=HELD_OUT + [("so so", label)])
    assert found(report) == [("missing_label", "held_out", 103)]
    assert report.problems[0].message == "row 103 (held_out): label is empty; label the row or remove it"


def test_unknown_label_against_allowed_labels():
    report = check(TRAIN + [("meh", "neutral")], allowed_labels=["pos", "neg"])
    assert found(report) == [("unknown_label", "train", 5)]
    expected = r"row 5 \(train\): label 'neutral' is not in the allowed labels \['neg', 'pos'\]; fix the row or add"
    with pytest.raises(DataError, match=expected + r" the label to data.labels"):
        raise_for_problems(report)


def test_held_out_label_missing_from_train_is_unknown():
    report = check(TRAIN, held_out=HELD_OUT + [("meh", "neutral")])
    assert found(report) == [("unknown_label", "held_out", 103)]
    assert "label 'neutral' does not occur in the train split, so the model cannot predict it" in (
        report.problems[0].message
    )


def test_held_out_label_outside_allowed_is_reported_once():
    report = check(TRAIN, held_out=HELD_OUT + [("meh", "neutral")], allowed_labels=["pos", "neg"])
    assert found(report) == [("unknown_label", "held_out", 103)]
    assert "not in the allowed labels" in report.problems[0].message


def test_single_class():
    report = check([("a", "pos"), ("b", "pos")], held_out=[("c", "pos")])
    assert found(report) == [("single_class", "", None)]
    assert report.problems[0].message.startswith(
        "train split has only the label 'pos'; classification needs at least two labels"
    )


def test_label_set_changed():
    report = check(TRAIN, champion_labels=["neg", "pos", "neutral"])
    assert found(report) == [("label_set_changed", "", None)]
    with pytest.raises(DataError, match=r"added \[\], removed \['neutral'\]\); relabel to the champion's label set "
                       r"or register under a new registry.model_name"):
        raise_for_problems(report)


def test_overlap_compares_normalized_text():
    report = check(TRAIN, held_out=HELD_OUT + [("  The FOOD   was\tgreat ", "pos")])
    assert found(report) == [("overlap", "held_out", 103)]
    assert "row 103 (held_out): text '  The FOOD   was\\tgreat ' is also in train row 1" in (
        report.problems[0].message
    )


def test_conflicting_labels_fail_even_with_allow_duplicates():
    report = check(TRAIN + [("Loved  it", "neg")], allow_duplicates=True)
    assert found(report) == [("conflicting_labels", "train", 5)]
    assert report.problems[0].message == (
        "row 5 (train): text 'Loved  it' is labelled 'neg' here and 'pos' in row 3; "
        "give the text one label and remove the extra rows"
    )


def test_duplicate_reports_every_repeat_but_not_the_first():
    report = check(TRAIN + [("loved it", "pos"), ("LOVED IT", "pos")])
    assert found(report) == [("duplicate", "train", 5), ("duplicate", "train", 6)]
    assert report.problems[0].message == (
        "row 5 (train): duplicate of row 3 (text 'loved it', label 'pos'); "
        "remove the duplicates or set data.allow_duplicates: true"
    )


def test_duplicates_in_held_out_name_the_split():
    report = check(TRAIN, held_out=HELD_OUT + [("quite bad", "neg")])
    assert found(report) == [("duplicate", "held_out", 103)]


def test_allow_duplicates_switches_off_the_duplicate_check():
    report = check(TRAIN + [("loved it", "pos")], allow_duplicates=True)
    assert report.ok


def test_dataset_problems_come_first():
    report = check([("a", "pos"), ("a", "pos"), (None, "pos")], champion_labels=["pos", "neg"])
    assert found(report) == [
        ("single_class", "", None),
        ("label_set_changed", "", None),
        ("duplicate", "train", 2),
        ("missing_text", "train", 3),
        ("unknown_label", "held_out", 102),
    ]


def test_summary_is_one_line_and_truncates():
    texts = [(f"line\n{i}", None) for i in range(8)]
    report = check(TRAIN + texts)
    summary = report.summary(limit=3)
    assert "\n" not in summary
    assert summary.startswith("8 problem(s) in data/train.csv@abc1234: row 5 (train): label is empty")
    assert summary.count("label is empty") == 3
    assert summary.endswith(", … and 5 more (see the validation report)")
    assert "more (see the validation report)" not in report.summary(limit=8)


def test_raise_for_problems_uses_the_summary():
    report = check(TRAIN + [("loved it", "pos")])
    with pytest.raises(DataError) as caught:
        raise_for_problems(report)
    assert str(caught.value) == report.summary()
    raise_for_problems(check(TRAIN))  # a clean report does not raise


def test_to_dict_is_json_serializable():
    report = check(TRAIN + [("loved it", "pos")])
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert data["counts"] == {"duplicate": 1}
    assert data["problems"][0]["row"] == 5


def test_twenty_thousand_rows_validate_quickly():
    pairs = [(f"text number {i}", "pos" if i % 2 else "neg") for i in range(20_000)]
    pairs += [("text number 7", "pos")] * 100
    start = time.perf_counter()
    report = validate(frame(pairs), frame(HELD_OUT, start=30_001), source="big")
    assert time.perf_counter() - start < 1.0
    assert len(only(report, "duplicate")) == 100


def read_emotion(path: Path) -> pd.DataFrame:
    """Read the `text;label` file (no header; one `;` per line) into a normalized frame."""
    pairs = [line.rsplit(";", 1) for line in path.read_text(encoding="utf-8").splitlines()]
    return frame([(text, label) for text, label in pairs])


def test_real_emotion_data():
    if not (EMOTION / "train.txt").is_file() or not (EMOTION / "val.txt").is_file():
        pytest.skip(f"emotion data not found in {EMOTION}")
    train = read_emotion(EMOTION / "train.txt").head(2000)
    held_out = read_emotion(EMOTION / "val.txt")
    report = validate(train, held_out, source="emotion/train.txt", allowed_labels=EMOTION_LABELS)
    assert report.train_rows == 2000
    assert report.held_out_rows == 2000
    assert report.labels == EMOTION_LABELS
    # The files are pinned by sha256 in PROVENANCE.md, so the findings are exact: val repeats two
    # texts with another label (rows 604, 1994) and one val text is also in the first 2000 train rows.
    assert found(report) == [
        ("conflicting_labels", "held_out", 604),
        ("overlap", "held_out", 1627),
        ("conflicting_labels", "held_out", 1994),
    ]
    assert "also in train row 557" in report.problems[1].message
    assert all(p.row is not None and 1 <= p.row <= 2000 for p in report.problems)
    assert "\n" not in report.summary()
