"""`train` end to end on tiny random models: what it writes and reports, and its loop's options (the
method matrix is tests/test_methods.py, two processes tests/test_distributed.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tuneloop import modeling, synthetic, training
from tuneloop.config import Config, parse_config
from tuneloop.errors import TrainingError
from tests.conftest import save_tiny_bert, tiny_config_text

LABELS = sorted(synthetic.LABELS)


@pytest.fixture(scope="module")
def tiny_model_64(tmp_path_factory) -> Path:
    """Like conftest's tiny_model, but hidden 64: bitsandbytes' 4-bit CPU inference kernel packs
    weights in blocks of 64 input features, so 4-bit eval on hidden 32 fails inside bitsandbytes."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-64"), hidden=64)


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
    plain = training.train(tickets(), config(tiny_model_64), tmp_path / "plain")
    four_bit = training.train(tickets(), config(tiny_model_64, quantization={"bits": 4}), tmp_path / "4bit")
    assert (four_bit.total_params, four_bit.trainable_params) == (plain.total_params, plain.trainable_params)


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
    with pytest.raises(TrainingError, match=r"^method.target_modules: 'nope' matches no layer of model.base .*; "
                                            r"use some of its adaptable layers: dense, key, position_embeddings, query, "
                                            r"token_type_embeddings, value, word_embeddings$"):
        training.train(tickets(), cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_training_error(tiny_model, tmp_path):
    cfg = config(tiny_model, runtime={"device": "cuda"})
    with pytest.raises(TrainingError, match="runtime.device is cuda but no CUDA device is visible"):
        training.train(tickets(), cfg, tmp_path)


# --- the loop's options ---------------------------------------------------------------------------


def padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch) for batch in batches)


def test_length_grouping_batches_similar_lengths_and_keeps_every_row_once():
    lengths = list(range(1, 65)) + [7, 3]  # 66 rows: 8 full batches of 8 and a short one of 2
    grouped = training.Batches(lengths, 8, seed=0, group=True)
    first, second = list(grouped), list(grouped)
    for batches in (first, second):
        assert sorted(i for batch in batches for i in batch) == list(range(66))
        assert [len(batch) for batch in batches] == [8] * 8 + [2]  # the short batch last, every pass
    assert first != second  # each pass reshuffles
    # One bucket (66 rows < 50 batches), so the rows are sorted by length and cut into 8s, whatever
    # the seed: seven batches of 8 consecutive lengths (64..57 ... 16..9) pad 0+1+...+7 = 28 each,
    # then [8, 7, 7, 6, 5, 4, 3, 3] pads 21 and [2, 1] pads 1: 7 x 28 + 21 + 1 = 218.
    assert padding(first, lengths) == 218
    assert list(training.Batches(lengths, 8, seed=0, group=True)) == first  # same seed, same batches
    assert padding(list(training.Batches(lengths, 8, seed=0, group=False)), lengths) == 1714  # seed 0, unsorted


def test_gradient_accumulation_takes_one_step_per_group_of_batches(tiny_model, tmp_path):
    result = training.train(tickets(), config(tiny_model, train={"gradient_accumulation": 2}), tmp_path)
    assert (result.steps, len(result.loss_curve)) == (3, 3)  # 5 batches of 16: steps after 2, 4 and the last


def test_bf16_autocast_trains_on_the_cpu(tiny_model, trained, tmp_path):
    plain, _ = trained
    result = training.train(tickets(), config(tiny_model, train={"precision": "bf16"}), tmp_path)
    assert (result.precision, result.steps) == ("bf16", plain.steps)
    gaps = [abs(a - b) for a, b in zip(result.loss_curve, plain.loss_curve)]
    assert result.loss_curve != plain.loss_curve and max(gaps) < 0.05  # bf16 rounding, not another run


def test_train_reports_its_efficiency(tiny_model, tmp_path):
    result = training.train(tickets(), config(tiny_model, train={"price_per_hour": 3.6}), tmp_path)
    assert result.cost == pytest.approx(result.wall_seconds / 1000)  # 3.6 per hour = 0.001 per second
    assert (result.method, result.processes, len(result.loss_curve), len(result.weights_sha256)) == ("lora", 1, 5, 1)
    # tokens per second over samples per second: the mean unpadded tokens of the 72 training rows
    per_row = result.tokens_per_second / result.samples_per_second
    assert 5 < per_row < 32  # short synthetic tickets, at most max_length 32 tokens each


def test_a_reused_folder_keeps_nothing_of_an_earlier_run_but_a_refused_config_loses_it(tiny_model, tmp_path):
    training.train(tickets(), config(tiny_model, method={"name": "full"}), tmp_path)
    assert (tmp_path / "adapter" / "model.safetensors").is_file()
    bad = config(tiny_model, method={"name": "lora", "target_modules": ["nope"]})
    with pytest.raises(TrainingError):
        training.train(tickets(), bad, tmp_path)
    assert (tmp_path / "adapter" / "model.safetensors").is_file()  # refused before anything was touched
    training.train(tickets(), config(tiny_model), tmp_path)
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "tuneloop_adapter.json"]
