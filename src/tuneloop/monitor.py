"""One monitoring tick over the serving champion: measure, decide, and the retrain's new data revision.

`measure` reads the traffic the champion answered since it took over (the newest
`monitor.max_window_rows` rows), the labels that arrived for it (feedback), and the champion's
training snapshot (the reference); it scores calibrated drift (`tuneloop.drift`) and compares the
champion on fresh labelled rows and on a re-score of its frozen held-out rows, with its own
registered scores and with the previous champion on the same rows, paired as the gate pairs them.
`decide` feeds those signals and the recorded decisions to `policy.decide`, and `record` keeps every
decision as a run of the monitor experiment. `retrain_rev` commits the next data revision: the
current training file plus the newly labelled traffic, minus every text of the held-out rows.

The `*_step` functions at the end are what the `monitor` pipeline's components call; the pipeline
runs the continuous-training pipeline itself on the revision `retrain_rev` commits. This module
imports no orchestration.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import posixpath
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from tuneloop import data, drift, evaluation, feedback, gitrepo, modeling, policy, registry, tables, tasks, traffic
from tuneloop.config import Config
from tuneloop.errors import ConfigError, DataError, RegistryConflict, RegistryError, TuneloopError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measured:
    """What one tick measured: the policy's signals, the drift report, the window's bounds and its bad lines."""

    signals: policy.Signals
    since: str  # ISO 8601: the champion took over then (the window's start)
    until: str  # ISO 8601: the tick's time (the window's end, exclusive)
    drift: dict | None = None  # drift.DriftReport.to_dict(), None when the window was too small
    skipped: dict = field(default_factory=dict)  # malformed log lines by kind
    skipped_summary: str = ""
    notes: list[str] = field(default_factory=list)
    html: str | None = None  # Evidently's report of reference vs window

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "Measured":
        """Rebuild from `to_dict` output."""
        return cls(**{**raw, "signals": policy.Signals.from_dict(raw["signals"])})


def champion_since(cfg: Config, champion: str) -> datetime:
    """When the champion took over: the newest completed move of the alias to it (the registry's clock)."""
    moves = [e for e in registry.history(cfg.registry) if e.alias == registry.CHAMPION and e.to_version == champion
             and e.status == "done"]
    if not moves:
        raise RegistryError(f"champion {champion} of {cfg.registry.model_name} has no recorded move in the history; "
                            "run `tuneloop registry repair`")
    return datetime.fromtimestamp(moves[-1].created_ms / 1000, timezone.utc)


def previous_champion(cfg: Config) -> str | None:
    """The version a rollback would restore, or None (no earlier champion, or one on another base model)."""
    try:
        return registry.rollback_plan(cfg.registry)[1]
    except RegistryError:
        return None


def _eval_path(record: registry.VersionRecord) -> str | None:
    """The held-out file the version was gated on: the data file other than its training file, if any."""
    others = [path for path in record.data_sha256 if path != record.data_path]
    return others[0] if others else None


def snapshot_of(cfg: Config, record: registry.VersionRecord, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The version's own training and held-out rows, read again at its data revision."""
    section = cfg.data.model_copy(update={"repo": record.data_repo, "path": record.data_path,
                                          "eval_path": _eval_path(record), "labels": record.labels})
    data.prepare(section, record.data_rev, out_dir)
    _, train, held_out = data.load_snapshot(out_dir)
    return train, held_out


@dataclass
class _Scored:
    """One model's predictions (label, top probability) on every text it was asked about."""

    by_text: dict[str, tuple[str, float]]

    def labels(self, texts: list[str]) -> list[str]:
        return [self.by_text[t][0] for t in texts]

    def scores(self, texts: list[str]) -> list[float]:
        return [self.by_text[t][1] for t in texts]


def _score(fetched: registry.Fetched, texts: list[str], cfg: Config) -> _Scored:
    unique = list(dict.fromkeys(texts))
    if not unique:
        return _Scored({})
    device = modeling.pick_device(cfg.runtime.device)
    labels, scores, _ = evaluation.predict_scored(fetched.adapter_dir, unique, device, cfg.train.eval_batch_size,
                                                  base=cfg.model.base)
    return _Scored(dict(zip(unique, zip(labels, scores))))


def _report(truth: list[str], texts: list[str], scored: _Scored, model_labels: list[str], seed: int) -> evaluation.EvalReport:
    predicted = scored.labels(texts)
    labels = sorted(set(truth) | set(predicted))
    return evaluation.score(truth, predicted, labels, scores=scored.scores(texts), seed=seed, model_labels=model_labels)


def _comparisons(cfg: Config, source: str, truth: list[str], texts: list[str], champion: registry.Fetched,
                 mine: _Scored, previous: registry.Fetched | None, theirs: _Scored | None) -> list[policy.Comparison]:
    """The champion on these rows against its registered scores, and against the previous champion (paired)."""
    judged = len(texts) >= cfg.monitor.min_labelled_rows
    ours = _report(truth, texts, mine, champion.labels, cfg.gate.seed)
    out = []
    for metric in cfg.gate.metrics:
        value = getattr(ours, metric)
        registered = champion.record.metrics.get(metric)
        if registered is not None:
            low, high = getattr(ours, f"{metric}_ci")
            out.append(policy.Comparison(
                baseline="registered", source=source, metric=metric, rows=len(texts), champion=value,
                baseline_score=float(registered), delta_points=100 * (value - registered),
                ci_low_points=100 * (low - registered) if judged else None,
                ci_high_points=100 * (high - registered) if judged else None, margin=cfg.gate.margin))
    if previous is None or theirs is None:
        return out
    before = _report(truth, texts, theirs, previous.labels, cfg.gate.seed)
    paired = evaluation.compare(ours, before, draws=cfg.gate.bootstrap_draws, seed=cfg.gate.seed)
    for metric in cfg.gate.metrics:
        low, high = paired.intervals[metric]
        out.append(policy.Comparison(
            baseline="previous", source=source, metric=metric, rows=len(texts), champion=getattr(ours, metric),
            baseline_score=getattr(before, metric), delta_points=100 * (getattr(ours, metric) - getattr(before, metric)),
            ci_low_points=low if judged else None, ci_high_points=high if judged else None, margin=cfg.gate.margin))
    return out


def _known(frame: pd.DataFrame) -> set[str]:
    """Texts as validation compares them (case and runs of whitespace ignored)."""
    return {" ".join(str(t).lower().split()) for t in frame["text"]}


def new_labelled(labelled: pd.DataFrame, *seen: pd.DataFrame) -> pd.DataFrame:
    """Labelled traffic not yet in any of the `seen` frames, one row per text (the first label given)."""
    if labelled.empty:
        return labelled
    known = set().union(*(_known(frame) for frame in seen))
    normal = labelled["text"].map(lambda t: " ".join(str(t).lower().split()))
    return labelled[~normal.isin(known) & ~normal.duplicated()]


def labelled_of(cfg: Config, log_path: Path, until: datetime) -> pd.DataFrame:
    """The labelled requests this model (registry.model_name) served before `until`; a log may hold several models'."""
    labelled = feedback.labelled_rows(log_path, until=until)
    return labelled[labelled["model"] == cfg.registry.model_name] if not labelled.empty else labelled


def _window_frame(rows: list[traffic.TrafficRow], labelled: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame({"request_id": [r.request_id for r in rows], "text": [r.text for r in rows],
                          "prediction": [r.prediction for r in rows], "score": [r.score for r in rows]})
    labels = dict(zip(labelled["request_id"], labelled["label"])) if not labelled.empty else {}
    frame["label"] = frame["request_id"].map(labels)
    return frame


def window_size(rows: int) -> int:
    """The newest rows to score: `rows` cut down to two significant digits (1,137 -> 1,100; 523 -> 520).

    A null distribution is computed once per window size (about two minutes at 10,000 rows, for
    Evidently's domain classifier) and cached; a window grows with every tick, so scoring it at its
    exact size would compute a new null each time. On this grid, sizes repeat, and at most a tenth
    of the oldest rows is left out.
    """
    if rows < 100:
        return rows
    step = 10 ** (len(str(rows)) - 2)
    return rows // step * step


def measure(cfg: Config, log_path: Path, work_dir: Path, now: datetime | None = None) -> Measured:
    """Measure one tick: drift of the champion's traffic, and the champion on fresh and held-out labelled rows.

    Raises:
        RegistryError: no champion, or the registry is unreachable.
        DataError: the log is missing, or the champion's data cannot be read again.
    """
    tasks.require_labels(cfg.model.task, "tuneloop monitor")
    now = now or datetime.now(timezone.utc)
    champion_number = registry.alias_of(cfg.registry, registry.CHAMPION)
    if champion_number is None:
        raise RegistryError(f"{cfg.registry.model_name} has no champion to monitor; run `tuneloop run` first")
    traffic.require_log(log_path)
    since = champion_since(cfg, champion_number)
    window = traffic.read_window(log_path, since=since)  # to the end, so a torn or bad last line is reported too
    rows = [r for r in window.rows if r.model == cfg.registry.model_name and r.model_version == champion_number
            and r.time < now][-cfg.monitor.max_window_rows:]
    rows = rows[len(rows) - window_size(len(rows)):]
    labelled_all = labelled_of(cfg, log_path, now)
    recent = labelled_all[labelled_all["time"] >= since] if not labelled_all.empty else labelled_all
    notes = [f"window: {len(rows)} rows answered by champion {champion_number} since {traffic.format_time(since)}"]
    champion = registry.fetch(cfg.registry, champion_number, work_dir / "champion")
    previous_number, previous = previous_champion(cfg), None
    if previous_number:
        try:
            previous = registry.fetch(cfg.registry, previous_number, work_dir / "previous")
        except RegistryError as exc:  # the champion is still judged against its own scores; a rollback waits
            notes.append(f"previous champion {previous_number} not scored: {exc}")
    train, held_out = snapshot_of(cfg, champion.record, work_dir / "reference-snapshot")
    fresh = new_labelled(recent, train)  # fresh evidence: once per text, never a row the champion trained on
    if window.skipped.total:
        notes.append(window.skipped.summary(str(log_path)))
    texts = list(train["text"]) + list(fresh["text"]) + list(held_out["text"])
    mine = _score(champion, texts, cfg)
    theirs = _score(previous, list(fresh["text"]) + list(held_out["text"]), cfg) if previous else None
    comparisons = []
    for source, rows_of in (("feedback", fresh), ("heldout", held_out)):
        if rows_of.empty:
            notes.append(f"{source}: no labelled rows")
            continue
        comparisons += _comparisons(cfg, source, list(rows_of["label"]), list(rows_of["text"]), champion, mine,
                                    previous, theirs)
    reference = train[["text", "label"]].assign(prediction=mine.labels(list(train["text"])),
                                                score=mine.scores(list(train["text"])))
    report, html = None, None
    if len(rows) >= cfg.monitor.min_window_rows and len(reference) >= cfg.monitor.min_window_rows:
        frame = _window_frame(rows, labelled_all)
        found = drift.score_window(reference, frame, cfg.monitor, cfg.model.base, Path(cfg.monitor.cache_dir))
        report = found.to_dict()
        notes += found.reasons
        html = str(drift.write_html(reference, frame, work_dir / "drift.html"))
    else:
        notes.append(f"drift not scored: the window has {len(rows)} rows and the reference {len(reference)}, "
                     f"monitor.min_window_rows={cfg.monitor.min_window_rows}")
    unseen = new_labelled(labelled_all, train, held_out)
    signals = policy.Signals(
        champion=champion_number, previous=previous_number if previous is not None else None, window_rows=len(rows),
        new_rows=len(unseen), drift=[policy.DriftSignal(**s) for s in report["signals"]] if report else [],
        degradation=comparisons,
    )
    return Measured(signals=signals, since=since.isoformat(), until=now.isoformat(), drift=report,
                    skipped=dict(window.skipped.counts), skipped_summary=window.skipped.summary(str(log_path))
                    if window.skipped.total else "", notes=notes, html=html)


def history(cfg: Config, now: datetime) -> list[policy.PolicyDecision]:
    """The recorded decisions that can still limit an action now (within the longest policy window)."""
    horizon = max(cfg.policy.cooldown, cfg.policy.retrain_window, cfg.policy.dedup_window)
    out = []
    for tick in registry.tick_history(cfg.registry, cfg.monitor.experiment, now - timedelta(seconds=horizon + 60)):
        try:
            out.append(policy.PolicyDecision(action=tick["action"], wanted=tick["wanted"] or tick["action"],
                                             key=tick["key"], at=datetime.fromisoformat(tick["at"]), reasons=[],
                                             signals=policy.Signals(champion=tick["champion"] or "?"),
                                             rollback_to=tick["rollback_to"] or None))
        except ValueError as exc:  # a run someone else wrote into the experiment: not a decision of ours
            log.warning("monitor run %s is not a decision (%s); ignored", tick["run_id"], exc)
    return out


def decide(cfg: Config, measured: Measured, now: datetime | None = None) -> policy.PolicyDecision:
    """The policy's decision on these signals, given the decisions recorded before."""
    now = now or datetime.now(timezone.utc)
    decision = policy.decide(measured.signals, history(cfg, now), now, cfg.policy)
    if decision.action == "rollback" and decision.rollback_to is None:
        decision = policy.PolicyDecision(**{**decision.__dict__, "rollback_to": measured.signals.previous})
    return decision


def record(cfg: Config, decision: policy.PolicyDecision, measured: Measured) -> str:
    """Keep the decision with the signals behind it as a run of the monitor experiment; return its id."""
    summary = {"model": cfg.registry.model_name, "action": decision.action, "wanted": decision.wanted,
               "key": decision.key, "at": decision.at.isoformat(), "champion": measured.signals.champion,
               "rollback_to": decision.rollback_to or "", "outcome": ""}
    metrics: dict[str, float] = {"window_rows": measured.signals.window_rows, "new_rows": measured.signals.new_rows,
                                 "malformed_lines": sum(measured.skipped.values())}
    if measured.drift:
        metrics["drift_combined_p"] = measured.drift["combined_p"]
        metrics.update({f"drift_p.{s['name']}": s["p_value"] for s in measured.drift["signals"]})
    for c in measured.signals.degradation:
        metrics[f"delta.{c.source}.{c.baseline}.{c.metric}"] = c.delta_points
    documents = {"decision.json": json.dumps({"decision": decision.to_dict(), "measured": measured.to_dict()}, indent=2)}
    with tempfile.TemporaryDirectory(prefix="tuneloop-record-") as scratch:
        files = {}
        if measured.html:  # a pipeline artifact's file has no suffix; the run keeps it as drift/drift.html
            files["drift"] = Path(scratch) / "drift.html"
            files["drift"].write_bytes(Path(measured.html).read_bytes())
        return registry.record_tick(cfg.registry, cfg.monitor.experiment, summary, metrics, documents, files)


def _appended(raw: bytes, path: str, rows: pd.DataFrame, cfg: Config) -> bytes:
    """The training file's bytes with `rows` appended in its own format, other columns left empty."""
    suffix = tables.table_format(path)
    text = raw.decode("utf-8")
    if text and not text.endswith("\n"):
        text += "\n"
    if suffix == ".jsonl":
        return (text + "".join(json.dumps({cfg.data.text_column: t, cfg.data.label_column: lab}, ensure_ascii=False) + "\n"
                               for t, lab in zip(rows["text"], rows["label"]))).encode("utf-8")
    delimiter = "\t" if suffix == ".tsv" else ","
    header = next(csv.reader(io.StringIO(text.lstrip("\ufeff")), delimiter=delimiter))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, delimiter=delimiter, lineterminator="\n")
    for t, lab in zip(rows["text"], rows["label"]):
        writer.writerow({cfg.data.text_column: t, cfg.data.label_column: lab})
    return (text + out.getvalue()).encode("utf-8")


@dataclass(frozen=True)
class RetrainData:
    """The data revision a retrain trains on."""

    rev: str
    path: str
    added_rows: int
    train_rows: int


def retrain_rev(cfg: Config, log_path: Path, until: datetime, work_dir: Path,
                expected_champion: str | None = None) -> RetrainData:
    """Commit the next data revision: data.path at data.rev plus the labelled traffic it lacks.

    Every labelled row served before `until` whose text is not already in the training file, in
    the held-out file, or among the champion's frozen held-out rows is appended (one row per text).
    The file is committed with `data add` semantics (validated, DVC-tracked, pushed, one commit).

    When nothing is left to add but data.rev is newer than the champion's data (an earlier retrain
    committed the rows and then failed or was rejected), that revision is trained on as it is.

    Raises:
        ConfigError: when data.repo is not a local workspace, data.path is not where `data add` puts
            it, data.rev is not the clean checked-out HEAD, or slices are set without a held-out file.
        RegistryConflict: when the champion is no longer `expected_champion`.
        DataError: when there is nothing new to add, a label is outside the label set, or the
            combined file fails validation.
    """
    root = Path(cfg.data.repo)
    if "://" in cfg.data.repo or not gitrepo.is_repo(root):
        raise ConfigError(f"data.repo {cfg.data.repo!r} is not a local workspace; a retrain commits new data there, "
                          "so run the monitor where the data repository is checked out")
    name, suffix = posixpath.splitext(posixpath.basename(cfg.data.path))
    if posixpath.normpath(cfg.data.path) != f"data/{name}{suffix}":
        raise ConfigError(f"data.path {cfg.data.path!r} is not under data/; a retrain commits the new file where "
                          f"`tuneloop data add` puts it (data/{name}{suffix}); move the file there")
    if cfg.data.slice_column and not cfg.data.eval_path:
        raise ConfigError(f"data.slice_column {cfg.data.slice_column!r} is set without data.eval_path: traffic rows "
                          "have no slice, and some would join the held-out split; set data.eval_path to a held-out file")
    raw, resolved = data.read_at(cfg.data.repo, cfg.data.rev, cfg.data.path)
    if resolved != gitrepo.resolve_rev(cfg.data.repo, "HEAD") or gitrepo.git(root, "status", "--porcelain", "--", cfg.data.path).strip():
        raise ConfigError(f"data.rev {cfg.data.rev!r} is not the checked-out HEAD of {cfg.data.repo}, or {cfg.data.path} "
                          "has uncommitted changes; a retrain commits on HEAD, so check out the branch and commit first")
    current = tables.parse_table(raw, cfg.data.path, cfg.data.text_column, cfg.data.label_column)
    seen = [current]
    if cfg.data.eval_path:
        eval_raw, _ = data.read_at(cfg.data.repo, resolved, cfg.data.eval_path, "data.eval_path")
        seen.append(tables.parse_table(eval_raw, cfg.data.eval_path, cfg.data.text_column, cfg.data.label_column))
    champion = registry.alias_of(cfg.registry, registry.CHAMPION)
    if expected_champion is not None and champion != expected_champion:
        raise RegistryConflict(f"champion is version {champion}, not {expected_champion} as judged; nothing was committed "
                               "(the next tick judges the new champion)")
    champion_rev = None
    if champion is not None:
        fetched = registry.fetch(cfg.registry, champion, work_dir / "champion")
        champion_rev = fetched.record.data_rev
        seen.append(snapshot_of(cfg, fetched.record, work_dir / "champion-snapshot")[1])
    fresh = new_labelled(labelled_of(cfg, log_path, until), *seen)
    if fresh.empty:
        if champion_rev is not None and resolved != champion_rev:  # an earlier retrain committed them: train on that
            log.info("retrain data: no labelled traffic left to add; data rev %s is newer than the champion's", resolved[:8])
            return RetrainData(rev=resolved, path=cfg.data.path, added_rows=0, train_rows=len(current))
        raise DataError(f"no labelled traffic in {log_path} that the training data lacks; add labels with "
                        "`tuneloop feedback add` before retraining")
    allowed = set(cfg.data.labels or (fetched.labels if champion is not None else []))
    unknown = sorted(set(fresh["label"]) - allowed) if allowed else []
    if unknown:
        ids = ", ".join(fresh.loc[fresh["label"].isin(unknown), "request_id"].head(3))
        raise DataError(f"labelled traffic has label(s) {unknown} outside the label set {sorted(allowed)} (requests {ids}); "
                        "fix the feedback, or add the labels to data.labels and retrain by hand")
    combined = _appended(raw, cfg.data.path, fresh, cfg)
    with tempfile.TemporaryDirectory(prefix="tuneloop-retrain-") as scratch:
        source = Path(scratch) / f"{name}{suffix}"
        source.write_bytes(combined)
        version = data.add_dataset(root, source, name, cfg.data)
    log.info("retrain data: %d labelled traffic rows added to %s at rev %s", len(fresh), cfg.data.path, version.rev[:8])
    return RetrainData(rev=version.rev, path=version.path, added_rows=len(fresh), train_rows=version.rows)


# --- the steps of the `monitor` pipeline (and of `tuneloop monitor`), exchanging JSON files ---------


def measure_step(cfg: Config, log_path: Path, out: Path, html_out: Path | None = None) -> Measured:
    """Measure and write the result to `out` as JSON (the HTML drift report to `html_out` when scored)."""
    with tempfile.TemporaryDirectory(prefix="tuneloop-monitor-") as scratch:
        measured = measure(cfg, log_path, Path(scratch))
        if measured.html and html_out is not None:
            html_out.parent.mkdir(parents=True, exist_ok=True)
            html_out.write_bytes(Path(measured.html).read_bytes())
        measured = Measured(**{**measured.__dict__, "html": str(html_out) if measured.html and html_out else None})
    out.write_text(json.dumps(measured.to_dict()))
    return measured


def decide_step(cfg: Config, measured_path: Path, out: Path, html: Path | None = None) -> policy.PolicyDecision:
    """Decide on the measured signals, record the decision in the monitor experiment, write it to `out`.

    `html` is the drift report where this step sees it (a pipeline step gets it as an input artifact,
    not at the path the measuring step wrote it to); it is logged with the decision when drift was scored.
    """
    measured = Measured.from_dict(json.loads(measured_path.read_text()))
    if html is not None:
        measured = Measured(**{**measured.__dict__, "html": str(html) if measured.drift else None})
    decision = decide(cfg, measured)
    run_id = record(cfg, decision, measured)
    out.write_text(json.dumps({"decision": decision.to_dict(), "run_id": run_id}))
    log.info("monitor decision for champion %s: %s (wanted %s); %s", measured.signals.champion, decision.action,
             decision.wanted, " | ".join(decision.reasons))
    return decision


def read_decision(path: Path) -> tuple[policy.PolicyDecision, str]:
    """The decision a `decide_step` wrote, and the id of the run that records it."""
    raw = json.loads(path.read_text())
    return policy.PolicyDecision.from_dict(raw["decision"]), raw["run_id"]


def _acting(cfg: Config, run_id: str) -> Any:
    """Write a failure of the action onto the decision's run before it propagates (the decision still counts)."""
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except TuneloopError as exc:
            registry.set_tick_outcome(cfg.registry, run_id, f"failed: {type(exc).__name__}: {exc}")
            raise
    return guard()


def rollback_step(cfg: Config, decision_path: Path) -> str:
    """Roll back as decided, through the registry's audited rollback, if the champion is still the one judged."""
    decision, run_id = read_decision(decision_path)
    why = "monitor: " + " | ".join(decision.reasons)
    with _acting(cfg, run_id):
        try:
            moved_from, moved_to = registry.rollback(cfg.registry, why, to=decision.rollback_to, by=f"monitor:{run_id}",
                                                     expected=decision.signals.champion)
            outcome = (f"rolled back {moved_from} -> {moved_to}" if moved_to
                       else f"nothing to roll back: champion is {moved_from}")
        except RegistryConflict as exc:  # someone moved the champion since it was judged: theirs stands
            outcome = f"not rolled back: {exc}"
    registry.set_tick_outcome(cfg.registry, run_id, outcome)
    log.info("monitor: %s", outcome)
    return outcome


def retrain_data_step(cfg: Config, log_path: Path, measured_path: Path, decision_path: Path) -> str:
    """Commit the retrain's data revision from the labelled traffic up to the tick's time; return the rev."""
    measured = Measured.from_dict(json.loads(measured_path.read_text()))
    decision, run_id = read_decision(decision_path)
    with _acting(cfg, run_id), tempfile.TemporaryDirectory(prefix="tuneloop-retrain-") as scratch:
        made = retrain_rev(cfg, log_path, datetime.fromisoformat(measured.until), Path(scratch), expected_champion=decision.signals.champion)
    registry.set_tick_outcome(cfg.registry, run_id, f"retrain on data rev {made.rev} "
                                                   f"({made.added_rows} labelled traffic rows added, {made.train_rows} rows)")
    return made.rev


def outcome_step(cfg: Config, decision_path: Path, outcome: str) -> str:
    """Add the retrain's result (the continuous-training outcome JSON) to the decision's run."""
    _, run_id = read_decision(decision_path)
    result = json.loads(outcome)
    decision = result["decision"]
    verdict = "passed" if decision["passed"] else "rejected"
    text = f"retrained: version {result['version']} gate {verdict}: " + "; ".join(decision["reasons"])
    registry.set_tick_outcome(cfg.registry, run_id, text)
    return text
