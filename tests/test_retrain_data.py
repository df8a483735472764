"""The retrain's data: labelled traffic the training data lacks, appended to the training file in its own format."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tuneloop import tables
from tuneloop.config import Config
from tuneloop.monitor import _appended, new_labelled

CFG = Config()


def labelled(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"request_id": f"r{i}", "text": t, "label": lab} for i, (t, lab) in enumerate(rows)])


def frame(*texts: str) -> pd.DataFrame:
    return pd.DataFrame({"text": list(texts), "label": ["x"] * len(texts)})


def test_only_texts_no_frame_holds_are_new_once_each_first_label_kept():
    fresh = new_labelled(
        labelled(("Refund please", "billing"), ("the app  CRASHES", "technical"), ("refund PLEASE", "account"),
                 ("new one", "account"), ("held out text", "billing")),
        frame("The app crashes"), frame("Held  out text"))
    assert list(fresh["text"]) == ["Refund please", "new one"]
    assert list(fresh["label"]) == ["billing", "account"]


def test_nothing_labelled_is_nothing_new():
    empty = pd.DataFrame(columns=["request_id", "text", "label"])
    assert new_labelled(empty, frame("a")).empty


def test_csv_rows_are_appended_under_the_files_own_header_other_columns_empty():
    raw = 'id,text,label\n1,"old, quoted",billing\n2,plain,account'.encode()  # no newline at the end
    out = _appended(raw, "data/train.csv", labelled(("new, with comma", "technical"), ('say "hi"', "billing")), CFG)
    assert out.decode() == ('id,text,label\n1,"old, quoted",billing\n2,plain,account\n'
                            ',"new, with comma",technical\n,"say ""hi""",billing\n')
    parsed = tables.parse_table(out, "data/train.csv", "text", "label")
    assert list(parsed["text"]) == ["old, quoted", "plain", "new, with comma", 'say "hi"']


def test_tsv_and_jsonl_keep_their_format():
    tsv = _appended(b"text\tlabel\na\tbilling\n", "data/t.tsv", labelled(("b c", "account")), CFG)
    assert tsv == b"text\tlabel\na\tbilling\nb c\taccount\n"
    jsonl = _appended(b'{"text": "a", "label": "billing", "extra": 1}\n', "data/t.jsonl", labelled(("é", "account")), CFG)
    assert jsonl.decode().splitlines()[1] == json.dumps({"text": "é", "label": "account"}, ensure_ascii=False)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_the_configured_column_names_are_used(suffix):
    cfg = Config.model_validate({"data": {"text_column": "body", "label_column": "queue"}})
    raw = b"body,queue\na,billing\n" if suffix == ".csv" else b'{"body": "a", "queue": "billing"}\n'
    out = _appended(raw, f"data/t{suffix}", labelled(("b", "account")), cfg)
    parsed = tables.parse_table(out, f"data/t{suffix}", "body", "queue")
    assert list(zip(parsed["text"], parsed["label"])) == [("a", "billing"), ("b", "account")]


@pytest.mark.parametrize("rows,kept", [(0, 0), (99, 99), (100, 100), (150, 150), (523, 520), (1137, 1100),
                                        (9999, 9900), (10_000, 10_000), (123_456, 120_000)])
def test_windows_are_scored_at_two_significant_digits_so_nulls_are_reused(rows, kept):
    from tuneloop.monitor import window_size

    assert window_size(rows) == kept
