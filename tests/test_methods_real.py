"""LoRA vs full fine-tuning vs prompt tuning on real data, through the pipeline, on the same held-out rows.

The packaged MiniLM (hidden 384, 6 layers) learns the six emotions of ../shared/data/emotion
(CARER, Saravia et al. 2018), read in place: 1,600 rows of its train file, and 500 rows of its
validation file frozen as the held-out set. Each method is one `tuneloop run` on the same data
revision, at its own default learning rate; the registry then holds the three versions with the
efficiency figures each run measured.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest

from tests.conftest import emotion_rows
from tuneloop import registry, synthetic, workspace
from tuneloop.config import load_config

pytestmark = pytest.mark.slow

CONFIG = """\
data:
  path: data/train.csv
  eval_path: data/eval.csv      # the same frozen held-out rows for every method
model:
  max_length: 64                # emotion texts are short: 99% fit in 64 tokens
train:
  epochs: 3
  batch_size: 32
gate:                           # this test compares methods; the gate only records its verdicts
  min_accuracy: 0.0
  min_macro_f1: 0.0
  reject_degenerate: false
registry:
  model_name: emotion
"""
HIDDEN, LAYERS, LABELS = 384, 6, 6
HEAD = HIDDEN * LABELS + LABELS
EXPECTED_TRAINABLE = {
    "lora": LAYERS * 2 * 8 * (HIDDEN + HIDDEN) + HEAD,  # r 8 on query and value of 6 layers, and the head
    "prompt_tuning": 20 * HIDDEN + HEAD,  # 20 virtual tokens
}


def test_lora_full_and_prompt_tuning_on_emotion_through_the_pipeline(tmp_path):
    from tuneloop import data
    from tuneloop.pipelines.launcher import LocalLauncher

    train = emotion_rows("train")
    random.Random(0).shuffle(train)
    held_out = emotion_rows("val")[:500]
    config_path = workspace.init(tmp_path / "ws", config_text=CONFIG)
    root = config_path.parent
    cfg = load_config(config_path)
    data.add_dataset(root, synthetic.write_csv(train[:1600], tmp_path / "train.csv"), "train", cfg.data)
    rev = data.add_dataset(root, synthetic.write_csv(held_out, tmp_path / "eval.csv"), "eval", cfg.data).rev

    reports = {}
    for method in ("lora", "full", "prompt_tuning"):
        config_path.write_text(CONFIG + f"method:\n  name: {method}\n")
        cfg = load_config(config_path)
        result = LocalLauncher(cfg.runtime.pipeline_root).run(cfg, rev)
        reports[method] = result

    versions = {v["version"]: v for v in registry.status(cfg.registry)["versions"]}
    assert sorted(versions) == ["1", "2", "3"]
    shown = {}
    for number, method in zip(("1", "2", "3"), ("lora", "full", "prompt_tuning")):
        done = subprocess.run([shutil.which("tuneloop"), "registry", "show", number, "--json", "--config", str(config_path)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        shown[method] = json.loads(done.stdout)
    print({m: {k: round(v, 4) for k, v in s["metrics"].items() if not k.startswith("f1.")} for m, s in shown.items()})
