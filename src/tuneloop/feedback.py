"""Feedback: labels that arrive after a request was served, joined to the traffic log by request id.

A feedback file is CSV, TSV or JSONL with the columns `request_id` and `label`, parsed by
`tuneloop.tables` like a data file. `add_feedback` judges every row before anything is written:
an empty id or label, bytes that are not UTF-8, a JSON array where a string belongs, an id given
twice (a duplicate, or a conflict when the labels differ), an id the log does not hold (or holds
twice), an id that already has feedback, a request served by another registered model, and a
label outside the label set of the version that served the request. Any problem raises one
`DataError` naming the rows and the fix, and the store is left as it was.

The store is `<log stem>.feedback.jsonl` beside the log (`store_path`). Each line is the logged
row (the traffic schema) plus `label`, `labelled_at` (ISO-8601 UTC) and `source` (the feedback
file), so a labelled example stays whole when the log is rotated away, and `labelled_rows`
reads a window without scanning a multi-GB log. Feedback is append-only: a request keeps its
first label. The store is rewritten through a temporary file and a rename, under an exclusive
lock on the log, so a crash leaves the old store or the new one and two writers cannot lose rows.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tuneloop import tables, traffic
from tuneloop.errors import DataError

log = logging.getLogger(__name__)

ID_COLUMN, LABEL_COLUMN = "request_id", "label"
LABELLED = ("request_id", "time", "model", "model_version", "text", "label", "prediction", "score")
SHOWN = 5  # problems quoted in the one-line error; the rest are counted


@dataclass(frozen=True)
class Added:
    """What `add_feedback` appended: the store, rows per label and per serving version, and the log's bad lines."""

    store: Path
    rows: int
    labels: dict[str, int]
    versions: dict[str, int]
    skipped: traffic.Skipped


def store_path(log_path: Path) -> Path:
    """Return the feedback store of a traffic log: traffic.jsonl -> traffic.feedback.jsonl, in the same folder."""
    return log_path.with_name(f"{log_path.stem}.feedback.jsonl")


def add_feedback(
    file: Path, log_path: Path, model: str, labels_of: Callable[[str], list[str]], now: datetime | None = None
) -> Added:
    """Validate a feedback file against the log and the served versions, then append it to the store.

    Args:
        file: CSV, TSV or JSONL with request_id and label columns.
        log_path: the traffic log that holds the requests.
        model: the registry model whose versions may be named (registry.model_name).
        labels_of: the label set of a version number of `model`, asked once per version served.
        now: the time recorded as labelled_at; None for the current time.

    Returns:
        What was appended.

    Raises:
        DataError: with every problem in one line; nothing is written then.
    """
    frame = _parse(file)
    problems = _file_problems(frame)
    traffic.require_log(log_path)
    with _locked(log_path):
        known = _known(frame, log_path, model, functools.cache(labels_of))
        joined = []
        for number, request_id, label in frame.loc[frame["ok"], ["row", "text", "label"]].itertuples(index=False):
            problem, row = _join_problem(request_id, label, known)
            if problem:
                problems.append((number, f"row {number}: {problem}"))
            else:
                joined.append((row, label))
        if problems:
            problems.sort(key=lambda item: item[0])
            shown = "; ".join(message for _, message in problems[:SHOWN])
            rest = len(problems) - SHOWN
            raise DataError(f"{len(problems)} problem(s) in {file}: {shown}" + (f", … and {rest} more" if rest > 0 else ""))
        labelled_at = traffic.format_time(now or datetime.now(timezone.utc))
        lines = [json.dumps({**row.to_dict(), "label": label, "labelled_at": labelled_at, "source": str(file)},
                            ensure_ascii=False) + "\n" for row, label in joined]
        _replace(known.store, "".join(lines).encode("utf-8"))
    log.debug("added %d feedback row(s) from %s to %s", len(joined), file, known.store)  # the CLI says it
    return Added(known.store, len(joined), dict(Counter(label for _, label in joined)),
                 dict(Counter(row.model_version for row, _ in joined)), known.skipped)


@dataclass(frozen=True)
class _Known:
    """What a feedback row is joined against: the logged rows and earlier labels of its ids, and the served model."""

    log_path: Path
    store: Path
    logged: dict[str, list[traffic.TrafficRow]]  # request id -> its rows in the log (one, unless the log is damaged)
    earlier: dict[str, str]  # request id -> the label the store already holds
    model: str
    labels_of: Callable[[str], list[str]]
    skipped: traffic.Skipped


def _known(frame: pd.DataFrame, log_path: Path, model: str, labels_of: Callable[[str], list[str]]) -> _Known:
    """Stream the log and the store once, keeping only what the file's request ids need."""
    wanted = set(frame.loc[frame["ok"], "text"])
    logged: dict[str, list[traffic.TrafficRow]] = {}
    tally = traffic.Tally()
    for item in traffic.iter_log(log_path):
        if isinstance(item, traffic.BadLine):
            tally.add(item)
        elif item.request_id in wanted:
            logged.setdefault(item.request_id, []).append(item)
    store = store_path(log_path)
    earlier = {record["request_id"]: record["label"] for record in _store_records(store) if record["request_id"] in wanted}
    return _Known(log_path, store, logged, earlier, model, labels_of, traffic.Tally.merged([tally]))


def _parse(file: Path) -> pd.DataFrame:
    """The feedback file as a normalized frame (see `tuneloop.tables`) whose `text` column holds the request id."""
    if file.suffix.lower() not in (".csv", ".tsv", ".jsonl"):
        raise DataError(f"feedback file {str(file)!r} has unsupported format {file.suffix or '(none)'!r}; "
                        "use .csv, .tsv or .jsonl")
    if not file.is_file():
        raise DataError(f"feedback file {str(file)!r} not found; pass an existing CSV, TSV or JSONL file")
    try:
        frame = tables.parse_table(file.read_bytes(), str(file), ID_COLUMN, LABEL_COLUMN)
    except tables.MissingColumns as exc:  # its advice names the data config, which a feedback file does not use
        raise DataError(f"feedback file {str(file)!r} has no column 'request_id' or 'label' (found: {exc.found}); "
                        "name the columns request_id and label") from None
    if frame.empty:
        raise DataError(f"feedback file {str(file)!r} has no rows; add request_id,label rows below the header")
    return frame


def _file_problems(frame: pd.DataFrame) -> list[tuple[int, str]]:
    """Problems a row has on its own or with another row of the file; marks the rows fit to join in `ok`."""
    problems = []
    first: dict[str, tuple[int, str]] = {}
    ok = []
    for number, request_id, label, undecodable, malformed in frame[tables.COLUMNS].itertuples(index=False):
        problem = _cell_problem(request_id, label, undecodable, malformed)
        if not problem and request_id in first:
            other, other_label = first[request_id]
            problem = (f"duplicate of row {other} (request_id {request_id!r}, label {label!r}); remove the duplicate row"
                       if label == other_label else
                       f"request_id {request_id!r} is labelled {label!r} here and {other_label!r} in row {other}; "
                       "give the request one label and remove the other row")
        if problem:
            problems.append((number, f"row {number}: {problem}"))
        else:
            first[request_id] = (number, label)
        ok.append(not problem)
    frame["ok"] = ok
    return problems


def _cell_problem(request_id: str | None, label: str | None, undecodable: bool, malformed: str) -> str:
    """What makes one row unusable on its own ("" when nothing)."""
    if undecodable:
        return "bytes that are not UTF-8; re-save the file as UTF-8"
    for item in filter(None, malformed.split(",")):
        name, kind = item.split(":", 1)
        if kind in ("array", "object"):
            return f"{name.replace('text', ID_COLUMN)} is a JSON {kind}, not a string; write it as a JSON string"
        return f"{name.replace('text', ID_COLUMN)} holds the lone surrogate '{kind}'; remove it"
    if request_id is None or not request_id.strip():
        return "request_id is empty; fill in the id of a logged request or remove the row"
    if label is None or not label.strip():
        return "label is empty; label the row or remove it"
    return ""


def _join_problem(request_id: str, label: str, known: _Known) -> tuple[str, traffic.TrafficRow | None]:
    """The problem joining one row to the log and the store ("" when none), and the logged row it labels."""
    rows = known.logged.get(request_id, [])
    if not rows:
        return (f"request_id {request_id!r} is not in the traffic log {str(known.log_path)!r}; check the id, "
                "or pass the log that served it"), None
    if len(rows) > 1:
        return f"request_id {request_id!r} is logged {len(rows)} times; ids must be unique, so fix the traffic log", None
    row, earlier = rows[0], known.earlier.get(request_id)
    if earlier is not None:
        said = "" if earlier == label else f" (here {label!r})"
        return (f"request {request_id!r} already has the label {earlier!r}{said} in {str(known.store)!r}; "
                "feedback is append-only, so remove the row"), None
    if row.model != known.model:
        return (f"request {request_id!r} was served by model {row.model!r}, not {known.model!r} (registry.model_name); "
                "add its feedback with that model's config"), None
    allowed = sorted(known.labels_of(row.model_version))
    if label not in allowed:
        return (f"label {label!r} is not a label of version {row.model_version} of {known.model}, which served request "
                f"{request_id!r} (labels: {allowed}); use one of them"), None
    return "", row


@contextmanager
def _locked(log_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the log (not the store, which a rename replaces) while the store is read and rewritten."""
    with log_path.open("rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _replace(store: Path, added: bytes) -> None:
    """Write the store's bytes plus `added` to a temporary file beside it, fsync, and rename it over the store."""
    old = store.read_bytes() if store.exists() else b""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{store.name}.", dir=store.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(old + added)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, store)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(store.parent, os.O_RDONLY)  # the rename itself survives a power cut only once its folder is synced
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _store_records(store: Path) -> Iterator[dict]:
    """Stream the store's records, each checked; the store is written only here, so a bad line is damage, not traffic.

    Raises:
        DataError: naming the first bad line.
    """
    if not store.exists():
        return
    with store.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            problem = ""
            try:
                record = json.loads(raw)
                row = traffic.parse_record(record)
                label, labelled_at = record.get("label"), record.get("labelled_at")
                if not isinstance(label, str) or not label.strip() or not isinstance(labelled_at, str):
                    problem = "no label or labelled_at"
            except (ValueError, traffic.BadRow) as exc:
                problem = str(exc)
            if problem:
                raise DataError(f"feedback store {str(store)!r}: line {number} is not a feedback row ({problem}); "
                                "restore the file from a backup or remove the line")
            yield {**record, "row": row}


def labelled_rows(log_path: Path, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    """Return the labelled requests served in [since, until), in the order they were labelled.

    Args:
        log_path: the traffic log whose store to read (see `store_path`).
        since: first instant included (aware); None for no start.
        until: first instant excluded (aware); None for no end.

    Returns:
        A frame with the columns of `LABELLED` (time as aware UTC datetimes); empty when nothing is labelled.

    Raises:
        ConfigError: for a time without a zone, or `since` not before `until`.
        DataError: when the store holds a line it could not have written.
    """
    traffic.check_range(since, until)
    rows = []
    for record in _store_records(store_path(log_path)):
        row: traffic.TrafficRow = record["row"]
        if traffic.in_range(row.time, since, until):
            rows.append({**row.to_dict(), "time": row.time, "label": record["label"]})
    return pd.DataFrame(rows, columns=list(LABELLED))
