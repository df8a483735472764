"""Unit tests for tuneloop.validation: one test per check, the report's shape, and real data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SHARED_DATA
from tuneloop.errors import DataError
from tuneloop.tables import COLUMNS, parse_table
from tuneloop.validation import (
    MAX_LABEL_CHARS,
    MAX_TEXT_CHARS,
    Problem,
    ValidationReport,
    merge_capped,
    raise_for_problems,
    validate,
    validate_file,
)

EMOTION = SHARED_DATA / "emotion"
EMOTION_LABELS = ["anger", "fear", "joy", "love", "sadness", "surprise"]


def frame(pairs, start=1, undecodable=(), malformed=None):
    """Build a normalized frame from (text, label) tuples; rows are numbered from `start`.

    `malformed` maps a row number to the parser's note for it (e.g. "text:array"; see tuneloop.tables).
    """
    rows = range(start, start + len(pairs))
    return pd.DataFrame(
        {
            "row": list(rows),
            "text": [text for text, _ in pairs],
            "label": [label for _, label in pairs],
            "undecodable": [row in undecodable for row in rows],
            "malformed": [(malformed or {}).get(row, "") for row in rows],
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


# One row added to the clean TRAIN (so it is row 5) or HELD_OUT (row 103): what it is, where, and
# the problems it must raise, each as (check, split, row, exact message).
ROW_CASES = [
    ("NUL in a text", "train", ("nul\x00byte", "pos"), {}, [
        ("control_characters", "train", 5, "row 5 (train): text holds the control character '\\x00' at character 4; "
         "delete it (tab, newline and carriage return are the only ones allowed)")]),
    ("escape in a held-out text", "held_out", ("\x1b[31mred", "neg"), {}, [
        ("control_characters", "held_out", 103, "row 103 (held_out): text holds the control character '\\x1b' at "
         "character 1; delete it (tab, newline and carriage return are the only ones allowed)")]),
    ("vertical tab, whitespace to str.split", "train", ("a\x0bb", "pos"), {}, [
        ("control_characters", "train", 5, "row 5 (train): text holds the control character '\\x0b' at character 2; "
         "delete it (tab, newline and carriage return are the only ones allowed)")]),
    ("DEL in a label", "train", ("fine text", "pos\x7f"), {}, [
        ("control_characters", "train", 5, "row 5 (train): label holds the control character '\\x7f' at character 4; "
         "delete it (labels are one line)")]),
    ("text just over the size limit", "train", ("x" * (MAX_TEXT_CHARS + 1), "pos"), {}, [
        ("too_long", "train", 5, "row 5 (train): text is 100,001 characters, over the limit of 100,000; shorten or "
         "split the text (an unbalanced quote can also merge many rows into one field)")]),
    ("label over its limit", "train", ("fine text", "p" * (MAX_LABEL_CHARS + 1)), {}, [
        ("too_long", "train", 5, "row 5 (train): label is 201 characters, over the limit of 200; a label is a class "
         "name; check data.label_column")]),
    ("label with a leading space", "train", ("fine text", " pos"), {}, [
        ("label_whitespace", "train", 5, "row 5 (train): label ' pos' has whitespace around it, so it would be a "
         "class apart from 'pos'; strip the label")]),
    ("label that is only whitespace", "train", ("fine text", " \t"), {}, [
        ("missing_label", "train", 5, "row 5 (train): label is empty; label the row or remove it")]),
    ("JSON array as text", "train", (None, "pos"), {"malformed": "text:array"}, [
        ("not_a_string", "train", 5, "row 5 (train): text is a JSON array, not a string; write the text as a JSON string")]),
    ("JSON object as label", "held_out", ("so so", None), {"malformed": "label:object"}, [
        ("not_a_string", "held_out", 103, "row 103 (held_out): label is a JSON object, not a string; write the label "
         "as a JSON string")]),
    ("lone surrogate in a text", "train", ("bad \ufffd", "pos"), {"malformed": "text:\\ud800"}, [
        ("invalid_unicode", "train", 5, "row 5 (train): text holds the lone surrogate '\\ud800', which is not valid "
         "Unicode and cannot be encoded as UTF-8; remove the '\\ud800' escape or complete its surrogate pair")]),
    ("two defects in one row", "train", ("\x00", "pos "), {}, [
        ("control_characters", "train", 5, "row 5 (train): text holds the control character '\\x00' at character 1; "
         "delete it (tab, newline and carriage return are the only ones allowed)"),
        ("missing_text", "train", 5, "row 5 (train): text is empty; fill in the text or remove the row"),
        ("label_whitespace", "train", 5, "row 5 (train): label 'pos ' has whitespace around it, so it would be a "
         "class apart from 'pos'; strip the label")]),
]


@pytest.mark.parametrize("name, split, pair, extra, expected", ROW_CASES, ids=[case[0] for case in ROW_CASES])
def test_row_problems(name, split, pair, extra, expected):
    train, held_out = list(TRAIN), list(HELD_OUT)
    (train if split == "train" else held_out).append(pair)
    row = 5 if split == "train" else 103
    malformed = {row: extra["malformed"]} if "malformed" in extra else None
    report = validate(
        frame(train, malformed=malformed if split == "train" else None),
        frame(held_out, start=101, malformed=malformed if split == "held_out" else None),
        source="s",
    )
    assert [(p.check, p.split, p.row, p.message) for p in report.problems] == expected


@pytest.mark.parametrize("text", ["tab\there", "new\nline", "crlf\r\nend", "x" * MAX_TEXT_CHARS, "émoji 😀"])
def test_allowed_characters_and_sizes_pass(text):
    assert check(TRAIN + [(text, "pos")]).ok


def test_too_few_rows_to_carve_the_dev_split():
    report = check([("only row", "pos")], held_out=[("other", "pos")])
    assert found(report) == [("too_few_rows", "", None), ("single_class", "", None)]
    assert report.problems[0].message == (
        "train split of data/train.csv@abc1234 has 1 row(s); training sets aside a dev split and needs at least 2, "
        "so add rows or lower data.eval_fraction"
    )
    assert found(check(TRAIN, min_train_rows=5)) == [("too_few_rows", "", None)]
    assert check(TRAIN, min_train_rows=4).ok


def test_validate_file_judges_rows_labels_and_repeats_but_not_classes():
    pairs = [("card declined", "billing"), ("app crashes", "bug"), ("Card  declined", "billing"), ("app crashes", "technical")]
    report = validate_file(frame(pairs), source="data file 'x.csv'", allowed_labels=["billing", "technical"])
    assert [(p.check, p.split, p.row) for p in report.problems] == [
        ("unknown_label", "file", 2), ("duplicate", "file", 3), ("conflicting_labels", "file", 4),
    ]
    assert report.problems[0].message.startswith("row 2 (file): label 'bug' is not in the allowed labels")
    assert report.summary().startswith("3 problem(s) in data file 'x.csv': row 2 (file): ")
    assert validate_file(frame([("one class only", "billing")]), source="f").ok  # a frozen eval file may hold one
    assert [p.check for p in validate_file(frame(pairs[:3]), source="f", allow_duplicates=True).problems] == []


def test_validate_file_without_rows():
    report = validate_file(frame([]), source="data file 'x.csv'")
    assert [(p.check, p.message) for p in report.problems] == [
        ("empty_dataset", "data file 'x.csv' has no rows; add rows below the header"),
    ]


def test_merge_capped_keeps_full_problems_and_adds_what_the_cap_causes():
    train = [("great", "pos"), ("lovely", "pos"), ("bad", "neg"), ("great", "pos"), ("worse", "neg")]
    held_out = [("fine", "pos"), ("awful", "neg")]
    full = validate(frame(train), frame(held_out, start=101), source="s", champion_labels=["neg", "pos"])
    capped = validate(frame(train[:2]), frame(held_out, start=101), source="s", champion_labels=["neg", "pos"])
    merged = merge_capped(full, capped, "data.max_train_rows: 2")
    assert found(merged) == [
        ("single_class", "", None), ("label_set_changed", "", None),
        ("duplicate", "train", 4), ("unknown_label", "held_out", 102),
    ]
    assert merged.problems[0].message == (
        "train split has only the label 'pos'; classification needs at least two labels, so add rows of another "
        "class (with data.max_train_rows: 2; raise or unset the cap)"
    )
    assert merged.problems[3].message.endswith("add train rows with this label or fix the row (with data.max_train_rows: 2; "
                                               "raise or unset the cap)")
    assert (merged.train_rows, merged.held_out_rows, merged.labels) == (2, 2, ["pos"])


def test_merge_capped_reports_a_problem_both_reports_hold_once():
    train = [("a", "pos"), ("a", "pos"), ("b", "pos")]
    full = validate(frame(train), frame([("c", "pos")], start=101), source="s")
    capped = validate(frame(train[:2]), frame([("c", "pos")], start=101), source="s")
    merged = merge_capped(full, capped, "data.max_train_rows: 2")
    assert found(merged) == [("single_class", "", None), ("duplicate", "train", 2)]
    assert "raise or unset the cap" not in merged.summary()


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


def test_twenty_thousand_rows_with_a_hundred_repeats():
    pairs = [(f"text number {i}", "pos" if i % 2 else "neg") for i in range(20_000)]
    pairs += [("text number 7", "pos")] * 100
    report = validate(frame(pairs), frame(HELD_OUT, start=30_001), source="big")
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
