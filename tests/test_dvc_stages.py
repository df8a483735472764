"""dvc.yaml stages call the same CLI as the pipeline: `dvc repro` trains, evaluates and gates."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import tiny_config_text
from tuneloop import data, workspace
from tuneloop.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_repository_template_matches_what_init_writes():
    assert (ROOT / "dvc.yaml").read_text() == workspace.DVC_STAGES.format(params="params.yaml")
    assert (ROOT / "params.yaml").read_text() == workspace.DEFAULT_CONFIG


@pytest.mark.skipif(shutil.which("tuneloop") is None or shutil.which("dvc") is None, reason="needs the installed CLIs")
def test_dvc_repro_runs_the_steps_through_the_cli(tmp_path, tiny_model, tickets_csv):
    config = workspace.init(tmp_path / "ws", config_text=tiny_config_text(tiny_model))
    root = config.parent
    data.add_dataset(root, tickets_csv, "tickets", load_config(config).data)
    done = subprocess.run(["dvc", "repro"], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    decision = json.loads((root / "outputs" / "decision.json").read_text())
    scores = json.loads((root / "outputs" / "scores.json").read_text())
    assert set(decision) >= {"passed", "reasons"} and scores["candidate"]["rows"] > 0
    assert (root / "outputs" / "trained" / "adapter" / "adapter_model.safetensors").is_file()
    assert (root / "dvc.lock").is_file()
    again = subprocess.run(["dvc", "repro"], cwd=root, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "didn't change, skipping" in again.stdout
