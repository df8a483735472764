"""Preflight: what can be checked before any training, each failure one line naming key, value and fix.

`cycle.preflight` runs every check, cheapest first, before `tuneloop run` launches anything; each
pipeline step also runs the checks its own work depends on, because on a cluster a step runs on
another machine, possibly long after the launch. Nothing here writes anything that outlives the
check: writability is tested with a temporary file that is removed again.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from tuneloop import methods, modeling, quantization
from tuneloop.config import Config, RuntimeConfig
from tuneloop.errors import ConfigError, TuneloopError

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
    facts = modeling.inspect_base(cfg.model.base)
    if facts.max_positions is not None and cfg.model.max_length > facts.max_positions:
        raise ConfigError(
            f"model.max_length {cfg.model.max_length} exceeds the {facts.max_positions} positions of model.base "
            f"{cfg.model.base!r}; set model.max_length to at most {facts.max_positions}"
        )
    methods.check_targets(cfg.method, facts.layers, cfg.model.base)
    quantization.check_layers(cfg.quantization, facts.in_features, device)
    log.debug("base %s (%s): %d modules, %s positions", cfg.model.base, facts.model_type, len(facts.layers),
              facts.max_positions)
    return facts
