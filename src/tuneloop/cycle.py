"""One continuous-training cycle as plain steps: validate, train, evaluate, gate, register, promote.

Each KFP component calls exactly one of these; `run_cycle` calls them in one process (the
direct path the overhead benchmark compares the pipeline against). Steps exchange folders and
JSON files, never live objects, so either driver sees the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from tuneloop import data, dossier, evaluation, gate, preflight, registry, tables, tasks, training, validation
from tuneloop.config import Config
from tuneloop.errors import DataError, RegistryConflict
from tuneloop.evaluation import EvalReport
from tuneloop.gate import GateDecision
from tuneloop.modeling import load_tokenizer, pick_device, read_adapter_meta, resolve_base
from tuneloop.registry import Candidate, Registered, VersionRecord

log = logging.getLogger(__name__)

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "mlflow", "dvc", "kfp")
# What every run measures of its cost (train.json keys, logged as run metrics, shown by `registry show`).
EFFICIENCY = ("trainable_params", "total_params", "peak_memory_mb", "wall_seconds", "samples_per_second",
              "tokens_per_second", "adapter_bytes", "cost")


@dataclass(frozen=True)
class Evaluation:
    """The candidate's and the champion's scores on the same held-out rows."""

    candidate: EvalReport
    champion: EvalReport | None
    champion_version: str | None
    # Where the champion came from, for the dossier's data and config diffs: data_repo, data_rev,
    # data_path, and its run's params.
    champion_origin: dict | None = None
    findings: list[dict] = field(default_factory=list)  # the candidate's training findings (train.json)
    # Both models' scores on data.ood_eval_path's rows (None without the file, or no champion).
    ood_candidate: EvalReport | None = None
    ood_champion: EvalReport | None = None

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "Evaluation":
        """Rebuild from `to_dict` output."""
        def report(key: str) -> EvalReport | None:
            return EvalReport.from_dict(raw[key]) if raw.get(key) else None
        return cls(EvalReport.from_dict(raw["candidate"]), report("champion"), raw["champion_version"],
                   raw.get("champion_origin"), list(raw.get("findings") or []), report("ood_candidate"),
                   report("ood_champion"))

    def save(self, path: Path) -> None:
        """Write the scores file (what `load` reads)."""
        path.write_text(json.dumps(self.to_dict(), indent=2))

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


def validation_rules(cfg: Config, count_tokens: bool = True) -> validation.Rules:
    """The data rules of model.task; a generative task's targets are counted in the base's tokens
    (`count_tokens`: the tokenizer loads in well under a second, with no model weights)."""
    task = tasks.get(cfg.model.task)
    if not task.generative:
        return validation.CLASSIFICATION
    counter = None
    if count_tokens:
        tokenizer = load_tokenizer(resolve_base(cfg.model.base))

        def counter(texts: list[str]) -> list[int]:
            return tasks.target_lengths(task, tokenizer, texts)
    return validation.Rules(generative=True, roles=task.roles, count_tokens=counter,
                            max_target_tokens=cfg.generation.max_new_tokens)


def validate_step(cfg: Config, rev: str, out_dir: Path) -> data.Snapshot:
    """Check the registry store, read the data at `rev`, validate it against the champion, freeze it."""
    registry.check_store(cfg.registry)
    return data.prepare(cfg.data, rev, out_dir, registry.champion_labels(cfg.registry, cfg.model.task),
                        rules=validation_rules(cfg))


def train_step(cfg: Config, snapshot_dir: Path, out_dir: Path) -> training.TrainResult:
    """Train on a snapshot's training rows (training checks the base model and method first).

    With a champion serving, a refresh starts as `train.strategy` says, and `train.replay_share` of
    its rows are replayed from the champion's data revision (`data.replay`); both are recorded in
    train.json. With none, it trains fresh without replay.
    """
    _, train_rows, held_out = data.load_snapshot(snapshot_dir)
    if cfg.train.strategy == "fresh" and not cfg.train.replay_share:
        return training.train(train_rows, cfg, out_dir)
    with tempfile.TemporaryDirectory() as scratch:
        champion = registry.fetch_champion(cfg.registry, Path(scratch) / "champion")
        if champion is None:
            log.info("no champion serves yet: training fresh, with nothing to replay")
            return training.train(train_rows, cfg, out_dir)
        frame, sources = train_rows, []
        if cfg.train.replay_share:
            origin = {"data_repo": champion.record.data_repo, "data_rev": champion.record.data_rev,
                      "data_path": champion.record.data_path}
            labels = None if tasks.get(cfg.model.task).generative else sorted(train_rows["label"].unique())
            ood = data.load_ood(snapshot_dir)
            judged = held_out if ood is None else pd.concat([held_out, ood])
            replayed, source = data.replay(cfg.data, origin, train_rows, judged, cfg.train.replay_share,
                                           cfg.train.seed, labels)  # never a row either held-out set scores
            log.info("replaying %d rows of %s@%s (%d available) beside %d new rows", source["rows"], source["path"],
                     source["rev"][:8], source["available"], len(train_rows))
            frame, sources = pd.concat([train_rows[["text", "label"]], replayed], ignore_index=True), [source]
        parent = training.Parent(champion.version, champion.adapter_dir)
        result = training.train(frame, cfg, out_dir, parent if cfg.train.strategy != "fresh" else None)
    if sources:
        result = replace(result, replay_sources=sources)
        if int(os.environ.get("RANK", "0")) == 0:  # as training writes its report: the main process only
            result.save(out_dir)
    return result


def evaluate_step(cfg: Config, snapshot_dir: Path, adapter_dir: Path, work_dir: Path) -> Evaluation:
    """Score the candidate and the current champion on the snapshot's held-out rows."""
    registry.check_store(cfg.registry)
    snapshot, _, held_out = data.load_snapshot(snapshot_dir)
    if snapshot.slice_column != cfg.data.slice_column:  # else the gate would judge other slices, or none, unsaid
        raise DataError(f"the snapshot in {snapshot_dir} was made with data.slice_column {snapshot.slice_column!r}, "
                        f"the config has {cfg.data.slice_column!r}; recreate it with `tuneloop data validate "
                        f"--out {snapshot_dir}` under this config")
    device = pick_device(cfg.runtime.device)
    candidate = evaluation.evaluate(adapter_dir, held_out, device, cfg.train.eval_batch_size, cfg.generation)
    report = adapter_dir.parent / training.REPORT_FILE  # a training folder's: its detectors' findings go to the gate
    findings = training.TrainResult.load(adapter_dir.parent).findings if report.is_file() else []
    ood = data.load_ood(snapshot_dir)
    ood_candidate = None if ood is None else evaluation.evaluate(adapter_dir, ood, device, cfg.train.eval_batch_size,
                                                                 cfg.generation)
    champion = registry.fetch_champion(cfg.registry, work_dir / "champion")
    if champion is None:
        return Evaluation(candidate, None, None, findings=findings, ood_candidate=ood_candidate)
    served = read_adapter_meta(champion.adapter_dir).task
    if served != candidate.task:  # its scores would not compare: the gate resets the baseline
        log.warning("the champion (version %s) is a %s model and the candidate a %s one: the champion is not scored",
                    champion.version, served, candidate.task)
        champion_report = EvalReport(rows=0, task=served)
    else:
        champion_report = evaluation.evaluate(champion.adapter_dir, held_out, device, cfg.train.eval_batch_size,
                                              cfg.generation)
    ood_champion = None
    if ood is not None and champion_report.rows:
        ood_champion = evaluation.evaluate(champion.adapter_dir, ood, device, cfg.train.eval_batch_size, cfg.generation)
    origin = {"data_repo": champion.record.data_repo, "data_rev": champion.record.data_rev,
              "data_path": champion.record.data_path, "params": champion.params}
    return Evaluation(candidate, champion_report, champion.version, origin, findings, ood_candidate, ood_champion)


def gate_step(cfg: Config, scores: Evaluation, snapshot_dir: Path | None = None, dossier_dir: Path | None = None) -> GateDecision:
    """Decide on the candidate (a pure function of the scores and the gate section); with a
    snapshot and a folder, also write the promotion dossier there (dossier.html, dossier.md)."""
    decision = gate.decide(scores.candidate, scores.champion, cfg.gate, scores.findings)
    if scores.ood_candidate is not None:  # gated like the held-out rows, on their own interval
        champion = scores.ood_champion if scores.champion is not None and scores.champion.rows else None
        # latency is judged once, on the held-out rows' timings
        ood = gate.decide(scores.ood_candidate, champion, cfg.gate.model_copy(update={"max_latency_ratio": 0.0}))
        decision = gate.combine(decision, ood, scores.ood_candidate.rows)
    if snapshot_dir is not None and dossier_dir is not None:
        write_dossier(cfg, scores, decision, snapshot_dir, dossier_dir)
    return decision


def _old_rows(cfg: Config, origin: dict | None) -> tuple[pd.DataFrame | None, str | None]:
    """The champion's training file at its revision, or None when it cannot be read (said in the dossier)."""
    if not origin or not origin.get("data_rev"):
        return None, None
    try:
        raw, _ = data.read_at(origin["data_repo"], origin["data_rev"], origin["data_path"])
        return tables.parse_table(raw, origin["data_path"], cfg.data.text_column, cfg.data.label_column), origin["data_rev"]
    except (DataError, OSError) as exc:
        log.warning("the dossier has no data diff: the champion's data is unreadable (%s)", exc)
        return None, origin["data_rev"]


# Where training runs changes no weight (one process or N take the same steps): kept out of the
# training digest and of the parameters a version records and a dossier compares.
WHERE_IT_RUNS = {"train": {"distributed"}}


def _params(cfg: Config) -> dict[str, object]:
    params = {f"{section}.{key}": value for section in ("model", "method", "quantization", "generation", "train", "gate")
              for key, value in getattr(cfg, section).model_dump(mode="json", exclude=WHERE_IT_RUNS.get(section)).items()}
    return {**params, "train.learning_rate": cfg.learning_rate()}  # the rate used, also when the method's default


def write_dossier(cfg: Config, scores: Evaluation, decision: GateDecision, snapshot_dir: Path, folder: Path) -> tuple[Path, Path]:
    """Write the promotion dossier for one gate decision; return the HTML and markdown paths."""
    snapshot, _, held_out = data.load_snapshot(snapshot_dir)
    new_raw, _ = data.read_at(snapshot.repo, snapshot.rev, snapshot.path)
    new_rows = tables.parse_table(new_raw, snapshot.path, cfg.data.text_column, cfg.data.label_column)
    old_rows, old_rev = _old_rows(cfg, scores.champion_origin)
    diff = dossier.data_diff(old_rows, new_rows) if old_rows is not None else None
    if diff is not None:
        diff.update(old_rev=old_rev, new_rev=snapshot.rev)
    old_params = {key: value for key, value in ((scores.champion_origin or {}).get("params") or {}).items()}
    new_params = {key: str(value) for key, value in _params(cfg).items()}
    evidence = {
        "model": cfg.registry.model_name, "candidate_version": None, "champion_version": scores.champion_version,
        "run": "", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "decision": decision.to_dict(), "candidate": scores.candidate.to_dict(),
        "champion": scores.champion.to_dict() if scores.champion else None, "texts": held_out["text"].tolist(),
        "data_diff": diff, "config_diff": dossier.config_diff(old_params if scores.champion_origin else None, new_params),
        "leaks": {"count": snapshot.near_duplicate_count, "action": snapshot.leak_action,
                  "pairs": snapshot.near_duplicates[:5], "threshold": cfg.data.leak_threshold},
        "findings": scores.findings, "ood": None if scores.ood_candidate is None else {
            "candidate": scores.ood_candidate.metrics, "champion": scores.ood_champion.metrics if scores.ood_champion else None,
            "rows": scores.ood_candidate.rows, "path": cfg.data.ood_eval_path, "decision": decision.ood},
    }
    folder.mkdir(parents=True, exist_ok=True)
    return dossier.write(folder, evidence)


def library_versions() -> dict[str, str]:
    """The installed version of each library in LIBRARIES ("absent" for one not installed)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def training_digest(cfg: Config, base_sha256: str, method: dict) -> str:
    """A sha256 of what shapes the trained weights: the model (by content, not by path), the method as
    it resolved on the base (`method`, from the adapter's metadata), quantization and the train section
    with the learning rate used. Paths and hosts are left out, so it is the same on every machine."""
    model = {key: value for key, value in cfg.model.model_dump(mode="json").items() if key != "base"}
    train = {**cfg.train.model_dump(mode="json", exclude=WHERE_IT_RUNS["train"]), "learning_rate": cfg.learning_rate()}
    sections = {"model": model, "base_sha256": base_sha256, "method": method, "train": train,
                "quantization": cfg.quantization.model_dump(mode="json")}
    if tasks.get(cfg.model.task).generative:  # max_new_tokens cuts the targets training sees
        sections["generation"] = cfg.generation.model_dump(mode="json")
    return hashlib.sha256(json.dumps(sections, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _verdict(decision: GateDecision) -> str:
    if not decision.passed:
        return "rejected"
    return "manual" if decision.manual else "passed"


def candidate_record(
    cfg: Config, snapshot: data.Snapshot, trained: dict, scores: Evaluation, decision: GateDecision, adapter_dir: Path,
    run_name: str = "", documents: dict[str, str] | None = None,
) -> Candidate:
    """Assemble the registry contract for one gated candidate: the version record, run metrics, params, reports."""
    meta = read_adapter_meta(adapter_dir)
    if trained.get("learning_rate") and trained["learning_rate"] != cfg.learning_rate():  # a divergence retry's rate
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": trained["learning_rate"]})})
    headline = {}
    for name, value in scores.candidate.metrics.items():  # the task's metrics: accuracy and macro_f1, ROUGE, perplexity
        low, high = scores.candidate.intervals[name]
        headline.update({name: value, f"{name}_ci_low": low, f"{name}_ci_high": high})
    if scores.champion:
        headline.update({f"champion_{name}": value for name, value in scores.champion.metrics.items()})
    if scores.ood_candidate is not None:  # the out-of-domain rows' scores
        headline.update({f"ood_{name}": value for name, value in scores.ood_candidate.metrics.items()})
    for name, stat in (decision.stats or {}).items():
        if stat.get("ci_low_points") is not None:
            headline.update({f"delta_{name}_ci_low_points": stat["ci_low_points"], f"delta_{name}_ci_high_points": stat["ci_high_points"]})
    metrics = {
        **headline, "latency_ms": scores.candidate.latency_ms,
        **{f"f1.{label}": value for label, value in scores.candidate.per_class_f1.items()},
        **{key: float(trained[key]) for key in EFFICIENCY + ("dev_loss", "dev_accuracy") if key in trained},
        "trainable_percent": 100 * trained["trainable_params"] / trained["total_params"],
        "latency_p50_ms": scores.candidate.latency_p50_ms, "latency_p95_ms": scores.candidate.latency_p95_ms,
        "latency_p99_ms": scores.candidate.latency_p99_ms,
        "training_findings": len(trained.get("findings", [])),
    }
    record = VersionRecord(
        base_model=meta.base_model, base_sha256=meta.base_sha256, tokenizer_sha256=meta.tokenizer_sha256, task=meta.task,
        labels=list(meta.labels), method=meta.method["name"], method_config=meta.method, quantization=meta.quantization,
        libraries=library_versions(), data_repo=snapshot.repo, data_rev=snapshot.rev, data_path=snapshot.path,
        data_sha256=snapshot.sha256, config_sha256=training_digest(cfg, meta.base_sha256, meta.method), pipeline_run=run_name,
        metrics=headline, gate=_verdict(decision), gate_reasons=list(decision.reasons),
        champion_version=scores.champion_version, strategy=trained.get("strategy", "fresh"),
        parent_version=trained.get("parent_version", ""), replay_sources=list(trained.get("replay_sources", [])),
    )
    params = _params(cfg)
    reports = {"evaluation": scores.to_dict(), "gate": decision.to_dict(), "train": trained, "data": snapshot.to_dict()}
    history = {"train_loss": trained.get("loss_curve", []), "grad_norm": trained.get("grad_norms", [])}
    plots = [adapter_dir.parent / name for name in training.PLOTS.values() if (adapter_dir.parent / name).is_file()]
    return Candidate(adapter_dir=adapter_dir, record=record, params=params, metrics=metrics, reports=reports,
                     documents=documents or {}, history={k: v for k, v in history.items() if v},
                     files={"diagnostics": plots} if plots else {})


def register_step(
    cfg: Config, snapshot_dir: Path, train_dir: Path, scores: Evaluation, decision: GateDecision, run_name: str,
    dossier_files: tuple[Path, Path] | None = None,
) -> Registered:
    """Register the gated candidate, passed or rejected, with all its evidence (no alias moves).

    `dossier_files` (HTML, markdown) are logged on the run as dossier/dossier.html and .md.
    """
    snapshot, _, _ = data.load_snapshot(snapshot_dir)
    trained = training.TrainResult.load(train_dir).to_dict()
    documents = {}
    if dossier_files is not None:
        documents = {f"dossier/dossier.{kind}": path.read_text() for kind, path in zip(("html", "md"), dossier_files)}
    record = candidate_record(cfg, snapshot, trained, scores, decision, train_dir / training.ADAPTER_DIR, run_name, documents)
    return registry.register(cfg.registry, record, run_name)


def promote_step(
    cfg: Config, snapshot_dir: Path, train_dir: Path, scores: Evaluation, decision: GateDecision, run_name: str,
    dossier_files: tuple[Path, Path] | None = None,
) -> Registered:
    """Register a passed candidate, then make it champion if the champion is still the one it beat.

    A candidate the policy leaves to a person (`gate.first_run: require_manual`), or one whose
    champion was replaced while it was gated, becomes the challenger instead.

    Raises:
        RegistryConflict: when the champion moved meanwhile (the candidate is registered and challenger).
    """
    registered = register_step(cfg, snapshot_dir, train_dir, scores, decision, run_name, dossier_files)
    why = "; ".join(decision.reasons)
    if decision.manual:
        registry.make_challenger(cfg.registry, registered.version, why, run_name, run_name)
        log.warning("version %s passed but needs a manual promotion: tuneloop registry promote %s --reason ...",
                    registered.version, registered.version)
        return registered
    try:
        registry.promote(cfg.registry, registered.version, scores.champion_version, why, run_name, run_name)
    except RegistryConflict:
        registry.make_challenger(cfg.registry, registered.version, f"not promoted: the champion moved; {why}", run_name, run_name)
        raise
    return registered


def settle_step(promote: bool, config: str, run_name: str, snapshot: str, trained: str, scores: str, decision: str,
                dossier_html: str, dossier_md: str) -> str:
    """The body of both gate-branch components (artifact paths as strings); return the outcome as JSON."""
    from tuneloop.config import config_from_json
    from tuneloop.progress import start_step

    start_step()
    verdict = GateDecision.load(Path(decision))
    step = promote_step if promote else register_step
    registered = step(
        config_from_json(config), Path(snapshot), Path(trained), Evaluation.load(Path(scores)),
        verdict, run_name, (Path(dossier_html), Path(dossier_md)),
    )
    return json.dumps({"version": registered.version, "decision": verdict.to_dict()})


def run_cycle(cfg: Config, rev: str, work_dir: Path, run_name: str = "in-process") -> tuple[GateDecision, Registered]:
    """Run every step in this process (no orchestrator); return the decision and what was registered."""
    snapshot_dir, train_dir, dossier_dir = work_dir / "snapshot", work_dir / "train", work_dir / "dossier"
    validate_step(cfg, rev, snapshot_dir)
    train_step(cfg, snapshot_dir, train_dir)
    scores = evaluate_step(cfg, snapshot_dir, train_dir / training.ADAPTER_DIR, work_dir)
    decision = gate_step(cfg, scores, snapshot_dir, dossier_dir)
    files = (dossier_dir / "dossier.html", dossier_dir / "dossier.md")
    act = promote_step if decision.passed else register_step
    return decision, act(cfg, snapshot_dir, train_dir, scores, decision, run_name, files)
