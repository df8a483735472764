"""The evaluation gate: a pure decision over two evaluation reports. Imports no SDK.

The statistics (`evaluation.compare`) are computed in evaluation; this module owns the policy.

A candidate must clear the absolute floors and not be degenerate. With a champion scored on the
same held-out rows, it must also be shown non-inferior on every metric in `gate.metrics`
(accuracy and macro-F1 by default): the 95% paired-bootstrap interval of candidate - champion,
in points, must have its lower bound at or above -`gate.margin`. A higher point estimate is not
enough; on 200 rows one row is 0.5 accuracy points, so chance alone moves a point estimate by
several points. McNemar's exact test on the rows where exactly one model is right is reported
with the decision but does not gate it: non-inferiority, not a significant difference, is the bar.

Policies (`GateDecision.policy`):
- "compared": the paired comparison above.
- "first_run": no champion; `gate.first_run` = "floors" passes on the floors and the degeneracy
  checks, "require_manual" leaves the promotion to a person (`passed` and `manual` both True:
  the checks passed, and the cycle registers it without moving the champion alias).
- "reset_baseline": the champion was trained on another label set (or task), so the scores do
  not compare; handled as a first run.
- "too_few_rows": fewer than `gate.min_rows` held-out rows; the gate refuses to decide (not passed).

Slices (when the reports carry per-row slice values): no slice of at least `gate.min_slice_rows`
rows may be shown to regress past the margin on a gated metric: the upper bound of the slice's own
95% paired-bootstrap interval must not fall below -margin. The overall bar (non-inferiority) would
fail nearly every small slice on width alone, and a point estimate would fail equal models on
noise (one row of a 30-row slice is 3.3 points); a slice fails on evidence of a drop. Smaller
slices are reported, not gated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from tuneloop import evaluation, tasks
from tuneloop.config import GateConfig
from tuneloop.errors import DataError
from tuneloop.evaluation import EvalReport

MANUAL = "promote it by hand after review (`tuneloop registry promote`)"
POLICIES = ("compared", "first_run", "reset_baseline", "too_few_rows")
LATENCY_SLACK_MS = 5.0  # a latency ratio fails only past this many milliseconds slower as well


@dataclass(frozen=True)
class GateDecision:
    """The verdict, with one reason per check (every number it rests on), and the statistics.

    `policy` is one of POLICIES. `manual` is True when the checks passed but `gate.first_run`
    leaves the promotion to a person (then `passed` is True too, and no alias moves on its own).
    `stats` maps each gated metric to candidate, champion, delta_points, ci_low_points,
    ci_high_points, margin and passed (None where nothing was compared: no champion, or too few
    rows for an interval); `mcnemar` holds b (rows only the candidate gets right), c
    (rows only the champion gets right) and p_value; `slices` one entry per slice.
    """

    passed: bool
    reasons: list[str] = field(default_factory=list)
    metric: str = "macro_f1"
    candidate: float = 0.0
    champion: float | None = None
    manual: bool = False
    policy: str = "compared"
    stats: dict = field(default_factory=dict)
    mcnemar: dict | None = None
    slices: list[dict] = field(default_factory=list)
    ood: dict | None = None  # the decision on data.ood_eval_path's rows (`combine`), as a dict

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "GateDecision":
        """Rebuild from `to_dict` output, including decisions written before the policy fields.

        Raises:
            TypeError: when `raw` lacks `passed` or holds an unknown key.
        """
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown gate decision keys {unknown}")
        values = dict(raw)
        values.setdefault("policy", "first_run" if raw.get("champion") is None else "compared")
        return cls(**values)

    def save(self, path: Path) -> None:
        """Write the decision as JSON (what `load` reads)."""
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "GateDecision":
        """Read a decision file written by `save`.

        Raises:
            DataError: when the file is missing or is not a gate decision.
        """
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{path} is not a gate decision ({type(exc).__name__}: {exc}); "
                            f"recreate it with `tuneloop gate --out {path}`") from exc


def _floors(candidate: EvalReport, cfg: GateConfig) -> list[str]:
    if tasks.get(candidate.task).generative:  # the floors are classification scores
        return []
    failures = []
    if candidate.accuracy < cfg.min_accuracy:
        failures.append(f"accuracy {candidate.accuracy:.4f} is below the floor gate.min_accuracy={cfg.min_accuracy}")
    if candidate.macro_f1 < cfg.min_macro_f1:
        failures.append(f"macro-F1 {candidate.macro_f1:.4f} is below the floor gate.min_macro_f1={cfg.min_macro_f1}")
    return failures


def combine(decision: GateDecision, ood: GateDecision, rows: int) -> GateDecision:
    """The decision on the held-out rows joined with the one on the out-of-domain rows (`rows` of them):
    passed only if both passed; the out-of-domain reasons follow, each prefixed."""
    reasons = decision.reasons + [f"out-of-domain ({rows} rows): {reason}" for reason in ood.reasons]
    passed = decision.passed and ood.passed
    return replace(decision, passed=passed, manual=decision.manual and passed, reasons=reasons, ood=ood.to_dict())


def _latency(candidate: EvalReport, champion: EvalReport, cfg: GateConfig) -> list[str]:
    """A failure when the candidate's p99 single-text latency is over gate.max_latency_ratio times the
    champion's (both timed in the same evaluation step, on the same texts) and slower by more than
    LATENCY_SLACK_MS, so a millisecond of scheduling noise on a tiny model fails nothing."""
    new, old = candidate.latency_p99_ms, champion.latency_p99_ms
    if not cfg.max_latency_ratio or new <= 0 or old <= 0:  # unmeasured (a report from before p99 was kept)
        return []
    if new / old <= cfg.max_latency_ratio or new - old <= LATENCY_SLACK_MS:
        return []
    return [f"latency: p99 {new:.1f} ms per text is {new / old:.2f}x the champion's {old:.1f} ms, over "
            f"gate.max_latency_ratio={cfg.max_latency_ratio:g}; serve it only if the slowdown is worth it (raise the ratio)"]


def _degenerate(candidate: EvalReport) -> list[str]:
    if tasks.get(candidate.task).generative:
        written = set(candidate.predictions)
        if candidate.rows >= 2 and len(written) == 1:
            return [f"degenerate: the model writes the same output for every held-out row ({next(iter(written))[:40]!r})"]
        return []
    failures = []
    if candidate.predicted_classes < 2 <= len(candidate.per_class_f1):
        failures.append("degenerate: the model predicts a single class for every held-out row")
    if candidate.macro_f1 <= candidate.majority_baseline_macro_f1:
        failures.append(
            f"degenerate: macro-F1 {candidate.macro_f1:.4f} does not beat the majority-class baseline "
            f"{candidate.majority_baseline_macro_f1:.4f}"
        )
    return failures


def _cleared(candidate: EvalReport, cfg: GateConfig) -> str:
    """The floor checks a candidate cleared, with its numbers."""
    if tasks.get(candidate.task).generative:
        scores = ", ".join(f"{m} {candidate.metrics[m]:.4f}" for m in cfg.metrics)
        return f"{scores}; {candidate.task} has no floors" + ("; its outputs vary" if cfg.reject_degenerate else "")
    text = (f"accuracy {candidate.accuracy:.4f} >= gate.min_accuracy={cfg.min_accuracy}, "
            f"macro-F1 {candidate.macro_f1:.4f} >= gate.min_macro_f1={cfg.min_macro_f1}")
    if cfg.reject_degenerate:
        text += f", above the majority-class baseline {candidate.majority_baseline_macro_f1:.4f}"
    return text


def _points(delta: float) -> float:
    # Round off float noise (0.80 - 0.79 gives 1.0000000000000009 points) so a drop of exactly the
    # margin passes; metrics are count ratios, so 1e-6 points is below any real change.
    return round(delta, 6) + 0.0  # + 0.0 turns -0.0 into 0.0, so nothing prints "-0.00"


def _metric(report: EvalReport, name: str) -> tasks.Metric:
    return tasks.get(report.task).metric(name)


def _unit(report: EvalReport, name: str) -> str:
    """How a metric's differences and gate.margin read: points, or percent of the champion (perplexity)."""
    return "%" if _metric(report, name).relative else " points"


def _uncompared(candidate: EvalReport, champion: EvalReport | None, cfg: GateConfig) -> dict:
    """Per-metric stats when no interval is computed: the scores, and the point delta when there is a champion."""
    stats = {}
    for m in cfg.metrics:
        theirs = None if champion is None else champion.metrics.get(m)
        ours = candidate.metrics[m]
        delta = None if theirs is None else _points(_metric(candidate, m).delta_points(ours, theirs))
        stats[m] = {"candidate": ours, "champion": theirs, "delta_points": delta, "direction": candidate.directions[m],
                    "ci_low_points": None, "ci_high_points": None, "margin": cfg.margin, "passed": None}
    return stats


def _compare(
    candidate: EvalReport, champion: EvalReport, cfg: GateConfig,
) -> tuple[dict, dict, list[dict], list[str], list[str]]:
    """Judge the paired comparison; return stats, McNemar, slices, all reasons and the failing ones."""
    found = evaluation.compare(candidate, champion, cfg.bootstrap_draws, cfg.seed)
    stats, reasons, failures = {}, [], []
    for m in cfg.metrics:
        ours, theirs, unit = candidate.metrics[m], champion.metrics[m], _unit(candidate, m)
        low, high = (_points(x) for x in found.intervals[m])
        ok = low >= -cfg.margin
        stats[m] = {"candidate": ours, "champion": theirs,
                    "delta_points": _points(_metric(candidate, m).delta_points(ours, theirs)),
                    "direction": candidate.directions[m], "ci_low_points": low, "ci_high_points": high,
                    "margin": cfg.margin, "passed": ok}
        better = "" if candidate.directions[m] == "higher" else " (lower is better; + means the candidate is lower)"
        line = (f"{m} {ours:.4f} vs champion {theirs:.4f}: {stats[m]['delta_points']:+.2f}{unit}{better}, "
                f"95% CI [{low:+.2f}, {high:+.2f}]; ")
        line += (f"lower bound within gate.margin={cfg.margin}{unit}: non-inferior" if ok else
                 f"lower bound {low:+.2f} regresses more than gate.margin={cfg.margin}{unit}: "
                 "not shown to be non-inferior")
        reasons.append(line)
        failures += [] if ok else [line]
    test = None
    if found.p_value is not None:
        test = {"b": found.b, "c": found.c, "p_value": found.p_value}
        reasons.append(f"McNemar b={found.b} c={found.c} p={found.p_value:.3g} (b: rows only the candidate gets right, "
                       "c: rows only the champion gets right; reported, not gated)")
    slices, slice_reasons, slice_failures = _slices(found.slices, cfg, candidate)
    return stats, test, slices, reasons + slice_reasons, failures + slice_failures


def _slices(found: dict, cfg: GateConfig, candidate: EvalReport) -> tuple[list[dict], list[str], list[str]]:
    """Judge each slice by its paired interval (`Comparison.slices`); return entries, reasons, failing reasons."""
    entries, reasons, failures = [], [], []
    for name, (rows, pairs, intervals) in found.items():
        scores = {m: {"candidate": pairs[m][0], "champion": pairs[m][1],
                      "delta_points": _points(_metric(candidate, m).delta_points(pairs[m][0], pairs[m][1])),
                      "ci_low_points": _points(intervals[m][0]), "ci_high_points": _points(intervals[m][1])}
                  for m in cfg.metrics}
        worst = min(cfg.metrics, key=lambda m: (scores[m]["ci_high_points"], scores[m]["delta_points"]))
        gated = rows >= cfg.min_slice_rows
        ok = not gated or scores[worst]["ci_high_points"] >= -cfg.margin
        entries.append({"slice": name, "rows": rows, "gated": gated, "passed": ok, "metric": worst,
                        "delta_points": scores[worst]["delta_points"], "ci_high_points": scores[worst]["ci_high_points"],
                        "metrics": scores})
        line = f"slice {name!r} ({rows} rows): " + ", ".join(
            f"{m} {s['candidate']:.4f} vs {s['champion']:.4f} ({s['delta_points']:+.2f}{_unit(candidate, m)}, "
            f"95% CI [{s['ci_low_points']:+.2f}, {s['ci_high_points']:+.2f}])" for m, s in scores.items())
        if not gated:
            line += f"; fewer than gate.min_slice_rows={cfg.min_slice_rows} rows: reported, not gated"
        elif ok:
            line += f"; no drop past gate.margin={cfg.margin}{_unit(candidate, worst)} shown"
        else:
            line += (f"; {worst} shown to drop past gate.margin={cfg.margin}{_unit(candidate, worst)} "
                     f"(upper bound {scores[worst]['ci_high_points']:+.2f})")
            failures.append(line)
        reasons.append(line)
    return entries, reasons, failures


def _without_comparison(
    candidate: EvalReport, champion: EvalReport | None, cfg: GateConfig, failures: list[str],
) -> GateDecision:
    """Decide a first run, or a run whose champion knows other labels: floors, then gate.first_run."""
    value = candidate.metrics[cfg.metric]
    if champion is None:
        policy, why, baseline = "first_run", "no champion yet", None
    else:
        policy, baseline = "reset_baseline", champion.metrics.get(cfg.metric)
        if champion.task != candidate.task:
            why = (f"the champion is a {champion.task} model and the candidate a {candidate.task} one: the scores do "
                   "not compare, so this run resets the baseline")
        else:
            why = (f"champion's label set {sorted(champion.model_labels)} differs from the candidate's "
                   f"{sorted(candidate.model_labels)}: the scores do not compare, so this run resets the baseline")
    manual = cfg.first_run == "require_manual" and not failures
    if manual:
        verdict = f"{why}; gate.first_run=require_manual: it clears the floors ({_cleared(candidate, cfg)}), {MANUAL}"
    else:
        alone = "passes" if tasks.get(candidate.task).generative else "passes on the floors alone"
        verdict = f"{why}: {alone} ({_cleared(candidate, cfg)})"
    return GateDecision(
        passed=not failures, reasons=failures or [verdict], metric=cfg.metric, candidate=value,
        champion=baseline, manual=manual, policy=policy, stats=_uncompared(candidate, champion, cfg),
    )


def decide(candidate: EvalReport, champion: EvalReport | None, cfg: GateConfig,
           findings: list[dict] | None = None) -> GateDecision:
    """Decide whether the candidate may replace the champion.

    Args:
        candidate: the new adapter's scores on the held-out rows, with its per-row results.
        champion: the serving adapter's scores on the same rows, or None when nothing serves yet.
        cfg: the gate section.
        findings: the training run's detector findings (`diagnostics.Finding.to_dict`); those of a
            kind in `gate.refuse_findings` fail the candidate.

    Returns:
        The decision: `passed` is False for a rejection and for a refusal to decide (too few rows);
        a candidate left to a person is `passed` and `manual`.

    Raises:
        DataError: when a comparison is due but the reports lack per-row results or cover different rows.
    """
    task = tasks.get(candidate.task)
    if cfg.metrics is None or cfg.metric is None:  # a section built on its own: the task's defaults
        cfg = cfg.model_copy(update={"metrics": cfg.metrics or list(task.gated), "metric": cfg.metric or task.headline})
    missing = [m for m in cfg.metrics if m not in candidate.metrics]
    if missing:
        raise DataError(f"gate.metrics {missing} are not scores of this {candidate.task} evaluation "
                        f"({', '.join(candidate.metrics)}); set gate.metrics to some of them")
    failures = _floors(candidate, cfg) + (_degenerate(candidate) if cfg.reject_degenerate else [])
    failures += [f"training finding ({f['kind']}, in gate.refuse_findings): {f['message']}"
                 for f in findings or [] if f["kind"] in cfg.refuse_findings]
    changed = champion is not None and (champion.task != candidate.task or set(champion.model_labels) != set(candidate.model_labels))
    if champion is None or changed:
        return _without_comparison(candidate, champion, cfg, failures)
    value, baseline = candidate.metrics[cfg.metric], champion.metrics[cfg.metric]
    if candidate.rows < cfg.min_rows:
        refusal = (f"held-out set has {candidate.rows} rows, fewer than gate.min_rows={cfg.min_rows}: too few to tell "
                   f"the candidate ({cfg.metric} {value:.4f}) from the champion ({baseline:.4f}), so the gate refuses "
                   "to decide; add held-out rows or lower gate.min_rows")
        return GateDecision(passed=False, reasons=failures + [refusal], metric=cfg.metric, candidate=value,
                            champion=baseline, policy="too_few_rows", stats=_uncompared(candidate, champion, cfg))
    stats, test, slices, reasons, failed = _compare(candidate, champion, cfg)
    failures += _latency(candidate, champion, cfg)
    return GateDecision(
        passed=not failures and not failed, reasons=failures + reasons, metric=cfg.metric, candidate=value,
        champion=baseline, policy="compared", stats=stats, mcnemar=test, slices=slices,
    )
