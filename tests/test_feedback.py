"""Feedback: labels joined to logged requests by id, judged like training data, all rows or none.

The CLI tests run `tuneloop feedback add` through the real entry point against a sqlite registry
whose version 1 was trained on account / billing / technical and version 2 on negative /
positive, so each label is checked against the version that served the request.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import tiny_config_text
from tests.test_predict import one_error_line
from tests.test_registry import candidate, migrated_store  # noqa: F401 (fixture)
from tuneloop import feedback, registry, traffic
from tuneloop.config import load_config
from tuneloop.errors import ConfigError, DataError
from tuneloop.traffic import TrafficRow

TUNELOOP = shutil.which("tuneloop")
pytestmark = pytest.mark.skipif(TUNELOOP is None, reason="the tuneloop console script is not installed")

T0 = datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)
LABELLED_AT = datetime(2026, 2, 1, 9, 30, tzinfo=timezone.utc)
LABEL_SETS = {"1": ["account", "billing", "technical"], "2": ["negative", "positive"]}


def served(request_id: str, minute: int, version: str = "1", model: str = "test-model") -> TrafficRow:
    return TrafficRow(request_id, T0 + timedelta(minutes=minute), model, version, f"text of {request_id}",
                      LABEL_SETS.get(version, ["billing"])[0], 0.5, 2.0)


def write_log(path: Path, rows: list[TrafficRow], bad: bytes = b"{oops\n") -> Path:
    """The rows through the writer, with one malformed line after the first two."""
    with traffic.TrafficWriter(path) as writer:
        writer.append(rows[:2])
    with path.open("ab") as handle:
        handle.write(bad)
    with traffic.TrafficWriter(path) as writer:
        writer.append(rows[2:])
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TUNELOOP, *args], capture_output=True, text=True, timeout=300)


class World:
    """A config and registry (versions 1 and 2), a traffic log, and a store where r6 is already labelled."""

    def __init__(self, root: Path, store_template: Path) -> None:
        self.root = root
        shutil.copyfile(store_template, root / "mlflow.db")
        self.config = root / "tuneloop.yaml"
        self.config.write_text(tiny_config_text(root / "model").replace(
            "registry:\n", f"registry:\n  tracking_uri: sqlite:///{root}/mlflow.db\n  artifact_root: {root}/art\n"))
        adapter = root / "adapter"
        adapter.mkdir()
        (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
        cfg = load_config(self.config).registry
        for labels in LABEL_SETS.values():
            registered = candidate(adapter)
            registry.register(cfg, replace(registered, record=replace(registered.record, labels=labels)), "run")
        rows = [served(f"r{n}", n) for n in range(1, 7)] + [served("r7", 7, "2"), served("r8", 8, model="other-model"),
                                                             served("twice", 9), served("twice", 10), served("r9", 11, "9")]
        self.log = write_log(root / "traffic.jsonl", rows)
        self.store = feedback.store_path(self.log)
        earlier = root / "earlier.csv"
        earlier.write_text("request_id,label\nr6,billing\n")
        feedback.add_feedback(earlier, self.log, "test-model", LABEL_SETS.__getitem__, LABELLED_AT)

    def labels_of(self, version: str) -> list[str]:
        """What the CLI asks the registry: the labels of the version that served a request."""
        return registry.show(load_config(self.config).registry, version)["record"]["labels"]

    def add(self, file: Path, *extra: str) -> subprocess.CompletedProcess:
        return cli("feedback", "add", str(file), "--log", str(self.log), "--config", str(self.config), *extra)


@pytest.fixture(scope="module")
def world(tmp_path_factory, migrated_store) -> World:  # noqa: F811
    return World(tmp_path_factory.mktemp("feedback"), migrated_store)


# --- bad input: one line, exit 1, the store unchanged byte for byte ---------------------------------

HEADER = "request_id,label\n"
BAD = [
    pytest.param("bad.csv", HEADER + "r1,billing\nnope,billing\n",
                 "1 problem(s) in FILE: row 2: request_id 'nope' is not in the traffic log 'LOG'; check the id, "
                 "or pass the log that served it", id="unknown-id"),
    pytest.param("bad.csv", HEADER + "r1,refund\n",
                 "1 problem(s) in FILE: row 1: label 'refund' is not a label of version 1 of test-model, which served "
                 "request 'r1' (labels: ['account', 'billing', 'technical']); use one of them", id="unknown-label"),
    pytest.param("bad.csv", HEADER + "r1,billing\nr7,billing\n",
                 "1 problem(s) in FILE: row 2: label 'billing' is not a label of version 2 of test-model, which served "
                 "request 'r7' (labels: ['negative', 'positive']); use one of them", id="label-of-another-version"),
    pytest.param("bad.csv", HEADER + "r1, billing\n",
                 "1 problem(s) in FILE: row 1: label ' billing' is not a label of version 1 of test-model, which served "
                 "request 'r1' (labels: ['account', 'billing', 'technical']); use one of them", id="label-with-space"),
    pytest.param("bad.csv", HEADER + "r1,billing\nr2,account\nr1,billing\n",
                 "1 problem(s) in FILE: row 3: duplicate of row 1 (request_id 'r1', label 'billing'); remove the "
                 "duplicate row", id="duplicate"),
    pytest.param("bad.csv", HEADER + "r1,billing\nr1,account\n",
                 "1 problem(s) in FILE: row 2: request_id 'r1' is labelled 'account' here and 'billing' in row 1; "
                 "give the request one label and remove the other row", id="conflicting-labels"),
    pytest.param("bad.csv", HEADER + ",billing\n",
                 "1 problem(s) in FILE: row 1: request_id is empty; fill in the id of a logged request or remove the row",
                 id="empty-id"),
    pytest.param("bad.csv", HEADER + "r1,  \n",
                 "1 problem(s) in FILE: row 1: label is empty; label the row or remove it", id="blank-label"),
    pytest.param("bad.csv", HEADER + "r6,billing\n",
                 "1 problem(s) in FILE: row 1: request 'r6' already has the label 'billing' in 'STORE'; feedback is "
                 "append-only, so remove the row", id="already-labelled"),
    pytest.param("bad.csv", HEADER + "r6,account\n",
                 "1 problem(s) in FILE: row 1: request 'r6' already has the label 'billing' (here 'account') in 'STORE'; "
                 "feedback is append-only, so remove the row", id="relabelled"),
    pytest.param("bad.csv", HEADER + "r8,billing\n",
                 "1 problem(s) in FILE: row 1: request 'r8' was served by model 'other-model', not 'test-model' "
                 "(registry.model_name); add its feedback with that model's config", id="another-model"),
    pytest.param("bad.csv", HEADER + "twice,billing\n",
                 "1 problem(s) in FILE: row 1: request_id 'twice' is logged 2 times; ids must be unique, so fix the "
                 "traffic log", id="logged-twice"),
    pytest.param("bad.csv", HEADER.encode() + b"r1,billing\nr2,caf\xe9\n",
                 "1 problem(s) in FILE: row 2: bytes that are not UTF-8; re-save the file as UTF-8", id="not-utf8"),
    pytest.param("bad.jsonl", '{"request_id": "r1", "label": ["billing"]}\n',
                 "1 problem(s) in FILE: row 1: label is a JSON array, not a string; write it as a JSON string",
                 id="label-array"),
    pytest.param("bad.jsonl", '{"request_id": {"id": "r1"}, "label": "billing"}\n',
                 "1 problem(s) in FILE: row 1: request_id is a JSON object, not a string; write it as a JSON string",
                 id="id-object"),
    pytest.param("bad.jsonl", '{"request_id": "r1", "label": "\\ud800"}\n',
                 "1 problem(s) in FILE: row 1: label holds the lone surrogate '\\ud800'; remove it", id="lone-surrogate"),
    pytest.param("bad.jsonl", '{"request_id": "r1", "label": "billing"}\n{"request_id": "r2", \n',
                 "FILE: line 2 is not valid JSON (Expecting property name enclosed in double quotes); fix or remove the line",
                 id="broken-json"),
    pytest.param("bad.csv", "id,label\nr1,billing\n",
                 "feedback file 'FILE' has no column 'request_id' or 'label' (found: 'id', 'label'); name the columns "
                 "request_id and label", id="no-id-column"),
    pytest.param("bad.csv", HEADER, "feedback file 'FILE' has no rows; add request_id,label rows below the header",
                 id="header-only"),
    pytest.param("bad.txt", "r1 billing\n", "feedback file 'FILE' has unsupported format '.txt'; use .csv, .tsv or .jsonl",
                 id="unsupported-format"),
    pytest.param("absent.csv", None, "feedback file 'FILE' not found; pass an existing CSV, TSV or JSONL file",
                 id="no-such-file"),
    pytest.param("bad.csv", HEADER + "r9,billing\n",
                 "test-model has no version 9; `tuneloop registry status` lists the versions", id="version-not-in-registry"),
    pytest.param("bad.csv", HEADER + "a,billing\nb,billing\nc,billing\nr1,billing\nd,billing\ne,billing\nf,billing\n",
                 "6 problem(s) in FILE: row 1: request_id 'a' is not in the traffic log 'LOG'; check the id, or pass the "
                 "log that served it; row 2: request_id 'b' is not in the traffic log 'LOG'; check the id, or pass the log "
                 "that served it; row 3: request_id 'c' is not in the traffic log 'LOG'; check the id, or pass the log that "
                 "served it; row 5: request_id 'd' is not in the traffic log 'LOG'; check the id, or pass the log that "
                 "served it; row 6: request_id 'e' is not in the traffic log 'LOG'; check the id, or pass the log that "
                 "served it, … and 1 more", id="many-problems"),
]


# Each CLI call pays tuneloop's imports (~6 s on 2 cores): these cases go through the real entry point,
# the rest through the core function it calls, with the same message.
THROUGH_CLI = {"unknown-id", "version-not-in-registry", "no-such-file", "broken-json"}


@pytest.mark.parametrize("name, content, message", BAD)
def test_bad_feedback_is_one_line_exit_1_and_writes_nothing(world, tmp_path, request, name, content, message):
    file = tmp_path / name
    if content is not None:
        file.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = {path.name: path.read_bytes() for path in world.root.iterdir() if path.is_file()}
    expected = message.replace("FILE", str(file)).replace("LOG", str(world.log)).replace("STORE", str(world.store))
    if request.node.callspec.id in THROUGH_CLI:
        error = "RegistryError" if "registry status" in message else "DataError"
        assert one_error_line(world.add(file)) == f"error: {error}: {expected}"
    else:
        with pytest.raises(DataError) as caught:
            feedback.add_feedback(file, world.log, "test-model", world.labels_of)
        assert str(caught.value) == expected
    after = {path.name: path.read_bytes() for path in world.root.iterdir() if path.is_file()}
    assert after.keys() == before.keys()  # no temporary file left behind
    assert after["traffic.feedback.jsonl"] == before["traffic.feedback.jsonl"]


def test_a_missing_log_is_one_line(world, tmp_path):
    file = tmp_path / "fine.csv"
    file.write_text(HEADER + "r1,billing\n")
    run = cli("feedback", "add", str(file), "--log", str(tmp_path / "none.jsonl"), "--config", str(world.config))
    assert one_error_line(run) == (
        f"error: DataError: traffic log '{tmp_path}/none.jsonl' not found; pass the file the requests were logged to")
    assert not (tmp_path / "none.feedback.jsonl").exists()


# --- good feedback ---------------------------------------------------------------------------------


def test_good_feedback_joins_by_request_id_and_lands_whole(world, tmp_path):
    log = write_log(tmp_path / "good.jsonl", [served("g1", 1), served("g2", 2), served("g3", 3, "2"), served("g4", 4)])
    csv = tmp_path / "labels.csv"
    csv.write_text("label,request_id,note\ntechnical,g2,x\nbilling,g1,\npositive,g3,\n")
    run = cli("feedback", "add", str(csv), "--log", str(log), "--config", str(world.config))
    assert run.returncode == 0, run.stderr
    store = tmp_path / "good.feedback.jsonl"
    assert run.stdout == f"added 3 label(s) to {store}\nLABEL      ROWS\nbilling    1\npositive   1\ntechnical  1\n"
    assert run.stderr == (f"warning: 1 malformed line(s) skipped in {log} (1 broken_json): "
                          "line 3 broken_json (Expecting property name enclosed in double quotes (column 2))\n")
    records = [json.loads(text) for text in store.read_text().splitlines()]
    stamp = records[0]["labelled_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert records == [
        {**served(request_id, minute, version).to_dict(), "label": label, "labelled_at": stamp, "source": str(csv)}
        for request_id, minute, version, label in (("g2", 2, "1", "technical"), ("g1", 1, "1", "billing"), ("g3", 3, "2", "positive"))
    ]
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text('{"request_id": "g4", "label": "account"}\n')
    more = cli("feedback", "add", str(jsonl), "--log", str(log), "--config", str(world.config), "--json")
    assert more.returncode == 0, more.stderr
    assert json.loads(more.stdout) == {"store": str(store), "rows": 1, "labels": {"account": 1}, "versions": {"1": 1},
                                       "skipped": {"broken_json": 1}}
    frame = feedback.labelled_rows(log)
    assert list(frame.columns) == ["request_id", "time", "model", "model_version", "text", "label", "prediction", "score"]
    assert frame.to_dict("records") == [
        {"request_id": request_id, "time": T0 + timedelta(minutes=minute), "model": "test-model", "model_version": version,
         "text": f"text of {request_id}", "label": label, "prediction": LABEL_SETS[version][0], "score": 0.5}
        for request_id, minute, version, label in (("g2", 2, "1", "technical"), ("g1", 1, "1", "billing"),
                                                   ("g3", 3, "2", "positive"), ("g4", 4, "1", "account"))
    ]


# --- the core on its own ---------------------------------------------------------------------------


@pytest.fixture
def labelled(tmp_path) -> Path:
    """A log of r0..r9 one minute apart; r1, r4, r5 and r8 labelled."""
    log = write_log(tmp_path / "traffic.jsonl", [served(f"r{n}", n) for n in range(10)])
    file = tmp_path / "labels.jsonl"
    file.write_text("".join(json.dumps({"request_id": f"r{n}", "label": "billing"}) + "\n" for n in (8, 1, 5, 4)))
    added = feedback.add_feedback(file, log, "test-model", LABEL_SETS.__getitem__, LABELLED_AT)
    assert (added.rows, added.labels, added.versions, added.skipped.counts) == (4, {"billing": 4}, {"1": 4}, {"broken_json": 1})
    return log


@pytest.mark.parametrize("since, until, expected", [
    (None, None, ["r8", "r1", "r5", "r4"]),
    (4, None, ["r8", "r5", "r4"]),
    (None, 5, ["r1", "r4"]),
    (2, 8, ["r5", "r4"]),
    (9, None, []),
])
def test_labelled_rows_selects_by_the_time_the_request_was_served(labelled, since, until, expected):
    at = {None: None} | {n: T0 + timedelta(minutes=n) for n in range(10)}
    frame = feedback.labelled_rows(labelled, at[since], at[until])
    assert frame["request_id"].tolist() == expected
    assert list(frame.columns) == list(feedback.LABELLED)


def test_labelled_rows_without_a_store_is_empty(tmp_path):
    frame = feedback.labelled_rows(tmp_path / "traffic.jsonl")
    assert frame.empty and list(frame.columns) == list(feedback.LABELLED)


def test_labelled_rows_refuses_a_window_without_a_zone(labelled):
    with pytest.raises(ConfigError) as refused:
        feedback.labelled_rows(labelled, datetime(2026, 1, 31))
    assert str(refused.value) == "since 2026-01-31T00:00:00 has no time zone; give it one, e.g. 2026-01-31T00:00:00+00:00"


def test_a_damaged_store_is_reported_not_skipped(labelled):
    store = feedback.store_path(labelled)
    store.write_bytes(store.read_bytes() + b'{"request_id": "r2"}\n')
    with pytest.raises(DataError) as damaged:
        feedback.labelled_rows(labelled)
    assert str(damaged.value) == (
        f"feedback store '{store}': line 5 is not a feedback row (missing_field: no 'time', 'model', 'model_version', "
        "'text', 'prediction', 'score', 'latency_ms'); restore the file from a backup or remove the line")


def test_a_failed_write_leaves_the_store_as_it_was(labelled, tmp_path, monkeypatch):
    store = feedback.store_path(labelled)
    before = store.read_bytes()
    file = tmp_path / "more.csv"
    file.write_text(HEADER + "r2,billing\n")

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(feedback.os, "replace", disk_full)
    with pytest.raises(OSError):
        feedback.add_feedback(file, labelled, "test-model", LABEL_SETS.__getitem__, LABELLED_AT)
    assert store.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["labels.jsonl", "more.csv", "traffic.feedback.jsonl", "traffic.jsonl"]


def _add_in_process(file: Path, log: Path) -> None:
    feedback.add_feedback(file, log, "test-model", LABEL_SETS.__getitem__, LABELLED_AT)


def test_concurrent_adds_lose_no_rows(tmp_path):
    log = write_log(tmp_path / "traffic.jsonl", [served(f"r{n}", n % 60) for n in range(400)])
    files = []
    for part in range(4):
        files.append(tmp_path / f"part{part}.csv")
        files[-1].write_text(HEADER + "".join(f"r{n},billing\n" for n in range(part, 400, 4)))
    workers = [multiprocessing.get_context("fork").Process(target=_add_in_process, args=(file, log)) for file in files]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert sorted(feedback.labelled_rows(log)["request_id"]) == sorted(f"r{n}" for n in range(400))


def test_the_store_sits_beside_the_log():
    assert feedback.store_path(Path("/logs/traffic.jsonl")) == Path("/logs/traffic.feedback.jsonl")
