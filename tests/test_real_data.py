"""Real data, real model: LoRA on the packaged MiniLM learns movie-review polarity through the pipeline.

Uses ../shared/data/rt-polarity (Pang & Lee 2005), read in place, never copied into the repo:
2,000 training rows and 1,000 frozen held-out rows, committed to a throwaway workspace with DVC.
"""

from __future__ import annotations

import random

import pytest

from tests.conftest import SHARED_DATA
from tuneloop import registry, synthetic, workspace
from tuneloop.config import load_config

RT = SHARED_DATA / "rt-polarity"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (RT / "rt-polarity.pos").is_file(), reason="../shared/data/rt-polarity is not beside the repo"),
]

CONFIG = """\
data:
  path: data/train.csv
  eval_path: data/eval.csv      # frozen held-out rows
model:
  max_length: 64                # 99% of rt-polarity snippets fit in 64 tokens
train:
  epochs: 2
  batch_size: 16
  learning_rate: 0.001
gate:
  min_accuracy: 0.75
registry:
  model_name: rt-polarity
"""


def polarity_rows() -> list[tuple[str, str]]:
    rows = [(line, label) for label in ("pos", "neg")
            for line in (RT / f"rt-polarity.{label}").read_text(encoding="utf-8").splitlines()]
    random.Random(0).shuffle(rows)
    return rows


def test_lora_on_minilm_reaches_075_on_rt_polarity_through_the_pipeline(tmp_path):
    from tuneloop import data
    from tuneloop.pipelines.launcher import LocalLauncher

    rows = polarity_rows()
    config_path = workspace.init(tmp_path / "ws", config_text=CONFIG)
    root = config_path.parent
    cfg = load_config(config_path)
    data.add_dataset(root, synthetic.write_csv(rows[:2000], tmp_path / "train.csv"), "train", cfg.data)
    rev = data.add_dataset(root, synthetic.write_csv(rows[2000:3000], tmp_path / "eval.csv"), "eval", cfg.data).rev

    result = LocalLauncher(cfg.runtime.pipeline_root).run(cfg, rev)

    assert result.decision["passed"], result.decision["reasons"]
    state = registry.status(cfg.registry)
    (version,) = state["versions"]
    assert version["aliases"] == ["champion"] and version["data_rev"] == rev
    assert version["accuracy"] >= 0.75
    assert version["macro_f1"] == pytest.approx(result.decision["candidate"])  # the gate judged what was registered
