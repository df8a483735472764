"""Unit tests for tuneloop.tables: parsing CSV / TSV / JSONL, the stable hash split, the snapshot format."""

from __future__ import annotations

import csv
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


@pytest.mark.parametrize("raw", [b'{"text": "a", "label": "x"}\n{"text": "b"}\n', b'{"text": "b"}\n{"text": "a", "label": "x"}\n'])
def test_jsonl_key_missing_from_some_records_is_a_missing_value(raw):
    frame = parse_table(raw, "d.jsonl", "text", "label")
    assert frame["row"].tolist() == [1, 2]
    assert frame["label"].isna().tolist() == [raw.startswith(b'{"text": "b"}'), not raw.startswith(b'{"text": "b"}')]


def test_missing_column_names_the_columns_found():
    with pytest.raises(
        DataError,
        match=r"^data file 'd\.csv' has no column 'text' or 'label' \(found: 'id', 'body', 'topic'\); "
        r"set data\.text_column / data\.label_column$",
    ):
        parse_table(b"id,body,topic\n1,hi,a\n", "d.csv", "text", "label")


def test_missing_key_in_jsonl_names_the_keys_found():
    with pytest.raises(DataError, match=r"has no column 'text' or 'label' \(found: 'msg', 'y'\)"):
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


# A file that cannot be read as a table at all: one DataError line naming the file, line or column.
FILE_ERRORS = [
    ("d.jsonl", b'{"text": "a", "label": "x"}\n["b", "y"]\n',
     r"^d\.jsonl: line 2 is a JSON array, not an object; write one object per line$"),
    ("d.jsonl", b'{"text": "a", "label": "x"}\n\n42\n', r"^d\.jsonl: line 3 is a JSON number, not an object; write one"),
    ("d.jsonl", b'null\n', r"^d\.jsonl: line 1 is a JSON null, not an object;"),
    ("d.jsonl", b'"just text"\n', r"^d\.jsonl: line 1 is a JSON string, not an object;"),
    ("d.jsonl", b'{"text": NaN, "label": "x"}\n',
     r"^d\.jsonl: line 1 is not valid JSON \(NaN is not a JSON value\); fix or remove the line$"),
    ("d.jsonl", b'{"text": "a", "label": "x", "label": "y"}\n',
     r"^d\.jsonl: line 1 is not valid JSON \(repeats the key 'label'\); fix or remove the line$"),
    ("d.csv", b"text,label,text\na,b,c\n",
     r"^data file 'd\.csv' repeats the column 'text' in its header; rename or remove the extra column$"),
    ("d.tsv", b"label\ttext\tlabel\nx\ty\tz\n", r"^data file 'd\.tsv' repeats the column 'label' in its header;"),
    ("d.csv", b"body,topic\n", r"^data file 'd\.csv' has no column 'text' or 'label' \(found: 'body', 'topic'\); set data"),
    ("d.csv", b"text, label\nhi, a\n", r"has no column 'text' or 'label' \(found: 'text', ' label'\)"),
    ("d.csv", b"\ntext,label\nhi,a\n", r"has no column 'text' or 'label' \(found: \(none\)\)"),
    ("d.csv", ",".join(f"column_{i}" for i in range(50)).encode() + b"\n",
     r"\(found: 'column_0', 'column_1', .{60,100}…\); set data\.text_column / data\.label_column$"),
    ("d.csv", "text,label\nhi,a\n".encode("utf-16"),
     r"^data file 'd\.csv' is UTF-16 or UTF-32 \(little-endian\) \(it starts with that byte order mark\); re-save it as UTF-8$"),
    ("d.csv", "text,label\nhi,a\n".encode("utf-16-be").join([b"\xfe\xff", b""]), r"is UTF-16 \(big-endian\)"),
]


@pytest.mark.parametrize("path, raw, message", FILE_ERRORS)
def test_unreadable_tables_name_the_line_and_the_fix(path, raw, message):
    with pytest.raises(DataError, match=message) as caught:
        parse_table(raw, path, "text", "label")
    assert "\n" not in str(caught.value)


def test_text_column_equal_to_label_column():
    with pytest.raises(DataError, match=r"^data\.text_column and data\.label_column are both 'text'; name two different columns$"):
        parse_table(b"text,label\nhi,a\n", "d.csv", "text", "text")


@pytest.mark.parametrize("size", [131_073, 5_000_000])
def test_a_field_over_the_csv_module_limit_is_parsed_and_the_limit_restored(size):
    limit = csv.field_size_limit()
    raw = b"text,label\nshort,a\n\"" + b"x" * size + b"\",b\nlast,c\n"
    frame = parse_table(raw, "d.csv", "text", "label")
    assert frame["row"].tolist() == [1, 2, 3]
    assert frame["text"].str.len().tolist() == [5, size, 4]
    assert count_records(raw, "d.csv") == 3
    assert csv.field_size_limit() == limit


def test_csv_limit_is_restored_when_parsing_fails():
    limit = csv.field_size_limit()
    with pytest.raises(DataError, match=r"^d\.csv: line 3 has more cells than the header"):
        parse_table(b"text,label\n\"" + b"y" * 200_000 + b"\",a\nx,b,c\n", "d.csv", "text", "label")
    assert csv.field_size_limit() == limit


def test_jsonl_arrays_and_objects_are_marked_not_stringified():
    raw = b'{"text": ["a", "b"], "label": "x"}\n{"text": "fine", "label": {"id": 1}}\n{"text": {}, "label": []}\n'
    frame = parse_table(raw, "d.jsonl", "text", "label")
    assert frame["malformed"].tolist() == ["text:array", "label:object", "text:object,label:array"]
    assert frame["text"].isna().tolist() == [True, False, True]
    assert frame["label"].isna().tolist() == [False, True, True]


def test_jsonl_booleans_keep_their_json_spelling():
    frame = parse_table(b'{"text": "a", "label": true}\n{"text": "b", "label": false}\n', "d.jsonl", "text", "label")
    assert rows(frame) == [(1, "a", "true"), (2, "b", "false")]


def test_lone_surrogates_are_replaced_and_marked():
    raw = b'{"text": "bad \\ud800 here", "label": "x"}\n{"text": "pair \\ud83d\\ude00 ok", "label": "lo\\udfffne"}\n'
    frame = parse_table(raw, "d.jsonl", "text", "label")
    assert rows(frame) == [(1, "bad \ufffd here", "x"), (2, "pair \U0001f600 ok", "lo\ufffdne")]
    assert frame["malformed"].tolist() == ["text:\\ud800", "label:\\udfff"]


def test_control_characters_are_kept_for_validation_to_judge():
    frame = parse_table(b"text,label\n\"nul\x00here\",a\nesc\x1b,b\x7f\n", "d.csv", "text", "label")
    assert rows(frame) == [(1, "nul\x00here", "a"), (2, "esc\x1b", "b\x7f")]
    assert frame["malformed"].tolist() == ["", ""]


def test_jsonl_with_crlf_and_bom():
    frame = parse_table('\ufeff{"text": "a", "label": "x"}\r\n{"text": "b", "label": "y"}\r\n'.encode(), "d.jsonl", "text", "label")
    assert rows(frame) == [(1, "a", "x"), (2, "b", "y")]


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
    frame.loc[1, "malformed"] = "label:array"
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


def test_read_frame_of_a_snapshot_without_the_malformed_column(tmp_path):
    (tmp_path / "old.jsonl").write_text('{"row": 1, "text": "hi", "label": "a", "undecodable": false}\n')
    back = read_frame(tmp_path / "old.jsonl")
    assert list(back.columns) == COLUMNS
    assert back["malformed"].tolist() == [""]


def test_a_slice_column_is_read_as_strings_beside_text_and_label():
    frame = parse_table(b"text,label,region\nhi,a, emea \nyo,b,7\n", "d.csv", "text", "label", "region")
    assert list(frame.columns) == [*COLUMNS, "slice"]
    assert frame["slice"].tolist() == ["emea", "7"]  # "emea " would be a slice of its own


def test_a_slice_that_is_a_json_list_is_malformed_not_stringified():
    raw = b'{"text": "hi", "label": "a", "region": ["emea"]}\n{"text": "yo", "label": "b"}\n'
    frame = parse_table(raw, "d.jsonl", "text", "label", "region")
    assert frame["slice"].tolist() == [None, None]
    assert frame["malformed"].tolist() == ["slice:array", ""]


def test_a_missing_slice_column_names_the_key_to_fix():
    with pytest.raises(DataError, match=r"^data file 'd\.csv' has no column 'region' \(found: 'text', 'label'\); "
                                        r"add the column to the file, or set or remove data\.slice_column$"):
        parse_table(b"text,label\nhi,a\n", "d.csv", "text", "label", "region")


def test_a_slice_column_equal_to_the_text_column():
    with pytest.raises(DataError, match=r"^data\.text_column and data\.slice_column are both 'text'; name two different columns$"):
        parse_table(b"text,label\nhi,a\n", "d.csv", "text", "label", "text")


def test_a_slice_column_survives_the_snapshot_round_trip(tmp_path):
    frame = parse_table(b"text,label,region\nhi,a,emea\nyo,b,007\n", "d.csv", "text", "label", "region")
    write_frame(frame, tmp_path / "f.jsonl")
    back = read_frame(tmp_path / "f.jsonl")
    assert back["slice"].tolist() == ["emea", "007"]
    assert list(back.columns) == [*COLUMNS, "slice"]
