"""The method matrix: every registry method x every quantization it can train on, on a tiny BERT.

One parametrized table drives it. Each row is built once (module-scoped fixture) as training builds
it, takes two optimizer steps on one fixed batch, is saved and loaded back; the tests check the
stages. The base is BERT-shaped, hidden 64 (bitsandbytes' CPU 4-bit kernel packs 64 input
features per block), 2 layers, feed-forward 128, 3 labels, so every trainable-parameter count
below is written out by hand.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tuneloop import methods, modeling, preflight, synthetic, tokenization
from tuneloop.config import parse_config
from tuneloop.errors import ConfigError, TrainingError
from tests.conftest import save_tiny_bert

LABELS = sorted(synthetic.LABELS)
H, LAYERS, FF, K = 64, 2, 128, len(LABELS)  # hidden, layers, feed-forward width, labels
HEAD = H * K + K  # the classifier trains in full with every adapter method (peft's modules_to_save)
QUERY_VALUE = 2 * LAYERS  # the default BERT targets: query and value in each layer, each H x H


# Trainable parameters of each method on this shape, by hand (defaults: r 8, 20 virtual tokens).
EXPECTED = {
    "lora": QUERY_VALUE * 8 * (H + H) + HEAD,  # A is r x in, B is out x r
    "rslora": QUERY_VALUE * 8 * (H + H) + HEAD,  # only the scale differs
    "loftq": QUERY_VALUE * 8 * (H + H) + HEAD,  # only the initial values differ
    "dora": QUERY_VALUE * (8 * (H + H) + H) + HEAD,  # plus one magnitude per output feature
    "loha": QUERY_VALUE * 2 * 8 * (H + H) + HEAD,  # two A/B pairs per layer
    # LoKr factors 64 = 8 x 8 on both sides; at r 8 (>= 8 / 2) both Kronecker factors are full 8 x 8
    "lokr": QUERY_VALUE * (8 * 8 + 8 * 8) + HEAD,
    "adalora": QUERY_VALUE * (12 * H + H * 12 + 12) + HEAD,  # init_r 12: A, B and the singular values E
    # key and value scale their H outputs; both `output.dense` layers (attention's, in H, and the
    # feed-forward's, in FF) are feed-forward targets and scale their inputs
    "ia3": LAYERS * (H + H + H + FF) + HEAD,
    "prompt_tuning": 20 * H + HEAD,  # one H-vector per virtual token
    # 20 virtual-token embeddings, then an MLP H -> 128 -> 128 -> H with biases
    "p_tuning": 20 * H + (H * 128 + 128) + (128 * 128 + 128) + (128 * H + H) + HEAD,
}
MARKERS = {  # every trainable parameter outside the head has this in its name
    "lora": "lora_", "rslora": "lora_", "loftq": "lora_", "dora": "lora_", "adalora": "lora_", "loha": "hada_",
    "lokr": "lokr_", "ia3": "ia3_", "prompt_tuning": "prompt_encoder", "p_tuning": "prompt_encoder",
}
QUANTIZED = {4: "Linear4bit", 8: "Linear8bitLt"}
# Combinations the registry allows but this machine refuses before training (tests below say why).
REFUSED_HERE = {("dora", 8), ("prefix_tuning", 0), ("prefix_tuning", 4), ("prefix_tuning", 8)}
CASES = [(name, bits) for name, method in methods.REGISTRY.items() for bits in (0, 8, 4)
         if bits in method.bits and (name, bits) not in REFUSED_HERE]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-64"), hidden=H)


def config_for(base: Path, name: str, bits: int, **method: Any):
    return parse_config({"model": {"base": str(base), "max_length": 32}, "method": {"name": name, **method},
                         "quantization": {"bits": bits}, "runtime": {"device": "cpu"}})


def build(base: Path, name: str, bits: int, **method: Any) -> tuple[Any, Any]:
    """The model training would build (after preflight), and the resolved method section."""
    cfg = config_for(base, name, bits, **method)
    section = preflight.resolved_method(cfg, preflight.check_model(cfg, "cpu"))
    model = modeling.load_model(base, "sequence_classification", LABELS, cfg.quantization, "cpu")
    return modeling.attach_adapter(model, section, "sequence_classification", cfg.quantization,
                                   {"total_steps": 10, "base_dir": str(base)}), section


def fixed_batch(base: Path) -> dict:
    rows = synthetic.generate_tickets(1, 16, seed=0)
    texts, ids = [text for text, _ in rows], [LABELS.index(label) for _, label in rows]
    return next(tokenization.batches(modeling.load_tokenizer(base), texts, ids, 16, 32))


def loss_with_fixed_dropout(model, batch) -> torch.Tensor:
    # Reseeding before every forward gives the same dropout masks, so losses compare like for like.
    torch.manual_seed(0)
    return model(**batch).loss


def two_steps(model, batch) -> tuple[float, float]:
    """Two AdamW steps on one batch; the loss before them and after."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    before = None
    for _ in range(2):
        loss = loss_with_fixed_dropout(model, batch)
        before = loss.item() if before is None else before
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        return before, loss_with_fixed_dropout(model, batch).item()


@dataclass
class Built:
    name: str
    bits: int
    base: Path
    model: Any
    counts: tuple[int, int]
    trainable: list[str]
    losses: tuple[float, float]
    inputs: dict
    logits: torch.Tensor
    folder: Path
    size: int


@pytest.fixture(scope="module", params=CASES, ids=[f"{name}-{bits}bit" for name, bits in CASES])
def built(request, tiny_base, tmp_path_factory) -> Built:
    name, bits = request.param
    torch.manual_seed(0)
    model, section = build(tiny_base, name, bits)
    counts = modeling.parameter_counts(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    batch = fixed_batch(tiny_base)
    losses = two_steps(model, batch)
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits
    base_sha, tokenizer_sha = modeling.fingerprint(tiny_base)
    meta = modeling.AdapterMeta(labels=LABELS, base_model=str(tiny_base), base_sha256=base_sha,
                                tokenizer_sha256=tokenizer_sha, task="sequence_classification", max_length=32,
                                method=section.model_dump(mode="json"), quantization={"bits": bits, "quant_type": "nf4",
                                "double_quant": True, "compute_dtype": "float32"})
    folder = tmp_path_factory.mktemp(f"{name}-{bits}")
    size = modeling.save_adapter(model, folder, meta)
    return Built(name, bits, tiny_base, model, counts, trainable, losses, inputs, logits, folder, size)


def test_the_table_covers_every_method():
    assert sorted({name for name, _ in CASES} | {name for name, _ in REFUSED_HERE}) == sorted(methods.NAMES)


def test_builds_on_the_configured_storage(built):
    kinds = {type(module).__name__ for module in built.model.modules()}
    if built.bits:
        assert QUANTIZED[built.bits] in kinds
    else:
        assert not kinds & set(QUANTIZED.values())
    if built.name == "full":
        assert type(built.model).__name__ == "BertForSequenceClassification"
    else:
        assert type(built.model).__name__ == "PeftModelForSequenceClassification"
        head = built.model.get_base_model().classifier.modules_to_save["default"]
        assert (head.weight.dtype, head.out_features) == (torch.float32, K)  # the trained head is never quantized


def test_trainable_parameters_match_the_hand_count(built):
    trainable, total = built.counts
    if built.name == "full":
        assert trainable == total == sum(p.numel() for p in built.model.parameters())
    else:
        assert trainable == EXPECTED[built.name]


def test_only_the_intended_parameters_train(built):
    if built.name == "full":
        assert len(built.trainable) == len(list(built.model.parameters()))
        return
    marker = MARKERS[built.name]
    assert [n for n in built.trainable if marker not in n and "modules_to_save" not in n] == []
    assert any(marker in n for n in built.trainable) and any("modules_to_save" in n for n in built.trainable)


def test_two_steps_on_one_batch_lower_the_loss(built):
    before, after = built.losses
    assert after < before, built.losses


def test_save_then_load_gives_identical_outputs(built):
    reloaded, _, meta = modeling.load_adapter(built.folder, "cpu")
    with torch.no_grad():
        logits = reloaded(**built.inputs).logits
    assert (meta.labels, meta.method["name"]) == (LABELS, built.name)
    assert torch.allclose(logits, built.logits, atol=1e-5), (logits - built.logits).abs().max()


def test_the_saved_artifact_is_far_smaller_than_the_base(built):
    base_bytes = os.path.getsize(built.base / "model.safetensors")
    assert (built.folder / methods.get(built.name).weights_file).is_file()
    if built.name == "full":  # the reference: the whole model, in full precision
        assert base_bytes * 0.95 < built.size < base_bytes * 1.05
    else:  # the whole folder counts: head, metadata and peft's README included
        assert built.size < base_bytes / 5


# --- resolution of base-dependent defaults ----------------------------------------------------


def test_defaults_resolve_per_architecture_and_size():
    lora = methods.LoraMethod()
    assert methods.resolve(lora, "bert", 22_000_000, "b").model_dump() == {
        "name": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]}
    assert methods.resolve(lora, "llama", 7 * 10**9, "b").model_dump() == {
        "name": "lora", "r": 16, "alpha": 32, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    assert methods.resolve(lora, "t5", 60_000_000, "b").target_modules == ["q", "v"]
    ia3 = methods.resolve(methods.IA3Method(), "llama", 10**8, "b")
    assert (ia3.target_modules, ia3.feedforward_modules) == (["k_proj", "v_proj", "down_proj"], ["down_proj"])
    set_by_hand = methods.resolve(methods.LoraMethod(r=4, target_modules=["key"]), "bert", 10**12, "b")
    assert (set_by_hand.r, set_by_hand.alpha, set_by_hand.target_modules) == (4, 8, ["key"])


def test_feedforward_modules_must_be_among_the_default_targets():
    with pytest.raises(ConfigError) as caught:
        methods.resolve(methods.IA3Method(feedforward_modules=["intermediate.dense"]), "bert", 10**6, "b")
    assert str(caught.value) == ("method.feedforward_modules ['intermediate.dense'] are not among the target modules "
                                 "['key', 'value', 'output.dense'] (model.base 'b''s default); add them to "
                                 "method.target_modules or remove them")


def test_an_architecture_without_defaults_needs_targets():
    with pytest.raises(TrainingError, match=r"^method.target_modules is unset and peft has no default for model.base "
                                            r"'b' \(a 'weird' model\); set method.target_modules to all-linear"):
        methods.resolve(methods.LoraMethod(), "weird", 10**6, "b")


def test_all_linear_adapts_every_linear_layer_but_the_head(tiny_base):
    model, section = build(tiny_base, "lora", 0, target_modules="all-linear")
    assert section.target_modules == ["all-linear"]
    # query/key/value, attention's output.dense, the feed-forward's intermediate and output, and the pooler
    layers = sorted({n.split(".lora_A")[0].split("model.")[-1] for n, _ in model.named_parameters() if "lora_A" in n})
    per_layer = ["attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value",
                 "intermediate.dense", "output.dense"]
    assert layers == sorted([f"bert.encoder.layer.{i}.{leaf}" for i in range(LAYERS) for leaf in per_layer]
                            + ["bert.pooler.dense"])


# --- LoftQ and AdaLoRA do what they are for ----------------------------------------------------


def test_loftq_starts_closer_to_the_full_precision_model_than_plain_qlora(tiny_base):
    inputs = {k: v for k, v in fixed_batch(tiny_base).items() if k != "labels"}

    def logits(model):
        model.eval()
        with torch.no_grad():
            return model(**inputs).logits

    torch.manual_seed(0)
    every = {"dropout": 0.0, "target_modules": "all-linear"}  # so every 4-bit layer has a LoRA pair to start from
    full = logits(build(tiny_base, "lora", 0, **every)[0])
    torch.manual_seed(0)
    qlora = logits(build(tiny_base, "lora", 4, **every)[0])
    torch.manual_seed(0)
    loftq = logits(build(tiny_base, "loftq", 4, **every)[0])
    # Same seed, same fresh head: the only difference is how far the adapted 4-bit base is from the original.
    assert (loftq - full).abs().max() < 0.5 * (qlora - full).abs().max()


def test_adalora_prunes_to_its_target_budget_over_a_real_run(tiny_base, tmp_path):
    import pandas as pd

    from tuneloop import training

    frame = pd.DataFrame(synthetic.generate_tickets(1, 400, seed=0), columns=["text", "label"])
    cfg = parse_config({"model": {"base": str(tiny_base), "max_length": 32},
                        "method": {"name": "adalora", "init_r": 6, "target_r": 2, "interval": 2},
                        "train": {"epochs": 2, "batch_size": 16, "patience": 0}, "runtime": {"device": "cpu"}})
    result = training.train(frame, cfg, tmp_path)
    saved = json.loads((Path(result.adapter_dir) / "adapter_config.json").read_text())
    ranks = saved["rank_pattern"]
    assert sorted(ranks) == sorted(f"bert.encoder.layer.{i}.attention.self.{m}.lora_E"
                                   for i in range(LAYERS) for m in ("query", "value"))
    # the budget: target_r per layer on average, out of init_r
    assert sum(sum(mask) for mask in ranks.values()) == 2 * QUERY_VALUE
    assert all(len(mask) == 6 for mask in ranks.values())


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, bits, message", [
    ("full", 4, "method.name full cannot train on quantization.bits 4: full fine-tuning updates every base weight, "
                "and quantized weights take no gradients; set quantization.bits 0, or use a method that can (adalora, "
                "dora, ia3, loftq, lora, p_tuning, prefix_tuning, prompt_tuning, rslora)"),
    ("lokr", 4, "method.name lokr cannot train on quantization.bits 4: peft's LoHa/LoKr layers build their update "
                "from the base weight's shape, which 4-bit storage packs; set quantization.bits 0 or 8, or use a "
                "method that can (adalora, dora, ia3, loftq, lora, p_tuning, prefix_tuning, prompt_tuning, rslora)"),
    ("loftq", 0, "method.name loftq cannot train on quantization.bits 0: LoftQ starts LoRA from the 4-bit base's "
                 "quantization error, so it needs quantization.bits 4; set quantization.bits 4, or use a method that "
                 "can (adalora, dora, full, ia3, loha, lokr, lora, p_tuning, prefix_tuning, prompt_tuning, rslora)"),
])
def test_a_method_on_storage_it_cannot_train_is_refused_by_the_config(method, bits, message):
    with pytest.raises(ConfigError) as caught:
        parse_config({"method": {"name": method}, "quantization": {"bits": bits}})
    assert str(caught.value) == message


@pytest.mark.parametrize("method, message", [
    ({"name": "lora", "r": 0}, "method.r = 0: input should be greater than or equal to 1; fix the value"),
    ({"name": "prompt_tuning", "num_virtual_tokens": -5},
     "method.num_virtual_tokens = -5: input should be greater than or equal to 1; fix the value"),
    ({"name": "adalora", "init_r": 4, "target_r": 8},
     "method.target_r 8 is above method.init_r 4; AdaLoRA only prunes ranks, so set target_r at most init_r"),
    ({"name": "prompt_tuning", "init": "text"}, "method.init is text exactly when method.init_text is set"),
    ({"name": "lora", "target_modules": []}, "method.target_modules = []: value should have at least 1 item after validation, not 0"),
])
def test_bad_method_values_are_refused_naming_the_field(method, message):
    with pytest.raises(ConfigError) as caught:
        parse_config({"method": method})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_prefix_tuning_on_a_classifier_that_takes_no_cache_is_refused_before_training(tiny_base):
    cfg = config_for(tiny_base, "prefix_tuning", 0)
    with pytest.raises(TrainingError) as caught:
        preflight.check_model(cfg, "cpu")
    assert str(caught.value) == (
        "method.name prefix_tuning needs a model whose forward takes past_key_values, and the sequence_classification "
        f"model of model.base {str(tiny_base)!r} (a 'bert') does not (no sequence-classification model of "
        "transformers 5 does); use p_tuning or prompt_tuning, or prefix tuning on a seq2seq or causal_lm task")


def test_dora_on_an_8bit_base_is_refused_on_the_cpu(tiny_base):
    with pytest.raises(TrainingError, match=r"^method.name dora on quantization.bits 8 needs CUDA \(bitsandbytes' CPU "
                                            r"int8 layer loses its scales once DoRA reads the weight\); use "
                                            r"quantization.bits 0 or 4 here, or runtime.device cuda$"):
        preflight.check_model(config_for(tiny_base, "dora", 8), "cpu")


def test_virtual_tokens_must_fit_the_positions(tiny_base):
    cfg = parse_config({"model": {"base": str(tiny_base), "max_length": 120},
                        "method": {"name": "prompt_tuning", "num_virtual_tokens": 9}})
    with pytest.raises(ConfigError, match=r"^model.max_length 120 \+ method.num_virtual_tokens 9 exceed the 128 "
                                          r"positions of model.base .*; lower one of them to fit$"):
        preflight.check_model(cfg, "cpu")


def test_an_unknown_target_module_names_the_modules_that_exist(tiny_base):
    with pytest.raises(TrainingError) as caught:
        preflight.check_model(config_for(tiny_base, "loha", 0, target_modules=["query", "valu"]), "cpu")
    assert str(caught.value) == (f"method.target_modules: 'valu' matches no layer of model.base {str(tiny_base)!r}; use "
                                 "some of its adaptable layers: dense, key, query, value")


def test_fp16_needs_cuda(tiny_base):
    cfg = parse_config({"model": {"base": str(tiny_base)}, "train": {"precision": "fp16"}})
    with pytest.raises(TrainingError, match=r"^train.precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU$"):
        preflight.check_model(cfg, "cpu")


def test_config_validate_checks_the_method_against_the_base(tiny_base, tmp_path):
    import shutil
    import subprocess

    def validate(method: str) -> subprocess.CompletedProcess:
        path = tmp_path / "tuneloop.yaml"
        path.write_text(f"model:\n  base: {tiny_base}\n  max_length: 32\nmethod:\n{method}")
        return subprocess.run([shutil.which("tuneloop"), "config", "validate", str(path)], capture_output=True,
                              text=True, timeout=300)

    good = validate("  name: dora\n")
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip().endswith('valid; method {"r": 8, "alpha": 16, "dropout": 0.1, '
                                        '"target_modules": ["query", "value"], "name": "dora"}')
    bad = validate("  name: prefix_tuning\n")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "error: TrainingError: method.name prefix_tuning needs a model whose forward takes past_key_values, and the "
        f"sequence_classification model of model.base {str(tiny_base)!r} (a 'bert') does not (no "
        "sequence-classification model of transformers 5 does); use p_tuning or prompt_tuning, or prefix tuning on a "
        "seq2seq or causal_lm task"]
