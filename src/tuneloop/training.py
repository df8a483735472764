"""The training loop: fit a method on a base model, readable top to bottom, from a laptop CPU to N GPUs.

The same loop runs in one process or in N (`torchrun --nproc_per_node N -m tuneloop train ...` or
`accelerate launch`): `accelerate` wraps the model in DDP, splits each global batch of
`train.batch_size` rows among the processes, and applies mixed precision. Seeded, with a dev split
carved from the training rows (never the held-out rows) for early stopping, a checkpoint per
epoch, the best epoch kept, gradient clipping and accumulation, length-grouped batches, and
progress logged every `train.log_every` optimizer steps with loss, throughput and time left.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from tuneloop import diagnostics, methods, modeling, plots, preflight, tasks
from tuneloop.config import Config
from tuneloop.errors import ConfigError, DataError, TrainingError

log = logging.getLogger(__name__)

# A training folder: the kept epoch's weights, one checkpoint per epoch, and the run's report.
ADAPTER_DIR, CHECKPOINTS_DIR, REPORT_FILE = "adapter", "checkpoints", "train.json"
PLOTS = {"gap": "train_dev_gap.png", "spectrum": "rank_spectrum.png"}
MERGED_DIR = "merged-base"  # merge_then_adapt: the base with the parent merged in, while training runs  # the detectors' plots, beside the report
BUCKET_BATCHES = 50  # length grouping sorts within 50 batches: padding drops, batches stay varied
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced and measured.

    Throughputs count every process together, over the time spent in optimizer steps (not the
    dev evaluation and checkpoint after each epoch); wall_seconds is the whole run, model load included.
    `dev_accuracy` is the share of dev rows labelled right for a classifier, and of target tokens
    predicted right (teacher-forced) for a generative task, whose `labels` is empty.
    """

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
    method: str = ""
    tokens_per_second: float = 0.0
    cost: float = 0.0
    processes: int = 1
    precision: str = "fp32"
    loss_curve: list[float] = field(default_factory=list)  # each optimizer step's loss, averaged over processes
    weights_sha256: list[str] = field(default_factory=list)  # each process's final trainable weights, by rank
    learning_rate: float = 0.0  # the peak rate used: the config's, or a fifth of it after a divergence retry
    best_step: int = 0  # the optimizer step of the kept checkpoint
    grad_norms: list[float] = field(default_factory=list)  # each optimizer step's global gradient norm, before clipping
    evaluations: list[dict] = field(default_factory=list)  # each dev evaluation: step, epoch, train_loss, dev_loss, dev_accuracy
    findings: list[dict] = field(default_factory=list)  # the detectors' findings (`diagnostics.Finding.to_dict`)
    rank_health: dict = field(default_factory=dict)  # LoRA-family modules: rank, meaningful values, effective rank, values
    strategy: str = "fresh"  # how the run started (train.strategy; fresh when no champion served)
    parent_version: str = ""  # the champion it started from (continue, merge_then_adapt)
    replay_sources: list[dict] = field(default_factory=list)  # rows replayed from earlier data: repo, rev, path, rows

    def to_dict(self) -> dict:
        """Return a JSON-serializable form (strict JSON: a non-finite figure, such as fp16's skipped
        step's gradient norm, is null)."""
        return _finite(asdict(self))

    def save(self, folder: Path) -> Path:
        """Write the report into a training folder; return its path."""
        path = folder / REPORT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, folder: Path) -> "TrainResult":
        """Read the report of a training folder (reports written before the efficiency fields too).

        Raises:
            DataError: when the folder holds no readable report.
        """
        path = folder / REPORT_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"{path} is not a training report ({type(exc).__name__}: {exc}); "
                            f"train again with `tuneloop train --out {folder}`") from exc


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a run can be repeated."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(device: str) -> float:
    """Return peak memory: CUDA max allocated on GPU, this process's peak RSS on CPU.

    On Linux the peak is /proc's VmHWM: getrusage's maxrss survives exec, so a step started by a
    larger parent (a pipeline runner, a benchmark) would report the parent's size.
    """
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux and BSD report KiB


class Batches:
    """Global batches of row indices, reshuffled on every pass: with `group`, rows are sorted by
    length within buckets of BUCKET_BATCHES batches first, so each batch pads to similar lengths.

    A pass is seeded by (seed, pass number), so every process of a distributed run draws the same
    global batches and `accelerate` hands each process its share of them. A short remainder batch
    comes last in its pass.
    """

    def __init__(self, lengths: list[int], size: int, seed: int, group: bool):
        self.lengths, self.batch_size, self.seed, self.group, self.passes = lengths, size, seed, group, 0
        self.drawn: list[list[int]] = []

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        self.passes += 1
        rng = random.Random(self.seed + self.passes)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if self.group:
            span = self.batch_size * BUCKET_BATCHES
            order = [i for start in range(0, len(order), span)
                     for i in sorted(order[start:start + span], key=lambda i: -self.lengths[i])]
        chunks = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        short = chunks.pop() if len(chunks[-1]) < self.batch_size else None
        rng.shuffle(chunks)
        # A short batch goes last: accelerate shares out full batches only, and tops up a short
        # final one with rows from the first batch (a short batch mid-pass it would drop).
        self.drawn = chunks + [short] if short else chunks  # this pass's batches, to name a bad batch's rows
        return iter(self.drawn)


def _dev_split(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    n_dev = max(1, int(round(len(shuffled) * fraction)))
    return shuffled.iloc[n_dev:].reset_index(drop=True), shuffled.iloc[:n_dev]


def _evaluate_dev(model: Any, tokenizer: Any, frame: pd.DataFrame, targets: list[Any], cfg: Config,
                  device: str) -> tuple[float, float]:
    """Mean loss per row and the share of right predictions (rows for a classifier, target tokens
    for a generative task) on the dev rows."""
    import torch

    task = tasks.get(cfg.model.task)
    texts, size = frame["text"].tolist(), cfg.train.eval_batch_size
    model.eval()
    loss_sum, correct, counted = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(texts), size):
            batch = tasks.collate(task, tokenizer, texts[start:start + size], targets[start:start + size],
                                  cfg.model.max_length, cfg.generation.max_new_tokens)
            batch = {key: value.to(device) for key, value in batch.items()}
            out = model(**batch)
            loss_sum += out.loss.item() * len(batch["labels"])
            right, count = tasks.dev_correct(task, out.logits, batch["labels"])
            correct, counted = correct + right, counted + count
    model.train()
    return loss_sum / len(texts), correct / max(counted, 1)


@dataclass(frozen=True)
class Parent:
    """The champion a refresh starts from (`train.strategy` continue or merge_then_adapt)."""

    version: str
    adapter_dir: Path


def _build(cfg: Config, labels: list[str], device: str, total_steps: int, parent: Parent | None = None,
           scratch: Path | None = None) -> tuple[Any, Any, modeling.AdapterMeta]:
    """Load the base for the task (a fresh head for a classifier), make it trainable by the method,
    and describe it for saving. With a parent, start where `train.strategy` says: from its weights
    (continue), or on the base with it merged in (merge_then_adapt; written under `scratch`)."""
    facts = preflight.check_model(cfg, device)
    method = preflight.resolved_method(cfg, facts)
    base = modeling.resolve_base(cfg.model.base)
    base_sha, tok_sha = modeling.fingerprint(base)
    strategy = cfg.train.strategy if parent is not None else "fresh"
    start, lineage, full = base, None, methods.get(method.name).full
    if strategy != "fresh":
        before = modeling.read_adapter_meta(parent.adapter_dir)
        if before.base_sha256 != base_sha:
            raise ConfigError(f"train.strategy {strategy}: the champion (version {parent.version}) was trained on another "
                              f"base ({before.base_model}); set train.strategy: fresh to start over on {cfg.model.base}")
    if strategy == "merge_then_adapt":
        shutil.rmtree(_merged_dir(scratch), ignore_errors=True)  # a crashed run's
        start = modeling.merge_adapter(parent.adapter_dir, _merged_dir(scratch), device, str(base))
        lineage = None if full else {"version": parent.version, "method": before.method.get("merged", before.method["name"])}
    elif strategy == "continue":
        if before.labels != labels:
            raise ConfigError(f"train.strategy continue: the champion (version {parent.version}) predicts {before.labels}, "
                              f"the new rows have {labels}; keep the label set, or use train.strategy fresh")
        if method.name == "adalora":  # its saved ranks are pruned to its budget; a new model's are not
            raise ConfigError("train.strategy continue cannot resume AdaLoRA (its saved ranks are pruned); use "
                              "merge_then_adapt or fresh")
        if before.method != method.model_dump(mode="json") or before.parent:
            raise ConfigError(f"train.strategy continue needs the champion's adapter as it is: version {parent.version} "
                              f"is {before.method['name']}{' on a merged parent' if before.parent else ''} with other "
                              f"settings; set method to match it, or use train.strategy merge_then_adapt or fresh")
        if full:  # a fully fine-tuned champion is its own weights
            start = parent.adapter_dir
    model = modeling.attach_adapter(
        modeling.load_model(start, cfg.model.task, labels, cfg.quantization, device), method, cfg.model.task, cfg.quantization,
        {"total_steps": total_steps, "base_dir": str(start)},
    )
    if strategy == "continue" and not full:
        _load_weights(model, parent)
    meta = modeling.AdapterMeta(
        labels=labels, base_model=cfg.model.base, base_sha256=base_sha, tokenizer_sha256=tok_sha,
        task=cfg.model.task, max_length=cfg.model.max_length, method=method.model_dump(mode="json"),
        quantization=cfg.quantization.model_dump(), parent=lineage,
    )
    return model, modeling.load_tokenizer(base), meta


def _kept(model: Any, checkpoint: Path, meta: modeling.AdapterMeta) -> Any:
    """The model with the kept checkpoint's adapter weights (what is shipped; the run may have gone on)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(checkpoint / modeling.ADAPTER_WEIGHTS)))
    return model


def _merged_dir(scratch: Path) -> Path:
    """Where this process writes the merged base (one per rank: every process builds its own model)."""
    return scratch / f"{MERGED_DIR}-{os.environ.get('RANK', '0')}"


def _load_weights(model: Any, parent: Parent) -> None:
    """Put the champion's adapter weights (its head too) into a freshly built adapter model of the same method."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    loaded = set_peft_model_state_dict(model, load_file(str(parent.adapter_dir / modeling.ADAPTER_WEIGHTS)))
    if loaded.unexpected_keys or [key for key in loaded.missing_keys if "lora_" in key or "modules_to_save" in key]:
        raise ConfigError(f"train.strategy continue: version {parent.version}'s adapter has weights this model lacks "
                          f"({', '.join(loaded.unexpected_keys[:3])}); set train.strategy: fresh")


def _optimizer(model: Any, cfg: Config, total_steps: int) -> tuple[Any, Any]:
    """AdamW on the trainable parameters, with linear warmup then linear decay to zero."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate(), weight_decay=cfg.train.weight_decay,
    )
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * total_steps), total_steps)


def _targets(frame: pd.DataFrame, labels: list[str]) -> list[Any]:
    """Each row's training target: its label's index for a classifier, its target text otherwise."""
    if not labels:
        return frame["label"].tolist()
    label_id = {label: i for i, label in enumerate(labels)}
    return [label_id[x] for x in frame["label"]]


def _loader(tokenizer: Any, frame: pd.DataFrame, labels: list[str], cfg: Config) -> Any:
    """A DataLoader of tokenized global batches (padded to their own longest row)."""
    from torch.utils.data import DataLoader

    task = tasks.get(cfg.model.task)
    texts, targets = frame["text"].tolist(), _targets(frame, labels)
    lengths = tasks.lengths(task, tokenizer, texts, targets, cfg.model.max_length, cfg.generation.max_new_tokens)

    def collate(rows: list[int]) -> Any:
        return tasks.collate(task, tokenizer, [texts[i] for i in rows], [targets[i] for i in rows],
                             cfg.model.max_length, cfg.generation.max_new_tokens)

    sampler = Batches(lengths, cfg.train.batch_size, cfg.train.seed, cfg.train.group_by_length)
    return DataLoader(list(range(len(texts))), batch_sampler=sampler, collate_fn=collate)


def _accelerator(cfg: Config) -> Any:
    """The accelerate context: devices, DDP across processes, mixed precision, gradient accumulation."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState, GradientState

    device = preflight.check_runtime(cfg.runtime)
    preflight.check_precision(cfg, device)  # accelerate would raise its own error for these
    # accelerate keeps one device, precision and accumulation setting per process; a process that
    # trains twice (tests, a sweep) starts each run afresh. A launcher's process group stays.
    AcceleratorState._reset_state(reset_partial_state=int(os.environ.get("WORLD_SIZE", "1")) == 1)
    GradientState._reset_state()
    # split_batches: each global batch of train.batch_size rows is shared out among the processes,
    # so N processes take the same optimizer steps as one (a short last batch is topped up with
    # rows from the start of the epoch, so every process gets an equal share).
    return Accelerator(cpu=device == "cpu", mixed_precision=PRECISIONS[cfg.train.precision],
                       gradient_accumulation_steps=cfg.train.gradient_accumulation,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


@dataclass
class _Setup:
    """What `train` and `warmup` both start from: the accelerate context, the split rows, the built model."""

    accelerator: Any
    device: str
    labels: list[str]
    fit: pd.DataFrame
    dev: pd.DataFrame
    per_epoch: int
    model: Any
    tokenizer: Any
    meta: modeling.AdapterMeta
    epochs: int

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return self.per_epoch * self.epochs


def _set_up(frame: pd.DataFrame, cfg: Config, parent: Parent | None = None, scratch: Path | None = None) -> _Setup:
    """Seed, make the accelerate context, carve the dev rows and build the model, as a run does."""
    seed_everything(cfg.train.seed)
    accelerator = _accelerator(cfg)
    device = str(accelerator.device)
    labels = [] if tasks.get(cfg.model.task).generative else sorted(frame["label"].unique())
    fit, dev = _dev_split(frame, cfg.train.dev_fraction, cfg.train.seed)
    per_epoch = math.ceil(math.ceil(len(fit) / cfg.train.batch_size) / cfg.train.gradient_accumulation)
    model, tokenizer, meta = _build(cfg, labels, device, per_epoch * cfg.train.epochs, parent, scratch)
    return _Setup(accelerator, device, labels, fit, dev, per_epoch, model, tokenizer, meta, cfg.train.epochs)


def _step(accelerator: Any, model: Any, optimizer: Any, schedule: Any, batch: Any, cfg: Config,
          allocate: Any = None, step: int = 0) -> tuple[Any, Any]:
    """One batch: forward, backward, and (at the end of an accumulation) clip, step, schedule and
    AdaLoRA's rank allocation; return the loss and, at the end of an accumulation with the detectors
    on or clipping, the global gradient norm before clipping (else None)."""
    norm = None
    with accelerator.accumulate(model):
        loss = model(**batch).loss
        accelerator.backward(loss)
        if accelerator.sync_gradients and (cfg.train.max_grad_norm or cfg.train.detectors):
            # No clipping at an infinite bound: the norm is measured, the gradients are left as they are.
            norm = accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or math.inf)
            # Before the step, so the weights stay finite to find the rows by. The norm is of the
            # all-reduced gradients, the same on every process, so all stop together. fp16's scaler
            # skips a step with inf gradients itself.
            if cfg.train.detectors and accelerator.scaler is None and not math.isfinite(float(norm)):
                optimizer.zero_grad(set_to_none=True)
                raise _NonFinite(loss.item(), float(norm))
        optimizer.step()
        schedule.step()
        if accelerator.sync_gradients and allocate is not None:
            allocate(step + 1)
        optimizer.zero_grad(set_to_none=True)
    return loss, norm


class _NonFinite(Exception):
    """The gradients of an optimizer step are not finite (raised before the step is taken)."""

    def __init__(self, loss: float, norm: float):
        super().__init__(f"loss {loss}, gradient norm {norm}")
        self.loss, self.norm = loss, norm


def _culprits(model: Any, tokenizer: Any, fit: pd.DataFrame, labels: list[str], rows: list[int], cfg: Config,
              device: str) -> list[int]:
    """The rows among `rows` whose loss alone is not finite (one forward pass each, without gradients)."""
    import torch

    task, targets = tasks.get(cfg.model.task), _targets(fit.iloc[rows], labels)
    found = []
    model.eval()  # no dropout: a row's loss is its own
    try:
        with torch.no_grad():
            for row, target in zip(rows, targets):
                batch = tasks.collate(task, tokenizer, [fit["text"].iloc[row]], [target], cfg.model.max_length,
                                      cfg.generation.max_new_tokens)
                if not math.isfinite(model(**{key: value.to(device) for key, value in batch.items()}).loss.item()):
                    found.append(row)
    finally:
        model.train()
    return found


class _Diverged(Exception):
    """A run stopped by a non-finite or diverging loss (the finding says which); `train` may retry it."""

    def __init__(self, finding: diagnostics.Finding, retry: bool = True):
        super().__init__(finding.message)
        self.finding, self.retry = finding, retry


def train(frame: pd.DataFrame, cfg: Config, out_dir: Path, parent: Parent | None = None) -> TrainResult:
    """Train on the rows of `frame` (columns text and label: the input and the target, whatever the
    task calls them); write the best checkpoint to out_dir/adapter and the report to out_dir/train.json.

    With `train.detectors` on, a non-finite or diverging loss stops the run; with
    `train.retry_on_divergence` it starts once more from the same seed at a fifth of the learning
    rate, and the report's findings say so.

    Args:
        frame: validated training rows.
        cfg: the config (model, method, quantization, train and runtime sections are read).
        out_dir: folder for checkpoints/ and the final adapter/ (written by the main process only).
        parent: the champion to start from, by `train.strategy` (None, or strategy fresh: a new adapter).
            merge_then_adapt keeps the parent's adapter in adapter/parent/.

    Raises:
        TrainingError: when the model, method or device cannot be used, or the loss went non-finite or
            diverged (again, after a retry): it names the step and the content hashes of the batch's rows.
        ConfigError: when the method does not fit the base (e.g. its positions).
    """
    try:
        return _train(frame, cfg, out_dir, [], parent)
    except _Diverged as stopped:
        first, retry = stopped.finding, stopped.retry
    if not retry:
        raise TrainingError(f"{first.message} (not retried: those rows fail alone)")
    if not cfg.train.retry_on_divergence:
        raise TrainingError(f"{first.message} (train.retry_on_divergence is off)")
    lowered = cfg.learning_rate() / 5
    log.warning("%s; training again from the start at learning rate %g", first.message, lowered)
    retried = diagnostics.Finding(first.kind, f"{first.message}; retried from the start at learning rate {lowered:g}, "
                                              f"a fifth of {cfg.learning_rate():g}", first.step,
                                  {**first.details, "retry_learning_rate": lowered})
    slower = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": lowered})})
    gc.collect()  # the first attempt's model and optimizer
    try:
        return _train(frame, slower, out_dir, [retried], parent)
    except _Diverged as again:
        raise TrainingError(f"{again.finding.message} (also on the retry at learning rate {lowered:g}, after: "
                            f"{first.message})") from None


def _train(frame: pd.DataFrame, cfg: Config, out_dir: Path, findings: list[diagnostics.Finding],
           parent: Parent | None = None) -> TrainResult:
    """One attempt of `train`; raises _Diverged when a detector stops it. `findings` start the report's list."""
    import torch

    started = time.perf_counter()
    run = _set_up(frame, cfg, parent, out_dir)
    accelerator, device, labels, fit, dev = run.accelerator, run.device, run.labels, run.fit, run.dev
    model, tokenizer, meta, total_steps = run.model, run.tokenizer, run.meta, run.total_steps
    # Only once the model is built (a refused config loses nothing): a reused folder keeps nothing
    # of an earlier run, such as another method's weights beside this one's.
    if accelerator.is_main_process:
        for stale in (out_dir / ADAPTER_DIR, out_dir / CHECKPOINTS_DIR):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in (REPORT_FILE, *PLOTS.values()):
            (out_dir / stale).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    trainable, total = modeling.parameter_counts(model)
    optimizer, schedule = _optimizer(model, cfg, total_steps)
    loader = _loader(tokenizer, fit, labels, cfg)
    drawn = loader.batch_sampler  # `Batches`: which rows each batch of the pass holds
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    plain = accelerator.unwrap_model(model)
    allocate = getattr(getattr(plain, "base_model", None), "update_and_allocate", None)  # AdaLoRA's rank budget
    dev_targets = _targets(dev, labels)
    say, warn = (log.info, log.warning) if accelerator.is_main_process else (log.debug, log.debug)
    say("training %s on %s (%s x%d, %s): %d train / %d dev rows, %d labels, %d of %d params trainable (%.2f%%)",
        meta.method["name"], cfg.model.base, device, accelerator.num_processes, cfg.train.precision, len(fit), len(dev),
        len(labels), trainable, total, 100 * trainable / total)
    detect, scaled = cfg.train.detectors, accelerator.scaler is not None  # fp16's scaler skips inf-gradient steps itself
    row_ids = [diagnostics.row_hash(text, label) for text, label in zip(fit["text"], fit["label"])] if detect else []

    best = {"dev_loss": math.inf, "dev_accuracy": 0.0, "epoch": 0, "step": 0, "checkpoint": ""}
    evaluations: list[dict] = []
    stale, step, seen, tokens, curve, norms, window, stepping = 0, 0, 0, 0, [], [], [], 0.0

    def evaluate(epoch: int, end_of_epoch: bool) -> bool:
        """Score the dev rows, keep a checkpoint (every epoch's; a mid-epoch one while best); return
        whether to stop (patience spent, or overfitting)."""
        nonlocal best, stale
        # Every rank scores the same dev rows; their mean is one figure, so all ranks stop together.
        scored = accelerator.reduce(torch.tensor(_evaluate_dev(plain, tokenizer, dev, dev_targets, cfg, device),
                                                 device=accelerator.device), "mean")
        dev_loss, dev_acc = float(scored[0]), float(scored[1])
        if not math.isfinite(dev_loss):  # every rank sees the same reduced figure
            message = (f"non-finite dev loss at step {step} ({dev_loss}); inspect the dev rows (carved from the training "
                       f"rows by train.seed) or lower train.learning_rate")
            if detect:
                raise _Diverged(diagnostics.Finding("nonfinite", message, step, {"dev_loss": None}))
            raise TrainingError(message)
        since = curve[evaluations[-1]["step"]:] if evaluations else curve
        evaluations.append({"step": step, "epoch": epoch, "train_loss": sum(since) / max(len(since), 1),
                            "dev_loss": dev_loss, "dev_accuracy": dev_acc})
        improved = dev_loss < best["dev_loss"]
        name = f"epoch-{epoch}" if end_of_epoch else f"step-{step}"
        if accelerator.is_main_process and (end_of_epoch or improved):
            modeling.save_adapter(plain, out_dir / CHECKPOINTS_DIR / name, meta)
            if improved and best["checkpoint"].startswith("step-"):  # a mid-epoch checkpoint is kept only while best
                shutil.rmtree(out_dir / CHECKPOINTS_DIR / best["checkpoint"], ignore_errors=True)
        accelerator.wait_for_everyone()
        say("epoch %d step %d: dev loss %.4f accuracy %.4f%s", epoch, step, dev_loss, dev_acc,
            f" (checkpoint {name})" if end_of_epoch or improved else "")
        if improved:
            best, stale = {"dev_loss": dev_loss, "dev_accuracy": dev_acc, "epoch": epoch, "step": step, "checkpoint": name}, 0
            return False
        stale += 1
        overfit = diagnostics.overfitting(evaluations, cfg.train.overfit_evaluations) if detect else None
        if overfit is not None:
            findings.append(overfit)
            warn("%s", overfit.message)
            return True
        if cfg.train.patience and stale >= cfg.train.patience:
            say("early stop: dev loss has not improved for %d evaluation(s)", stale)
            return True
        return False

    model.train()
    stop = False
    for epoch in range(1, cfg.train.epochs + 1):
        epoch_started = time.perf_counter()
        batches: list[int] = []  # the pass's batch numbers in this optimizer step
        for number, batch in enumerate(loader):
            try:
                loss, norm = _step(accelerator, model, optimizer, schedule, batch, cfg, allocate, step)
            except _NonFinite as bad:  # name the rows that cause it, else the step's rows
                rows = [i for n in batches + [number] for i in drawn.drawn[n]]
                culprits = _culprits(plain, tokenizer, fit, labels, rows, cfg, device)
                finding = diagnostics.nonfinite(step + 1, bad.loss, bad.norm, [row_ids[i] for i in culprits or rows],
                                                len(rows))
                # Rows whose loss alone is not finite: the data is to blame, and a lower rate would not help.
                raise _Diverged(finding, retry=not culprits) from None
            seen, tokens = seen + len(batch["labels"]), tokens + int(batch["attention_mask"].sum())
            window.append(loss.detach())
            batches.append(number)
            if not accelerator.sync_gradients:
                continue
            step += 1
            curve.append(accelerator.reduce(torch.stack(window).mean(), "mean").item())
            window = []
            if detect:
                norms.append(float(norm))
                rows = [row_ids[i] for n in batches for i in drawn.drawn[n]]
                bad = diagnostics.nonfinite(step, curve[-1], None if scaled else norms[-1], rows, len(rows))
                if bad is None:
                    bad = diagnostics.diverged(curve, norms, cfg.train.divergence_factor, cfg.train.grad_divergence_factor)
                if bad is not None:
                    raise _Diverged(bad)
            batches = []
            if step % cfg.train.log_every == 0 or step == total_steps:
                rate = seen * accelerator.num_processes / (stepping + time.perf_counter() - epoch_started)
                left = (total_steps - step) * cfg.train.batch_size * cfg.train.gradient_accumulation / max(rate, 1e-9)
                say("epoch %d/%d step %d/%d loss %.4f%s %.1f samples/s ~%.0fs left", epoch, cfg.train.epochs, step,
                    total_steps, sum(curve[-5:]) / len(curve[-5:]), f" grad norm {norms[-1]:.3g}" if detect else "",
                    rate, left)
            if cfg.train.eval_every_steps and step % cfg.train.eval_every_steps == 0 and step % run.per_epoch:
                stepping += time.perf_counter() - epoch_started  # throughput counts training, not the dev pass
                stop = evaluate(epoch, end_of_epoch=False)
                epoch_started = time.perf_counter()
                if stop:
                    break
        stepping += time.perf_counter() - epoch_started
        if stop or evaluate(epoch, end_of_epoch=True):
            break

    if not best["checkpoint"]:  # no finite dev loss was ever scored (the check above stops that first)
        raise TrainingError("no dev evaluation scored a finite loss, so there is no checkpoint to keep; inspect the dev rows")
    if detect:
        findings.extend(diagnostics.grad_spikes(norms, cfg.train.grad_spike_factor))
        spectra = diagnostics.spectra(_kept(plain, out_dir / CHECKPOINTS_DIR / best["checkpoint"], meta)) \
            if meta.method["name"] in diagnostics.RANK_METHODS else {}
        health, collapse = diagnostics.rank_health(spectra, cfg.train.rank_tolerance)
        health = {name: {**h, "values": spectra[name]["values"]} for name, h in health.items()}
        if collapse is not None:
            findings.append(collapse)
    else:
        health = {}
    for finding in findings:
        if finding.kind != "overfitting":  # said when it stopped the run
            warn("finding: %s", finding.message)
    digests = _gather_digests(accelerator, plain)
    totals = accelerator.reduce(torch.tensor([seen, tokens], dtype=torch.float64, device=accelerator.device), "sum")
    adapter_dir = out_dir / ADAPTER_DIR
    if accelerator.is_main_process:
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        shutil.copytree(out_dir / CHECKPOINTS_DIR / best["checkpoint"], adapter_dir)
        if meta.parent:  # the version pins both steps: its parent's adapter travels with it
            shutil.copytree(parent.adapter_dir, adapter_dir / modeling.PARENT_DIR)
    shutil.rmtree(_merged_dir(out_dir), ignore_errors=True)  # each process its own
    accelerator.wait_for_everyone()
    wall = time.perf_counter() - started
    result = TrainResult(
        adapter_dir=str(adapter_dir), labels=labels, epochs_run=epoch, best_epoch=best["epoch"], steps=step,
        train_loss=float(sum(curve[-5:]) / max(len(curve[-5:]), 1)), dev_loss=best["dev_loss"],
        dev_accuracy=best["dev_accuracy"], trainable_params=trainable, total_params=total,
        peak_memory_mb=peak_memory_mb(device), wall_seconds=wall, samples_per_second=float(totals[0]) / stepping,
        adapter_bytes=sum(f.stat().st_size for f in adapter_dir.iterdir() if f.is_file()), device=device,
        method=meta.method["name"], tokens_per_second=float(totals[1]) / stepping,
        cost=wall / 3600 * cfg.train.price_per_hour * accelerator.num_processes, processes=accelerator.num_processes,
        precision=cfg.train.precision, loss_curve=curve, weights_sha256=digests, learning_rate=cfg.learning_rate(),
        best_step=best["step"], grad_norms=norms, evaluations=evaluations, findings=[f.to_dict() for f in findings],
        rank_health=health, strategy=cfg.train.strategy if parent is not None else "fresh",
        parent_version=parent.version if parent is not None and cfg.train.strategy != "fresh" else "",
    )
    if accelerator.is_main_process:
        result.save(out_dir)
        if detect:
            plots.training(result, out_dir)
    return result


def warmup(frame: pd.DataFrame, cfg: Config, steps: int) -> dict[str, float]:
    """Time the first `steps` optimizer steps of a run (the same build, batches and step as `train`),
    one dev batch and one checkpoint save, saving nothing: what `tuneloop estimate` extrapolates from.

    A step's time follows the tokens it computes (a batch pads to its longest row, and batch
    lengths vary several-fold), so the timed steps give seconds per padded token, and an epoch's
    padded tokens are counted from the same batches training draws.

    Returns:
        build_seconds (model load and adapter), seconds_per_token and seconds_per_step (over the
        steps after the first, which pays one-off costs), epoch_tokens (padded tokens of one pass),
        dev_seconds_per_row, save_seconds, trainable and total parameters, and the run's optimizer
        steps per epoch and dev rows.
    """
    import tempfile

    started = time.perf_counter()
    run = _set_up(frame, cfg)
    accelerator, device, labels, fit, dev = run.accelerator, run.device, run.labels, run.fit, run.dev
    model, tokenizer, meta, per_epoch = run.model, run.tokenizer, run.meta, run.per_epoch
    build = time.perf_counter() - started
    trainable, total = modeling.parameter_counts(model)
    optimizer, schedule = _optimizer(model, cfg, run.total_steps)
    loader = _loader(tokenizer, fit, labels, cfg)
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    plain = accelerator.unwrap_model(model)
    model.train()
    task = tasks.get(cfg.model.task)
    # Prompt methods lengthen every row inside the model (prefix tuning only the attention cache).
    extra = 0 if methods.get(cfg.method.name).needs_cache else getattr(cfg.method, "num_virtual_tokens", 0)
    times, tokens, step, pending, tick = [], [], 0, 0, time.perf_counter()
    for batch in loader:  # a row's tokens as `tasks.lengths` counts them: a seq2seq row's target too
        rows, width = batch["input_ids"].shape
        pending += rows * (width + extra + (batch["labels"].shape[1] if task.name == "seq2seq" else 0))
        try:
            _step(accelerator, model, optimizer, schedule, batch, cfg)
        except _NonFinite as bad:
            raise TrainingError(f"non-finite gradients at step {step + 1} of the warm-up ({bad}); lower "
                                "train.learning_rate, or run `tuneloop run` to name the rows") from None
        if not accelerator.sync_gradients:
            continue
        step += 1
        now = time.perf_counter()
        times.append(now - tick)
        tokens.append(pending)  # every batch of this optimizer step
        tick, pending = now, 0
        if step >= steps:
            break
    paid, counted = (times[1:], tokens[1:]) if len(times) > 1 else (times, tokens)  # the first step pays one-off costs
    lengths = tasks.lengths(task, tokenizer, fit["text"].tolist(), _targets(fit, labels), cfg.model.max_length,
                            cfg.generation.max_new_tokens)
    pass_ = Batches(lengths, cfg.train.batch_size, cfg.train.seed, cfg.train.group_by_length)
    epoch_tokens = sum(len(rows) * (max(lengths[i] for i in rows) + extra) for rows in pass_)
    sample = dev.iloc[:cfg.train.eval_batch_size]
    tick = time.perf_counter()
    _evaluate_dev(plain, tokenizer, sample, _targets(sample, labels), cfg, device)
    dev_per_row = (time.perf_counter() - tick) / len(sample)
    with tempfile.TemporaryDirectory() as scratch:
        tick = time.perf_counter()
        modeling.save_adapter(plain, Path(scratch) / "adapter", meta)
        save = time.perf_counter() - tick
    del model, optimizer, plain
    return {"build_seconds": build, "seconds_per_step": sum(paid) / len(paid),
            "seconds_per_token": sum(paid) / max(sum(counted), 1),
            "epoch_tokens": epoch_tokens, "dev_seconds_per_row": dev_per_row,
            "save_seconds": save, "trainable_params": trainable, "total_params": total,
            "steps_per_epoch": per_epoch, "dev_rows": len(dev), "timed_steps": len(times)}


def trainable_digest(model: Any) -> str:
    """A sha256 of the trainable weights, by name and value (equal on every rank of a healthy DDP run)."""
    import hashlib

    sha = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            sha.update(name.encode())
            sha.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def _gather_digests(accelerator: Any, model: Any) -> list[str]:
    """Every process's trainable-weight digest, in rank order.

    Raises:
        TrainingError: when the processes ended with different weights (a broken DDP setup).
    """
    from accelerate.utils import gather_object

    digests = gather_object([trainable_digest(model)])
    if len(set(digests)) > 1:
        raise TrainingError(f"the {len(digests)} training processes ended with different weights (digests "
                            f"{', '.join(d[:12] for d in digests)}); check that every rank runs the same config and data")
    return digests
