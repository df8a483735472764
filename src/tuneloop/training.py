"""The training loop: fit an adapter on a frozen base, readable top to bottom.

Seeded, with a dev split carved from the training rows (never the held-out rows) for early
stopping, a checkpoint per epoch, the best epoch kept as the adapter, and progress logged every
`train.log_every` steps with loss, throughput and time left.
"""

from __future__ import annotations

import logging
import math
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop import modeling
from tuneloop.tokenization import batches
from tuneloop.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced and measured."""

    adapter_dir: str
    labels: list[str]
    epochs_run: int
    best_epoch: int
    steps: int
    train_loss: float
    dev_loss: float
    dev_accuracy: float
    trainable_params: int
    total_params: int
    peak_memory_mb: float
    wall_seconds: float
    samples_per_second: float
    adapter_bytes: int
    device: str

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a run can be repeated."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(device: str) -> float:
    """Return peak memory: CUDA max allocated on GPU, process max RSS on CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _dev_split(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    n_dev = max(1, int(round(len(shuffled) * fraction)))
    return shuffled.iloc[n_dev:], shuffled.iloc[:n_dev]


def _evaluate_dev(model: Any, tokenizer: Any, texts: list[str], ids: list[int], cfg: Config, device: str) -> tuple[float, float]:
    import torch

    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for batch in batches(tokenizer, texts, ids, cfg.train.eval_batch_size, cfg.model.max_length):
            batch = batch.to(device)
            out = model(**batch)
            loss_sum += out.loss.item() * len(batch["labels"])
            correct += (out.logits.argmax(-1) == batch["labels"]).sum().item()
    model.train()
    return loss_sum / len(texts), correct / len(texts)


def _build(cfg: Config, labels: list[str], device: str) -> tuple[Any, Any, modeling.AdapterMeta]:
    """Load the base with a fresh head, attach the adapter, and describe it for saving."""
    base = modeling.resolve_base(cfg.model.base)
    model = modeling.attach_adapter(
        modeling.load_classifier(base, labels, cfg.quantization, device), cfg.method, cfg.model.task, cfg.quantization,
    )
    base_sha, tok_sha = modeling.fingerprint(base)
    meta = modeling.AdapterMeta(
        labels=labels, base_model=cfg.model.base, base_sha256=base_sha, tokenizer_sha256=tok_sha,
        task=cfg.model.task, max_length=cfg.model.max_length, method=cfg.method.model_dump(),
        quantization=cfg.quantization.model_dump(),
    )
    return model, modeling.load_tokenizer(base), meta


def _optimizer(model: Any, cfg: Config, total_steps: int) -> tuple[Any, Any]:
    """AdamW on the trainable parameters, with linear warmup then linear decay to zero."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay,
    )
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * total_steps), total_steps)


def train(frame: pd.DataFrame, cfg: Config, out_dir: Path) -> TrainResult:
    """Train an adapter on the rows of `frame` (columns text, label); write it to out_dir/adapter.

    Args:
        frame: validated training rows.
        cfg: the config (model, method, quantization, train and runtime sections are read).
        out_dir: folder for checkpoints/ and the final adapter/.

    Raises:
        TrainingError: when the model, method or device cannot be used.
    """
    started = time.perf_counter()
    seed_everything(cfg.train.seed)
    device = modeling.pick_device(cfg.runtime.device)
    labels = sorted(frame["label"].unique())
    label_id = {label: i for i, label in enumerate(labels)}
    fit, dev = _dev_split(frame, cfg.train.dev_fraction, cfg.train.seed)
    model, tokenizer, meta = _build(cfg, labels, device)
    # peft's count, not numel(): bitsandbytes packs two 4-bit weights per stored element.
    trainable, total = model.get_nb_trainable_parameters()
    total_steps = math.ceil(len(fit) / cfg.train.batch_size) * cfg.train.epochs
    optimizer, schedule = _optimizer(model, cfg, total_steps)
    dev_texts, dev_ids = dev["text"].tolist(), [label_id[x] for x in dev["label"]]
    log.info("training %s on %s (%s): %d train / %d dev rows, %d labels, %d of %d params trainable (%.2f%%)",
             cfg.method.name, cfg.model.base, device, len(fit), len(dev), len(labels), trainable, total,
             100 * trainable / total)

    best = {"dev_loss": math.inf, "dev_accuracy": 0.0, "epoch": 0}
    stale, step, seen, loss_ema = 0, 0, 0, None
    loop_started = time.perf_counter()
    model.train()
    for epoch in range(1, cfg.train.epochs + 1):
        order = fit.sample(frac=1.0, random_state=cfg.train.seed + epoch)
        for batch in batches(tokenizer, order["text"].tolist(), [label_id[x] for x in order["label"]],
                             cfg.train.batch_size, cfg.model.max_length):
            loss = model(**batch.to(device)).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step, seen = step + 1, seen + len(batch["labels"])
            loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
            if step % cfg.train.log_every == 0 or step == total_steps:
                rate = seen / (time.perf_counter() - loop_started)
                left = (total_steps - step) * cfg.train.batch_size / max(rate, 1e-9)
                log.info("epoch %d/%d step %d/%d loss %.4f %.1f samples/s ~%.0fs left",
                         epoch, cfg.train.epochs, step, total_steps, loss_ema, rate, left)
        dev_loss, dev_acc = _evaluate_dev(model, tokenizer, dev_texts, dev_ids, cfg, device)
        checkpoint = out_dir / "checkpoints" / f"epoch-{epoch}"
        modeling.save_adapter(model, checkpoint, meta)
        log.info("epoch %d: dev loss %.4f accuracy %.4f (checkpoint %s)", epoch, dev_loss, dev_acc, checkpoint)
        if dev_loss < best["dev_loss"]:
            best, stale = {"dev_loss": dev_loss, "dev_accuracy": dev_acc, "epoch": epoch}, 0
        else:
            stale += 1
            if cfg.train.patience and stale >= cfg.train.patience:
                log.info("early stop: dev loss has not improved for %d epoch(s)", stale)
                break

    adapter_dir = out_dir / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    shutil.copytree(out_dir / "checkpoints" / f"epoch-{best['epoch']}", adapter_dir)
    wall, loop_wall = time.perf_counter() - started, time.perf_counter() - loop_started
    return TrainResult(
        adapter_dir=str(adapter_dir), labels=labels, epochs_run=epoch, best_epoch=best["epoch"], steps=step,
        train_loss=float(loss_ema or 0.0), dev_loss=best["dev_loss"], dev_accuracy=best["dev_accuracy"],
        trainable_params=trainable, total_params=total, peak_memory_mb=peak_memory_mb(device),
        wall_seconds=wall, samples_per_second=seen / loop_wall,
        adapter_bytes=sum(f.stat().st_size for f in adapter_dir.iterdir()), device=device,
    )
