"""The task matrix: every method x quantization on the generative tasks, on tiny LLaMA and T5 shapes.

`tests/test_methods.py` runs the table on a BERT classifier; this runs the same stages on a causal
LM (LLaMA: hidden 64, 2 layers, 2 query heads and 1 key-value head of 32, feed-forward 128) and on a
seq2seq model (T5: d_model 64, 2 encoder and 2 decoder layers, 2 heads of 32, feed-forward 128),
both with MiniLM's tokenizer. Each row is built as training builds it, takes two optimizer steps
on one fixed batch, is saved and loaded back. No head trains here: the language-model head is the
base's own, so every trainable parameter belongs to the method. The counts are written out by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import save_tiny_llama, save_tiny_t5
from tests.test_methods import two_steps
from tuneloop import generation, methods, modeling, preflight, tasks
from tuneloop.config import parse_config

H, LAYERS, FF, KV = 64, 2, 128, 32  # hidden, layers (each stack), feed-forward width, LLaMA's key-value width
MLP = (H * 128 + 128) + (128 * 128 + 128) + (128 * H + H)  # P-tuning's encoder: H -> 128 -> 128 -> H, with biases


def lora_pairs(shapes: list[tuple[int, int]], r: int = 8) -> int:
    """LoRA's A (r x in) and B (out x r) over (in, out) layer shapes."""
    return sum(r * (i + o) for i, o in shapes)


# LLaMA's default LoRA targets: q_proj (H -> H) and v_proj (H -> KV) in each layer.
LLAMA_QV = [(H, H), (H, KV)] * LAYERS
# T5's: q and v (H -> H) of the encoder's self-attention, and of the decoder's self- and cross-attention.
T5_QV = [(H, H)] * (2 * LAYERS + 4 * LAYERS)
EXPECTED = {
    "causal_lm": {
        "lora": lora_pairs(LLAMA_QV), "rslora": lora_pairs(LLAMA_QV), "loftq": lora_pairs(LLAMA_QV),
        "dora": lora_pairs(LLAMA_QV) + LAYERS * (H + KV),  # one magnitude per output feature
        "loha": 2 * lora_pairs(LLAMA_QV),
        # LoKr factors 64 = 8 x 8 and 32 = 4 x 8; at r 8 both Kronecker factors are full:
        # q_proj 8x8 + 8x8, v_proj 4x8 + 8x8
        "lokr": LAYERS * ((8 * 8 + 8 * 8) + (4 * 8 + 8 * 8)),
        "adalora": lora_pairs(LLAMA_QV, r=12) + len(LLAMA_QV) * 12,  # init_r 12, plus the singular values E
        # k_proj and v_proj scale their KV outputs; down_proj (feed-forward) scales its FF inputs
        "ia3": LAYERS * (KV + KV + FF),
        "prompt_tuning": 20 * H,
        "prefix_tuning": 20 * LAYERS * 2 * KV,  # a key and a value per virtual token and layer, KV wide (1 kv head)
        "p_tuning": 20 * H + MLP,
    },
    "seq2seq": {
        "lora": lora_pairs(T5_QV), "rslora": lora_pairs(T5_QV), "loftq": lora_pairs(T5_QV),
        "dora": lora_pairs(T5_QV) + len(T5_QV) * H,
        "loha": 2 * lora_pairs(T5_QV),
        "lokr": len(T5_QV) * (8 * 8 + 8 * 8),
        # AdaLoRA's T5 default adapts q, k, v, o of every attention block and both feed-forward layers
        "adalora": (lora_pairs([(H, H)] * 4 * (LAYERS + 2 * LAYERS) + [(H, FF), (FF, H)] * 2 * LAYERS, r=12)
                    + 12 * (4 * (LAYERS + 2 * LAYERS) + 2 * 2 * LAYERS)),
        # k and v scale their H outputs (encoder self-attention; decoder self- and cross-attention);
        # wo (feed-forward) scales its FF inputs
        "ia3": LAYERS * (2 * H + FF) + LAYERS * (4 * H + FF),
        "prompt_tuning": 2 * 20 * H,  # peft gives a seq2seq model virtual tokens for the encoder and the decoder
        "prefix_tuning": 20 * LAYERS * 2 * H,
        "p_tuning": 2 * 20 * H + MLP,
    },
}
MARKERS = {"lora": "lora_", "rslora": "lora_", "loftq": "lora_", "dora": "lora_", "adalora": "lora_", "loha": "hada_",
           "lokr": "lokr_", "ia3": "ia3_", "prompt_tuning": "prompt_encoder", "prefix_tuning": "prompt_encoder",
           "p_tuning": "prompt_encoder"}
QUANTIZED = {4: "Linear4bit", 8: "Linear8bitLt"}
PEFT_CLASS = {"causal_lm": "PeftModelForCausalLM", "seq2seq": "PeftModelForSeq2SeqLM"}
BASE_CLASS = {"causal_lm": "LlamaForCausalLM", "seq2seq": "T5ForConditionalGeneration"}
REFUSED_HERE = {("dora", 8)}  # bitsandbytes' CPU int8 layer (see test_methods.py)
CASES = [(task, name, bits) for task in ("causal_lm", "seq2seq") for name, method in methods.REGISTRY.items()
         for bits in (0, 8, 4) if bits in method.bits and (name, bits) not in REFUSED_HERE]
ROWS = [("summarize: the printer on floor two is jammed again", "printer jammed"),
        ("summarize: my invoice shows the wrong amount for may", "wrong invoice amount"),
        ("summarize: the app logs me out every few minutes", "app logs out"),
        ("summarize: please cancel my subscription today", "cancel subscription")]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    return {"causal_lm": save_tiny_llama(tmp_path_factory.mktemp("llama-64"), hidden=H),
            "seq2seq": save_tiny_t5(tmp_path_factory.mktemp("t5-64"), hidden=H)}


def config_for(base: Path, task: str, name: str, bits: int, **method: Any):
    return parse_config({"model": {"base": str(base), "task": task, "max_length": 32},
                         "generation": {"max_new_tokens": 8}, "method": {"name": name, **method},
                         "quantization": {"bits": bits}, "runtime": {"device": "cpu"}})


@dataclass
class Built:
    task: str
    name: str
    bits: int
    base: Path
    model: Any
    counts: tuple[int, int]
    trainable: list[str]
    losses: tuple[float, float]
    batch: dict
    logits: torch.Tensor
    folder: Path
    size: int


@pytest.fixture(scope="module", params=CASES, ids=[f"{task}-{name}-{bits}bit" for task, name, bits in CASES])
def built(request, bases, tmp_path_factory) -> Built:
    task, name, bits = request.param
    base = bases[task]
    cfg = config_for(base, task, name, bits)
    section = preflight.resolved_method(cfg, preflight.check_model(cfg, "cpu"))
    torch.manual_seed(0)
    model = modeling.attach_adapter(modeling.load_model(base, task, [], cfg.quantization, "cpu"), section, task,
                                    cfg.quantization, {"total_steps": 10, "base_dir": str(base)})
    counts = modeling.parameter_counts(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    batch = tasks.collate(tasks.get(task), modeling.load_tokenizer(base), [s for s, _ in ROWS], [t for _, t in ROWS], 32, 8)
    losses = two_steps(model, batch)
    model.eval()
    with torch.no_grad():
        logits = generation.teacher_forced_logits(model, task, batch)
    base_sha, tokenizer_sha = modeling.fingerprint(base)
    meta = modeling.AdapterMeta(labels=[], base_model=str(base), base_sha256=base_sha, tokenizer_sha256=tokenizer_sha,
                                task=task, max_length=32, method=section.model_dump(mode="json"),
                                quantization=cfg.quantization.model_dump())
    folder = tmp_path_factory.mktemp(f"{task}-{name}-{bits}")
    size = modeling.save_adapter(model, folder, meta)
    return Built(task, name, bits, base, model, counts, trainable, losses, batch, logits, folder, size)


def test_the_table_covers_every_method_on_both_tasks():
    for task in ("causal_lm", "seq2seq"):
        covered = {name for t, name, _ in CASES if t == task} | {name for name, _ in REFUSED_HERE}
        assert sorted(covered) == sorted(methods.NAMES)


def test_builds_on_the_configured_storage(built):
    kinds = {type(module).__name__ for module in built.model.modules()}
    if built.bits:
        assert QUANTIZED[built.bits] in kinds
    else:
        assert not kinds & set(QUANTIZED.values())
    expected = BASE_CLASS[built.task] if built.name == "full" else PEFT_CLASS[built.task]
    assert type(built.model).__name__ == expected
    head = next(module for name, module in built.model.named_modules() if name.endswith("lm_head"))
    assert (type(head).__name__, head.weight.dtype) == ("Linear", torch.float32)  # the output head is never quantized


def test_trainable_parameters_match_the_hand_count(built):
    trainable, total = built.counts
    if built.name == "full":
        assert trainable == total == sum(p.numel() for p in built.model.parameters())
    else:
        assert trainable == EXPECTED[built.task][built.name]


def test_only_the_method_s_parameters_train(built):
    if built.name == "full":
        assert len(built.trainable) == len(list(built.model.parameters()))
        return
    marker = MARKERS[built.name]
    assert built.trainable and [n for n in built.trainable if marker not in n] == []


def test_two_steps_on_one_batch_lower_the_loss(built):
    before, after = built.losses
    assert after < before, built.losses


def test_save_then_load_gives_identical_outputs(built):
    reloaded, _, meta = modeling.load_adapter(built.folder, "cpu")
    with torch.no_grad():
        logits = generation.teacher_forced_logits(reloaded, built.task, built.batch)
    assert (meta.task, meta.method["name"]) == (built.task, built.name)
    assert torch.allclose(logits, built.logits, atol=1e-5), (logits - built.logits).abs().max()


def test_the_saved_artifact_is_far_smaller_than_the_base(built):
    base_bytes = os.path.getsize(built.base / "model.safetensors")
    if built.name == "full":
        assert base_bytes * 0.95 < built.size < base_bytes * 1.05
    else:
        assert built.size < base_bytes / 20
