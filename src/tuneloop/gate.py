"""The evaluation gate: a pure decision over two evaluation reports. Imports no SDK.

A candidate passes when it clears the absolute floors, is not degenerate, and (when a champion
exists) trails it by at most `gate.max_regression` points on `gate.metric`. The first run, with
no champion, passes on the floors and the degeneracy check alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tuneloop.config import GateConfig
from tuneloop.evaluation import EvalReport


@dataclass(frozen=True)
class GateDecision:
    """The verdict, with one reason per check that failed (or why it passed)."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    metric: str = "macro_f1"
    candidate: float = 0.0
    champion: float | None = None

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)


def _floors(candidate: EvalReport, cfg: GateConfig) -> list[str]:
    failures = []
    if candidate.accuracy < cfg.min_accuracy:
        failures.append(f"accuracy {candidate.accuracy:.4f} is below the floor gate.min_accuracy={cfg.min_accuracy}")
    if candidate.macro_f1 < cfg.min_macro_f1:
        failures.append(f"macro-F1 {candidate.macro_f1:.4f} is below the floor gate.min_macro_f1={cfg.min_macro_f1}")
    return failures


def _degenerate(candidate: EvalReport) -> list[str]:
    failures = []
    if candidate.predicted_classes < 2 <= len(candidate.per_class_f1):
        failures.append("degenerate: the model predicts a single class for every held-out row")
    if candidate.macro_f1 <= candidate.majority_baseline_macro_f1:
        failures.append(
            f"degenerate: macro-F1 {candidate.macro_f1:.4f} does not beat the majority-class baseline "
            f"{candidate.majority_baseline_macro_f1:.4f}"
        )
    return failures


def decide(candidate: EvalReport, champion: EvalReport | None, cfg: GateConfig) -> GateDecision:
    """Decide whether the candidate may replace the champion.

    Args:
        candidate: the new adapter's scores on the held-out rows.
        champion: the serving adapter's scores on the same rows, or None when nothing serves yet.
        cfg: the gate section.
    """
    value = getattr(candidate, cfg.metric)
    failures = _floors(candidate, cfg) + (_degenerate(candidate) if cfg.reject_degenerate else [])
    if champion is None:
        baseline, verdict = None, "no champion yet: passes on the floors alone"
    else:
        baseline = getattr(champion, cfg.metric)
        # Round off float noise (0.80 - 0.79 gives 1.0000000000000009 points) so a drop of exactly
        # max_regression passes; metrics are count ratios, so 1e-6 points is below any real change.
        drop = round(100 * (baseline - value), 6)
        verdict = f"{cfg.metric} {value:.4f} vs champion {baseline:.4f} ({0.0 - drop:+.2f} points)"  # 0.0 - x, not -x: no "-0.00"
        if drop > cfg.max_regression:
            failures.append(f"{verdict} regresses more than gate.max_regression={cfg.max_regression} points")
    return GateDecision(
        passed=not failures, reasons=failures or [verdict], metric=cfg.metric, candidate=value, champion=baseline,
    )
