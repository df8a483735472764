"""One training loop, any scale: the same `tuneloop train` on two CPU processes (torchrun, gloo) as on one.

Each global batch of train.batch_size rows is split between the processes and DDP averages their
gradients, so two processes must take the same optimizer steps as one: the same loss at every step
(to float rounding) and the same weights on both ranks. Dropout is off in the base and the adapter,
because each rank would otherwise draw its own masks for its half of the batch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import save_tiny_bert, tiny_config_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"), hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)


def test_two_processes_train_the_same_weights_as_one(no_dropout_model, tickets_csv, tmp_path):
    from tuneloop import workspace as ws

    text = tiny_config_text(no_dropout_model) + "method:\n  name: lora\n  dropout: 0.0\nruntime:\n  device: cpu\n"
    # 242 training rows, 18 of them dev (dev_fraction 0.075): 224 = 14 full batches of 16. A short
    # last batch would be topped up with other rows on two processes, so that one step would differ.
    train = "  epochs: 2\n  patience: 0\n  dev_fraction: 0.075\n"
    config = ws.init(tmp_path / "ws", config_text=text.replace("  epochs: 1\n", train))

    def run(*args: str, launcher: tuple[str, ...] = ()) -> None:
        command = [*(launcher or (shutil.which("tuneloop"),)), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    run("data", "add", str(tickets_csv), "--name", "tickets", "--config", str(config))
    run("data", "validate", "--out", str(tmp_path / "snapshot"), "--config", str(config))
    common = ("--snapshot", str(tmp_path / "snapshot"), "--config", str(config))
    run("train", "--out", str(tmp_path / "one"), *common)
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tuneloop.cli")
    run("train", "--out", str(tmp_path / "two"), *common, launcher=torchrun)

    one, two = (json.loads((tmp_path / name / "train.json").read_text()) for name in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["steps"] == two["steps"] == 28  # 14 a epoch
    assert len(two["weights_sha256"]) == 2 and two["weights_sha256"][0] == two["weights_sha256"][1]
    assert torch.allclose(torch.tensor(two["loss_curve"]), torch.tensor(one["loss_curve"]), atol=1e-4), \
        (one["loss_curve"], two["loss_curve"])
    single, double = (load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors")) for name in ("one", "two"))
    assert sorted(single) == sorted(double)
    for key in single:
        assert torch.allclose(single[key], double[key], atol=1e-5), key
