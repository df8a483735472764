"""Preflight: what can be checked before any training, each failure one line naming key, value and fix.

`cycle.preflight` runs every check, cheapest first, before `tuneloop run` launches anything; each
pipeline step also runs the checks its own work depends on, because on a cluster a step runs on
another machine, possibly long after the launch. Nothing here writes anything that outlives the
check: writability is tested with a temporary file that is removed again.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from tuneloop import methods, modeling, quantization
from tuneloop.config import Config, RuntimeConfig
from tuneloop.errors import ConfigError, TrainingError, TuneloopError

log = logging.getLogger(__name__)


def writable_folder(
    folder: Path, key: str, shown: str | None = None, fix: str | None = None, error: type[TuneloopError] = ConfigError,
) -> None:
    """Check that `folder` is, or could be created as, a folder this process can write in.

    A temporary file is created in the folder, or in its nearest existing parent, and removed
    again: os.access says yes to root whatever the mode bits, so only a real write tells.

    Args:
        folder: a local folder that may not exist yet.
        key: the config key that names it.
        shown: how the value is shown in the message (default: the path).
        fix: what to do about it (default: point the key at a writable folder).
        error: the error class to raise.

    Raises:
        error: "<key>: <shown> is not writable (<why>); <fix>".
    """
    shown = shown or str(folder)
    fix = fix or f"point {key} at a writable folder"
    probe = next(p for p in [folder, *folder.parents] if p.exists())
    if not probe.is_dir():
        raise error(f"{key}: {shown} is not writable ({probe} is not a folder); {fix}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise error(f"{key}: {shown} is not writable ({exc.strerror}: {probe}); {fix}") from exc


def check_runtime(cfg: RuntimeConfig) -> str:
    """Check the device and the local pipeline folder; return the torch device to use.

    Raises:
        TrainingError: when runtime.device is cuda and no GPU is visible.
        ConfigError: when runtime.pipeline_root cannot be written (local mode).
    """
    device = modeling.pick_device(cfg.device)
    if cfg.mode == "local":
        writable_folder(Path(cfg.pipeline_root), "runtime.pipeline_root")
    return device


def check_model(cfg: Config, device: str) -> modeling.BaseFacts:
    """Check the base model, the method's target layers, max_length and quantization, loading no weights.

    Args:
        cfg: the whole config (model, method and quantization sections are read).
        device: the torch device training will use ("cpu", "cuda").

    Raises:
        TrainingError: when the base is not a usable model folder, a target layer does not exist, or
            the quantization cannot run on this base and device.
        ConfigError: when model.max_length exceeds the base model's positions.
    """
    facts = modeling.inspect_base(cfg.model.base, cfg.model.task)
    if facts.max_positions is not None and cfg.model.max_length > facts.max_positions:
        raise ConfigError(
            f"model.max_length {cfg.model.max_length} exceeds the {facts.max_positions} positions of model.base "
            f"{cfg.model.base!r}; set model.max_length to at most {facts.max_positions}"
        )
    method = resolved_method(cfg, facts)
    methods.check_targets(method, facts.layers, cfg.model.base)
    _check_method_on_base(cfg, method, facts, device)
    quantization.check_layers(cfg.quantization, facts.in_features, device)
    check_precision(cfg, device)
    log.debug("base %s (%s): %d modules, %s positions", cfg.model.base, facts.model_type, len(facts.layers),
              facts.max_positions)
    return facts


def resolved_method(cfg: Config, facts: modeling.BaseFacts) -> Any:
    """The method section with its base-dependent defaults filled in (rank by size, targets by architecture)."""
    return methods.resolve(cfg.method, facts.model_type, facts.parameters, cfg.model.base)


def _check_method_on_base(cfg: Config, method: Any, facts: modeling.BaseFacts, device: str) -> None:
    """Refuse the method/base/device combinations that peft or bitsandbytes would fail on mid-run."""
    base = f"model.base {cfg.model.base!r}"
    entry = methods.get(method.name)
    if entry.needs_cache and not facts.takes_past_key_values:
        raise TrainingError(
            f"method.name {method.name} needs a model whose forward takes past_key_values, and the {cfg.model.task} "
            f"model of {base} (a {facts.model_type!r}) does not (no sequence-classification model of transformers 5 "
            "does); use p_tuning or prompt_tuning, or prefix tuning on a seq2seq or causal_lm task"
        )
    tokens = getattr(method, "num_virtual_tokens", 0)
    if not entry.needs_cache and tokens and facts.max_positions is not None \
            and cfg.model.max_length + tokens > facts.max_positions:
        raise ConfigError(
            f"model.max_length {cfg.model.max_length} + method.num_virtual_tokens {tokens} exceed the "
            f"{facts.max_positions} positions of {base}; lower one of them to fit"
        )
    if cfg.quantization.bits in entry.cuda_only_bits and not device.startswith("cuda"):
        others = " or ".join(str(b) for b in sorted(entry.bits - entry.cuda_only_bits))
        raise TrainingError(
            f"method.name {method.name} on quantization.bits {cfg.quantization.bits} needs CUDA ({entry.why_cuda}); "
            f"use quantization.bits {others} here, or runtime.device cuda"
        )


def check_precision(cfg: Config, device: str) -> None:
    """Check the mixed precision against the device, and that the global batch divides among the processes.

    Raises:
        TrainingError: fp16 without CUDA, or bf16 on a GPU without bf16.
        ConfigError: a train.batch_size that WORLD_SIZE does not divide.
    """
    if cfg.train.precision == "fp16" and not device.startswith("cuda"):
        raise TrainingError("train.precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if cfg.train.precision == "bf16" and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_bf16_supported():
            raise TrainingError("train.precision bf16 needs a GPU with bf16 (Ampere or newer); use fp16 or fp32 on this one")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.train.batch_size % processes:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} does not divide among {processes} processes (WORLD_SIZE); "
            f"use a multiple of {processes}"
        )
