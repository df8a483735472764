"""The traffic log: one JSON object per line (JSONL) for every prediction served, written and read here.

Schema (every field required; readers ignore fields they do not know, so fields can be added):

| field | JSON type | meaning |
|---|---|---|
| `request_id` | string | unique id of the request (32 hex characters from tuneloop; 1 to 128 characters, no whitespace) |
| `time` | string | when it was served, ISO-8601 UTC, e.g. `2026-01-31T12:00:00.000000Z` |
| `model` | string | registry model name (`registry.model_name`) |
| `model_version` | string | the registry version number that actually served it, e.g. `"3"` |
| `text` | string | the input text, not blank, at most 100,000 characters |
| `prediction` | string | the predicted label |
| `score` | number | probability of the predicted label (top softmax probability), 0 to 1 |
| `latency_ms` | number | milliseconds of prediction, ≥ 0 (`tuneloop predict`: the batch's mean per row) |

Writing (`TrafficWriter`): every `append` is one `os.write` of whole lines on a file opened with
O_APPEND, with no user-space buffer, so a row is in the kernel once `append` returns and concurrent
writers on a local file system never interleave within a line. A crash mid-write leaves at most a
torn last line; the next writer ends it with a newline first, so it never swallows a good row.

Reading (`iter_log`, `read_window`) streams line by line and never raises on a bad line: each is a
`BadLine` of one kind in `KINDS`, counted in `Skipped`, never traffic. Lines longer than
`MAX_LINE_BYTES` are skipped while being read, without holding more than that limit in memory.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from tuneloop.errors import ConfigError, DataError
from tuneloop.validation import MAX_TEXT_CHARS

FIELDS = ("request_id", "time", "model", "model_version", "text", "prediction", "score", "latency_ms")
KINDS = ("broken_json", "not_an_object", "missing_field", "wrong_type", "invalid_value",
         "too_long", "invalid_utf8", "torn_last_line")
# A row holds at most 100,000 text characters; JSON escapes a control character as 6 bytes, so the
# worst text is 600 KB and every row tuneloop writes fits in 1 MiB. A longer line is not a row.
MAX_LINE_BYTES = 1_048_576
MAX_ID_CHARS = 128  # a uuid is 32 hex characters; a client-chosen id of a few words still fits
_SKIP_BYTES = 65_536  # piece size while skipping an over-long line
SHOWN = 5  # malformed lines named with their line number in a report; the rest are counted
_NUMBER = (int, float)
_JSON_NAMES = {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "an array",
               dict: "an object", type(None): "null"}
_SURROGATE = re.compile("[\ud800-\udfff]")
_SNIPPET = 40  # characters of a bad value quoted in a detail


@dataclass(frozen=True)
class TrafficRow:
    """One served request, as one line of the log (see the module docstring for the fields)."""

    request_id: str
    time: datetime
    model: str
    model_version: str
    text: str
    prediction: str
    score: float
    latency_ms: float

    def to_dict(self) -> dict:
        """Return the row as the JSON object the log holds, fields in schema order."""
        return {name: format_time(self.time) if name == "time" else getattr(self, name) for name in FIELDS}


@dataclass(frozen=True)
class BadLine:
    """A line of the log that is not a row."""

    line: int  # 1-based physical line number
    kind: str  # one of KINDS
    detail: str  # what is wrong, for a person


@dataclass(frozen=True)
class Skipped:
    """The malformed lines met while reading: a count per kind and the first `SHOWN` of them."""

    counts: dict[str, int] = field(default_factory=dict)
    first: list[BadLine] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Malformed lines in all."""
        return sum(self.counts.values())

    def summary(self, source: str) -> str:
        """Return one line: how many lines were skipped, per kind, and the first few with their numbers."""
        if not self.total:
            return f"no malformed lines in {source}"
        kinds = ", ".join(f"{self.counts[kind]} {kind}" for kind in KINDS if kind in self.counts)
        shown = "; ".join(f"line {bad.line} {bad.kind} ({bad.detail})" for bad in self.first)
        rest = self.total - len(self.first)
        return f"{self.total} malformed line(s) skipped in {source} ({kinds}): {shown}" + (f", … and {rest} more" if rest else "")


@dataclass(frozen=True)
class Window:
    """Rows selected from a log, and the malformed lines among them (see `read_window`)."""

    rows: list[TrafficRow]
    skipped: Skipped
    lines: int  # physical lines read


class BadRow(DataError):
    """A JSON object that is not a traffic row; `kind` is one of `KINDS`."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


def new_request_id() -> str:
    """Return a fresh request id: 32 random hex characters (uuid4)."""
    return uuid.uuid4().hex


def format_time(when: datetime) -> str:
    """Return a time as the log writes it: ISO-8601 UTC with microseconds and a Z.

    Raises:
        DataError: for a time without a time zone, which could be any instant.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise DataError(f"time {when.isoformat()} has no time zone; pass an aware datetime, e.g. datetime.now(timezone.utc)")
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_record(record: object) -> TrafficRow:
    """Turn one parsed JSON value into a row, checking every field of the schema.

    Raises:
        BadRow: naming the first problem (missing fields, then wrong types, then bad values).
    """
    if not isinstance(record, dict):
        raise BadRow("not_an_object", f"{_JSON_NAMES.get(type(record), 'a value')}, not an object")
    missing = [name for name in FIELDS if name not in record]
    if missing:
        raise BadRow("missing_field", "no " + ", ".join(map(repr, missing)))
    for name in FIELDS:
        value, numeric = record[name], name in ("score", "latency_ms")
        if isinstance(value, bool) or not isinstance(value, _NUMBER if numeric else str):
            wanted = "a number" if numeric else "a string"
            raise BadRow("wrong_type", f"{name!r} is {_JSON_NAMES.get(type(value), 'a value')}, not {wanted}")
    for name in FIELDS:
        problem = _value_problem(name, record[name])
        if problem:
            raise BadRow("invalid_value", f"{name!r} {problem}")
    values = {name: record[name] for name in FIELDS}
    return TrafficRow(**{**values, "time": _utc(values["time"]), "score": float(values["score"]),
                         "latency_ms": float(values["latency_ms"])})


def _value_problem(name: str, value: str | float) -> str:
    """What is wrong with a field of the right type ("" when nothing)."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            return "holds a lone surrogate, which is not valid Unicode"
        if not value.strip() and name != "time":
            return "is blank"
    if name == "request_id" and id_problem(value):
        return f"is {_snippet(value)}; an id is 1 to {MAX_ID_CHARS} characters without whitespace"
    if name == "time" and _utc(value) is None:
        return f"is {_snippet(value)}, not an ISO-8601 UTC time such as 2026-01-31T12:00:00.000000Z"
    if name == "model_version" and not (value.isascii() and value.isdigit()):
        return f"is {_snippet(value)}, not a version number such as \"3\""
    if name == "text" and len(value) > MAX_TEXT_CHARS:
        return f"is {len(value):,} characters, over the limit of {MAX_TEXT_CHARS:,}"
    if name == "score" and not 0 <= value <= 1:
        return f"is {value!r}, outside 0 to 1"
    if name == "latency_ms" and not (math.isfinite(value) and value >= 0):
        return f"is {value!r}, not a finite number ≥ 0"
    return ""


def id_problem(request_id: str) -> str:
    """What keeps a string from being a request id ("" when nothing): 1 to MAX_ID_CHARS characters, no whitespace."""
    if not 1 <= len(request_id) <= MAX_ID_CHARS or request_id.split() != [request_id]:
        return f"is not 1 to {MAX_ID_CHARS} characters without whitespace"
    return ""


def text_problem(text: str) -> str:
    """Say why a log row could not hold this input text ("" when it can): blank, too long, not valid Unicode."""
    return _value_problem("text", text)


def _utc(text: str) -> datetime | None:
    """Parse an ISO-8601 time with a zero UTC offset; None for anything else."""
    if not text.endswith(("Z", "+00:00")):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.utcoffset() is not None and not when.utcoffset() else None


def _snippet(value: str) -> str:
    return repr(value if len(value) <= _SNIPPET else value[: _SNIPPET - 1] + "…")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    record = dict(pairs)
    if len(record) < len(pairs):  # json would keep only the last value of a repeated key
        keys = [key for key, _ in pairs]
        raise ValueError(f"repeats the key {next(key for key in keys if keys.count(key) > 1)!r}")
    return record


def parse_line(raw: bytes, number: int = 0) -> TrafficRow | BadLine:
    """Parse one line (without its newline) into a row, or say why it is not one; never raises."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadLine(number, "invalid_utf8", f"byte {exc.start + 1} is not UTF-8")
    try:
        record = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        return BadLine(number, "broken_json", f"{exc.msg} (column {exc.colno})")
    except (ValueError, RecursionError) as exc:  # a NaN, a repeated key, or arrays nested thousands deep
        return BadLine(number, "broken_json", str(exc) if isinstance(exc, ValueError) else "nested too deep")
    try:
        return parse_record(record)
    except BadRow as bad:
        return BadLine(number, bad.kind, bad.detail)


def _physical_lines(handle: BinaryIO) -> Iterator[tuple[bytes | None, int, bool]]:
    """Yield each line's bytes without the newline (None when over the limit), its size, and whether it ended in one.

    `readline(limit)` never returns more than the limit, so an over-long line is consumed in
    64 KiB pieces and dropped: memory stays near MAX_LINE_BYTES whatever the line's length.
    """
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        ended = raw.endswith(b"\n")
        if ended or len(raw) <= MAX_LINE_BYTES:
            yield raw[:-1] if ended else raw, len(raw) - ended, ended
            continue
        size = len(raw)
        while not raw.endswith(b"\n"):
            raw = handle.readline(_SKIP_BYTES)
            if not raw:
                break
            size += len(raw)
        yield None, size - raw.endswith(b"\n"), raw.endswith(b"\n")


def iter_log(path: Path) -> Iterator[TrafficRow | BadLine]:
    """Stream a traffic log: each line as a row or a `BadLine`, in file order.

    A last line without a newline that is not a whole row is `torn_last_line` (a writer stopped, or
    is still writing, mid-line); a whole row there is still a row.

    Raises:
        DataError: when the log does not exist.
    """
    require_log(path)
    with path.open("rb") as handle:
        for number, (raw, size, ended) in enumerate(_physical_lines(handle), start=1):
            if raw is None:
                yield BadLine(number, "too_long", f"{size:,} bytes, over the limit of {MAX_LINE_BYTES:,}")
                continue
            item = parse_line(raw, number)
            if isinstance(item, BadLine) and not ended:
                item = BadLine(number, "torn_last_line", f"no newline at the end and {item.kind}: {item.detail}")
            yield item


def require_log(path: Path) -> None:
    """Raise a `DataError` naming the file unless the traffic log exists."""
    if not path.is_file():
        raise DataError(f"traffic log {str(path)!r} not found; pass the file the requests were logged to")


class Tally:
    """Malformed lines counted while reading: a count per kind and the first `SHOWN` of them."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first: list[BadLine] = []

    def add(self, bad: BadLine) -> None:
        """Count one malformed line."""
        self.counts[bad.kind] += 1
        if len(self.first) < SHOWN:
            self.first.append(bad)

    @staticmethod
    def merged(tallies: Iterable["Tally"]) -> Skipped:
        """Return the report of several tallies together, first lines in line order."""
        tallies = list(tallies)
        counts = sum((tally.counts for tally in tallies), Counter())
        first = sorted((bad for tally in tallies for bad in tally.first), key=lambda bad: bad.line)[:SHOWN]
        return Skipped(dict(counts), first)


def check_range(since: datetime | None, until: datetime | None) -> None:
    """Refuse a time range that selects nothing or no definite instants.

    Raises:
        ConfigError: for a time without a zone, or `since` not before `until`.
    """
    for name, when in (("since", since), ("until", until)):
        if when is not None and when.utcoffset() is None:
            raise ConfigError(f"{name} {when.isoformat()} has no time zone; give it one, e.g. {when.isoformat()}+00:00")
    if since is not None and until is not None and since >= until:
        raise ConfigError(f"since {format_time(since)} is not before until {format_time(until)}; swap or widen them")


def in_range(when: datetime, since: datetime | None, until: datetime | None) -> bool:
    """Whether `when` lies in [since, until); a None bound is open."""
    return (since is None or when >= since) and (until is None or when < until)


def read_window(
    path: Path, since: datetime | None = None, until: datetime | None = None, last: int | None = None
) -> Window:
    """Read the rows served in [since, until), or the last `last` of them, streaming the whole log once.

    Malformed lines are reported with the window that holds the next row after them (those after
    the last row, such as a torn last line, with a window open at the end, `until` None), so
    windows read one after another report each bad line once. Memory holds the selected rows only.

    Args:
        path: the traffic log.
        since: first instant included (aware); None for the log's start.
        until: first instant excluded (aware); None for no end.
        last: keep only the newest `last` rows (in file order) of those in the time range; None for all.

    Raises:
        ConfigError: for a time without a zone, `since` not before `until`, or `last` below 1.
        DataError: when the log does not exist.
    """
    check_range(since, until)
    if last is not None and last < 1:
        raise ConfigError(f"last is {last}; ask for at least 1 row, or None for every row")
    kept: deque[tuple[TrafficRow, Tally | None]] = deque(maxlen=last)
    pending, lines = Tally(), 0
    for item in iter_log(path):
        lines += 1
        if isinstance(item, BadLine):
            pending.add(item)
            continue
        if in_range(item.time, since, until):
            kept.append((item, pending if pending.counts else None))  # an evicted row takes its bad lines along
        if pending.counts:
            pending = Tally()
    tallies = [tally for _, tally in kept if tally] + ([pending] if until is None else [])
    return Window([row for row, _ in kept], Tally.merged(tallies), lines)


def check_log(path: Path) -> None:
    """Check that rows can be appended to `path` without harming another file; create nothing.

    Raises:
        DataError: when the name is not .jsonl, its folder is missing, it is a folder, or it holds
            something other than a traffic log (its first whole line is not a row).
    """
    shown = str(path)
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"traffic log {shown!r} is not a .jsonl file; name it e.g. traffic.jsonl")
    if not path.parent.is_dir():
        raise DataError(f"traffic log {shown!r}: folder {str(path.parent)!r} does not exist; create it or choose another path")
    if path.is_dir():
        raise DataError(f"traffic log {shown!r} is a folder; pass a file path")
    if not path.exists():
        return
    with path.open("rb") as handle:
        raw, _, ended = next(_physical_lines(handle), (b"", 0, False))
    first = parse_line(raw, 1) if ended and raw is not None else None  # a torn first row is still the log's
    if raw is None or isinstance(first, BadLine):
        detail = f"{first.kind}: {first.detail}" if isinstance(first, BadLine) else f"too_long: over {MAX_LINE_BYTES:,} bytes"
        raise DataError(f"traffic log {shown!r} holds something else: line 1 is not a traffic row ({detail}); "
                        "pass a new file or an existing traffic log")


def encode_row(row: TrafficRow) -> bytes:
    """Return a row as one log line, newline included, after the checks every reader applies.

    Raises:
        DataError: when a reader would not accept the row (blank text, score outside 0 to 1 ...).
    """
    record = row.to_dict()
    try:
        parse_record(record)
    except BadRow as bad:
        raise DataError(f"traffic row {row.request_id!r} cannot be logged: {bad.detail}; fix the value") from None
    line = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    if len(line) > MAX_LINE_BYTES + 1:  # only a huge model name or label gets here: texts are capped
        raise DataError(f"traffic row {row.request_id!r} cannot be logged: {len(line) - 1:,} bytes, over the "
                        f"line limit of {MAX_LINE_BYTES:,}; shorten its fields")
    return line


class TrafficWriter:
    """Append rows to a traffic log; safe to share between threads and processes on a local file system.

    Each `append` is one `os.write` on an O_APPEND descriptor with no user-space buffer: a row is in
    the kernel once `append` returns, so a killed process loses nothing it logged, and concurrent
    appends never interleave inside a line. `close` fsyncs; a per-row fsync would bound the log
    at the disk's flush rate (~1-10 ms a flush), far below the requests a server answers.
    """

    def __init__(self, path: Path) -> None:
        """Open (or create) the log, ending a torn last line so the next row starts on its own line.

        Raises:
            DataError: see `check_log`.
        """
        check_log(path)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(self._fd).st_size
            if size and os.pread(self._fd, 1, size - 1) != b"\n":
                _write_all(self._fd, b"\n")
        except BaseException:
            os.close(self._fd)
            raise

    def append(self, rows: Iterable[TrafficRow]) -> int:
        """Check and append rows in one write; return how many.

        Raises:
            DataError: when any row fails the schema; nothing is written then.
        """
        lines = [encode_row(row) for row in rows]
        if lines:
            _write_all(self._fd, b"".join(lines))
        return len(lines)

    def close(self) -> None:
        """Flush the log to disk and close it."""
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def __enter__(self) -> "TrafficWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte: os.write may write fewer (a signal, a full pipe) and says how many."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
