"""Labelled text tables: parse CSV / TSV / JSONL bytes into one normalized frame, and split it.

Every frame tuneloop passes around has the columns `row` (1-based record number in the source
file, for row-level messages), `text`, `label` (string) and `undecodable` (the record had bytes
that are not UTF-8). Parsing never drops a row: judging rows is validation's job.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pandas as pd

from tuneloop.errors import DataError

COLUMNS = ["row", "text", "label", "undecodable"]
FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}


def table_format(path: str) -> str:
    """Return the file suffix that decides the parser.

    Raises:
        DataError: for a suffix other than .csv, .tsv, .jsonl.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"data file {path!r} has unsupported format {suffix or '(none)'!r}; use .csv, .tsv or .jsonl")
    return suffix


def _decode(raw: bytes) -> tuple[str, set[int]]:
    """Decode UTF-8 line by line; return the text and the 1-based physical lines that were not UTF-8."""
    bad: set[int] = set()
    lines = raw.split(b"\n")
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            bad.add(number)
            out.append(line.decode("utf-8", errors="replace"))
    text = "\n".join(out)
    return text.removeprefix("\ufeff"), bad


def parse_table(raw: bytes, path: str, text_column: str, label_column: str) -> pd.DataFrame:
    """Parse a labelled text file into the normalized frame.

    Args:
        raw: the file's bytes.
        path: its name, for the format and for messages.
        text_column: column (or JSON key) holding the text.
        label_column: column (or JSON key) holding the label.

    Raises:
        DataError: when the file cannot be parsed or lacks the named columns.
    """
    suffix = table_format(path)
    text, bad_lines = _decode(raw)
    if suffix in (".jsonl", ".json"):
        records, lines = _jsonl_records(text, path)
    else:
        records, lines = _delimited_records(text, path, FORMATS[suffix])
    if records and (text_column not in records[0] or label_column not in records[0]):
        found = ", ".join(map(str, records[0].keys()))
        raise DataError(
            f"data file {path!r} has no column {text_column!r} or {label_column!r} (found: {found}); "
            "set data.text_column / data.label_column"
        )
    frame = pd.DataFrame(
        {
            "row": range(1, len(records) + 1),
            "text": [_cell(r.get(text_column)) for r in records],
            "label": [_cell(r.get(label_column)) for r in records],
            "undecodable": [bool(span & bad_lines) for span in lines],
        },
        columns=COLUMNS,
    )
    return frame


def count_records(raw: bytes, path: str) -> int:
    """Count the records in a data file without judging its columns."""
    text, _ = _decode(raw)
    if table_format(path) in (".jsonl", ".json"):
        return sum(1 for line in text.split("\n") if line.strip())
    return sum(1 for _ in csv.DictReader(io.StringIO(text, newline=""), delimiter=FORMATS[table_format(path)]))


def _cell(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _jsonl_records(text: str, path: str) -> tuple[list[dict], list[set[int]]]:
    records, spans = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number} is not valid JSON ({exc.msg}); fix or remove the line") from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is not a JSON object; write one object per line")
        records.append(record)
        spans.append({number})
    return records, spans


def _delimited_records(text: str, path: str, delimiter: str) -> tuple[list[dict], list[set[int]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    records, spans = [], []
    start = 2  # line 1 is the header
    try:
        for record in reader:
            end = reader.line_num
            if None in record:  # more cells than header names
                raise DataError(f"{path}: line {end} has more cells than the header; quote cells that hold the delimiter")
            records.append(record)
            spans.append(set(range(start, end + 1)))
            start = end + 1
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num} cannot be parsed ({exc}); fix the quoting") from exc
    return records, spans


def held_out_mask(texts: pd.Series, fraction: float) -> pd.Series:
    """Mark rows for the held-out split by a hash of their text.

    The split is stable across dataset versions (a text never changes sides), and identical texts
    always land on the same side, so duplicates cannot leak between the splits. "Identical" is
    validation's notion (case and runs of whitespace ignored), or its overlap check would fail them.
    """

    def bucket(text: object) -> float:
        digest = hashlib.sha256(" ".join(str(text).lower().split()).encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return texts.map(bucket) < fraction


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """Write a normalized frame as JSONL (the snapshot format every step reads)."""
    frame.to_json(path, orient="records", lines=True, force_ascii=False)


def read_frame(path: Path) -> pd.DataFrame:
    """Read a normalized frame written by `write_frame`."""
    frame = pd.read_json(path, orient="records", lines=True, dtype={"text": str, "label": str})
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    return frame[COLUMNS]
