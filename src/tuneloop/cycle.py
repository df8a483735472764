"""One continuous-training cycle as plain steps: validate, train, evaluate, gate, register, promote.

Each KFP component calls exactly one of these; `run_cycle` calls them in one process (the
direct path the overhead benchmark compares the pipeline against). Steps exchange folders and
JSON files, never live objects, so either driver sees the same inputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from tuneloop import data, evaluation, gate, preflight, registry, training
from tuneloop.config import Config
from tuneloop.errors import DataError
from tuneloop.evaluation import EvalReport
from tuneloop.gate import GateDecision
from tuneloop.modeling import pick_device, read_adapter_meta
from tuneloop.registry import Candidate, Registered

log = logging.getLogger(__name__)

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "mlflow", "dvc", "kfp")


@dataclass(frozen=True)
class Evaluation:
    """The candidate's and the champion's scores on the same held-out rows."""

    candidate: EvalReport
    champion: EvalReport | None
    champion_version: str | None

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "Evaluation":
        """Rebuild from `to_dict` output."""
        champion = EvalReport(**raw["champion"]) if raw["champion"] else None
        return cls(EvalReport(**raw["candidate"]), champion, raw["champion_version"])

    @classmethod
    def load(cls, path: Path) -> "Evaluation":
        """Read a scores file written by `evaluate`.

        Raises:
            DataError: when the file is missing or is not a scores file.
        """
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
            raise DataError(f"{path} is not a scores file from `tuneloop evaluate` ({type(exc).__name__}: {exc}); "
                            f"recreate it with `tuneloop evaluate --out {path}`") from exc


def run_preflight(cfg: Config, rev: str, out_dir: Path) -> data.Snapshot:
    """Run every check that can fail before training; return the validated snapshot of the data.

    Order: the device and local folders (a temp file at most), the registry store (seconds at
    most), the data at `rev` (validated on all rows), then the base model (built without weights).

    Raises:
        TuneloopError: the first problem found, as one line naming the key, the value and the fix.
    """
    device = preflight.check_runtime(cfg.runtime)
    snapshot = validate_step(cfg, rev, out_dir)
    preflight.check_model(cfg, device)
    return snapshot


def validate_step(cfg: Config, rev: str, out_dir: Path) -> data.Snapshot:
    """Check the registry store, read the data at `rev`, validate it against the champion, freeze it."""
    registry.check_store(cfg.registry)
    return data.prepare(cfg.data, rev, out_dir, registry.champion_labels(cfg.registry))


def train_step(cfg: Config, snapshot_dir: Path, out_dir: Path) -> training.TrainResult:
    """Check the base model and method, then train an adapter on a snapshot's training rows."""
    preflight.check_model(cfg, preflight.check_runtime(cfg.runtime))
    _, train_rows, _ = data.load_snapshot(snapshot_dir)
    result = training.train(train_rows, cfg, out_dir)
    (out_dir / "train.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def evaluate_step(cfg: Config, snapshot_dir: Path, adapter_dir: Path, work_dir: Path) -> Evaluation:
    """Score the candidate and the current champion on the snapshot's held-out rows."""
    registry.check_store(cfg.registry)
    _, _, held_out = data.load_snapshot(snapshot_dir)
    device = pick_device(cfg.runtime.device)
    candidate = evaluation.evaluate(adapter_dir, held_out, device, cfg.train.eval_batch_size)
    champion = registry.fetch_champion(cfg.registry, work_dir / "champion")
    champion_report = evaluation.evaluate(champion.adapter_dir, held_out, device, cfg.train.eval_batch_size) if champion else None
    return Evaluation(candidate, champion_report, champion.version if champion else None)


def gate_step(cfg: Config, scores: Evaluation) -> GateDecision:
    """Decide on the candidate (a pure function of the scores and the gate section)."""
    return gate.decide(scores.candidate, scores.champion, cfg.gate)


def _versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[f"{registry.TAG}version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[f"{registry.TAG}version.{name}"] = "absent"
    return found


def candidate_record(
    cfg: Config, snapshot: data.Snapshot, trained: dict, scores: Evaluation, decision: GateDecision, adapter_dir: Path,
) -> Candidate:
    """Assemble the registry contract for one gated candidate: params, metrics, tags, reports."""
    meta = read_adapter_meta(adapter_dir)
    metrics = {
        "accuracy": scores.candidate.accuracy, "macro_f1": scores.candidate.macro_f1,
        "accuracy_ci_low": scores.candidate.accuracy_ci[0], "accuracy_ci_high": scores.candidate.accuracy_ci[1],
        "macro_f1_ci_low": scores.candidate.macro_f1_ci[0], "macro_f1_ci_high": scores.candidate.macro_f1_ci[1],
        "latency_ms": scores.candidate.latency_ms,
        **{f"f1.{label}": value for label, value in scores.candidate.per_class_f1.items()},
        **{key: float(trained[key]) for key in ("trainable_params", "total_params", "peak_memory_mb", "wall_seconds",
                                                "samples_per_second", "adapter_bytes", "dev_loss", "dev_accuracy")},
    }
    if scores.champion:
        metrics.update(champion_accuracy=scores.champion.accuracy, champion_macro_f1=scores.champion.macro_f1)
    t = registry.TAG
    tags = {
        t + "base_model": meta.base_model, t + "base_sha256": meta.base_sha256, t + "tokenizer_sha256": meta.tokenizer_sha256,
        t + "task": meta.task, t + "method": cfg.method.name, t + "method_config": json.dumps(meta.method),
        t + "quantization": json.dumps(meta.quantization), t + "labels": json.dumps(meta.labels),
        t + "data_repo": snapshot.repo, t + "data_rev": snapshot.rev, t + "data_path": snapshot.path,
        t + "data_sha256": json.dumps(snapshot.sha256), t + "config_sha256": cfg.digest(),
        t + "champion_version": scores.champion_version or "", **_versions(),
    }
    params = {f"{section}.{key}": value for section in ("model", "method", "quantization", "train", "gate")
              for key, value in getattr(cfg, section).model_dump().items()}
    reports = {"evaluation": scores.to_dict(), "gate": decision.to_dict(), "train": trained, "data": snapshot.to_dict()}
    return Candidate(adapter_dir=adapter_dir, params=params, metrics=metrics, tags=tags, reports=reports,
                     passed=decision.passed, reason="; ".join(decision.reasons))


def register_step(
    cfg: Config, snapshot_dir: Path, train_dir: Path, scores: Evaluation, decision: GateDecision, run_name: str,
) -> Registered:
    """Register the gated candidate, passed or rejected, with all its evidence (no alias moves)."""
    snapshot, _, _ = data.load_snapshot(snapshot_dir)
    trained = json.loads((train_dir / "train.json").read_text())
    record = candidate_record(cfg, snapshot, trained, scores, decision, train_dir / "adapter")
    return registry.register(cfg.registry, record, run_name)


def promote_step(
    cfg: Config, snapshot_dir: Path, train_dir: Path, scores: Evaluation, decision: GateDecision, run_name: str,
) -> Registered:
    """Register a passed candidate, then make it champion if the champion is still the one it beat."""
    registered = register_step(cfg, snapshot_dir, train_dir, scores, decision, run_name)
    registry.promote(cfg.registry, registered.version, scores.champion_version, "; ".join(decision.reasons), run_name)
    return registered


def run_cycle(cfg: Config, rev: str, work_dir: Path, run_name: str = "in-process") -> tuple[GateDecision, Registered]:
    """Run every step in this process (no orchestrator); return the decision and what was registered."""
    snapshot_dir, train_dir = work_dir / "snapshot", work_dir / "train"
    validate_step(cfg, rev, snapshot_dir)
    train_step(cfg, snapshot_dir, train_dir)
    scores = evaluate_step(cfg, snapshot_dir, train_dir / "adapter", work_dir)
    decision = gate_step(cfg, scores)
    act = promote_step if decision.passed else register_step
    return decision, act(cfg, snapshot_dir, train_dir, scores, decision, run_name)
