"""Labelled text tables: parse CSV / TSV / JSONL bytes into one normalized frame, and split it.

Every frame tuneloop passes around has the columns `row` (1-based record number in the source
file, for row-level messages), `text`, `label` (string), `undecodable` (the record had bytes that
are not UTF-8) and `malformed`: what JSONL held that a string column cannot, as comma-separated
"field:kind" items ("text:array", "label:object", "text:\\ud800" for a lone surrogate, which is
replaced by U+FFFD because a frame's strings must be valid Unicode), "" for a sound record.
A frame read with a slice column (`data.slice_column`) also has `slice`: each row's slice name,
for the gate's per-slice checks, stripped of surrounding whitespace ("emea " is "emea").
Parsing never drops a row: judging rows is validation's job. A file that cannot be read as a table
at all (bad header, bad JSON line) is a `DataError` here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from tuneloop.errors import DataError

COLUMNS = ["row", "text", "label", "undecodable", "malformed"]
FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}
_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_SURROGATE = re.compile("[\ud800-\udfff]")
_FOUND = 120  # characters of the header names quoted when a column is missing: one readable line
# byte order marks of the encodings spreadsheets export as "Unicode text"; decoded as UTF-8 they
# would be one undecodable row per line and a header that names no column
_WIDE_BOMS = {b"\xff\xfe": "UTF-16 or UTF-32 (little-endian)", b"\xfe\xff": "UTF-16 (big-endian)",
              b"\x00\x00\xfe\xff": "UTF-32 (big-endian)"}


class MissingColumns(DataError):
    """A file lacks a named column; `found` lists the columns it has (quoted, cut to one line)."""

    def __init__(self, message: str, found: str) -> None:
        super().__init__(message)
        self.found = found


def table_format(path: str) -> str:
    """Return the file suffix that decides the parser.

    Raises:
        DataError: for a suffix other than .csv, .tsv, .jsonl.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"data file {path!r} has unsupported format {suffix or '(none)'!r}; use .csv, .tsv or .jsonl")
    return suffix


def _decode(raw: bytes, path: str) -> tuple[str, set[int]]:
    """Decode UTF-8 line by line; return the text and the 1-based physical lines that were not UTF-8."""
    for bom, encoding in _WIDE_BOMS.items():
        if raw.startswith(bom):
            raise DataError(f"data file {path!r} is {encoding} (it starts with that byte order mark); re-save it as UTF-8")
    bad: set[int] = set()
    out = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            bad.add(number)
            out.append(line.decode("utf-8", errors="replace"))
    return "\n".join(out).removeprefix("\ufeff"), bad


def parse_table(
    raw: bytes, path: str, text_column: str, label_column: str, slice_column: str | None = None
) -> pd.DataFrame:
    """Parse a labelled text file into the normalized frame.

    Args:
        raw: the file's bytes.
        path: its name, for the format and for messages.
        text_column: column (or JSON key) holding the text.
        label_column: column (or JSON key) holding the label.
        slice_column: column (or JSON key) naming each row's slice, read into `slice`; None reads none.

    Raises:
        DataError: when the file cannot be parsed, repeats a column or lacks the named columns.
    """
    named = {"data.text_column": text_column, "data.label_column": label_column, "data.slice_column": slice_column}
    named = {key: column for key, column in named.items() if column is not None}
    for (key, column), (other, same) in itertools.combinations(named.items(), 2):
        if column == same:
            raise DataError(f"{key} and {other} are both {column!r}; name two different columns")
    suffix = table_format(path)
    text, bad_lines = _decode(raw, path)
    if suffix in (".jsonl", ".json"):
        records, lines = _jsonl_records(text, path)
        # a key missing from some records is a missing value there; missing from all, a wrong column name
        keys = list(dict.fromkeys(key for record in records for key in record)) if records else list(named.values())
        _check_columns(keys, named, path)
    else:
        records, lines = _delimited_records(text, path, FORMATS[suffix], named)
    cells = {field: [_cell(r.get(column)) for r in records] for field, column in zip(("text", "label", "slice"), named.values())}
    frame = pd.DataFrame(
        {
            "row": range(1, len(records) + 1),
            **{field: [value.strip() if field == "slice" and value is not None else value for value, _ in values]
               for field, values in cells.items()},
            "undecodable": [bool(span & bad_lines) for span in lines],
            "malformed": [_kinds({field: values[i][1] for field, values in cells.items()}) for i in range(len(records))],
        },
    )
    return frame[COLUMNS + (["slice"] if slice_column is not None else [])]


def count_records(raw: bytes, path: str) -> int:
    """Count the records in a data file without judging its columns."""
    text, _ = _decode(raw, path)
    if table_format(path) in (".jsonl", ".json"):
        return sum(1 for line in text.split("\n") if line.strip())
    with _field_limit(len(text)):
        return sum(1 for _ in csv.DictReader(io.StringIO(text, newline=""), delimiter=FORMATS[table_format(path)]))


def _cell(value: object) -> tuple[str | None, str]:
    """Return a cell as a string (or None when absent) and what was malformed in it ("" when nothing)."""
    if value is None:
        return None, ""
    if isinstance(value, (list, dict)):  # str() would train on "['a', 'b']"; validation reports the row
        return None, "array" if isinstance(value, list) else "object"
    if isinstance(value, bool):
        return ("true" if value else "false"), ""  # JSON's spelling, not Python's "True"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    surrogate = _SURROGATE.search(text)
    if surrogate:  # only a JSON "\ud800" escape makes one; pandas' Arrow strings cannot hold it
        return _SURROGATE.sub("\ufffd", text), f"\\u{ord(surrogate.group()):04x}"
    return text, ""


def _kinds(kinds: dict[str, str]) -> str:
    return ",".join(f"{name}:{kind}" for name, kind in kinds.items() if kind)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"repeats the key {repeated[0]!r}")
    return dict(pairs)


def _jsonl_records(text: str, path: str) -> tuple[list[dict], list[set[int]]]:
    records, spans = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:  # NaN / Infinity are not JSON, and a repeated key would silently keep only its last value
            record = json.loads(line, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number} is not valid JSON ({exc.msg}); fix or remove the line") from exc
        except ValueError as exc:
            raise DataError(f"{path}: line {number} is not valid JSON ({exc}); fix or remove the line") from exc
        if not isinstance(record, dict):
            kind = _JSON_KINDS.get(type(record), "value")
            raise DataError(f"{path}: line {number} is a JSON {kind}, not an object; write one object per line")
        records.append(record)
        spans.append({number})
    return records, spans


@contextmanager
def _field_limit(size: int) -> Iterator[None]:
    """Let the csv module read fields up to `size` characters, then restore its limit.

    Its default limit (131072) turns one long field into a parser crash; a field cannot be longer
    than the whole text, so that is the limit here, and validation judges long texts row by row.
    The limit is process-wide, so it is raised only for the duration of one parse.
    """
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, size + 1))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _delimited_records(
    text: str, path: str, delimiter: str, columns: dict[str, str]
) -> tuple[list[dict], list[set[int]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    records, spans = [], []
    start = 2  # line 1 is the header
    with _field_limit(len(text)):
        try:
            _check_columns(list(reader.fieldnames or []), columns, path)
            for record in reader:
                end = reader.line_num
                if None in record:  # more cells than header names
                    message = f"{path}: line {end} has more cells than the header; quote cells that hold the delimiter"
                    raise DataError(message)
                records.append(record)
                spans.append(set(range(start, end + 1)))
                start = end + 1
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num} cannot be parsed ({exc}); fix the quoting") from exc
    return records, spans


def _check_columns(names: list[str], columns: dict[str, str], path: str) -> None:
    """Refuse a header that repeats a name (the last cell would silently win) or lacks a column.

    `columns` maps each config key (data.text_column ...) to the column it names.
    """
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(
            f"data file {path!r} repeats the column {repeated[0]!r} in its header; rename or remove the extra column"
        )
    missing = {key: column for key, column in columns.items() if column not in names}
    if missing:
        found = ", ".join(map(repr, names)) or "(none)"
        if len(found) > _FOUND:
            found = found[: _FOUND - 1] + "…"
        text, label = columns["data.text_column"], columns["data.label_column"]
        if set(missing) & {"data.text_column", "data.label_column"}:
            raise MissingColumns(f"data file {path!r} has no column {text!r} or {label!r} (found: {found}); "
                                 "set data.text_column / data.label_column", found)
        raise MissingColumns(f"data file {path!r} has no column {missing['data.slice_column']!r} (found: {found}); "
                             "add the column to the file, or set or remove data.slice_column", found)


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
    strings = {"text": str, "label": str, "malformed": str, "slice": str}
    frame = pd.read_json(path, orient="records", lines=True, dtype=strings)
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    if "malformed" not in frame:  # a snapshot from before the column; it held only validated rows
        frame["malformed"] = ""
    return frame[COLUMNS + (["slice"] if "slice" in frame else [])]
