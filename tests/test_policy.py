"""Unit tests for tuneloop.policy and its config sections: exact actions and reasons, storms, limits, JSON."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import pytest

from tuneloop.config import MonitorConfig, PolicyConfig, json_schema, load_config, parse_config
from tuneloop.errors import ConfigError
from tuneloop.policy import Comparison, DriftSignal, PolicyDecision, Signals, decide

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
HOUR, MINUTE = timedelta(hours=1), timedelta(minutes=1)

TEXT_ALARM = DriftSignal("text", 0.31, 0.002, True)
EMBEDDING_CALM = DriftSignal("embedding", 0.02, 0.41, False)
# The champion (v7) on 400 labelled feedback rows, against its registered score or the previous champion (v6).
DEGRADED = Comparison("registered", "feedback", "accuracy", 400, 0.78, 0.88, -10.0, -14.5, -5.5, 1.0)
HOLDING = Comparison("registered", "feedback", "accuracy", 400, 0.875, 0.88, -0.5, -3.0, 2.0, 1.0)
PREVIOUS_BETTER = Comparison("previous", "feedback", "accuracy", 400, 0.78, 0.86, -8.0, -11.0, -5.0, 1.0)
PREVIOUS_LEVEL = Comparison("previous", "feedback", "accuracy", 400, 0.78, 0.79, -1.0, -3.5, 0.5, 1.0)
PREVIOUS_WORSE_F1 = Comparison("previous", "feedback", "macro_f1", 400, 0.80, 0.77, 3.0, 0.5, 5.5, 1.0)
NO_INTERVAL = Comparison("registered", "feedback", "accuracy", 40, 0.75, 0.88, -13.0, None, None, 1.0)

TEXT_LINE = "drift text: score 0.31, calibrated p=0.002 on 500 rows: alarm"
EMBEDDING_LINE = "drift embedding: score 0.02, calibrated p=0.41 on 500 rows: no alarm"
DEGRADED_LINE = ("accuracy on 400 feedback rows: champion v7 0.7800 vs its registered score 0.8800: -10.00 points, "
                 "95% CI [-14.50, -5.50]; upper bound below -margin (1.0 points): degraded")
PREVIOUS_BETTER_LINE = ("accuracy on 400 feedback rows: champion v7 0.7800 vs previous champion v6 0.8600: -8.00 points, "
                        "95% CI [-11.00, -5.00]; upper bound below -margin (1.0 points): degraded")
PREVIOUS_LEVEL_LINE = ("accuracy on 400 feedback rows: champion v7 0.7800 vs previous champion v6 0.7900: -1.00 points, "
                       "95% CI [-3.50, +0.50]; upper bound not below -margin (1.0 points): not degraded")
PREVIOUS_WORSE_F1_LINE = ("macro_f1 on 400 feedback rows: champion v7 0.8000 vs previous champion v6 0.7700: +3.00 points, "
                          "95% CI [+0.50, +5.50]; upper bound not below -margin (1.0 points): not degraded")
ROLL_BACK = ("champion v7 is degraded and previous champion v6 clears the gate's bar on the rows where it is "
             "(non-inferior on every compared metric, better on accuracy on feedback rows): roll back to v6")
# The same pair on a re-score of 300 held-out rows: undecided, or the champion clearly ahead there.
HELD_OUT_UNDECIDED = Comparison("previous", "heldout", "accuracy", 300, 0.80, 0.81, -1.0, -6.0, 4.0, 1.0)
HELD_OUT_AHEAD = Comparison("previous", "heldout", "accuracy", 300, 0.84, 0.80, 4.0, 1.5, 6.5, 1.0)
HELD_OUT_UNDECIDED_LINE = ("accuracy on 300 heldout rows: champion v7 0.8000 vs previous champion v6 0.8100: -1.00 points, "
                           "95% CI [-6.00, +4.00]; upper bound not below -margin (1.0 points): not degraded")
HELD_OUT_AHEAD_LINE = ("accuracy on 300 heldout rows: champion v7 0.8400 vs previous champion v6 0.8000: +4.00 points, "
                       "95% CI [+1.50, +6.50]; upper bound not below -margin (1.0 points): not degraded")
NOTHING = "no drift alarm and no degradation: nothing to do"
ROWS_OK = "new labelled rows: 300 >= policy.min_new_rows=200"
NO_ACTION = "no earlier action: policy.cooldown=1h does not apply"
NO_ROLLBACK = "no earlier rollback: policy.cooldown=1h does not apply"
NO_RETRAINS = "retrains in the last policy.retrain_window=1d: 0, below policy.max_retrains=3"
ONE_RETRAIN = "retrains in the last policy.retrain_window=1d: 1, below policy.max_retrains=3"
FRESH_RETRAIN = "no action with key retrain@7 inside policy.dedup_window=6h"
FRESH_ROLLBACK = "no action with key rollback@7->6 inside policy.dedup_window=6h"
ALARMED = [TEXT_LINE, "drift alarm on text: retrain"]
RETRAIN_LIMITS_CLEAR = [ROWS_OK, NO_ACTION, NO_RETRAINS, FRESH_RETRAIN]


def signals(**changes) -> Signals:
    """Champion v7 (previous v6) on a 500-row window with 300 newly labelled rows; nothing measured unless given."""
    return Signals(**{"champion": "7", "previous": "6", "window_rows": 500, "new_rows": 300, **changes})


def taken(action: str, key: str, at: datetime, wanted: str | None = None) -> PolicyDecision:
    """An earlier decision, as the history holds it."""
    return PolicyDecision(action=action, wanted=wanted or action, key=key, at=at, reasons=[], signals=signals())


def retrains_ago(*hours: int) -> list[PolicyDecision]:
    """Retrains taken that many hours before T0, oldest first, each for the champion then serving (v4, v5, ...)."""
    return [taken("retrain", f"retrain@{4 + i}", T0 - h * HOUR) for i, h in enumerate(hours)]


def stored(decision: PolicyDecision) -> PolicyDecision:
    """The decision as a later tick reads it back: through JSON, the way it is kept in MLflow."""
    return PolicyDecision.from_dict(json.loads(json.dumps(decision.to_dict())))


class Case(NamedTuple):
    signals: Signals
    history: list[PolicyDecision]
    config: dict
    action: str
    wanted: str
    key: str
    reasons: list[str]


CASES = {
    "a calm window is ignored": Case(
        signals(drift=[EMBEDDING_CALM]), [], {}, "ignore", "ignore", "ignore@7", [EMBEDDING_LINE, NOTHING]),
    "a drift alarm with enough new rows retrains": Case(
        signals(drift=[TEXT_ALARM, EMBEDDING_CALM]), [], {}, "retrain", "retrain", "retrain@7",
        [TEXT_LINE, EMBEDDING_LINE, "drift alarm on text: retrain", *RETRAIN_LIMITS_CLEAR]),
    "degraded with a better previous champion rolls back": Case(
        signals(degradation=[DEGRADED, PREVIOUS_BETTER]), [], {}, "rollback", "rollback", "rollback@7->6",
        [DEGRADED_LINE, PREVIOUS_BETTER_LINE, ROLL_BACK, NO_ROLLBACK, FRESH_ROLLBACK]),
    "an undecided held-out re-score does not hold back a rollback the fresh rows call for": Case(
        signals(degradation=[DEGRADED, PREVIOUS_BETTER, HELD_OUT_UNDECIDED]), [], {}, "rollback", "rollback",
        "rollback@7->6", [DEGRADED_LINE, PREVIOUS_BETTER_LINE, HELD_OUT_UNDECIDED_LINE, ROLL_BACK, NO_ROLLBACK,
                          FRESH_ROLLBACK]),
    "held-out rows where the champion won its promotion do not hold back a rollback the fresh rows call for": Case(
        signals(degradation=[DEGRADED, PREVIOUS_BETTER, HELD_OUT_AHEAD]), [], {}, "rollback", "rollback",
        "rollback@7->6", [DEGRADED_LINE, PREVIOUS_BETTER_LINE, HELD_OUT_AHEAD_LINE, ROLL_BACK, NO_ROLLBACK,
                          FRESH_ROLLBACK]),
    "a rollback beats a drift alarm": Case(
        signals(drift=[TEXT_ALARM], degradation=[DEGRADED, PREVIOUS_BETTER]), [], {}, "rollback", "rollback",
        "rollback@7->6", [TEXT_LINE, DEGRADED_LINE, PREVIOUS_BETTER_LINE, ROLL_BACK, NO_ROLLBACK, FRESH_ROLLBACK]),
    "a rollback needs no new rows": Case(
        signals(new_rows=0, degradation=[DEGRADED, PREVIOUS_BETTER]), [], {}, "rollback", "rollback", "rollback@7->6",
        [DEGRADED_LINE, PREVIOUS_BETTER_LINE, ROLL_BACK, NO_ROLLBACK, FRESH_ROLLBACK]),
    "degraded with a previous champion only level retrains": Case(
        signals(degradation=[DEGRADED, PREVIOUS_LEVEL]), [], {}, "retrain", "retrain", "retrain@7",
        [DEGRADED_LINE, PREVIOUS_LEVEL_LINE,
         "champion v7 is degraded; previous champion v6 does not clear the gate's bar on the same rows: retrain",
         *RETRAIN_LIMITS_CLEAR]),
    "a previous champion better on one metric but worse on another is not rolled back to": Case(
        signals(degradation=[DEGRADED, PREVIOUS_BETTER, PREVIOUS_WORSE_F1]), [], {}, "retrain", "retrain", "retrain@7",
        [DEGRADED_LINE, PREVIOUS_BETTER_LINE, PREVIOUS_WORSE_F1_LINE,
         "champion v7 is degraded; previous champion v6 does not clear the gate's bar on the same rows: retrain",
         *RETRAIN_LIMITS_CLEAR]),
    "degraded with no previous champion retrains": Case(
        signals(previous=None, degradation=[DEGRADED]), [], {}, "retrain", "retrain", "retrain@7",
        [DEGRADED_LINE, "champion v7 is degraded; no previous champion to roll back to: retrain", *RETRAIN_LIMITS_CLEAR]),
    "degraded with a previous champion not scored on the rows retrains": Case(
        signals(degradation=[DEGRADED]), [], {}, "retrain", "retrain", "retrain@7",
        [DEGRADED_LINE, "champion v7 is degraded; previous champion v6 was not scored on the same rows: retrain",
         *RETRAIN_LIMITS_CLEAR]),
    "with auto_rollback off a better previous champion means retrain": Case(
        signals(drift=[TEXT_ALARM], degradation=[DEGRADED, PREVIOUS_BETTER]), [], {"auto_rollback": False},
        "retrain", "retrain", "retrain@7",
        [TEXT_LINE, DEGRADED_LINE, PREVIOUS_BETTER_LINE,
         "drift alarm on text; champion v7 is degraded; previous champion v6 is better, but policy.auto_rollback=false: "
         "retrain", *RETRAIN_LIMITS_CLEAR]),
    "with auto_retrain off a drift alarm is left to an operator": Case(
        signals(drift=[TEXT_ALARM]), [], {"auto_retrain": False}, "ignore", "retrain", "retrain@7",
        [*ALARMED, "policy.auto_retrain=false: a retrain is left to an operator", *RETRAIN_LIMITS_CLEAR]),
    "too few new rows hold a retrain and say how many more": Case(
        signals(new_rows=120, drift=[TEXT_ALARM]), [], {}, "ignore", "retrain", "retrain@7",
        [*ALARMED, "new labelled rows: 120 < policy.min_new_rows=200; 80 more needed before a retrain",
         NO_ACTION, NO_RETRAINS, FRESH_RETRAIN]),
    "a drop within the margin is not a degradation": Case(
        signals(degradation=[HOLDING]), [], {}, "ignore", "ignore", "ignore@7",
        ["accuracy on 400 feedback rows: champion v7 0.8750 vs its registered score 0.8800: -0.50 points, "
         "95% CI [-3.00, +2.00]; upper bound not below -margin (1.0 points): not degraded", NOTHING]),
    "a comparison without an interval is reported, not judged": Case(
        signals(degradation=[NO_INTERVAL]), [], {}, "ignore", "ignore", "ignore@7",
        ["accuracy on 40 feedback rows: champion v7 0.7500 vs its registered score 0.8800: -13.00 points, "
         "no interval (too few rows): reported, not judged", NOTHING]),
    "a retrain just taken does not hold a rollback": Case(
        signals(degradation=[DEGRADED, PREVIOUS_BETTER]), [taken("retrain", "retrain@6", T0 - 10 * MINUTE)], {},
        "rollback", "rollback", "rollback@7->6",
        [DEGRADED_LINE, PREVIOUS_BETTER_LINE, ROLL_BACK, NO_ROLLBACK, FRESH_ROLLBACK]),
    "a rollback holds the next rollback for the cooldown": Case(
        signals(degradation=[DEGRADED, PREVIOUS_BETTER]), [taken("rollback", "rollback@8->7", T0 - 20 * MINUTE)], {},
        "ignore", "rollback", "rollback@7->6",
        [DEGRADED_LINE, PREVIOUS_BETTER_LINE, ROLL_BACK,
         "last rollback: rollback at 2026-03-01T11:40:00+00:00, 20m ago: inside policy.cooldown=1h (40m left)",
         FRESH_ROLLBACK]),
    "a rollback holds a retrain for the cooldown": Case(
        signals(drift=[TEXT_ALARM]), [taken("rollback", "rollback@8->7", T0 - 20 * MINUTE)], {},
        "ignore", "retrain", "retrain@7",
        [*ALARMED, ROWS_OK,
         "last action: rollback at 2026-03-01T11:40:00+00:00, 20m ago: inside policy.cooldown=1h (40m left)",
         NO_RETRAINS, FRESH_RETRAIN]),
    "past the cooldown, the same champion's retrain is still a duplicate": Case(
        signals(drift=[TEXT_ALARM]), [taken("retrain", "retrain@7", T0 - 2 * HOUR)], {}, "ignore", "retrain", "retrain@7",
        [*ALARMED, ROWS_OK,
         "last action: retrain at 2026-03-01T10:00:00+00:00, 2h ago: policy.cooldown=1h has passed", ONE_RETRAIN,
         "duplicate of the retrain at 2026-03-01T10:00:00+00:00, 2h ago (key retrain@7): inside policy.dedup_window=6h"]),
    "past the dedup window, a persisting alarm retrains again": Case(
        signals(drift=[TEXT_ALARM]), [taken("retrain", "retrain@7", T0 - 7 * HOUR)], {}, "retrain", "retrain", "retrain@7",
        [*ALARMED, ROWS_OK,
         "last action: retrain at 2026-03-01T05:00:00+00:00, 7h ago: policy.cooldown=1h has passed", ONE_RETRAIN,
         FRESH_RETRAIN]),
    "the retrain budget holds a fourth retrain in the window": Case(
        signals(drift=[TEXT_ALARM]), retrains_ago(20, 10, 2), {}, "ignore", "retrain", "retrain@7",
        [*ALARMED, ROWS_OK,
         "last action: retrain at 2026-03-01T10:00:00+00:00, 2h ago: policy.cooldown=1h has passed",
         "retrains in the last policy.retrain_window=1d: 3, at policy.max_retrains=3; the oldest leaves the window in 4h",
         FRESH_RETRAIN]),
    "retrains older than the window do not count": Case(
        signals(drift=[TEXT_ALARM]), retrains_ago(25, 20, 10), {}, "retrain", "retrain", "retrain@7",
        [*ALARMED, ROWS_OK,
         "last action: retrain at 2026-03-01T02:00:00+00:00, 10h ago: policy.cooldown=1h has passed",
         "retrains in the last policy.retrain_window=1d: 2, below policy.max_retrains=3", FRESH_RETRAIN]),
    "decisions to ignore are not actions": Case(
        signals(drift=[TEXT_ALARM]), [taken("ignore", "retrain@7", T0 - MINUTE, wanted="retrain")] * 5, {},
        "retrain", "retrain", "retrain@7", [*ALARMED, *RETRAIN_LIMITS_CLEAR]),
    "an action stamped in the future counts as just taken": Case(
        signals(drift=[TEXT_ALARM]), [taken("retrain", "retrain@6", T0 + 5 * MINUTE)], {}, "ignore", "retrain", "retrain@7",
        [*ALARMED, ROWS_OK,
         "last action: retrain at 2026-03-01T12:05:00+00:00, 0s ago: inside policy.cooldown=1h (1h left)",
         ONE_RETRAIN, FRESH_RETRAIN]),
    "durations are written in two units": Case(
        signals(drift=[TEXT_ALARM]), [taken("retrain", "retrain@6", T0 - 15 * MINUTE)], {"cooldown": "90m"},
        "ignore", "retrain", "retrain@7",
        [*ALARMED, ROWS_OK,
         "last action: retrain at 2026-03-01T11:45:00+00:00, 15m ago: inside policy.cooldown=1h 30m (1h 15m left)",
         ONE_RETRAIN, FRESH_RETRAIN]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_decision_table(name):
    case = CASES[name]

    decision = decide(case.signals, case.history, T0, PolicyConfig(**case.config))

    assert (decision.action, decision.wanted, decision.key) == (case.action, case.wanted, case.key)
    assert decision.reasons == case.reasons
    assert decision.rollback_to == ("6" if case.action == "rollback" else None)
    assert (decision.at, decision.signals) == (T0, case.signals)


@pytest.mark.parametrize("name", list(CASES))
def test_every_decision_round_trips_through_json(name):
    case = CASES[name]
    decision = decide(case.signals, case.history, T0, PolicyConfig(**case.config))

    assert stored(decision) == decision


def test_a_decision_is_plain_json():
    decision = decide(signals(degradation=[DEGRADED, PREVIOUS_BETTER]), [], T0, PolicyConfig())

    raw = json.loads(json.dumps(decision.to_dict()))

    assert {k: raw[k] for k in ("action", "wanted", "key", "at", "rollback_to")} == {
        "action": "rollback", "wanted": "rollback", "key": "rollback@7->6", "at": "2026-03-01T12:00:00+00:00",
        "rollback_to": "6"}
    assert raw["signals"]["degradation"][1] == {
        "baseline": "previous", "source": "feedback", "metric": "accuracy", "rows": 400, "champion": 0.78,
        "baseline_score": 0.86, "delta_points": -8.0, "ci_low_points": -11.0, "ci_high_points": -5.0, "margin": 1.0}


# --- storms: the monitor feeds every decision back as history, through JSON


def storm(cfg: PolicyConfig, tick: Signals, count: int = 100, every: timedelta = 30 * timedelta(seconds=1),
          start: datetime = T0, history: list[PolicyDecision] | None = None) -> list[PolicyDecision]:
    """Decide `count` ticks of the same signals `every` apart, each seeing the decisions before it."""
    history = list(history or [])
    for i in range(count):
        history.append(stored(decide(tick, history, start + i * every, cfg)))
    return history


@pytest.mark.parametrize("cooldown,dedup_window", [("1h", "6h"), (0, "6h"), ("1h", 0)],
                         ids=["both", "dedup alone", "cooldown alone"])
def test_a_storm_of_100_drift_signals_inside_the_cooldown_produces_exactly_one_retrain(cooldown, dedup_window):
    decisions = storm(PolicyConfig(cooldown=cooldown, dedup_window=dedup_window), signals(drift=[TEXT_ALARM]))

    assert [d.action for d in decisions] == ["retrain"] + ["ignore"] * 99
    assert {(d.wanted, d.key) for d in decisions} == {("retrain", "retrain@7")}  # one incident, one key


def test_a_held_storm_decision_names_what_held_it():
    last = storm(PolicyConfig(), signals(drift=[TEXT_ALARM]))[-1]

    assert last.at == T0 + timedelta(minutes=49, seconds=30)
    assert last.reasons[-3:] == [
        "last action: retrain at 2026-03-01T12:00:00+00:00, 49m 30s ago: inside policy.cooldown=1h (10m 30s left)",
        ONE_RETRAIN,
        "duplicate of the retrain at 2026-03-01T12:00:00+00:00, 49m 30s ago (key retrain@7): inside policy.dedup_window=6h",
    ]


def test_after_a_storm_a_persisting_alarm_retrains_once_more_when_dedup_ends():
    tick = signals(drift=[TEXT_ALARM])
    first = storm(PolicyConfig(), tick)

    later = storm(PolicyConfig(), tick, count=20, every=MINUTE, start=T0 + 6 * HOUR, history=first)[len(first):]

    assert [d.action for d in later] == ["retrain"] + ["ignore"] * 19


def test_a_storm_of_degradation_before_the_alias_moves_rolls_back_once():
    decisions = storm(PolicyConfig(), signals(drift=[TEXT_ALARM], degradation=[DEGRADED, PREVIOUS_BETTER]))

    assert [d.action for d in decisions] == ["rollback"] + ["ignore"] * 99
    assert decisions[1].reasons[-2:] == [
        "last rollback: rollback at 2026-03-01T12:00:00+00:00, 30s ago: inside policy.cooldown=1h (59m 30s left)",
        "duplicate of the rollback at 2026-03-01T12:00:00+00:00, 30s ago (key rollback@7->6): inside "
        "policy.dedup_window=6h",
    ]


# --- precedence and limits, one at a time


def test_a_rollback_right_after_a_retrain_goes_through_but_then_holds_the_next_retrain():
    promoted = [taken("retrain", "retrain@6", T0 - 30 * MINUTE)]  # the retrain that made v7 champion
    rollback = decide(signals(degradation=[DEGRADED, PREVIOUS_BETTER]), promoted, T0, PolicyConfig())

    restored = signals(champion="6", previous="5", drift=[TEXT_ALARM])  # the next tick watches v6 again
    retrain = decide(restored, promoted + [rollback], T0 + 15 * MINUTE, PolicyConfig())

    assert (rollback.action, rollback.rollback_to) == ("rollback", "6")
    assert (retrain.action, retrain.wanted, retrain.key) == ("ignore", "retrain", "retrain@6")
    assert ("last action: rollback at 2026-03-01T12:00:00+00:00, 15m ago: inside policy.cooldown=1h (45m left)"
            in retrain.reasons)


@pytest.mark.parametrize("new_rows,action,line", [
    (0, "ignore", "new labelled rows: 0 < policy.min_new_rows=200; 200 more needed before a retrain"),
    (199, "ignore", "new labelled rows: 199 < policy.min_new_rows=200; 1 more needed before a retrain"),
    (200, "retrain", "new labelled rows: 200 >= policy.min_new_rows=200"),
])
def test_min_new_rows_is_a_floor(new_rows, action, line):
    decision = decide(signals(new_rows=new_rows, drift=[TEXT_ALARM]), [], T0, PolicyConfig())

    assert (decision.action, decision.reasons[2]) == (action, line)


def test_the_retrain_cap_counts_a_sliding_window():
    cfg = PolicyConfig(max_retrains=2, retrain_window="12h", cooldown=0, dedup_window=0)
    history: list[PolicyDecision] = []
    for hour in range(0, 24, 2):  # an alarm every two hours, on a new champion each time
        history.append(decide(signals(champion=str(10 + hour), drift=[TEXT_ALARM]), history, T0 + hour * HOUR, cfg))

    taken_at = [d.at.hour for d in history if d.action == "retrain"]

    assert taken_at == [12, 14, 0, 2]  # two, then none until the first leaves the 12-hour window


# --- broken inputs are exceptions, not decisions


def test_now_without_a_timezone_is_refused():
    with pytest.raises(ValueError, match=re.escape(
            "now 2026-03-01T12:00:00 has no timezone; pass an aware time, e.g. datetime.now(timezone.utc)")):
        decide(signals(), [], T0.replace(tzinfo=None), PolicyConfig())


@pytest.mark.parametrize("change,error,message", [
    ({"extra": 1}, TypeError, "unknown policy decision keys ['extra']"),
    ({"action": "promote"}, ValueError, "policy action 'promote' / wanted 'ignore': each must be one of "
                                        "['ignore', 'retrain', 'rollback']"),
    ({"at": "2026-03-01T12:00:00"}, ValueError, "a decision's time 2026-03-01T12:00:00 has no timezone"),
])
def test_a_malformed_stored_decision_is_refused(change, error, message):
    raw = {**decide(signals(), [], T0, PolicyConfig()).to_dict(), **change}

    with pytest.raises(error, match=re.escape(message)):
        PolicyDecision.from_dict(raw)


def test_malformed_signals_are_refused():
    with pytest.raises(ValueError, match=r"^drift signal 'text' has p-value 1\.5; a p-value lies in \[0, 1\]$"):
        DriftSignal("text", 0.3, 1.5, True)
    with pytest.raises(ValueError, match=r"^comparison baseline 'yesterday' is not one of \['registered', 'previous'\]$"):
        Comparison("yesterday", "feedback", "accuracy", 400, 0.8, 0.8, 0.0, -1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^a comparison with the previous champion needs Signals\.previous"):
        signals(previous=None, degradation=[PREVIOUS_BETTER])
    with pytest.raises(ValueError, match=r"^row counts cannot be negative \(window_rows=500, new_rows=-1\)$"):
        signals(new_rows=-1)


# --- the config sections


def test_the_sections_default_to_the_documented_values():
    cfg = parse_config({})

    assert cfg.monitor.model_dump() == {
        "false_alarm_rate": 0.01, "min_window_rows": 100, "max_window_rows": 10_000, "null_resamples": 200, "seed": 0,
        "min_labelled_rows": 30, "experiment": "monitor", "cache_dir": ".tuneloop/monitor-cache"}
    assert cfg.policy.model_dump() == {
        "cooldown": 3600, "max_retrains": 3, "retrain_window": 86_400, "min_new_rows": 200, "dedup_window": 21_600,
        "auto_retrain": True, "auto_rollback": True}


@pytest.mark.parametrize("written,seconds", [
    ("90s", 90), ("15m", 900), ("6h", 21_600), ("2d", 172_800), (" 30m ", 1800), (7200, 7200), (0, 0), ("30d", 2_592_000),
])
def test_a_duration_is_seconds_or_text(written, seconds):
    assert PolicyConfig(cooldown=written).cooldown == seconds


def test_durations_load_from_yaml_and_survive_json(tmp_path):
    path = tmp_path / "tuneloop.yaml"
    path.write_text("policy:\n  cooldown: 15m\n  dedup_window: 2h\n  retrain_window: 3d\n", encoding="utf-8")
    cfg = load_config(path)

    assert (cfg.policy.cooldown, cfg.policy.dedup_window, cfg.policy.retrain_window) == (900, 7200, 259_200)
    assert parse_config(json.loads(cfg.to_json())).policy == cfg.policy


def test_the_schema_accepts_a_duration_as_text_or_seconds():
    cooldown = json_schema()["$defs"]["PolicyConfig"]["properties"]["cooldown"]

    assert (cooldown["anyOf"], cooldown["default"]) == ([{"type": "integer"}, {"type": "string"}], "1h")


FIX = "; fix the value (see `tuneloop config schema`)"
CONFIG_ERRORS = {
    "cooldown past 30 days": ({"policy": {"cooldown": "45d"}}, f'policy.cooldown = "45d": must be from 0s to 30d{FIX}'),
    "negative cooldown": ({"policy": {"cooldown": -1}}, f"policy.cooldown = -1: must be from 0s to 30d{FIX}"),
    "cooldown in words": ({"policy": {"cooldown": "an hour"}},
                          f'policy.cooldown = "an hour": must be whole seconds or a duration such as 90s, 15m, 6h or 2d{FIX}'),
    "fractional duration": ({"policy": {"dedup_window": "1.5h"}},
                            f'policy.dedup_window = "1.5h": must be whole seconds or a duration such as 90s, 15m, 6h or 2d{FIX}'),
    "boolean cooldown": ({"policy": {"cooldown": True}}, f"policy.cooldown = true: input should be a valid integer{FIX}"),
    "float seconds": ({"policy": {"cooldown": 1.5}}, f"policy.cooldown = 1.5: input should be a valid integer{FIX}"),
    "retrain window under a minute": ({"policy": {"retrain_window": "30s"}},
                                      f'policy.retrain_window = "30s": must be from 1m to 90d{FIX}'),
    "no retrains allowed": ({"policy": {"max_retrains": 0}},
                            f"policy.max_retrains = 0: input should be greater than or equal to 1{FIX}"),
    "no new rows needed": ({"policy": {"min_new_rows": 0}},
                           f"policy.min_new_rows = 0: input should be greater than or equal to 1{FIX}"),
    "switch as a word": ({"policy": {"auto_rollback": "no"}},
                         f'policy.auto_rollback = "no": input should be a valid boolean{FIX}'),
    "misspelt policy key": ({"policy": {"cooldwon": "1h"}},
                            "policy.cooldwon: unknown key; remove it or fix its spelling (see `tuneloop config schema`)"),
    "zero false-alarm rate": ({"monitor": {"false_alarm_rate": 0.0}},
                              f"monitor.false_alarm_rate = 0.0: input should be greater than 0{FIX}"),
    "false-alarm rate above a half": ({"monitor": {"false_alarm_rate": 0.6}},
                                      f"monitor.false_alarm_rate = 0.6: input should be less than or equal to 0.5{FIX}"),
    "window bounds crossed": ({"monitor": {"min_window_rows": 500, "max_window_rows": 100}},
                              "monitor.min_window_rows=500 is above monitor.max_window_rows=100; lower min_window_rows "
                              "or raise max_window_rows"),
    "too few resamples for the rate": ({"monitor": {"null_resamples": 98}},
                                       "monitor.null_resamples=98 cannot reach monitor.false_alarm_rate=0.01: the smallest "
                                       "calibrated p-value is 1/99 = 0.0101; raise null_resamples to at least 99 or raise "
                                       "false_alarm_rate"),
    "seed beyond numpy": ({"monitor": {"seed": 2**32}},
                          f"monitor.seed = 4294967296: input should be less than or equal to 4294967295{FIX}"),
}


@pytest.mark.parametrize("name", list(CONFIG_ERRORS))
def test_a_bad_value_names_the_key_the_value_and_the_fix(name):
    data, message = CONFIG_ERRORS[name]

    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        parse_config(data)


def test_just_enough_resamples_reach_the_rate():
    assert MonitorConfig(null_resamples=99).null_resamples == 99  # smallest p-value 1/100 = 0.01
    assert MonitorConfig(false_alarm_rate=0.05, null_resamples=20).null_resamples == 20
