"""Stopping a run, and a step that fails: what the user is told and what is left behind.

Ctrl-C at any step leaves no RUNNING MLflow run and no new version, says in one line what was
interrupted and whether anything was registered, and the next run succeeds. A step that fails
after preflight reports its own error class and message with the step's name and log path.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.conftest import champion_workspace

TUNELOOP = shutil.which("tuneloop")
pytestmark = pytest.mark.skipif(TUNELOOP is None, reason="the tuneloop console script is not installed")
STEPS = ["validate-data", "train-adapter", "evaluate-candidate", "gate-candidate", "promote-candidate"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TUNELOOP, *args], capture_output=True, text=True, timeout=600)


def runs_and_versions(root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(status, lifecycle) of every MLflow run, and every version of the model (not of its alias
    ledger), read straight from the database."""
    with sqlite3.connect(f"file:{root / 'mlflow.db'}?mode=ro", uri=True) as db:
        runs = sorted(db.execute("SELECT status, lifecycle_stage FROM runs").fetchall())
        versions = [str(v) for (v,) in db.execute("SELECT version FROM model_versions WHERE name = 'test-model' ORDER BY version")]
    return runs, versions


@pytest.fixture(scope="module")
def champion_ws(tmp_path_factory, tiny_model) -> Path:
    """A workspace whose version 1 is champion; returns its config path."""
    return champion_workspace(tmp_path_factory.mktemp("interrupt") / "ws", tiny_model)


def interrupt_at(config: Path, step: str, whole_group: bool) -> subprocess.CompletedProcess:
    """Start `tuneloop run`, and send SIGINT once `step` starts: to the whole group (Ctrl-C) or the CLI alone."""
    process = subprocess.Popen([TUNELOOP, "run", "--config", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.rstrip().endswith(f"tuneloop.pipeline step {step} started"):
            if whole_group:
                os.killpg(process.pid, signal.SIGINT)
            else:
                process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, "".join(seen) + err)


@pytest.mark.parametrize("step", STEPS)
def test_ctrl_c_at_a_step_leaves_no_running_run_and_no_new_version(champion_ws, step):
    root = champion_ws.parent
    before = runs_and_versions(root)
    done = interrupt_at(champion_ws, step, whole_group=True)
    *progress, last = done.stderr.strip().splitlines()
    assert done.returncode == 130, done.stderr[-3000:]
    assert all(" tuneloop." in line for line in progress), done.stderr[-3000:]  # progress lines, no traceback
    assert last.startswith(f"error: Interrupted: interrupted during step {step} (log: ")
    assert last.endswith("; nothing was registered")
    assert runs_and_versions(root) == before


def test_sigint_to_the_cli_alone_stops_the_step_too(champion_ws):
    root = champion_ws.parent
    before = runs_and_versions(root)
    done = interrupt_at(champion_ws, "train-adapter", whole_group=False)
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].endswith("; nothing was registered")
    assert runs_and_versions(root) == before
    # no step process outlived the CLI: nothing registers a version behind the user's back
    assert subprocess.run(["pgrep", "-f", str(root / "runs")], capture_output=True).stdout == b""


def test_the_run_after_the_interruptions_succeeds(champion_ws):
    # Named so it runs after the interruptions in this module, but it holds on its own too.
    done = cli("run", "--config", str(champion_ws))
    assert done.returncode == 0, done.stderr[-3000:]
    runs, versions = runs_and_versions(champion_ws.parent)
    assert versions[-1] == str(len(versions)) and all(status == "FINISHED" for status, _ in runs)


def test_a_failing_step_reports_its_own_error_class_step_and_log(tmp_path, tiny_model):
    config = champion_workspace(tmp_path / "ws", tiny_model)
    root = config.parent
    (weights,) = (root / "mlartifacts").rglob("adapter_model.safetensors")
    weights.unlink()  # the champion's adapter lost its weights after it was registered
    done = cli("run", "--config", str(config))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and lines[-1].startswith("error: RegistryError: "), done.stderr[-3000:]
    assert "is not a tuneloop adapter (needs tuneloop_adapter.json and adapter_model.safetensors)" in lines[-1]
    assert "(step evaluate-candidate; log: " in lines[-1] and Path(lines[-1].rsplit("log: ", 1)[1].rstrip(")")).is_file()
    assert runs_and_versions(root)[1] == ["1"]
