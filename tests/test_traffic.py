"""The traffic log: rows written and read back exactly, windows, and malformed lines that never crash a reader."""

from __future__ import annotations

import json
import multiprocessing
import tracemalloc
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tuneloop import traffic
from tuneloop.errors import ConfigError, DataError
from tuneloop.traffic import BadLine, TrafficRow

T0 = datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)


def row(number: int, **fields) -> TrafficRow:
    """Request `r<number>`, served `number` minutes after T0."""
    values = dict(request_id=f"r{number}", time=T0 + timedelta(minutes=number), model="test-model", model_version="1",
                  text=f"my invoice number {number} is wrong", prediction="billing", score=0.75, latency_ms=3.5)
    return TrafficRow(**{**values, **fields})


def line(number: int, **fields) -> bytes:
    """The JSON line of `row(number)`, with fields replaced (or removed when given as ...)."""
    record = {**row(number).to_dict(), **fields}
    return json.dumps({key: value for key, value in record.items() if value is not ...}).encode()


def write_log(path: Path, lines: list[bytes], end: bytes = b"\n") -> Path:
    path.write_bytes(b"\n".join(lines) + end)
    return path


# --- writing and reading back ----------------------------------------------------------------------


def test_a_row_is_one_json_line_in_schema_order():
    unicode = row(1, text='café "naïve"\tline\nbreak ☕', time=datetime(2026, 1, 31, 13, 0, 0, 5, tzinfo=timezone(timedelta(hours=1))))
    assert traffic.encode_row(unicode) == (
        '{"request_id": "r1", "time": "2026-01-31T12:00:00.000005Z", "model": "test-model", "model_version": "1", '
        '"text": "café \\"naïve\\"\\tline\\nbreak ☕", "prediction": "billing", "score": 0.75, "latency_ms": 3.5}\n'
    ).encode("utf-8")


def test_written_rows_read_back_equal(tmp_path):
    rows = [row(1), row(2, text="ünïcödé ☕ and \"quotes\"", score=1, latency_ms=0), row(3, score=0.3333333333333333)]
    path = tmp_path / "traffic.jsonl"
    with traffic.TrafficWriter(path) as writer:
        assert writer.append(rows[:2]) == 2
    with traffic.TrafficWriter(path) as writer:  # a second writer appends after the first
        assert writer.append(rows[2:]) == 1
        assert writer.append([]) == 0
    window = traffic.read_window(path)
    assert window.rows == rows
    assert (window.skipped, window.lines) == (traffic.Skipped(), 3)
    assert [type(r.score) for r in window.rows] == [float, float, float]


def test_a_bad_row_is_refused_and_nothing_of_its_batch_is_written(tmp_path):
    path = tmp_path / "traffic.jsonl"
    with traffic.TrafficWriter(path) as writer:
        writer.append([row(1)])
        with pytest.raises(DataError) as refused:
            writer.append([row(2), row(3, score=1.5)])
    assert str(refused.value) == "traffic row 'r3' cannot be logged: 'score' is 1.5, outside 0 to 1; fix the value"
    assert path.read_bytes() == traffic.encode_row(row(1))


@pytest.mark.parametrize("fields, problem", [
    ({"text": "   "}, "'text' is blank"),
    ({"text": "x" * 100_001}, "'text' is 100,001 characters, over the limit of 100,000"),
    ({"text": "bad \udcff byte"}, "'text' holds a lone surrogate, which is not valid Unicode"),
    ({"request_id": "two words"}, "'request_id' is 'two words'; an id is 1 to 128 characters without whitespace"),
    ({"model_version": "champion"}, "'model_version' is 'champion', not a version number such as \"3\""),
    ({"latency_ms": float("nan")}, "'latency_ms' is nan, not a finite number ≥ 0"),
    ({"prediction": "x" * 1_100_000}, "1,100,196 bytes, over the line limit of 1,048,576; shorten its fields"),
])
def test_encode_row_refuses_what_a_reader_would_skip(fields, problem):
    with pytest.raises(DataError) as refused:
        traffic.encode_row(row(1, **fields))
    assert str(refused.value) == f"traffic row {fields.get('request_id', 'r1')!r} cannot be logged: {problem}" + (
        "" if "line limit" in problem else "; fix the value")


def test_a_time_without_a_zone_is_refused():
    with pytest.raises(DataError) as refused:
        traffic.encode_row(row(1, time=datetime(2026, 1, 31, 12)))
    assert str(refused.value) == (
        "time 2026-01-31T12:00:00 has no time zone; pass an aware datetime, e.g. datetime.now(timezone.utc)")


def _append_many(path: Path, start: int) -> None:
    with traffic.TrafficWriter(path) as writer:
        for number in range(start, start + 400):
            writer.append([row(number, text="word " * (number % 50 + 1))])


def test_concurrent_writers_never_interleave_within_a_line(tmp_path):
    path = tmp_path / "traffic.jsonl"
    workers = [multiprocessing.get_context("fork").Process(target=_append_many, args=(path, s)) for s in (0, 1000, 2000)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    window = traffic.read_window(path)
    assert window.skipped.total == 0
    assert sorted(r.request_id for r in window.rows) == sorted(f"r{n}" for s in (0, 1000, 2000) for n in range(s, s + 400))


def test_a_torn_last_line_is_ended_before_the_next_row(tmp_path):
    path = write_log(tmp_path / "traffic.jsonl", [line(1), line(2)[:40]], end=b"")
    torn = traffic.read_window(path)
    assert torn.rows == [row(1)]
    assert torn.skipped.first == [
        BadLine(2, "torn_last_line", "no newline at the end and broken_json: Unterminated string starting at (column 30)")]
    with traffic.TrafficWriter(path) as writer:
        writer.append([row(3)])
    healed = traffic.read_window(path)
    assert healed.rows == [row(1), row(3)]  # the new row was not glued onto the torn one
    assert healed.skipped.first == [BadLine(2, "broken_json", "Unterminated string starting at (column 30)")]


def test_a_whole_last_row_without_a_newline_is_still_a_row(tmp_path):
    path = write_log(tmp_path / "traffic.jsonl", [line(1), line(2)], end=b"")
    assert traffic.read_window(path).rows == [row(1), row(2)]


# --- malformed lines: counted by kind, never traffic, never a crash ---------------------------------

MALFORMED = [
    pytest.param(b'{"request_id": "r9", "time": ', "broken_json", "Expecting value (column 30)", id="broken-json"),
    pytest.param(b"", "broken_json", "Expecting value (column 1)", id="blank-line"),
    pytest.param(line(9, score=...).replace(b"}", b', "score": NaN}'), "broken_json", "NaN is not a JSON value", id="nan"),
    pytest.param(line(9).replace(b"}", b', "score": 0.1}'), "broken_json", "repeats the key 'score'", id="repeated-key"),
    pytest.param(b"[" * 100_000, "broken_json", "nested too deep", id="deep-nesting"),
    pytest.param(b'["r9", "billing"]', "not_an_object", "an array, not an object", id="array"),
    pytest.param(b'"r9"', "not_an_object", "a string, not an object", id="string"),
    pytest.param(line(9, score=..., latency_ms=...), "missing_field", "no 'score', 'latency_ms'", id="missing-fields"),
    pytest.param(b"{}", "missing_field", "no " + ", ".join(map(repr, traffic.FIELDS)), id="empty-object"),
    pytest.param(line(9, score="0.9"), "wrong_type", "'score' is a string, not a number", id="score-string"),
    pytest.param(line(9, score=True), "wrong_type", "'score' is a boolean, not a number", id="score-boolean"),
    pytest.param(line(9, text=None), "wrong_type", "'text' is null, not a string", id="text-null"),
    pytest.param(line(9, text=["a", "b"]), "wrong_type", "'text' is an array, not a string", id="text-array"),
    pytest.param(line(9, model_version=3), "wrong_type", "'model_version' is a number, not a string", id="version-number"),
    pytest.param(line(9, score=1.5), "invalid_value", "'score' is 1.5, outside 0 to 1", id="score-range"),
    pytest.param(line(9).replace(b'"latency_ms": 3.5', b'"latency_ms": 1e999'), "invalid_value",
                 "'latency_ms' is inf, not a finite number ≥ 0", id="latency-infinite"),
    pytest.param(line(9, latency_ms=-1), "invalid_value", "'latency_ms' is -1, not a finite number ≥ 0", id="latency-negative"),
    pytest.param(line(9, time="2026-01-31T12:00:00+02:00"), "invalid_value",
                 "'time' is '2026-01-31T12:00:00+02:00', not an ISO-8601 UTC time such as 2026-01-31T12:00:00.000000Z",
                 id="time-not-utc"),
    pytest.param(line(9, time="yesterday"), "invalid_value",
                 "'time' is 'yesterday', not an ISO-8601 UTC time such as 2026-01-31T12:00:00.000000Z", id="time-garbage"),
    pytest.param(line(9, request_id=""), "invalid_value", "'request_id' is blank", id="empty-id"),
    pytest.param(line(9, text="\ud800"), "invalid_value", "'text' holds a lone surrogate, which is not valid Unicode",
                 id="lone-surrogate"),
    pytest.param(line(9, text="caf\u00e9").replace(b"\\u00e9", b"\xe9"), "invalid_utf8", "byte 118 is not UTF-8", id="latin-1"),
    pytest.param(b'{"text": "' + b"x" * 5_000_000 + b'"}', "too_long", "5,000,012 bytes, over the limit of 1,048,576",
                 id="5-MB-line"),
]


@pytest.mark.parametrize("bad, kind, detail", MALFORMED)
def test_a_malformed_line_is_counted_by_kind_and_never_traffic(tmp_path, bad, kind, detail):
    path = write_log(tmp_path / "traffic.jsonl", [line(1), bad, line(3)])
    window = traffic.read_window(path)
    assert window.rows == [row(1), row(3)]
    assert window.skipped == traffic.Skipped({kind: 1}, [BadLine(2, kind, detail)])
    assert window.lines == 3


def test_every_malformed_line_at_once_is_counted_and_reported_in_one_line(tmp_path):
    bad_lines = [param.values[0] for param in MALFORMED]
    path = write_log(tmp_path / "traffic.jsonl", [line(1), *bad_lines, line(2), line(3)[:50]], end=b"")
    window = traffic.read_window(path)
    assert window.rows == [row(1), row(2)]
    assert window.skipped.counts == {"broken_json": 5, "not_an_object": 2, "missing_field": 2, "wrong_type": 5,
                                     "invalid_value": 7, "invalid_utf8": 1, "too_long": 1, "torn_last_line": 1}
    assert window.skipped.total == len(MALFORMED) + 1
    assert window.skipped.summary("traffic.jsonl") == (
        "24 malformed line(s) skipped in traffic.jsonl (5 broken_json, 2 not_an_object, 2 missing_field, 5 wrong_type, "
        "7 invalid_value, 1 too_long, 1 invalid_utf8, 1 torn_last_line): line 2 broken_json (Expecting value (column 30)); "
        "line 3 broken_json (Expecting value (column 1)); line 4 broken_json (NaN is not a JSON value); "
        "line 5 broken_json (repeats the key 'score'); line 6 broken_json (nested too deep), … and 19 more"
    )


def test_a_5_mb_line_is_skipped_without_being_held_in_memory(tmp_path):
    path = write_log(tmp_path / "traffic.jsonl", [line(1), b'{"text": "' + b"x" * 5_000_000 + b'"}', line(3)])
    tracemalloc.start()
    try:
        window = traffic.read_window(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert window.rows == [row(1), row(3)] and window.skipped.counts == {"too_long": 1}
    assert peak < 2.5 * traffic.MAX_LINE_BYTES, peak  # the line is 5,000,012 bytes


def test_the_line_limit_is_on_the_bytes_before_the_newline(tmp_path):
    at_limit, over = b"x" * traffic.MAX_LINE_BYTES, b"x" * (traffic.MAX_LINE_BYTES + 1)
    path = write_log(tmp_path / "traffic.jsonl", [at_limit, over, line(3)])
    assert traffic.read_window(path).skipped.first == [
        BadLine(1, "broken_json", "Expecting value (column 1)"),
        BadLine(2, "too_long", "1,048,577 bytes, over the limit of 1,048,576"),
    ]


def test_fields_a_reader_does_not_know_are_ignored(tmp_path):
    path = write_log(tmp_path / "traffic.jsonl", [line(1, batch_size=8, alias="champion")])
    assert traffic.read_window(path).rows == [row(1)]


# --- windows --------------------------------------------------------------------------------------


@pytest.fixture
def ten(tmp_path) -> Path:
    """Rows r0..r9 one minute apart, with a bad line before r3 and before r7, and a torn last line."""
    lines = [line(n) for n in range(10)]
    lines.insert(3, b"{oops")
    lines.insert(8, b"[]")
    return write_log(tmp_path / "traffic.jsonl", lines + [line(10)[:20]], end=b"")


def ids(window: traffic.Window) -> list[str]:
    return [r.request_id for r in window.rows]


@pytest.mark.parametrize("since, until, last, expected, bad", [
    (None, None, None, [f"r{n}" for n in range(10)], [4, 9, 13]),
    (3, None, None, [f"r{n}" for n in range(3, 10)], [4, 9, 13]),
    (None, 3, None, ["r0", "r1", "r2"], []),
    (3, 7, None, ["r3", "r4", "r5", "r6"], [4]),
    (4, 7, None, ["r4", "r5", "r6"], []),
    (None, None, 3, ["r7", "r8", "r9"], [9, 13]),
    (None, None, 2, ["r8", "r9"], [13]),
    (None, 7, 2, ["r5", "r6"], []),
    (0, 1, 5, ["r0"], []),
    (20, None, None, [], [13]),
])
def test_a_window_selects_by_time_and_count_and_reports_the_bad_lines_among_its_rows(ten, since, until, last, expected, bad):
    at = {None: None} | {n: T0 + timedelta(minutes=n) for n in range(21)}
    window = traffic.read_window(ten, at[since], at[until], last)
    assert ids(window) == expected
    assert [b.line for b in window.skipped.first] == bad
    assert window.lines == 13


def test_consecutive_windows_report_each_bad_line_once(ten):
    edges = [None] + [T0 + timedelta(minutes=n) for n in (2, 5, 8)] + [None]
    reports = [traffic.read_window(ten, since, until).skipped for since, until in zip(edges, edges[1:])]
    assert [[b.line for b in report.first] for report in reports] == [[], [4], [9], [13]]


def test_a_window_of_times_in_another_zone_selects_the_same_instants(ten):
    plus_two = timezone(timedelta(hours=2))
    window = traffic.read_window(ten, datetime(2026, 1, 31, 14, 2, tzinfo=plus_two), datetime(2026, 1, 31, 14, 4, tzinfo=plus_two))
    assert ids(window) == ["r2", "r3"]


@pytest.mark.parametrize("kwargs, message", [
    ({"since": datetime(2026, 1, 31)}, "since 2026-01-31T00:00:00 has no time zone; give it one, e.g. 2026-01-31T00:00:00+00:00"),
    ({"until": datetime(2026, 1, 31)}, "until 2026-01-31T00:00:00 has no time zone; give it one, e.g. 2026-01-31T00:00:00+00:00"),
    ({"since": T0, "until": T0}, "since 2026-01-31T12:00:00.000000Z is not before until 2026-01-31T12:00:00.000000Z; swap or widen them"),
    ({"last": 0}, "last is 0; ask for at least 1 row, or None for every row"),
])
def test_a_window_that_selects_nothing_definite_is_refused(ten, kwargs, message):
    with pytest.raises(ConfigError) as refused:
        traffic.read_window(ten, **kwargs)
    assert str(refused.value) == message


def test_a_missing_log_is_one_error(tmp_path):
    with pytest.raises(DataError) as missing:
        traffic.read_window(tmp_path / "nowhere.jsonl")
    assert str(missing.value) == f"traffic log '{tmp_path}/nowhere.jsonl' not found; pass the file the requests were logged to"


def test_an_empty_log_is_an_empty_window(tmp_path):
    path = tmp_path / "traffic.jsonl"
    path.write_bytes(b"")
    assert traffic.read_window(path) == traffic.Window([], traffic.Skipped(), 0)


# --- where rows may be appended --------------------------------------------------------------------


@pytest.mark.parametrize("name, content, message", [
    ("traffic.csv", None, "traffic log 'DIR/traffic.csv' is not a .jsonl file; name it e.g. traffic.jsonl"),
    ("missing/traffic.jsonl", None,
     "traffic log 'DIR/missing/traffic.jsonl': folder 'DIR/missing' does not exist; create it or choose another path"),
    ("folder.jsonl", "DIR", "traffic log 'DIR/folder.jsonl' is a folder; pass a file path"),
    ("train.jsonl", b'{"text": "my invoice", "label": "billing"}\n',
     "traffic log 'DIR/train.jsonl' holds something else: line 1 is not a traffic row (missing_field: no 'request_id', "
     "'time', 'model', 'model_version', 'prediction', 'score', 'latency_ms'); pass a new file or an existing traffic log"),
    ("huge.jsonl", b"x" * 2_000_000 + b"\n",
     "traffic log 'DIR/huge.jsonl' holds something else: line 1 is not a traffic row (too_long: over 1,048,576 bytes); "
     "pass a new file or an existing traffic log"),
])
def test_a_writer_refuses_a_path_that_is_not_a_traffic_log(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as refused:
        traffic.TrafficWriter(path)
    assert str(refused.value) == message.replace("DIR", str(tmp_path))
    assert (path.read_bytes() if path.is_file() else None) == (content if isinstance(content, bytes) else None)
    assert not (tmp_path / "missing").exists()


def test_a_log_whose_first_row_is_torn_still_takes_rows(tmp_path):
    path = write_log(tmp_path / "traffic.jsonl", [line(1)[:30]], end=b"")
    with traffic.TrafficWriter(path) as writer:
        writer.append([replace(row(2), text="after the crash")])
    assert ids(traffic.read_window(path)) == ["r2"]
