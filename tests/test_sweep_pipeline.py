"""A sweep through the local pipeline on a tiny BERT: four cells, the report, `sweep show`; then the
same sweep with one more axis value, whose one new cell is killed while it trains: it alone trains,
the report marks it failed and keeps the four cached cells.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.bad_input import cli
from tuneloop import synthetic

SWEEP = "sweep:\n  name: tiny\n  warmup_steps: 2\n  axes:\n    method: [lora, ia3]\n    method.r: [{ranks}]\n"


def _cell_process(parent: int) -> psutil.Process | None:
    """The cell's child process among `parent`'s descendants (`python -m tuneloop.sweep ...`), if one runs."""
    try:
        for process in psutil.Process(parent).children(recursive=True):
            if "tuneloop.sweep" in process.cmdline():
                return process
    except psutil.Error:  # a process ended while we looked
        return None
    return None


def test_a_sweep_runs_reports_and_reuses_its_cells(tmp_path, workspace):
    csv = synthetic.write_csv(synthetic.generate_tickets(1, 300, seed=0), tmp_path / "tickets.csv")
    assert cli("data", "add", str(csv), "--name", "tickets", "--config", str(workspace)).returncode == 0
    config = workspace.read_text().replace("  learning_rate: 0.01\n", "").replace("epochs: 1", "epochs: 3")
    sweep_file = workspace.parent / "sweep.yaml"
    sweep_file.write_text(config + SWEEP.format(ranks="4, 8"))

    first = cli("sweep", str(sweep_file))
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.count(": training (") == 4  # every cell trained
    *table, where = first.stdout.splitlines()
    assert [line.split("  ")[0] for line in table[1:]] == ["full (reference)", "method=lora, r=4", "method=lora, r=8",
                                                          "method=ia3"]
    run_id = where.rsplit("MLflow run ", 1)[1].rstrip(")")
    folder = where.split(" ")[1].rsplit("/", 1)[0]
    report = json.loads(open(f"{folder}/sweep.json").read())
    assert [row["status"] for row in report["rows"]] == ["ok"] * 4
    assert {row["estimate"]["seconds"] is not None for row in report["rows"]} == {True}
    assert sorted(p.name for p in Path(folder).iterdir()) == [
        "quality_vs_memory.png", "quality_vs_params.png", "report.html", "report.md", "sweep.json"]

    shown = cli("sweep", "show", run_id, "--config", str(sweep_file))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == table
    as_json = cli("sweep", "show", run_id, "--config", str(sweep_file), "--json")
    assert json.loads(as_json.stdout) == report

    # One more rank: only its cell trains, and it is killed while it does.
    sweep_file.write_text(config + SWEEP.format(ranks="4, 8, 16"))
    second = subprocess.Popen([shutil.which("tuneloop"), "sweep", str(sweep_file)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 600
    while second.poll() is None and killed is None and time.monotonic() < deadline:
        found = _cell_process(second.pid)
        if found is not None:
            found.send_signal(signal.SIGKILL)
            killed = found
        time.sleep(0.2)
    out, err = second.communicate(timeout=600)
    assert killed is not None, err[-3000:]
    assert second.returncode == 0, err[-3000:]
    assert err.count("tuneloop.sweep sweep cell method=lora, r=16: training") == 1
    assert err.count(": training (") == 1  # the four others came from the cache
    assert "1 cell(s) failed: method=lora, r=16; their errors are in the table" in err
    rows = json.loads(open(out.splitlines()[-1].split(" ")[1].rsplit("/", 1)[0] + "/sweep.json").read())["rows"]
    assert [(row["name"], row["status"], row["cached"]) for row in rows] == [
        ("full (reference)", "ok", True), ("method=lora, r=4", "ok", True), ("method=lora, r=8", "ok", True),
        ("method=lora, r=16", "failed", False), ("method=ia3", "ok", True)]
    assert rows[3]["error"] == "the cell's process was killed by signal SIGKILL (out of memory, or stopped from outside)"
    # Cached cells carry the figures they were measured with.
    assert [row["metrics"] for row in rows if row["status"] == "ok"] == [row["metrics"] for row in report["rows"]]
    failed_line = next(line for line in out.splitlines() if line.startswith("method=lora, r=16 "))
    assert failed_line.split() == ["method=lora,", "r=16", "FAILED:", "the", "cell's", "process", "was", "killed", "by",
                                   "signal", "SIGKILL", "(out", "of", "memory,", "or", "stopped", "from", "outside)"]
