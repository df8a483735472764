"""Sweeps: one config plus a `sweep:` block becomes a matrix of cells, each trained and scored the same way.

A sweep file is a normal config with a `sweep:` section that lists axes (a dotted config key and
its values; `method` and `quantization` are short for `method.name` and `quantization.bits`) and
explicit cells. Every cell is a whole config, validated before anything runs, so a bad axis value
fails the sweep before the first cell starts, naming the axis and the value.

A cell runs in a child process of its step (a crash, an out-of-memory kill or an error becomes a
failed cell, never a failed sweep) and its result is cached under (data content, cell digest): a
re-run with one new axis value trains only the new cells.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from tuneloop import methods
from tuneloop.config import Config, config_problems, read_config_file
from tuneloop.errors import ConfigError
from tuneloop.fields import Name, Strict

log = logging.getLogger(__name__)

SHORTHANDS = {"method": "method.name", "quantization": "quantization.bits"}
LABELS = {"method.name": "method", "quantization.bits": "bits"}
CACHE_FORMAT = 1
RESULT_FILE = "cell.json"  # what the cell's child measured (and, in the cache, the whole result)
RESULT_OUTPUT = "result.json"  # the cell step's whole result, for the report step
REFERENCE = {"method.name": "full", "quantization.bits": 0, "train.learning_rate": None}


class SweepSpec(Strict):
    """The `sweep:` section of a sweep file."""

    name: Name = Field("sweep", description="Names the sweep's MLflow run and report.")
    axes: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Config key -> values; the matrix is every combination. `method` and `quantization` are short "
                    "for method.name and quantization.bits; a method.* key applies to the methods that have it.",
    )
    cells: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra cells, each a mapping of config keys (and an optional `name`).",
    )
    reference: bool = Field(
        True, description="Add full fine-tuning (unquantized, its own learning rate) as the reference cell, unless a "
                          "cell already is one.",
    )
    parallelism: int = Field(1, ge=1, le=64, description="Cells run at once on a cluster (the local runner runs one at a time).")
    memory_limit_mb: float | None = Field(
        None, gt=0, description="Refuse, before any cell starts, a cell whose estimated peak memory is above this.",
    )
    warmup_steps: int = Field(
        5, ge=0, le=1000, description="Optimizer steps each cell's time estimate measures before the sweep (0: none).",
    )
    cache_dir: str = Field(".tuneloop/sweep-cache", description="Cell results by (data, cell) digest; relative to the file.")

    @field_validator("cache_dir")
    @classmethod
    def _cache_path(cls, value: str, info: ValidationInfo) -> str:
        root = (info.context or {}).get("root")
        return str((Path(root) / value).resolve()) if root is not None and not Path(value).is_absolute() else value


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: its name, the settings the sweep gave it, and its whole config."""

    name: str
    settings: dict[str, Any]
    config: Config
    reference: bool = False
    estimate: dict | None = None  # the pre-flight estimate (tuneloop.estimate), shown beside the measurement

    def to_json(self) -> str:
        """Serialize, the form the cell step receives."""
        return json.dumps({"name": self.name, "settings": self.settings, "reference": self.reference,
                           "estimate": self.estimate, "config": json.loads(self.config.to_json())})

    @classmethod
    def from_json(cls, text: str) -> "Cell":
        """Rebuild from `to_json` output."""
        from tuneloop.config import parse_config

        raw = json.loads(text)
        return cls(raw["name"], raw["settings"], parse_config(raw["config"]), raw["reference"], raw.get("estimate"))


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its section, the base config, and every cell (the reference first when added)."""

    spec: SweepSpec
    base: Config
    cells: list[Cell]


# What a cell may change: what it trains and how it is scored. Every cell reads the one snapshot
# the base config's data section makes, is judged by its gate section and runs where its runtime
# says, so varying those would label cells with differences that are not there.
VARIABLE = ("model", "method", "quantization", "generation", "train")
FIXED_KEYS = {"model.task": "every cell reads the same data, whose columns the task names",
              "train.distributed": "where training runs changes no weight",
              "train.strategy": "a sweep's cells train fresh on the data: no champion starts them",
              "train.replay_share": "a sweep's cells train on the data alone: nothing is replayed"}


def _axis_problem(key: str, method_names: set[str]) -> str | None:
    """Why `key` is not a config key a sweep can vary; None when it is."""
    parts = key.split(".")
    if parts[0] in Config.model_fields and parts[0] not in VARIABLE:
        return (f"{parts[0]} is the same for every cell (one snapshot, one gate, one runtime); vary keys of "
                f"{', '.join(VARIABLE)}")
    if parts[0] not in Config.model_fields:
        return f"{parts[0]!r} is not a config section ({', '.join(Config.model_fields)})"
    fixed = next((why for prefix, why in FIXED_KEYS.items() if key == prefix or key.startswith(prefix + ".")), None)
    if fixed:
        return f"it is the same for every cell ({fixed})"
    if parts[0] == "method":
        if len(parts) != 2:
            return "method keys are one level deep (method.r, method.num_virtual_tokens)"
        having = sorted(n for n in method_names if parts[1] in methods.REGISTRY[n].section.model_fields)
        if not having:
            return f"no method of this sweep ({', '.join(sorted(method_names))}) has a key {parts[1]!r}"
        return None
    model: Any = Config.model_fields[parts[0]].annotation
    for depth, part in enumerate(parts[1:], start=1):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return f"{'.'.join(parts[:depth])} has no keys"
        if part not in model.model_fields:
            return f"{'.'.join(parts[:depth])} has no key {part!r}"
        model = model.model_fields[part].annotation
    if len(parts) == 1 and parts[0] not in ("method",):
        return f"{parts[0]} is a section; vary one of its keys ({parts[0]}.<key>)"
    return None


def _set(raw: dict, key: str, value: Any) -> None:
    """Set a dotted key in a raw config mapping (None removes it: the default applies)."""
    *path, last = key.split(".")
    node = raw
    for part in path:
        if node.get(part) is None:  # absent, or a section whose keys are all commented out
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"sweep key {key}: the base config's {part} is not a section; fix the base config")
        node = node[part]
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value


def _apply(base: dict, settings: dict[str, Any]) -> tuple[dict, dict[str, Any]]:
    """The base mapping with a cell's settings applied; return it and the settings that apply.

    A new method.name keeps the base method's keys that the new method also has (its rank and
    target layers, say) and drops the others; a method.* key the cell's method does not have is
    left out of an axis cell (`parse_sweep` refuses it in an explicit cell).
    """
    raw = copy.deepcopy(base)
    raw["method"] = dict(raw.get("method") or {"name": "lora"})
    applied: dict[str, Any] = {}
    name = settings.get("method.name")
    if name is not None and name != raw["method"].get("name", "lora") and name in methods.REGISTRY:
        fields = methods.REGISTRY[name].section.model_fields
        raw["method"] = {"name": name, **{k: v for k, v in raw["method"].items() if k != "name" and k in fields}}
    method = raw["method"].get("name", "lora")
    for key, value in settings.items():
        if key.startswith("method.") and key != "method.name":
            if method not in methods.REGISTRY or key.split(".", 1)[1] not in methods.REGISTRY[method].section.model_fields:
                continue
        _set(raw, key, value)
        applied[key] = value
    return raw, applied


def _label(settings: dict[str, Any]) -> str:
    def shown(value: Any) -> str:
        return "default" if value is None else (json.dumps(value) if isinstance(value, (dict, list)) else str(value))

    return ", ".join(f"{LABELS.get(key, key.rsplit('.', 1)[-1])}={shown(value)}" for key, value in settings.items()) or "base"


def _key(key: str) -> str:
    return SHORTHANDS.get(key, key)


def parse_sweep(data: Any, root: Path | None = None) -> Sweep:
    """Validate a sweep mapping (a config with a `sweep:` section) into its cells.

    Raises:
        ConfigError: one line naming the problem: the base config's first bad key, an unknown axis
            key, an axis value that fails validation (with the axis and the value), or an empty matrix.
    """
    from pydantic import ValidationError

    from tuneloop.config import _describe, parse_config

    if not isinstance(data, dict) or "sweep" not in data:
        raise ConfigError("this config has no `sweep:` section; add one with axes (e.g. `method: [lora, ia3]`) or "
                          "cells, or run it with `tuneloop run`")
    base = {key: value for key, value in data.items() if key != "sweep"}
    try:
        spec = SweepSpec.model_validate(data["sweep"] or {}, context={"root": root})
    except ValidationError as exc:
        raise ConfigError("sweep." + _describe(exc.errors()[0])) from None
    base_cfg = parse_config(base, root)
    axes = {_key(key): values for key, values in spec.axes.items()}
    if len(axes) != len(spec.axes):
        raise ConfigError(f"sweep.axes names a key twice (once by its short name): {', '.join(spec.axes)}; keep one")
    empty = [key for key, values in spec.axes.items() if not values]
    if empty:
        raise ConfigError(f"sweep axis {empty[0]} has no values; list at least one or remove the axis")
    explicit = []
    for number, cell in enumerate(spec.cells, start=1):
        if "name" in cell and (not isinstance(cell["name"], str) or not cell["name"].strip()):
            raise ConfigError(f"sweep cell {number}: name {json.dumps(cell['name'])} must be a non-empty text; "
                              "quote it, e.g. name: \"r8\"")
        settings = {_key(k): v for k, v in cell.items() if k != "name"}
        if len(settings) != len([k for k in cell if k != "name"]):
            raise ConfigError(f"sweep cell {cell.get('name', number)} sets a key twice (once by its short name): "
                              f"{', '.join(k for k in cell if k != 'name')}; keep one")
        explicit.append(settings)
    # The methods the cells will train: the method axis's values (else the base's, when there are
    # axes at all), and each explicit cell's own (else the base's).
    from_axes = set(axes.get("method.name", [base_cfg.method.name])) if axes else set()
    method_names = from_axes | {c.get("method.name", base_cfg.method.name) for c in explicit}
    unknown = [name for name in method_names if name not in methods.REGISTRY]
    if unknown:
        where = "sweep axis method" if unknown[0] in axes.get("method.name", []) else "a sweep cell's method"
        raise ConfigError(f"{where} value {unknown[0]!r} is not a method; use one of: {', '.join(methods.NAMES)}")
    for key in [*axes, *(k for cell in explicit for k in cell)]:
        problem = _axis_problem(key, method_names)
        if problem:
            raise ConfigError(f"sweep axis {key} is not a key a sweep can vary: {problem}; use a dotted config key "
                              "such as method.r or train.learning_rate")
    for cell, settings in zip(spec.cells, explicit):
        method = settings.get("method.name", base_cfg.method.name)
        stray = [k for k in settings if k.startswith("method.") and k != "method.name"
                 and k.split(".", 1)[1] not in methods.REGISTRY[method].section.model_fields]
        if stray:
            raise ConfigError(f"sweep cell {cell.get('name') or _label(settings)} sets {stray[0]}, which method {method} "
                              "does not have; remove it or change the cell's method")
    wanted: list[tuple[str | None, dict[str, Any], bool]] = [
        (None, dict(zip(axes, combo)), False) for combo in itertools.product(*axes.values())] if axes else []
    wanted += [(cell.get("name"), settings, False) for cell, settings in zip(spec.cells, explicit)]
    if not wanted:
        raise ConfigError("the sweep has no cells: sweep.axes and sweep.cells are both empty; list an axis "
                          "(e.g. `method: [lora, ia3]`) or a cell")
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for name, settings, reference in wanted:
        cell = _cell(base, settings, name, reference, root, axes)
        digest = training_identity(cell.config)
        if digest in seen:  # e.g. method.r on a method without a rank: the same cell twice
            if cell.name == seen[digest]:
                log.info("sweep cell %s comes up more than once (an axis its method does not take); it runs once", cell.name)
            else:
                log.warning("sweep cell %s trains exactly as %s does; it runs once, as %s", cell.name, seen[digest],
                            seen[digest])
            continue
        seen[digest] = cell.name
        cells.append(cell)
    is_reference = [c for c in cells if c.config.method.name == "full" and c.config.quantization.bits == 0]
    if spec.reference and not is_reference:
        cells.insert(0, _cell(base, dict(REFERENCE), "full (reference)", True, root, axes))
    elif is_reference:  # the first full fine-tuning cell is the reference, listed first
        first = is_reference[0]
        cells.remove(first)
        cells.insert(0, Cell(first.name, first.settings, first.config, True))
    names = [c.name for c in cells]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"sweep cell name {twice[0]!r} is used twice; give each explicit cell its own name")
    return Sweep(spec, base_cfg, cells)


def _cell(base: dict, settings: dict[str, Any], name: str | None, reference: bool, root: Path | None,
          axes: dict[str, list[Any]]) -> Cell:
    from tuneloop.config import parse_config

    raw, applied = _apply(base, settings)
    label = name or _label(applied)
    problems = config_problems(raw, root)
    if problems:
        culprit = next((k for k in applied if problems[0].startswith(k)), None)
        if culprit is not None:
            kind = "axis" if culprit in axes else "cell setting"
            raise ConfigError(f"sweep {kind} {culprit} value {json.dumps(applied[culprit])} (cell {label}): {problems[0]}")
        raise ConfigError(f"sweep cell {label}: {problems[0]}; change its settings or list the cells you want "
                          "under sweep.cells")
    return Cell(label, applied, parse_config(raw, root), reference)


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file.

    Raises:
        ConfigError: when the file is missing, is not YAML, or the sweep or any cell is invalid.
    """
    data, root = read_config_file(path)
    return parse_sweep(data, root)


# ---------------------------------------------------------------------------------------------
# Running one cell


def training_identity(cfg: Config) -> str:
    """A sha256 of everything a cell may vary (VARIABLE, without train.distributed): two cells with
    the same identity train and score the same way."""
    sections = {name: getattr(cfg, name).model_dump(mode="json", exclude={"distributed"} if name == "train" else None)
                for name in VARIABLE}
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=16)
def _fingerprint(folder: str, stamp: tuple) -> tuple[str, str]:
    from tuneloop.modeling import fingerprint

    return fingerprint(Path(folder))


def _base_fingerprint(base: str) -> tuple[str, str]:
    """The base model's weights and tokenizer digests, hashed once per process while its files are unchanged."""
    from tuneloop.modeling import resolve_base

    folder = resolve_base(base)
    stamp = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()))
    return _fingerprint(str(folder), stamp)


def cache_key(cell: Cell, snapshot_dir: Path) -> str:
    """The digest a cell's result is cached under: the snapshot's train and held-out rows by content;
    what shapes the training (`cycle.training_digest`: the base model by content, method,
    quantization, train section); the tokenizer; how outputs are generated; the device it runs on
    (time, memory and latency are measured there); and the training libraries' versions."""
    from importlib import metadata

    from tuneloop import data
    from tuneloop.cycle import library_versions, training_digest
    from tuneloop.modeling import pick_device

    rows = {name: hashlib.sha256((snapshot_dir / name).read_bytes()).hexdigest() for name in (data.TRAIN_FILE, data.HELD_OUT_FILE)}
    base_sha, tokenizer_sha = _base_fingerprint(cell.config.model.base)
    training = training_digest(cell.config, base_sha, cell.config.method.model_dump(mode="json"))
    libraries = {**library_versions(), "tuneloop": metadata.version("tuneloop")}
    canonical = json.dumps({"format": CACHE_FORMAT, "rows": rows, "training": training, "tokenizer": tokenizer_sha,
                            "evaluation": cell.config.generation.model_dump(mode="json"),
                            "device": pick_device(cell.config.runtime.device), "libraries": libraries}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class CellResult:
    """What one cell produced: status ok or failed (with the error line), its training and held-out reports."""

    name: str
    settings: dict[str, Any]
    reference: bool
    status: str
    key: str = ""
    error: str | None = None
    cached: bool = False
    train: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    estimate: dict | None = None

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "CellResult":
        """Rebuild from `to_dict` output."""
        return cls(**raw)


def _failure(cell: Cell, key: str, error: str) -> CellResult:
    log.warning("sweep cell %s failed: %s", cell.name, error)
    return CellResult(cell.name, cell.settings, cell.reference, "failed", key, error, estimate=cell.estimate)


def cached_result(cache_dir: Path | None, key: str) -> CellResult | None:
    """The result cached under `key` (`cache_key`), or None."""
    if cache_dir is None:
        return None
    cached = cache_dir / key / RESULT_FILE
    return CellResult.from_dict(json.loads(cached.read_text())) if cached.is_file() else None


def run_cell(cell: Cell, snapshot_dir: Path, out_dir: Path, cache_dir: Path | None,
             command: list[str] | None = None) -> CellResult:
    """Run one cell: its cached result when its (data, cell) digest is cached, else train and score it
    in a child process. Never raises for the cell's own failure: an error, a crash or a kill comes
    back as a failed result (not cached, so a re-run tries again).

    Args:
        cell: the cell.
        snapshot_dir: the sweep's validated snapshot (every cell reads the same rows).
        out_dir: this cell's folder (train/ and cell.json).
        cache_dir: where results are cached; None for no cache.
        command: the child's command before its arguments (default: this Python, `-m tuneloop.sweep`).
    """
    key = cache_key(cell, snapshot_dir)
    stored = cached_result(cache_dir, key)
    if stored is not None:
        log.info("sweep cell %s: cached (the same rows and settings trained before, %s)", cell.name, key[:12])
        return CellResult(cell.name, cell.settings, cell.reference, "ok", key, None, True, stored.train,
                          stored.evaluation, cell.estimate or stored.estimate)
    out_dir.mkdir(parents=True, exist_ok=True)
    cell_file = out_dir / "cell-input.json"
    cell_file.write_text(cell.to_json())
    errors = out_dir / "error.txt"
    errors.unlink(missing_ok=True)
    log.info("sweep cell %s: training (%s)", cell.name, key[:12])
    argv = (command or [sys.executable, "-m", "tuneloop.sweep"]) + [str(cell_file), str(snapshot_dir), str(out_dir)]
    child = subprocess.Popen(argv, env={**os.environ, "TUNELOOP_SWEEP_CELL": cell.name})
    try:
        code = child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        child.wait()
        raise
    if code != 0:
        if errors.is_file():
            return _failure(cell, key, errors.read_text().strip())
        if code < 0:
            why = f"killed by signal {signal.Signals(-code).name}"
            if -code == signal.SIGKILL:
                why += " (out of memory, or stopped from outside)"
            return _failure(cell, key, f"the cell's process was {why}")
        return _failure(cell, key, f"the cell's process exited with code {code}")
    measured = json.loads((out_dir / RESULT_FILE).read_text())
    result = CellResult(cell.name, cell.settings, cell.reference, "ok", key, None, False, measured["train"],
                        measured["evaluation"], cell.estimate)
    if cache_dir is not None:  # written whole, then renamed: a reader never sees half a result
        target = cache_dir / key
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=target, delete=False, suffix=".tmp") as handle:
            json.dump(result.to_dict(), handle)
        os.replace(handle.name, target / RESULT_FILE)
    return result


def train_and_score(cell: Cell, snapshot_dir: Path, out_dir: Path) -> dict:
    """The child's work: train the cell on the snapshot, score it on the held-out rows; return both reports."""
    from tuneloop import data, evaluation, training
    from tuneloop.modeling import pick_device

    cfg = cell.config
    _, train_rows, held_out = data.load_snapshot(snapshot_dir)
    trained = training.train(train_rows, cfg, out_dir / "train")
    shutil.rmtree(out_dir / "train" / training.CHECKPOINTS_DIR, ignore_errors=True)  # the best one is adapter/
    scored = evaluation.evaluate(out_dir / "train" / training.ADAPTER_DIR, held_out, pick_device(cfg.runtime.device),
                                 cfg.train.eval_batch_size, cfg.generation)
    return {"train": trained.to_dict(), "evaluation": scored.to_dict()}


def _main(argv: list[str]) -> int:
    """`python -m tuneloop.sweep CELL_FILE SNAPSHOT_DIR OUT_DIR`: one cell, its error as one line in OUT_DIR/error.txt."""
    from tuneloop.progress import configure_logging

    configure_logging(False)
    cell_file, snapshot_dir, out_dir = (Path(a) for a in argv)
    try:
        measured = train_and_score(Cell.from_json(cell_file.read_text()), snapshot_dir, out_dir)
    except Exception as exc:  # noqa: BLE001 (every failure of a cell is reported, none sinks the sweep)
        (out_dir / "error.txt").write_text(" ".join(f"{type(exc).__name__}: {exc}".split()))  # one line
        log.error("%s: %s", type(exc).__name__, exc)
        return 1
    (out_dir / RESULT_FILE).write_text(json.dumps(measured))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
