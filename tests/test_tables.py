"""Unit tests for tuneloop.tables: parsing CSV / TSV / JSONL, the stable hash split, the snapshot format."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from tuneloop.errors import DataError
from tuneloop.tables import COLUMNS, count_records, held_out_mask, parse_table, read_frame, table_format, write_frame


def rows(frame: pd.DataFrame) -> list[tuple]:
    return list(frame[["row", "text", "label"]].itertuples(index=False, name=None))


def test_csv_with_custom_columns():
    raw = b"id,body,topic\n1,card charged twice,billing\n2,app crashes on start,technical\n"
    frame = parse_table(raw, "data/tickets.csv", "body", "topic")
    assert list(frame.columns) == COLUMNS
    assert rows(frame) == [(1, "card charged twice", "billing"), (2, "app crashes on start", "technical")]
    assert frame["undecodable"].tolist() == [False, False]


def test_tsv_with_custom_columns_keeps_commas_in_text():
    raw = b"body\ttopic\nrefund, please\tbilling\nlogin fails\taccount\n"
    frame = parse_table(raw, "tickets.TSV", "body", "topic")
    assert rows(frame) == [(1, "refund, please", "billing"), (2, "login fails", "account")]


def test_jsonl_with_custom_keys_skips_blank_lines_and_stringifies_labels():
    raw = b'{"msg": "hello", "y": 1}\n\n{"msg": "bye", "y": 0.0}\n{"msg": "what", "y": "2"}\n'
    frame = parse_table(raw, "d.jsonl", "msg", "y")
    assert rows(frame) == [(1, "hello", "1"), (2, "bye", "0"), (3, "what", "2")]


def test_jsonl_missing_key_in_a_later_record_is_kept_as_a_missing_value():
    frame = parse_table(b'{"text": "a", "label": "x"}\n{"text": "b"}\n', "d.jsonl", "text", "label")
    assert frame["row"].tolist() == [1, 2]
    assert frame["label"].isna().tolist() == [False, True]


def test_missing_column_names_the_columns_found():
    with pytest.raises(
        DataError,
        match=r"^data file 'd\.csv' has no column 'text' or 'label' \(found: id, body, topic\); "
        r"set data\.text_column / data\.label_column$",
    ):
        parse_table(b"id,body,topic\n1,hi,a\n", "d.csv", "text", "label")


def test_missing_key_in_jsonl_names_the_keys_found():
    with pytest.raises(DataError, match=r"has no column 'text' or 'label' \(found: msg, y\)"):
        parse_table(b'{"msg": "hi", "y": "a"}\n', "d.jsonl", "text", "label")


@pytest.mark.parametrize("path, shown", [("d.parquet", "'.parquet'"), ("d.xlsx", "'.xlsx'"), ("data/train", "'(none)'")])
def test_unsupported_suffix(path, shown):
    with pytest.raises(DataError, match=rf"^data file '{path}' has unsupported format {re.escape(shown)}; use \.csv, \.tsv or \.jsonl$"):
        parse_table(b"text,label\nhi,a\n", path, "text", "label")


def test_table_format_is_case_insensitive():
    assert table_format("a/B.CSV") == ".csv"
    assert table_format("x.JsonL") == ".jsonl"


def test_invalid_json_names_the_physical_line():
    raw = b'{"text": "a", "label": "x"}\n\n{"text": "b", label: "y"}\n'
    with pytest.raises(DataError, match=r"^d\.jsonl: line 3 is not valid JSON \(.+\); fix or remove the line$"):
        parse_table(raw, "d.jsonl", "text", "label")


def test_json_that_is_not_an_object_names_the_line():
    with pytest.raises(DataError, match=r"^d\.jsonl: line 2 is not a JSON object; write one object per line$"):
        parse_table(b'{"text": "a", "label": "x"}\n["b", "y"]\n', "d.jsonl", "text", "label")


def test_csv_row_with_extra_cells_names_the_line():
    with pytest.raises(DataError, match=r"^d\.csv: line 3 has more cells than the header; quote cells that hold the delimiter$"):
        parse_table(b"text,label\nok,a\nnot, ok,b\n", "d.csv", "text", "label")


def test_quoted_newlines_keep_record_numbers():
    raw = b'text,label\n"first\nspans two lines",a\nsecond,b\n"third\n\nspans three",c\nfourth,d\n'
    frame = parse_table(raw, "d.csv", "text", "label")
    assert rows(frame) == [
        (1, "first\nspans two lines", "a"),
        (2, "second", "b"),
        (3, "third\n\nspans three", "c"),
        (4, "fourth", "d"),
    ]
    assert count_records(raw, "d.csv") == 4


def test_undecodable_bytes_mark_the_record_that_spans_them():
    raw = b'text,label\nfine,a\n"spans\nbad \xff line",b\nafter,c\n'
    frame = parse_table(raw, "d.csv", "text", "label")
    assert frame["row"].tolist() == [1, 2, 3]
    assert frame["undecodable"].tolist() == [False, True, False]
    assert frame.at[1, "text"] == "spans\nbad \ufffd line"


def test_bom_and_crlf_are_accepted():
    frame = parse_table("\ufefftext,label\r\nhi,a\r\nyo,b\r\n".encode(), "d.csv", "text", "label")
    assert rows(frame) == [(1, "hi", "a"), (2, "yo", "b")]


def test_header_only_file_gives_an_empty_frame():
    frame = parse_table(b"text,label\n", "d.csv", "text", "label")
    assert frame.empty
    assert list(frame.columns) == COLUMNS


def test_held_out_mask_is_stable_across_calls():
    texts = pd.Series([f"ticket {i}" for i in range(200)])
    assert held_out_mask(texts, 0.2).tolist() == held_out_mask(texts.copy(), 0.2).tolist()


def test_held_out_mask_does_not_depend_on_row_order():
    texts = pd.Series([f"ticket {i}" for i in range(200)])
    mask = dict(zip(texts, held_out_mask(texts, 0.2)))
    shuffled = texts.sample(frac=1.0, random_state=1).reset_index(drop=True)
    assert dict(zip(shuffled, held_out_mask(shuffled, 0.2))) == mask
    # a text keeps its side when other rows are added or removed (a new dataset version)
    grown = pd.concat([texts[:50], pd.Series([f"new ticket {i}" for i in range(300)])], ignore_index=True)
    assert [bool(m) for m in held_out_mask(grown, 0.2)[:50]] == [mask[t] for t in texts[:50]]


def test_held_out_mask_keeps_the_index():
    texts = pd.Series(["a", "b", "c"], index=[10, 20, 30])
    assert held_out_mask(texts, 0.5).index.tolist() == [10, 20, 30]


def test_held_out_mask_respects_the_fraction_roughly():
    texts = pd.Series([f"customer message number {i}" for i in range(1000)])
    held = int(held_out_mask(texts, 0.2).sum())
    assert 150 <= held <= 250
    # a larger fraction only adds rows: the held-out set at 0.2 is inside the one at 0.5
    assert not (held_out_mask(texts, 0.2) & ~held_out_mask(texts, 0.5)).any()


def test_identical_texts_land_on_the_same_side():
    base = [f"my invoice {i} is wrong" for i in range(100)]
    # validation counts these as the same text (case and runs of whitespace ignored)
    variants = [f"  My Invoice {i}   is\twrong\n" for i in range(100)]
    texts = pd.Series(base + base + variants)
    mask = held_out_mask(texts, 0.3).tolist()
    assert mask[:100] == mask[100:200] == mask[200:]
    assert 0 < sum(mask[:100]) < 100


def test_write_then_read_frame_round_trips(tmp_path):
    raw = (
        b'text,label\nhello,001\n123,2\n"multi\nline \xc3\xa9",x\n,y\nnull,\n\xff bad,z\n'
    )
    frame = parse_table(raw, "d.csv", "text", "label")
    write_frame(frame, tmp_path / "f.jsonl")
    back = read_frame(tmp_path / "f.jsonl")
    pd.testing.assert_frame_equal(back, frame)
    assert back["label"].tolist()[:2] == ["001", "2"]  # labels stay strings, leading zeros kept


def test_round_trip_of_a_split_resets_the_index(tmp_path):
    frame = parse_table(b'{"text": null, "label": "a"}\n{"text": "x", "label": "b"}\n{"text": "y"}\n', "d.jsonl", "text", "label")
    part = frame.iloc[[0, 2]]
    write_frame(part, tmp_path / "p.jsonl")
    pd.testing.assert_frame_equal(read_frame(tmp_path / "p.jsonl"), part.reset_index(drop=True))


def test_round_trip_of_an_empty_frame(tmp_path):
    write_frame(parse_table(b"text,label\n", "d.csv", "text", "label"), tmp_path / "e.jsonl")
    back = read_frame(tmp_path / "e.jsonl")
    assert back.empty
    assert list(back.columns) == COLUMNS
