"""The policy: a pure decision over one monitoring tick's signals and the decisions before it. Imports no SDK.

The monitor measures (drift alarms with calibrated p-values, the champion's paired comparisons on
fresh rows, the count of newly labelled rows); `decide` turns them, the history of earlier
decisions, the time and `PolicyConfig` into a `PolicyDecision`: `ignore`, `retrain` or
`rollback`, with one reason per number it rests on and a dedup key. The edge acts on it and stores
it (`to_dict`) as history for the next tick.

What the signals call for (`PolicyDecision.wanted`), first match wins:
- rollback: the champion is degraded and the previous champion clears the gate's bar against it on
  the rows where the champion is degraded (non-inferior on every compared metric, better on at
  least one). A rollback promotes the previous version again, so where the evidence is, it must
  clear what a candidate clears. The rows where the champion holds up (the frozen held-out
  re-score, when the degradation shows on fresh labels) do not decide: the champion won its
  promotion there, and they show the past distribution, not the traffic it serves now.
- retrain: a drift alarm, or a degradation with no such previous version (or with
  `policy.auto_rollback` off).
- ignore: neither.

Degraded means shown worse by more than the margin: the upper bound of the 95% interval of
champion - baseline is below -margin, the mirror of the gate's bar (lower bound at or above
-margin). The baseline is the champion's own registered score, or the previous champion scored on
the same rows (paired). A comparison without an interval (too few rows) is reported, not judged.

What holds the wanted action back (the action is then `ignore`; `wanted` keeps what was held):
- a rollback: `policy.cooldown` after the last *rollback*, and dedup. Neither a retrain's cooldown,
  nor the retrain budget, nor `policy.min_new_rows`: a degraded champion serves users now, and a
  rollback is cheap, audited and reversible, while a retrain takes hours and only then meets the
  gate. The champion a retrain just promoted is the one most likely to need a rollback, so a retrain
  cooldown that blocked it would block exactly the case it exists for. The rollback cooldown stops
  a cascade (v8 -> v7 -> v6 within minutes on one bad batch of labels).
- a retrain: `policy.auto_retrain`, `policy.min_new_rows` (retraining on the same data repeats the
  same model), `policy.cooldown` after *any* action (a retrain may still be running, or a restored
  champion has not yet been watched on its own traffic), `policy.max_retrains` per
  `policy.retrain_window`, and dedup.
Every check is evaluated and reported, so an ignored retrain lists all that held it. A held rollback
does not turn into a retrain: the rollback it repeats, or the one just taken, already answers the
degradation, and the next tick judges the restored champion afresh.

Dedup: the key names the incident, the wanted action and the champion it concerns (`retrain@7`,
`rollback@8->7`). An action taken with the same key within `policy.dedup_window` is not taken
again: the champion is unchanged, so the earlier action still stands (running, or rejected by the
gate). Cooldown and dedup each turn a storm of alarms into one action; dedup also when the cooldown
is 0, and for longer (6h against 1h by default). Decisions to ignore never count as actions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Sequence

from tuneloop.config import SECONDS, PolicyConfig

ACTIONS = ("ignore", "retrain", "rollback")
BASELINES = ("registered", "previous")


@dataclass(frozen=True)
class DriftSignal:
    """One drift signal on the window: raw score, p-value against its null at the window's size, alarm."""

    name: str
    score: float
    p_value: float
    alarm: bool

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_value <= 1.0:
            raise ValueError(f"drift signal {self.name!r} has p-value {self.p_value}; a p-value lies in [0, 1]")


@dataclass(frozen=True)
class Comparison:
    """The champion against a baseline on the same rows, in points, as the gate reports it.

    `baseline` is "registered" (the champion's own score at registration) or "previous" (the
    previous champion scored on the same rows, paired); `source` names the rows ("feedback" for a
    labelled window, "heldout" for a re-score of the frozen held-out set). The bounds are those of
    the 95% interval of champion - baseline (None when too few rows gave none); `margin` is the
    gate's margin in points.
    """

    baseline: str
    source: str
    metric: str
    rows: int
    champion: float
    baseline_score: float
    delta_points: float
    ci_low_points: float | None
    ci_high_points: float | None
    margin: float

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"comparison baseline {self.baseline!r} is not one of {list(BASELINES)}")


@dataclass(frozen=True)
class Signals:
    """What one monitoring tick measured about the serving champion (versions as registered)."""

    champion: str
    previous: str | None = None
    window_rows: int = 0
    new_rows: int = 0
    drift: list[DriftSignal] = field(default_factory=list)
    degradation: list[Comparison] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.previous is None and any(c.baseline == "previous" for c in self.degradation):
            raise ValueError("a comparison with the previous champion needs Signals.previous, the version it scored")
        if self.window_rows < 0 or self.new_rows < 0:
            raise ValueError(f"row counts cannot be negative (window_rows={self.window_rows}, new_rows={self.new_rows})")

    @classmethod
    def from_dict(cls, raw: dict) -> "Signals":
        """Rebuild from the `signals` entry of `PolicyDecision.to_dict`."""
        values = dict(raw)
        values["drift"] = [DriftSignal(**s) for s in raw.get("drift", [])]
        values["degradation"] = [Comparison(**c) for c in raw.get("degradation", [])]
        return cls(**values)


@dataclass(frozen=True)
class PolicyDecision:
    """The action, what the signals wanted before the limits, the dedup key, and every reason.

    `action` and `wanted` are in ACTIONS; they differ when a limit held the wanted action back.
    `rollback_to` names the version to restore when `action` is "rollback". `at` is timezone-aware.
    """

    action: str
    wanted: str
    key: str
    at: datetime
    reasons: list[str]
    signals: Signals
    rollback_to: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS or self.wanted not in ACTIONS:
            raise ValueError(f"policy action {self.action!r} / wanted {self.wanted!r}: each must be one of {list(ACTIONS)}")
        _aware(self.at, "a decision's time")

    def to_dict(self) -> dict:
        """Return a JSON-serializable form (the time as ISO 8601 with its offset)."""
        return {**asdict(self), "at": self.at.isoformat()}

    @classmethod
    def from_dict(cls, raw: dict) -> "PolicyDecision":
        """Rebuild from `to_dict` output.

        Raises:
            TypeError: when `raw` holds an unknown key or lacks a required one.
            ValueError: when an action, time or signal value is out of range.
        """
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown policy decision keys {unknown}")
        values = dict(raw)
        if "at" in raw:
            values["at"] = datetime.fromisoformat(raw["at"])
        if "signals" in raw:
            values["signals"] = Signals.from_dict(raw["signals"])
        return cls(**values)


def _aware(at: datetime, what: str) -> None:
    # history comes from other machines and other days; a naive time cannot be compared with it
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} {at.isoformat()} has no timezone; pass an aware time, e.g. datetime.now(timezone.utc)")


def _span(seconds: float) -> str:
    """Format a duration as its two largest non-zero units, the way config durations are written (`1h 30m`)."""
    left, parts = round(seconds), []
    for unit, size in sorted(SECONDS.items(), key=lambda item: -item[1]):
        if left >= size and len(parts) < 2:
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts) or "0s"


def _version(name: str | None) -> str:
    return f"v{name}"


def _drift_line(signal: DriftSignal, rows: int) -> str:
    verdict = "alarm" if signal.alarm else "no alarm"
    return f"drift {signal.name}: score {signal.score:.4g}, calibrated p={signal.p_value:.3g} on {rows} rows: {verdict}"


def _worse(c: Comparison) -> bool:
    """The champion is shown worse than the baseline by more than the margin."""
    return c.ci_high_points is not None and c.ci_high_points < -c.margin


def _comparison_line(c: Comparison, signals: Signals) -> str:
    against = "its registered score" if c.baseline == "registered" else f"previous champion {_version(signals.previous)}"
    line = (f"{c.metric} on {c.rows} {c.source} rows: champion {_version(signals.champion)} {c.champion:.4f} vs "
            f"{against} {c.baseline_score:.4f}: {c.delta_points:+.2f} points, ")
    if c.ci_low_points is None or c.ci_high_points is None:
        return line + "no interval (too few rows): reported, not judged"
    line += f"95% CI [{c.ci_low_points:+.2f}, {c.ci_high_points:+.2f}]; upper bound "
    if _worse(c):
        return line + f"below -margin ({c.margin} points): degraded"
    return line + f"not below -margin ({c.margin} points): not degraded"


def _previous_better(signals: Signals) -> tuple[list[str], str]:
    """Where the previous champion is shown better, if a rollback to it is justified; else [] and why not.

    Judged on the rows where the champion is degraded (the fresh labels, usually): there the previous
    champion must clear the gate's bar with the roles swapped: previous - champion has lower bound
    -ci_high_points, so non-inferior is ci_high_points <= margin, and better is ci_high_points < 0.
    Rows where the champion holds up (the frozen held-out set, usually) do not decide: they show
    the past distribution, where the champion won its promotion, not the traffic it now serves.
    """
    paired = [c for c in signals.degradation if c.baseline == "previous"]
    degraded = {c.source for c in signals.degradation if _worse(c)}
    judged = [c for c in paired if c.source in degraded]
    better = [f"{c.metric} on {c.source} rows" for c in judged if c.ci_high_points is not None and c.ci_high_points < 0]
    if not better or any(c.ci_high_points is None or c.ci_high_points > c.margin for c in judged):
        return [], f"previous champion {_version(signals.previous)} does not clear the gate's bar on the same rows"
    return better, ""


def _wanted(signals: Signals, cfg: PolicyConfig) -> tuple[str, str]:
    """What the signals call for, and the line that says why."""
    champion, previous = _version(signals.champion), _version(signals.previous)
    alarms = [s.name for s in signals.drift if s.alarm]
    degraded = any(_worse(c) for c in signals.degradation)
    better, why_not = _previous_better(signals) if degraded else ([], "")
    if better and cfg.auto_rollback:
        return "rollback", (f"champion {champion} is degraded and previous champion {previous} clears the gate's bar "
                            f"on the rows where it is (non-inferior on every compared metric, better on "
                            f"{', '.join(better)}): roll back to {previous}")
    causes = ([f"drift alarm on {', '.join(alarms)}"] if alarms else []) + (
        [f"champion {champion} is degraded"] if degraded else [])
    if not causes:
        return "ignore", "no drift alarm and no degradation: nothing to do"
    if better:
        causes.append(f"previous champion {previous} is better, but policy.auto_rollback=false")
    elif degraded and signals.previous is None:
        causes.append("no previous champion to roll back to")
    elif degraded and not any(c.baseline == "previous" for c in signals.degradation):
        causes.append(f"previous champion {previous} was not scored on the same rows")
    elif degraded:
        causes.append(why_not)
    return "retrain", "; ".join(causes) + ": retrain"


def _key(wanted: str, signals: Signals) -> str:
    if wanted == "rollback":
        return f"rollback@{signals.champion}->{signals.previous}"
    return f"{wanted}@{signals.champion}"


def _ago(decision: PolicyDecision, now: datetime) -> float:
    # A decision stamped after `now` (clocks of two monitor replicas disagree) counts as just taken,
    # which holds the next action back rather than letting it through.
    return max(0.0, (now - decision.at).total_seconds())


def _when(decision: PolicyDecision, now: datetime) -> str:
    return f"{decision.action} at {decision.at.isoformat(timespec='seconds')}, {_span(_ago(decision, now))} ago"


def _cooldown(actions: list[PolicyDecision], kinds: tuple[str, ...], now: datetime, cfg: PolicyConfig) -> tuple[bool, str]:
    label = "action" if len(kinds) > 1 else kinds[0]
    last = max((d for d in actions if d.action in kinds), key=lambda d: d.at, default=None)
    if last is None:
        return True, f"no earlier {label}: policy.cooldown={_span(cfg.cooldown)} does not apply"
    ago = _ago(last, now)
    if ago < cfg.cooldown:
        return False, (f"last {label}: {_when(last, now)}: inside policy.cooldown={_span(cfg.cooldown)} "
                       f"({_span(cfg.cooldown - ago)} left)")
    return True, f"last {label}: {_when(last, now)}: policy.cooldown={_span(cfg.cooldown)} has passed"


def _budget(actions: list[PolicyDecision], now: datetime, cfg: PolicyConfig) -> tuple[bool, str]:
    recent = sorted(_ago(d, now) for d in actions if d.action == "retrain" and _ago(d, now) < cfg.retrain_window)
    head = f"retrains in the last policy.retrain_window={_span(cfg.retrain_window)}: {len(recent)}"
    if len(recent) < cfg.max_retrains:
        return True, f"{head}, below policy.max_retrains={cfg.max_retrains}"
    return False, (f"{head}, at policy.max_retrains={cfg.max_retrains}; the oldest leaves the window in "
                   f"{_span(cfg.retrain_window - recent[-1])}")


def _dedup(key: str, actions: list[PolicyDecision], now: datetime, cfg: PolicyConfig) -> tuple[bool, str]:
    same = [d for d in actions if d.key == key and _ago(d, now) < cfg.dedup_window]
    if not same:
        return True, f"no action with key {key} inside policy.dedup_window={_span(cfg.dedup_window)}"
    last = max(same, key=lambda d: d.at)
    return False, f"duplicate of the {_when(last, now)} (key {key}): inside policy.dedup_window={_span(cfg.dedup_window)}"


def _rows(signals: Signals, cfg: PolicyConfig) -> tuple[bool, str]:
    have, need = signals.new_rows, cfg.min_new_rows
    if have >= need:
        return True, f"new labelled rows: {have} >= policy.min_new_rows={need}"
    return False, f"new labelled rows: {have} < policy.min_new_rows={need}; {need - have} more needed before a retrain"


def _checks(wanted: str, key: str, signals: Signals, actions: list[PolicyDecision], now: datetime,
            cfg: PolicyConfig) -> list[tuple[bool, str]]:
    """Every limit on the wanted action, each with whether it lets the action through."""
    if wanted == "rollback":
        return [_cooldown(actions, ("rollback",), now, cfg), _dedup(key, actions, now, cfg)]
    switch = [] if cfg.auto_retrain else [(False, "policy.auto_retrain=false: a retrain is left to an operator")]
    return switch + [_rows(signals, cfg), _cooldown(actions, ("retrain", "rollback"), now, cfg),
                     _budget(actions, now, cfg), _dedup(key, actions, now, cfg)]


def decide(signals: Signals, history: Sequence[PolicyDecision], now: datetime, cfg: PolicyConfig) -> PolicyDecision:
    """Decide what to do about the serving champion: ignore, retrain or roll back.

    Args:
        signals: this tick's measurements.
        history: earlier decisions, in any order; those to ignore do not count as actions.
        now: the decision time, timezone-aware.
        cfg: the policy section.

    Returns:
        The decision; `action` is "ignore" both when nothing is wanted and when a limit held the
        wanted action back (then `wanted` names it and the reasons say which limit).

    Raises:
        ValueError: when `now` has no timezone.
    """
    _aware(now, "now")
    reasons = [_drift_line(s, signals.window_rows) for s in signals.drift]
    reasons += [_comparison_line(c, signals) for c in signals.degradation]
    wanted, why = _wanted(signals, cfg)
    reasons.append(why)
    key = _key(wanted, signals)
    if wanted == "ignore":
        return PolicyDecision(action="ignore", wanted="ignore", key=key, at=now, reasons=reasons, signals=signals)
    actions = [d for d in history if d.action != "ignore"]
    checks = _checks(wanted, key, signals, actions, now, cfg)
    action = wanted if all(ok for ok, _ in checks) else "ignore"
    return PolicyDecision(
        action=action, wanted=wanted, key=key, at=now, reasons=reasons + [line for _, line in checks], signals=signals,
        rollback_to=signals.previous if action == "rollback" else None,
    )
