"""The ready-made `examples/qlora-prompt-tuning` sweep on real data, as a user runs it.

examples/workspace.py builds the workspace from ../shared/data/emotion (2,000 training
rows, 500 frozen held-out validation rows); `tuneloop sweep` then trains its seven cells on the
packaged MiniLM (full fine-tuning as the reference, QLoRA 4- and 8-bit, prompt tuning with 10, 20
and 50 tokens, QLoRA + prompt tuning) through the local pipeline. The test checks what the
example's README reports: every cell ran, the trainable parameters by hand, and every pre-flight
estimate within 30% of what the cell measured.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.bad_input import TUNELOOP
from tests.conftest import shared_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # ~20 min on 2 cores: a hang guard

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, LAYERS, LABELS, TOTAL = 384, 6, 6, 22_713_216  # MiniLM without a head
HEAD = HIDDEN * LABELS + LABELS
LORA = LAYERS * 2 * 8 * (HIDDEN + HIDDEN) + HEAD  # r 8 on query and value


def test_the_qlora_prompt_tuning_sweep_on_emotion(tmp_path):
    import subprocess

    spec = importlib.util.spec_from_file_location("workspace", ROOT / "examples" / "workspace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep_file = module.emotion_workspace(tmp_path / "ws", shared_file("emotion", "train.txt").parent,
                                          sweep=ROOT / "examples" / "qlora-prompt-tuning" / "sweep.yaml")
    done = subprocess.run([TUNELOOP, "sweep", str(sweep_file)], capture_output=True, text=True, timeout=2300)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = Path(done.stdout.splitlines()[-1].split(" ")[1]).parent
    rows = {row["name"]: row for row in json.loads((folder / "sweep.json").read_text())["rows"]}
    assert list(rows) == ["full (reference)", "qlora-4bit", "qlora-8bit", "prompt-10", "prompt-20", "prompt-50",
                          "qlora-prompt-20"]
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert {name: row["trainable_params"] for name, row in rows.items()} == {
        "full (reference)": TOTAL + HEAD, "qlora-4bit": LORA, "qlora-8bit": LORA, "prompt-10": 10 * HIDDEN + HEAD,
        "prompt-20": 20 * HIDDEN + HEAD, "prompt-50": 50 * HIDDEN + HEAD, "qlora-prompt-20": 20 * HIDDEN + HEAD}
    errors = {name: (round(row["estimate"]["memory_error"], 3), round(row["estimate"]["time_error"], 3))
              for name, row in rows.items()}
    assert all(abs(memory) <= 0.30 and abs(seconds) <= 0.30 for memory, seconds in errors.values()), errors
    for name in ("quality_vs_memory.png", "quality_vs_params.png", "report.html", "report.md"):
        assert (folder / name).is_file()
