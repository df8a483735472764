"""`tuneloop demo` end to end through the real entry point: the story it tells must hold."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tuneloop import registry
from tuneloop.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tuneloop") is None, reason="needs the installed CLI")]


def test_demo_promotes_v1_and_rejects_the_noisy_candidate(tmp_path):
    done = subprocess.run(["tuneloop", "demo", "--dir", str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the data is SYNTHETIC" in done.stdout
    assert "PASSED: no champion yet" in done.stdout
    summary = done.stdout[done.stdout.index("== summary"):]
    assert "v2, 70% label noise in training rows" in summary and "rejected" in summary

    state = registry.status(load_config(tmp_path / "demo" / "tuneloop.yaml").registry)
    by_version = {row["version"]: row for row in state["versions"]}
    assert set(by_version) == {"1", "2", "3"}
    assert by_version["1"]["gate"] == "passed" and by_version["3"]["gate"] == "rejected"
    assert by_version["3"]["aliases"] == [] and "regresses more than" in by_version["3"]["reasons"]
    champion = [row["version"] for row in state["versions"] if "champion" in row["aliases"]]
    assert champion == (["2"] if by_version["2"]["gate"] == "passed" else ["1"])
    assert state["history"][0]["to"] == "1"
