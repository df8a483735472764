"""`tuneloop demo` end to end through the real entry point: the story it tells must hold."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tuneloop import feedback, registry, traffic
from tuneloop.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tuneloop") is None, reason="needs the installed CLI")]


def test_demo_gates_then_closes_the_loop_ignore_retrain_rollback(tmp_path):
    done = subprocess.run(["tuneloop", "demo", "--dir", str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the data is SYNTHETIC" in done.stdout
    assert "PASSED: no champion yet" in done.stdout

    cfg = load_config(tmp_path / "demo" / "tuneloop.yaml")
    state = registry.status(cfg.registry)
    by_version = {row["version"]: row for row in state["versions"]}
    assert set(by_version) == {"1", "2", "3"}
    assert (by_version["1"]["gate"], by_version["2"]["gate"], by_version["3"]["gate"]) == ("passed", "rejected", "passed")
    assert "is below the floor" in by_version["2"]["reasons"]  # 70% label noise: the gate stops it
    # the loop: quiet traffic ignored, shifted traffic retrained (version 3 promoted), then rolled back
    moves = [(m["kind"], m["from"], m["to"]) for m in state["history"] if m["alias"] == "champion"]
    assert moves == [("promote", None, "1"), ("promote", "1", "3"), ("rollback", "3", "1")]
    from datetime import datetime, timedelta, timezone

    ticks = registry.tick_history(cfg.registry, cfg.monitor.experiment, datetime.now(timezone.utc) - timedelta(hours=2))
    assert [(t["action"], t["champion"]) for t in ticks] == [("ignore", "1"), ("retrain", "1"), ("rollback", "3")]
    summary = done.stdout[done.stdout.index("== summary"):]
    assert "champion is version 1" in summary and "rolled back 3 -> 1" in summary
    # the server followed the alias by itself: its log holds answers of both versions, every row readable
    log = Path(cfg.serve.log)
    served = traffic.read_window(log)
    assert served.skipped.total == 0
    assert sorted(row.request_id for row in served.rows) == sorted(feedback.labelled_rows(log)["request_id"])
    assert sorted({row.model_version for row in served.rows}) == ["1", "3"]
    assert "the server switched to version 3 on its own" in done.stdout
