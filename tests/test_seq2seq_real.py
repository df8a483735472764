"""Summarization end to end on real dialogues, through the pipeline: ../shared/data/dialogsum.

No pretrained seq2seq model installs here, so the base is a T5 shape built from config (d_model
64, 2 + 2 layers) with random weights and MiniLM's tokenizer. It trains on DialogSum's 500 dev
dialogues and is judged on 100 test dialogues (none also in dev) against their first reference
summary, as two `tuneloop run`s on one data revision: full fine-tuning first (no champion: it
passes on the gate's degeneracy check alone), then a short LoRA run, which the gate compares with
it on ROUGE-L by a paired bootstrap. A model this small learns the summaries' frame ("#Person1#
... #Person2# ..."), not the dialogues' content: ROUGE-L near 0.08 here, where the untrained one scores 0.001.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import dialogsum_rows, save_tiny_t5
from tuneloop import cycle, data, evaluation, registry, workspace
from tuneloop.config import QuantizationConfig, load_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # two pipeline runs on 2 cores: a hang guard, not a speed bound

CONFIG = """\
data:
  path: data/train.jsonl
  eval_path: data/eval.jsonl
  text_column: dialogue
  label_column: summary
model:
  base: {base}
  task: seq2seq
  max_length: 128              # a dialogue's first 128 tokens (median 184)
generation:
  max_new_tokens: 104          # the longest reference summary is 101 tokens with [CLS] and [SEP]
  no_repeat_ngram_size: 3      # a small model greedily repeats "# person1 #" to the end otherwise
train:
  epochs: {epochs}
  batch_size: 16
  learning_rate: 0.003         # a randomly initialized model, not a pretrained one
  patience: 0
gate:
  min_rows: 50
registry:
  model_name: dialogsum
"""


def write_jsonl(rows: list[tuple[str, str]], path) -> None:
    path.write_text("".join(json.dumps({"dialogue": d, "summary": s}) + "\n" for d, s in rows), encoding="utf-8")


def untrained_rouge_l(base, held_out: list[tuple[str, str]], settings, folder) -> float:
    """ROUGE-L of the same base, untrained, on the same rows (saved and scored as a fully fine-tuned model would be)."""
    import pandas as pd

    from tuneloop import modeling

    model = modeling.load_model(base, "seq2seq", [], QuantizationConfig(), "cpu")  # the same seeded weights training starts from
    base_sha, tokenizer_sha = modeling.fingerprint(base)
    meta = modeling.AdapterMeta(labels=[], base_model=str(base), base_sha256=base_sha, tokenizer_sha256=tokenizer_sha,
                                task="seq2seq", max_length=128, method={"name": "full"}, quantization={"bits": 0})
    modeling.save_adapter(model, folder, meta)
    frame = pd.DataFrame(held_out, columns=["text", "label"])
    return evaluation.evaluate(folder, frame, "cpu", 32, settings).metrics["rougeL"]


def test_dialogue_summaries_train_evaluate_gate_and_register_through_the_pipeline(tmp_path):
    from tuneloop.pipelines.launcher import LocalLauncher

    base = save_tiny_t5(tmp_path / "t5", hidden=64)
    train = dialogsum_rows("dev")
    seen = {" ".join(d.lower().split()) for d, _ in train}  # two test dialogues are also dev dialogues: validation refuses them
    held_out = [row for row in dialogsum_rows("test") if " ".join(row[0].lower().split()) not in seen][:100]
    config_path = workspace.init(tmp_path / "ws", config_text=CONFIG.format(base=base, epochs=6))
    root, cfg = config_path.parent, load_config(config_path)
    for name, rows in (("train", train), ("eval", held_out)):
        write_jsonl(rows, tmp_path / f"{name}.jsonl")
        rev = data.add_dataset(root, tmp_path / f"{name}.jsonl", name, cfg.data, cycle.validation_rules(cfg, False)).rev

    decisions = {}
    for method, epochs in (("full", 6), ("lora", 2)):  # the second run is there to be compared: kept short
        config_path.write_text(CONFIG.format(base=base, epochs=epochs) + f"method:\n  name: {method}\n")
        cfg = load_config(config_path)
        decisions[method] = LocalLauncher(cfg.runtime.pipeline_root).run(cfg, rev).decision

    full, lora = registry.show(cfg.registry, "1"), registry.show(cfg.registry, "2")
    assert (full["record"]["task"], full["record"]["method"], lora["record"]["method"]) == ("seq2seq", "full", "lora")
    assert (full["record"]["labels"], full["record"]["gate"], decisions["full"]["policy"]) == ([], "passed", "first_run")
    assert sorted(k for k in full["metrics"] if k.startswith("rouge")) == [
        "rouge1", "rouge1_ci_high", "rouge1_ci_low", "rouge2", "rouge2_ci_high", "rouge2_ci_low",
        "rougeL", "rougeL_ci_high", "rougeL_ci_low"]
    # the second run scored the champion (version 1) again on the same rows, and gated on ROUGE-L
    assert lora["metrics"]["champion_rougeL"] == pytest.approx(full["metrics"]["rougeL"])
    gate = decisions["lora"]
    assert (gate["policy"], list(gate["stats"]), gate["stats"]["rougeL"]["direction"]) == ("compared", ["rougeL"], "higher")
    assert gate["mcnemar"] is None  # summaries are not right or wrong

    # training taught the model something: it beats the same base untrained, on the same rows
    before = untrained_rouge_l(base, held_out, cfg.generation, tmp_path / "untrained")
    assert full["metrics"]["rougeL"] > before + 0.05, (full["metrics"]["rougeL"], before)
    print({"untrained": round(before, 4), **{m: {k: round(v, 4) for k, v in found["metrics"].items()
                                                 if k.startswith(("rouge", "champion"))}
                                             for m, found in (("full", full), ("lora", lora))}})
