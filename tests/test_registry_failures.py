"""Tests for a broken registry: preflight (`check_store`), one-line errors, and `register` taking back a half-done write.

Real backends only: MLflow sqlite files (a corrupted copy of a real one among them), a real `mlflow server`
on loopback, a loopback port with nothing listening, a socket that never answers, and a small stdlib HTTP
server answering what a broken server answers (401, 503, an HTML page). Mid-way failures have real causes:
a name MLflow rejects, a FIFO in the adapter folder, a store trigger refusing a write, and a real SIGINT.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_registry import adapter, candidate, cfg, migrated_store  # noqa: F401  (fixtures)
from tuneloop import registry
from tuneloop.config import RegistryConfig
from tuneloop.errors import RegistryError

BOUND = 15.0  # seconds: the upper bound for a broken store to be reported


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def db_path(cfg: RegistryConfig) -> Path:
    return Path(cfg.tracking_uri.removeprefix("sqlite:///"))


def dump(cfg: RegistryConfig) -> list[str]:
    """Every row of every table of the sqlite store, read-only."""
    with contextlib.closing(sqlite3.connect(f"{db_path(cfg).as_uri()}?mode=ro", uri=True)) as db:
        return list(db.iterdump())


def runs(cfg: RegistryConfig) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(f"{db_path(cfg).as_uri()}?mode=ro", uri=True)) as db:
        return db.execute("SELECT status, lifecycle_stage FROM runs ORDER BY start_time").fetchall()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def fails_in_one_line(call, message: str) -> RegistryError:
    """Run `call`, expect a RegistryError whose whole text is `message`, within BOUND seconds."""
    start = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        call()
    assert time.monotonic() - start < BOUND
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)
    return caught.value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- sqlite store ---------------------------------------------------------------------------------


def test_a_healthy_store_passes_and_nothing_is_written(cfg, tmp_path):
    before = sha256(db_path(cfg))
    registry.check_store(cfg)
    assert sha256(db_path(cfg)) == before
    assert not Path(cfg.artifact_root).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


def test_a_fresh_workspace_passes_without_creating_the_file(tmp_path):
    cfg = RegistryConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art"))
    registry.check_store(cfg)
    assert list(tmp_path.iterdir()) == []


def test_a_store_in_a_missing_folder_fails(tmp_path):
    uri = f"sqlite:///{tmp_path}/nope/mlflow.db"
    cfg = RegistryConfig(tracking_uri=uri, artifact_root=str(tmp_path / "art"))
    fails_in_one_line(lambda: registry.check_store(cfg),
                      f"registry.tracking_uri: {uri} is in a folder that does not exist ({tmp_path}/nope); "
                      "create the folder or fix the path")
    assert list(tmp_path.iterdir()) == []


def corrupt(cfg: RegistryConfig, how: str) -> None:
    path = db_path(cfg)
    if how == "garbage in the middle":
        size = path.stat().st_size
        with path.open("r+b") as file:
            file.seek(size // 2 - 32_768)
            file.write(random.Random(0).randbytes(65_536))
    elif how == "truncated":
        os.truncate(path, path.stat().st_size // 3)
    elif how == "random bytes":
        path.write_bytes(random.Random(1).randbytes(100_000))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "a folder":
        path.unlink()
        path.mkdir()
    elif how == "not MLflow's":
        path.unlink()
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE notes (text TEXT)")
            db.commit()


@pytest.mark.parametrize(("how", "why"), [
    ("garbage in the middle", "database disk image is malformed"),
    ("truncated", "database disk image is malformed"),
    ("random bytes", "file is not a database"),
    ("empty", "file is empty"),
    ("a folder", "it is a folder"),
    ("not MLflow's", "it holds no MLflow tables"),
])
def test_a_broken_database_fails_in_one_line_and_is_left_alone(cfg, adapter, tmp_path, how, why):
    registry.register(cfg, candidate(adapter), "run-1")  # a store with content, as a user's would be
    corrupt(cfg, how)
    path = db_path(cfg)
    before = sha256(path) if path.is_file() else None
    message = (f"registry.tracking_uri: {cfg.tracking_uri} is not a readable MLflow database ({why}); "
               "restore it from a backup or point registry.tracking_uri at a new file")
    for call in (lambda: registry.check_store(cfg), lambda: registry.status(cfg), lambda: registry.latest_version(cfg),
                 lambda: registry.champion_labels(cfg), lambda: registry.fetch_champion(cfg, tmp_path / "dest"),
                 lambda: registry.register(cfg, candidate(adapter), "run-2"),
                 lambda: registry.promote(cfg, "1", None, why="first", by="alice")):
        fails_in_one_line(call, message)
    assert (sha256(path) if path.is_file() else None) == before  # MLflow never got to "initialize" it


def test_an_out_of_date_schema_fails_before_mlflow_would_refuse_it(cfg, migrated_store):
    with contextlib.closing(sqlite3.connect(migrated_store)) as db:
        head = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    with contextlib.closing(sqlite3.connect(db_path(cfg))) as db:
        db.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")
        db.commit()
    import mlflow

    fails_in_one_line(lambda: registry.check_store(cfg),
                      f"registry.tracking_uri: {cfg.tracking_uri} has MLflow schema 451aebb31d03, but MLflow "
                      f"{mlflow.__version__} needs {head}; back the file up, then run "
                      f"'mlflow db upgrade {cfg.tracking_uri}' (or use the MLflow version that wrote it)")


def test_a_locked_database_is_reported_as_busy_not_broken(cfg):
    with contextlib.closing(sqlite3.connect(db_path(cfg))) as db:
        db.execute("BEGIN EXCLUSIVE")
        fails_in_one_line(lambda: registry.check_store(cfg, timeout=0.5),
                          f"registry.tracking_uri: {cfg.tracking_uri} is locked by another process (database is locked); "
                          "wait for it to finish and retry")


# --- artifact root --------------------------------------------------------------------------------


def test_an_unwritable_artifact_root_fails_before_anything_is_written(cfg, adapter, tmp_path):
    (tmp_path / "afile").write_text("a file, so no folder can be made under it (root included)")
    bad = cfg.model_copy(update={"artifact_root": str(tmp_path / "afile" / "sub")})
    before, state = sha256(db_path(cfg)), dump(cfg)
    message = (f"registry.artifact_root: {tmp_path}/afile/sub is not writable ({tmp_path}/afile is not a folder); "
               "point registry.artifact_root at a writable folder")
    fails_in_one_line(lambda: registry.check_store(bad), message)
    fails_in_one_line(lambda: registry.register(bad, candidate(adapter), "run-1"), message)
    assert sha256(db_path(cfg)) == before
    assert dump(cfg) == state
    assert runs(cfg) == []


def test_the_existing_experiments_artifact_location_is_the_one_checked(cfg, adapter, tmp_path):
    registry.register(cfg, candidate(adapter), "run-1")  # the experiment stores artifacts in cfg.artifact_root
    shutil.rmtree(cfg.artifact_root)
    Path(cfg.artifact_root).write_text("replaced by a file")
    elsewhere = cfg.model_copy(update={"artifact_root": str(tmp_path / "fine")})  # ignored: the experiment exists
    before = sha256(db_path(cfg))
    fails_in_one_line(lambda: registry.register(elsewhere, candidate(adapter), "run-2"),
                      f"registry.artifact_root: {Path(cfg.artifact_root).as_uri()} (where experiment tuneloop stores artifacts) is not "
                      f"writable ({cfg.artifact_root} is not a folder); make it writable or set registry.experiment "
                      "to a new name")
    assert sha256(db_path(cfg)) == before
    registry.check_store(elsewhere.model_copy(update={"experiment": "fresh"}))


def test_a_deleted_experiment_fails_with_the_key_to_change(cfg, adapter):
    from mlflow import MlflowClient

    registry.register(cfg, candidate(adapter), "run-1")
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    client.delete_experiment(client.get_experiment_by_name("tuneloop").experiment_id)
    fails_in_one_line(lambda: registry.register(cfg, candidate(adapter), "run-2"),
                      f"registry.experiment: tuneloop is deleted in {cfg.tracking_uri}; restore it "
                      "('mlflow experiments restore') or set registry.experiment to a new name")


def test_a_missing_adapter_folder_fails_before_anything_is_written(cfg, tmp_path):
    state = dump(cfg)
    fails_in_one_line(lambda: registry.register(cfg, candidate(tmp_path / "gone"), "run-1"),
                      f"adapter folder {tmp_path}/gone is missing or holds no files; train the candidate again "
                      "(nothing was registered)")
    assert dump(cfg) == state


# --- register takes back what it wrote ------------------------------------------------------------


def assert_untouched(cfg: RegistryConfig, state: list[str], artifacts: list[str]) -> None:
    assert dump(cfg) == state  # no run (RUNNING or deleted), no version, no model, no experiment
    assert files_under(Path(cfg.artifact_root)) == artifacts


def test_a_name_mlflow_rejects_leaves_no_run_no_experiment(cfg, adapter):
    state = dump(cfg)
    bad = candidate(adapter)
    bad.metrics["bad!name"] = 1.0
    error = fails_in_one_line(
        lambda: registry.register(cfg, bad, "run-1"),
        f"registry at {cfg.tracking_uri} failed: Invalid value \"bad!name\" for parameter 'metrics[2].name' supplied: "
        "Names may only contain alphanumerics, underscores (_), dashes (-), periods (.), spaces ( ), colon(:) and "
        "slashes (/).; check registry.tracking_uri",
    )
    assert error.__cause__ is not None  # the MLflow error stays reachable with --debug
    assert_untouched(cfg, state, [])
    assert not Path(cfg.artifact_root).exists()  # not even the empty folder MLflow made for the run
    assert registry.register(cfg, candidate(adapter), "run-2").version == "1"


def test_a_fifo_in_the_adapter_fails_midway_and_the_champion_is_kept(cfg, adapter):
    registry.register(cfg, candidate(adapter), "run-1")
    registry.promote(cfg, "1", None, why="first", by="alice")
    state, artifacts = dump(cfg), files_under(Path(cfg.artifact_root))
    os.mkfifo(adapter / "zz-pipe")
    with pytest.raises(RegistryError, match=r"^registry at sqlite:///\S+ failed: .*zz-pipe.*; check registry.tracking_uri$"):
        registry.register(cfg, candidate(adapter), "run-2")
    assert_untouched(cfg, state, artifacts)
    assert runs(cfg) == [("FINISHED", "active")]
    (adapter / "zz-pipe").unlink()
    assert registry.register(cfg, candidate(adapter), "run-3").version == "2"
    assert registry.champion_labels(cfg) is not None


def refuse(cfg: RegistryConfig, table: str, when: str = "1") -> None:
    """Install a store trigger that refuses the next write to `table` (a real failing write, as a full disk gives)."""
    event = "UPDATE OF status" if table == "runs" else "INSERT"
    with contextlib.closing(sqlite3.connect(db_path(cfg))) as db:
        db.execute(f"CREATE TRIGGER refuse BEFORE {event} ON {table} WHEN {when} "
                   "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END")
        db.commit()


def test_a_failing_version_write_takes_back_the_model_run_and_experiment_it_created(cfg, adapter):
    refuse(cfg, "model_versions")
    state = dump(cfg)
    with pytest.raises(RegistryError, match=r"^registry at \S+ failed: Model Version creation error \(name=test-model\)\. Giving up after 3 attempts\.; "
                                            r"check registry.tracking_uri$"):
        registry.register(cfg, candidate(adapter), "run-1")
    assert_untouched(cfg, state, [])
    assert registry.status(cfg)["versions"] == []


def test_a_failing_version_write_keeps_the_existing_model_and_its_versions(cfg, adapter):
    registry.register(cfg, candidate(adapter), "run-1")
    refuse(cfg, "model_versions")
    state, artifacts = dump(cfg), files_under(Path(cfg.artifact_root))
    with pytest.raises(RegistryError, match=r"^registry at \S+ failed: Model Version creation error .*; check registry.tracking_uri$"):
        registry.register(cfg, candidate(adapter), "run-2")
    assert_untouched(cfg, state, artifacts)
    assert [row["version"] for row in registry.status(cfg)["versions"]] == ["1"]


def test_a_run_that_cannot_be_finished_is_failed_and_taken_back(cfg, adapter):
    registry.register(cfg, candidate(adapter), "run-1")
    refuse(cfg, "runs", when="NEW.status = 'FINISHED'")
    state, artifacts = dump(cfg), files_under(Path(cfg.artifact_root))
    with pytest.raises(RegistryError, match=r"^registry at \S+ failed: refused by the test trigger; check registry.tracking_uri$"):
        registry.register(cfg, candidate(adapter), "run-2")
    assert_untouched(cfg, state, artifacts)  # including the adapter files already copied for run-2


INTERRUPTED = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from tests.test_registry import candidate
    from tuneloop import registry
    from tuneloop.config import RegistryConfig
    cfg = RegistryConfig(**json.loads(sys.argv[1]))
    registry.register(cfg, candidate(Path(sys.argv[2])), "interrupted")
    print("registered")
""")


def test_ctrl_c_in_the_middle_of_register_leaves_nothing(cfg, adapter, tmp_path):
    """A real SIGINT while the adapter is being copied: the read of a terminal blocks until the signal comes."""
    registry.register(cfg, candidate(adapter), "run-1")
    state, artifacts = dump(cfg), files_under(Path(cfg.artifact_root))
    leader, follower = os.openpty()
    (adapter / "zz-terminal").symlink_to(os.ttyname(follower))
    child = subprocess.Popen([sys.executable, "-c", INTERRUPTED, cfg.model_dump_json(), str(adapter)],
                             cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(Path(cfg.artifact_root).rglob("artifacts/adapter/zz-terminal")):
            assert child.poll() is None and time.monotonic() < deadline, "register did not reach the adapter copy"
            time.sleep(0.05)
        assert [status for status, _ in runs(cfg)] == ["FINISHED", "RUNNING"]  # caught in the middle
        time.sleep(0.2)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(leader)
        os.close(follower)
    assert child.returncode in (-signal.SIGINT, 130, 1), err
    assert "KeyboardInterrupt" in err and "registered" not in out
    assert_untouched(cfg, state, artifacts)
    (adapter / "zz-terminal").unlink()
    assert registry.register(cfg, candidate(adapter), "run-3").version == "2"


# --- tracking servers -----------------------------------------------------------------------------


def server_cfg(tmp_path: Path, uri: str, **extra) -> RegistryConfig:
    return RegistryConfig(**{"tracking_uri": uri, "artifact_root": str(tmp_path / "art"), "model_name": "test-model", **extra})


def test_an_unreachable_server_fails_fast_in_one_line(tmp_path, adapter):
    uri = f"http://127.0.0.1:{free_port()}"  # bound, then closed: nothing listens there
    cfg = server_cfg(tmp_path, uri)
    message = (f"registry.tracking_uri: {uri} does not answer (Connection refused); "
               "start the tracking server or fix registry.tracking_uri")
    for call in (lambda: registry.check_store(cfg), lambda: registry.register(cfg, candidate(adapter), "run-1"),
                 lambda: registry.status(cfg), lambda: registry.latest_version(cfg),
                 lambda: registry.champion_labels(cfg), lambda: registry.promote(cfg, "1", None, why="x", by="y")):
        fails_in_one_line(call, message)


def test_a_server_that_never_answers_fails_after_the_timeout(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel does) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        fails_in_one_line(lambda: registry.check_store(server_cfg(tmp_path, uri), timeout=1.0),
                          f"registry.tracking_uri: {uri} does not answer (no answer within 1 s); "
                          "start the tracking server or fix registry.tracking_uri")
        assert time.monotonic() - start < 5


@contextlib.contextmanager
def answering(answers: dict[str, tuple[int, str]]):
    """A loopback HTTP server answering (status, body) by path prefix; 503 for anything else."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            code, body = next((a for prefix, a in answers.items() if self.path.startswith(prefix)), (503, "busy"))
            self.send_response(code)
            self.send_header("Content-Type", "application/json" if body.startswith("{") else "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_GET = do_POST = answer

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


PROBE = "/api/2.0/mlflow/experiments/get-by-name"


@pytest.mark.parametrize(("code", "body", "says"), [
    (401, "no", "refused access (HTTP 401 Unauthorized); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "(or MLFLOW_TRACKING_TOKEN) to an account that may read and write experiments"),
    (403, "no", "refused access (HTTP 403 Forbidden); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "(or MLFLOW_TRACKING_TOKEN) to an account that may read and write experiments"),
    (503, "busy", "answered HTTP 503 Service Unavailable; check the tracking server's log and retry once it is healthy"),
    (404, "<html>not here</html>", f"is not an MLflow tracking server (HTTP 404 Not Found for {PROBE}); "
                                   "point registry.tracking_uri at the server's base URL"),
    (200, "<html>a web page</html>", f"is not an MLflow tracking server (an answer that is not MLflow's JSON for "
                                     f"{PROBE}); point registry.tracking_uri at the server's base URL"),
])
def test_a_server_answering_an_error_gets_its_own_line(tmp_path, code, body, says):
    with answering({PROBE: (code, body)}) as uri:
        fails_in_one_line(lambda: registry.check_store(server_cfg(tmp_path, uri)), f"registry.tracking_uri: {uri} {says}")


def test_mlflow_calls_give_up_after_one_retry_not_four_minutes(tmp_path, adapter):
    """The probe is answered, then every API call gets 503 (a server going down): one line within seconds."""
    found = json.dumps({"experiment": {"experiment_id": "1", "artifact_location": "mlflow-artifacts:/1",
                                       "lifecycle_stage": "active"}})
    with answering({PROBE: (200, found)}) as uri:
        cfg = server_cfg(tmp_path, uri)
        registry.check_store(cfg)
        for call in (lambda: registry.status(cfg), lambda: registry.register(cfg, candidate(adapter), "run-1")):
            start = time.monotonic()
            with pytest.raises(RegistryError, match=rf"^registry at {re.escape(uri)} failed: API request to {re.escape(uri)}"
                                                    r"/api/2.0/mlflow/\S+ failed with exception .*503.*; check registry.tracking_uri$"):
                call()
            assert time.monotonic() - start < BOUND


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, migrated_store):
    """A real `mlflow server` on loopback, its store a copy of the migrated sqlite file."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    shutil.copyfile(migrated_store, folder / "mlflow.db")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=(folder / "server.log").open("w"), start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()[-2000:]
            time.sleep(0.25)
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_a_real_server_passes_the_preflight_and_takes_a_version(mlflow_server, tmp_path, adapter, capsys):
    from mlflow import MlflowClient

    cfg = server_cfg(tmp_path, mlflow_server, experiment="preflight")
    registry.check_store(cfg)
    client = MlflowClient(tracking_uri=mlflow_server)
    assert client.get_experiment_by_name("preflight") is None  # the preflight created nothing
    assert registry.latest_version(cfg) is None
    assert registry.register(cfg, candidate(adapter), "run-1").version == "1"
    registry.check_store(cfg)  # the experiment exists now; its artifacts go through the server
    assert registry.latest_version(cfg) == "1"
    assert capsys.readouterr().out == ""  # MLflow's "View run … at" links would break `--json` output


def test_a_midway_failure_on_a_server_leaves_no_running_run_and_no_version(mlflow_server, tmp_path, adapter):
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    cfg = server_cfg(tmp_path, mlflow_server, experiment="midway", model_name="server-model")
    bad = candidate(adapter)
    bad.metrics["bad!name"] = 1.0
    with pytest.raises(RegistryError, match=r"^registry at http://\S+ failed: INVALID_PARAMETER_VALUE: Invalid value \"bad!name\" .*; "
                                            r"check registry.tracking_uri$"):
        registry.register(cfg, bad, "run-1")
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("midway")
    # REST only soft-deletes, and a soft-deleted experiment would block its name: it stays, holding the
    # FAILED, deleted run and nothing active.
    [run] = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    assert (run.info.status, run.info.lifecycle_stage) == ("FAILED", "deleted")
    assert client.search_runs([experiment.experiment_id]) == []
    assert registry.latest_version(cfg) is None
    assert registry.register(cfg, candidate(adapter), "run-2").version == "1"


def test_latest_version_reads_without_creating_a_store(tmp_path, cfg, adapter):
    fresh = RegistryConfig(tracking_uri=f"sqlite:///{tmp_path}/new/mlflow.db", artifact_root=str(tmp_path / "a"))
    assert registry.latest_version(fresh) is None
    assert not (tmp_path / "new").exists()
    assert registry.latest_version(cfg) is None
    registry.register(cfg, candidate(adapter), "run-1")
    registry.register(cfg, candidate(adapter), "run-2")
    assert registry.latest_version(cfg) == "2"


# --- the server's clock (the alias ledger ages claims by it)


@contextlib.contextmanager
def clock_ahead(seconds: float, usegmt: bool = True):
    """A loopback HTTP server whose Date header runs `seconds` ahead of this machine's clock
    (zone "GMT", or "-0000" when not `usegmt`, which parses without a time zone)."""
    import email.utils

    class Handler(http.server.BaseHTTPRequestHandler):
        def date_time_string(self, timestamp=None) -> str:
            return email.utils.formatdate(time.time() + seconds, usegmt=usegmt)

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("ahead", "usegmt"), [(300.0, True), (-300.0, True), (300.0, False)])
def test_the_server_clock_offset_is_read_from_its_date_header(tmp_path, ahead, usegmt):
    from tuneloop import store

    with clock_ahead(ahead, usegmt) as uri:
        offset = store.server_clock_offset_ms(server_cfg(tmp_path, uri))
    # the header counts whole seconds: the midpoint estimate is off by at most 0.5 s plus the round trip
    assert abs(offset - ahead * 1000) <= 1000, offset


def test_a_local_store_is_stamped_by_this_machine_so_its_offset_is_zero(cfg):  # noqa: F811
    from tuneloop import store

    assert store.server_clock_offset_ms(cfg) == 0


def test_a_real_mlflow_server_on_this_machine_has_no_offset(mlflow_server, tmp_path):
    from tuneloop import store

    # the same clock: what is left is the estimate's error, half the fastest round trip plus 0.5 s,
    # and a loaded 2-core machine can take seconds to answer
    assert abs(store.server_clock_offset_ms(server_cfg(tmp_path, mlflow_server))) <= 5000


def test_an_unreachable_server_has_no_clock_to_read(tmp_path):
    from tuneloop import store

    uri = f"http://127.0.0.1:{free_port()}"  # bound, then closed: nothing listens there
    fails_in_one_line(lambda: store.server_clock_offset_ms(server_cfg(tmp_path, uri), timeout=1.0),
                      f"registry.tracking_uri: {uri} does not answer (Connection refused); "
                      "start the tracking server or fix registry.tracking_uri")
