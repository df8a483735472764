"""Unit tests for tuneloop.gate: pure decisions over reports scored from constructed predictions."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from tuneloop import evaluation
from tuneloop.config import GateConfig, parse_config
from tuneloop.errors import ConfigError, DataError
from tuneloop.evaluation import EvalReport, mcnemar
from tuneloop.gate import GateDecision, decide

OPEN = GateConfig(min_accuracy=0.0, min_macro_f1=0.0)  # no floors, so one check is tested at a time
FLIP = {"a": "b", "b": "a"}
NOTE = "(b: rows only the candidate gets right, c: rows only the champion gets right; reported, not gated)"


def pair(both: int, only_candidate: int, only_champion: int, neither: int) -> tuple[list[str], list[str], list[str]]:
    """Truth alternating a/b, and two prediction lists right on exactly the rows the four counts say."""
    cells = ([(True, True)] * both + [(True, False)] * only_candidate + [(False, True)] * only_champion
             + [(False, False)] * neither)
    truth = ["a" if i % 2 == 0 else "b" for i in range(len(cells))]
    candidate = [t if ok else FLIP[t] for t, (ok, _) in zip(truth, cells)]
    champion = [t if ok else FLIP[t] for t, (_, ok) in zip(truth, cells)]
    return truth, candidate, champion


def reports(both: int, only_candidate: int, only_champion: int, neither: int) -> tuple[EvalReport, EvalReport]:
    """The candidate's and the champion's reports on the same rows (see `pair`)."""
    truth, candidate, champion = pair(both, only_candidate, only_champion, neither)
    return evaluation.score(truth, candidate, ["a", "b"]), evaluation.score(truth, champion, ["a", "b"])


def single(correct: int, wrong: int, **kwargs) -> EvalReport:
    """One model's report on correct + wrong alternating a/b rows."""
    truth, predicted, _ = pair(correct, 0, wrong, 0)
    return evaluation.score(truth, predicted, ["a", "b"], **kwargs)


# --- the paired comparison


def test_a_candidate_ahead_by_chance_on_a_small_set_is_not_passed():
    candidate, champion = reports(140, 22, 18, 20)  # 200 rows: 0.81 vs 0.79, on 40 rows where they disagree

    decision = decide(candidate, champion, GateConfig())

    assert (decision.passed, decision.manual, decision.policy) == (False, False, "compared")
    assert decision.reasons == [
        "accuracy 0.8100 vs champion 0.7900: +2.00 points, 95% CI [-4.00, +8.00]; lower bound -4.00 regresses "
        "more than gate.margin=1.0 points: not shown to be non-inferior",
        "macro_f1 0.8100 vs champion 0.7900: +2.00 points, 95% CI [-4.01, +8.01]; lower bound -4.01 regresses "
        "more than gate.margin=1.0 points: not shown to be non-inferior",
        f"McNemar b=22 c=18 p=0.636 {NOTE}",
    ]
    assert decision.stats["accuracy"] == {
        "candidate": 0.81, "champion": 0.79, "delta_points": 2.0, "direction": "higher", "ci_low_points": -4.0,
        "ci_high_points": 8.0, "margin": 1.0, "passed": False,
    }
    assert (decision.metric, decision.candidate, decision.champion) == ("macro_f1", 0.81, 0.79)
    assert decision.mcnemar == {"b": 22, "c": 18, "p_value": pytest.approx(0.6358, abs=1e-4)}


def test_a_clearly_better_candidate_passes_and_states_its_numbers():
    candidate, champion = reports(270, 110, 10, 10)  # 400 rows: 0.95 vs 0.70

    decision = decide(candidate, champion, GateConfig())

    assert (decision.passed, decision.policy) == (True, "compared")
    assert decision.reasons == [
        "accuracy 0.9500 vs champion 0.7000: +25.00 points, 95% CI [+20.50, +30.00]; lower bound within "
        "gate.margin=1.0 points: non-inferior",
        "macro_f1 0.9500 vs champion 0.7000: +25.00 points, 95% CI [+20.51, +30.00]; lower bound within "
        "gate.margin=1.0 points: non-inferior",
        f"McNemar b=110 c=10 p=1.92e-22 {NOTE}",
    ]
    assert (decision.candidate, decision.champion) == (0.95, 0.70)


def test_the_interval_is_a_paired_bootstrap_of_the_same_rows():
    rng = np.random.default_rng(11)
    labels = ["x", "y", "z"]
    truth = rng.choice(labels, 250)
    candidate = np.where(rng.random(250) < 0.75, truth, rng.choice(labels, 250))
    champion = np.where(rng.random(250) < 0.7, truth, rng.choice(labels, 250))
    cfg = OPEN.model_copy(update={"bootstrap_draws": 200, "seed": 5})

    decision = decide(evaluation.score(truth.tolist(), candidate.tolist(), labels),
                      evaluation.score(truth.tolist(), champion.tolist(), labels), cfg)

    # the same draws by hand: one index resample per draw scores both models, metrics by scikit-learn
    rows = np.random.default_rng(5).integers(0, 250, size=(200, 250))
    deltas = {"accuracy": [], "macro_f1": []}
    for d in rows:
        present = sorted(set(truth[d]))
        deltas["accuracy"].append(100 * (accuracy_score(truth[d], candidate[d]) - accuracy_score(truth[d], champion[d])))
        f1 = [f1_score(truth[d], p[d], labels=present, average="macro", zero_division=0) for p in (candidate, champion)]
        deltas["macro_f1"].append(100 * (f1[0] - f1[1]))
    for metric, values in deltas.items():
        low, high = np.percentile(values, [2.5, 97.5])
        assert decision.stats[metric]["ci_low_points"] == pytest.approx(low, abs=1e-6)
        assert decision.stats[metric]["ci_high_points"] == pytest.approx(high, abs=1e-6)


def test_the_bootstrap_is_seeded_by_gate_seed():
    candidate, champion = reports(140, 22, 18, 20)
    first = decide(candidate, champion, GateConfig())
    assert decide(candidate, champion, GateConfig()) == first
    other = decide(candidate, champion, GateConfig(seed=1)).stats["macro_f1"]
    assert (other["ci_low_points"], other["ci_high_points"]) != (
        first.stats["macro_f1"]["ci_low_points"], first.stats["macro_f1"]["ci_high_points"])


def test_identical_predictions_pass_even_with_a_zero_margin():
    candidate, champion = reports(150, 0, 0, 50)
    decision = decide(candidate, champion, OPEN.model_copy(update={"margin": 0.0}))
    assert decision.passed
    assert decision.reasons[0] == (
        "accuracy 0.7500 vs champion 0.7500: +0.00 points, 95% CI [+0.00, +0.00]; lower bound within "
        "gate.margin=0.0 points: non-inferior"
    )
    assert decision.mcnemar == {"b": 0, "c": 0, "p_value": 1.0}


def test_a_wide_margin_lets_the_same_candidate_pass():
    candidate, champion = reports(140, 22, 18, 20)
    assert decide(candidate, champion, GateConfig(margin=4.5)).passed  # both lower bounds are above -4.5


def test_only_the_metrics_listed_are_gated():
    candidate, champion = reports(140, 22, 18, 20)
    cfg = GateConfig(metric="accuracy", metrics=["accuracy"], margin=4.0)  # accuracy's bound is -4.00 exactly

    decision = decide(candidate, champion, cfg)

    assert decision.passed and list(decision.stats) == ["accuracy"]
    assert (decision.metric, decision.candidate, decision.champion) == ("accuracy", 0.81, 0.79)
    assert not decide(candidate, champion, cfg.model_copy(update={"metrics": ["accuracy", "macro_f1"]})).passed


# --- McNemar


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (1, 6, 2 * (1 + 7) / 128),
        (6, 1, 2 * (1 + 7) / 128),
        (2, 8, 2 * (1 + 10 + 45) / 1024),
        (0, 10, 2 / 1024),
        (3, 3, 1.0),
        (0, 0, 1.0),
    ],
)
def test_mcnemar_is_the_exact_two_sided_binomial_on_the_discordant_rows(b, c, expected):
    assert mcnemar(b, c) == expected


@pytest.mark.parametrize(("b", "c"), [(480, 530), (4000, 4210), (520, 520)])
def test_mcnemar_beyond_the_exact_range_matches_exact_rational_arithmetic(b, c):
    n = b + c
    exact = min(Fraction(1), Fraction(2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)), 2**n))
    assert mcnemar(b, c) == pytest.approx(float(exact), rel=1e-9)


def test_the_decision_carries_mcnemar_on_the_rows():
    candidate, champion = reports(300, 1, 6, 93)  # 400 rows, b=1 c=6

    decision = decide(candidate, champion, OPEN)

    assert decision.mcnemar == {"b": 1, "c": 6, "p_value": 0.125}
    assert decision.reasons[2] == f"McNemar b=1 c=6 p=0.125 {NOTE}"
    assert not decision.passed  # -1.25 points with an interval of [-2.75, -0.25]: McNemar does not gate


# --- too few rows, first run, label set changes


def test_below_min_rows_the_gate_refuses_to_decide():
    candidate, champion = reports(180, 15, 0, 4)  # 199 rows, a clear improvement

    decision = decide(candidate, champion, GateConfig())

    assert (decision.passed, decision.manual, decision.policy) == (False, False, "too_few_rows")
    assert decision.reasons == [
        "held-out set has 199 rows, fewer than gate.min_rows=200: too few to tell the candidate "
        "(macro_f1 0.9799) from the champion (0.9045), so the gate refuses to decide; add held-out rows or "
        "lower gate.min_rows"
    ]
    assert decision.stats["accuracy"] == {"candidate": 195 / 199, "champion": 180 / 199, "delta_points": 7.537688,
                                          "direction": "higher", "ci_low_points": None, "ci_high_points": None, "margin": 1.0, "passed": None}
    assert decision.mcnemar is None
    assert decide(*reports(180, 15, 0, 4), GateConfig(min_rows=199)).policy == "compared"


def test_below_min_rows_the_floor_failures_are_listed_too():
    candidate, champion = reports(50, 10, 0, 40)
    decision = decide(candidate, champion, GateConfig(min_accuracy=0.9))
    assert decision.reasons[0] == "accuracy 0.6000 is below the floor gate.min_accuracy=0.9"
    assert decision.reasons[1].startswith("held-out set has 100 rows, fewer than gate.min_rows=200")


def test_first_run_passes_on_the_floors_alone():
    decision = decide(single(80, 20), None, GateConfig())
    assert decision == GateDecision(
        passed=True, reasons=["no champion yet: passes on the floors alone (accuracy 0.8000 >= gate.min_accuracy=0.5, "
                              "macro-F1 0.8000 >= gate.min_macro_f1=0.5, above the majority-class baseline 0.3333)"],
        metric="macro_f1", candidate=0.8, champion=None, manual=False, policy="first_run",
        stats={m: {"candidate": 0.8, "champion": None, "delta_points": None, "direction": "higher", "ci_low_points": None,
                   "ci_high_points": None, "margin": 1.0, "passed": None} for m in ("accuracy", "macro_f1")},
    )


def test_first_run_can_require_a_manual_promotion():
    decision = decide(single(80, 20), None, GateConfig(first_run="require_manual"))
    assert (decision.passed, decision.manual, decision.policy) == (True, True, "first_run")  # passed, left to a person
    assert decision.reasons == [
        "no champion yet; gate.first_run=require_manual: it clears the floors (accuracy 0.8000 >= "
        "gate.min_accuracy=0.5, macro-F1 0.8000 >= gate.min_macro_f1=0.5, above the majority-class baseline "
        "0.3333), promote it by hand after review (`tuneloop registry promote`)"
    ]


def test_a_first_run_below_the_floors_is_rejected_not_left_to_a_person():
    decision = decide(single(40, 60), None, GateConfig(first_run="require_manual"))
    assert (decision.passed, decision.manual) == (False, False)
    assert decision.reasons == [
        "accuracy 0.4000 is below the floor gate.min_accuracy=0.5",
        "macro-F1 0.4000 is below the floor gate.min_macro_f1=0.5",
    ]


def test_a_champion_with_another_label_set_resets_the_baseline():
    candidate = single(80, 20, model_labels=["a", "b"])
    champion = single(90, 10, model_labels=["a", "b", "c"])

    decision = decide(candidate, champion, GateConfig())

    assert (decision.passed, decision.manual, decision.policy) == (True, False, "reset_baseline")
    assert decision.reasons == [
        "champion's label set ['a', 'b', 'c'] differs from the candidate's ['a', 'b']: the scores do not compare, "
        "so this run resets the baseline: passes on the floors alone (accuracy 0.8000 >= gate.min_accuracy=0.5, "
        "macro-F1 0.8000 >= gate.min_macro_f1=0.5, above the majority-class baseline 0.3333)"
    ]
    assert (decision.candidate, decision.champion) == (0.8, 0.9)
    manual = decide(candidate, champion, GateConfig(first_run="require_manual"))
    assert (manual.passed, manual.manual, manual.policy) == (True, True, "reset_baseline")


def test_a_champion_predicting_a_label_the_truth_lacks_is_still_compared():
    truth, candidate, _ = pair(200, 0, 0, 0)
    champion = ["c" if i < 5 else label for i, label in enumerate(truth)]  # the model knows a, b and c
    labels = ["a", "b", "c"]
    decision = decide(evaluation.score(truth, candidate, ["a", "b"], model_labels=labels),
                      evaluation.score(truth, champion, labels), OPEN)
    assert decision.policy == "compared" and decision.mcnemar == {"b": 5, "c": 0, "p_value": 0.0625}


# --- slices


def sliced(parts: dict[str, tuple[int, int, int, int]]) -> tuple[EvalReport, EvalReport]:
    """Reports whose rows fall in named slices, each with its own (both, only_candidate, only_champion, neither)."""
    truth, candidate, champion, slices = [], [], [], []
    for name, counts in parts.items():
        t, c, h = pair(*counts)
        truth, candidate, champion, slices = truth + t, candidate + c, champion + h, slices + [name] * len(t)
    return (evaluation.score(truth, candidate, ["a", "b"], slices=slices),
            evaluation.score(truth, champion, ["a", "b"], slices=slices))


def test_a_slice_that_regresses_past_the_margin_fails_the_candidate():
    candidate, champion = sliced({"emea": (265, 85, 5, 5), "apac": (20, 0, 16, 4)})  # overall 0.925 vs 0.765

    decision = decide(candidate, champion, OPEN)

    assert not decision.passed
    assert all(decision.stats[m]["passed"] for m in ("accuracy", "macro_f1"))
    assert decision.reasons[3:] == [
        "slice 'apac' (40 rows): accuracy 0.5000 vs 0.9000 (-40.00 points, 95% CI [-55.00, -25.00]), macro_f1 "
        "0.5000 vs 0.9000 (-40.00 points, 95% CI [-55.60, -25.14]); macro_f1 shown to drop past gate.margin=1.0 "
        "points (upper bound -25.14)",
        "slice 'emea' (360 rows): accuracy 0.9722 vs 0.7500 (+22.22 points, 95% CI [+17.50, +26.94]), macro_f1 "
        "0.9722 vs 0.7500 (+22.22 points, 95% CI [+17.51, +26.94]); no drop past gate.margin=1.0 points shown",
    ]
    assert decision.slices[0] == {
        "slice": "apac", "rows": 40, "gated": True, "passed": False, "metric": "macro_f1", "delta_points": -40.0,
        "ci_high_points": -25.140969,
        "metrics": {"accuracy": {"candidate": 0.5, "champion": 0.9, "delta_points": -40.0,
                                 "ci_low_points": -55.0, "ci_high_points": -25.0},
                    "macro_f1": {"candidate": 0.5, "champion": 0.9, "delta_points": -40.0,
                                 "ci_low_points": -55.603955, "ci_high_points": -25.140969}},
    }


def test_a_small_slice_drop_that_chance_explains_does_not_fail_the_candidate():
    # apac: 2 rows only the champion gets right, 1 only the candidate: -2.5 points on 40 rows
    candidate, champion = sliced({"emea": (265, 85, 5, 5), "apac": (30, 1, 2, 7)})

    decision = decide(candidate, champion, OPEN)

    assert decision.passed
    [apac] = [s for s in decision.slices if s["slice"] == "apac"]
    assert (apac["gated"], apac["passed"], apac["metrics"]["accuracy"]["delta_points"]) == (True, True, -2.5)
    assert (apac["metrics"]["accuracy"]["ci_low_points"], apac["ci_high_points"]) == (-12.5, 5.0)  # no drop shown


def test_a_slice_below_min_slice_rows_is_reported_but_not_gated():
    candidate, champion = sliced({"emea": (265, 85, 5, 5), "apac": (20, 0, 16, 4)})

    decision = decide(candidate, champion, OPEN.model_copy(update={"min_slice_rows": 41}))

    assert decision.passed
    assert decision.reasons[3] == (
        "slice 'apac' (40 rows): accuracy 0.5000 vs 0.9000 (-40.00 points, 95% CI [-55.00, -25.00]), macro_f1 "
        "0.5000 vs 0.9000 (-40.00 points, 95% CI [-55.60, -25.14]); fewer than gate.min_slice_rows=41 rows: "
        "reported, not gated"
    )
    assert [(s["slice"], s["gated"], s["passed"]) for s in decision.slices] == [("apac", False, True), ("emea", True, True)]


def test_data_slice_column_must_name_a_column_of_its_own():
    assert parse_config({"data": {"slice_column": "region"}}).data.slice_column == "region"
    with pytest.raises(ConfigError, match=r"data\.slice_column 'label' is also the text or label column; name the column "
                                          "that holds each row's slice"):
        parse_config({"data": {"slice_column": "label"}})


# --- broken inputs and round trips


def test_reports_on_different_rows_are_refused():
    truth, candidate, champion = pair(150, 25, 25, 0)
    elsewhere = ["b", *truth[1:]]  # the champion was scored on rows whose first label differs
    with pytest.raises(DataError, match=r"^the candidate \(200 rows\) and the champion \(200 rows\) were scored on "
                                        r"different held-out rows; rerun `tuneloop evaluate`"):
        decide(evaluation.score(truth, candidate, ["a", "b"]), evaluation.score(elsewhere, champion, ["a", "b"]), OPEN)


def test_a_report_without_per_row_results_cannot_be_compared():
    candidate, champion = reports(150, 25, 25, 0)
    old = EvalReport(**{k: v for k, v in champion.to_dict().items() if k not in ("truth", "predictions", "scores")})
    with pytest.raises(DataError, match=r"^the champion's evaluation report has no per-row predictions for its 200 rows"):
        decide(candidate, old, OPEN)


def test_a_decision_round_trips_through_json():
    decision = decide(*sliced({"emea": (265, 85, 5, 5), "apac": (20, 0, 16, 4)}), OPEN)
    assert GateDecision.from_dict(json.loads(json.dumps(decision.to_dict()))) == decision


def test_an_old_decision_without_the_policy_fields_loads():
    old = {"passed": True, "reasons": ["no champion yet: passes on the floors alone"], "metric": "macro_f1",
           "candidate": 0.8, "champion": None}
    assert GateDecision.from_dict(old).policy == "first_run"
    assert GateDecision.from_dict({**old, "champion": 0.7}).policy == "compared"
    with pytest.raises(TypeError, match=r"unknown gate decision keys \['verdict'\]"):
        GateDecision.from_dict({**old, "verdict": "yes"})


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ({"metric": "accuracy", "metrics": ["macro_f1"]},
         r"gate.metric 'accuracy' is not in gate.metrics \['macro_f1'\]; add it to gate.metrics"),
        ({"metrics": []}, r"^gate\.metrics = \[\]: value should have at least 1 item"),
        ({"metrics": ["accuracy", "accuracy"]}, r"^gate\.metrics = \[.accuracy., .accuracy.\]: lists \['accuracy'\] more than once"),
        ({"min_rows": "200"}, r'^gate\.min_rows = "200": input should be a valid integer'),
        ({"first_run": "manual"}, r"^gate\.first_run = .manual.: input should be 'floors' or 'require_manual'"),
        ({"margin": -1.0}, r"^gate\.margin = -1\.0: input should be greater than or equal to 0"),
        ({"max_regression": 1.0}, r"^gate\.max_regression: unknown key"),
    ],
)
def test_gate_config_is_strict(gate, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"gate": gate})


# --- floors and degeneracy (no champion, so nothing else is judged)


def test_each_floor_is_checked_on_its_own():
    decision = decide(single(60, 40), None, GateConfig(min_accuracy=0.7, min_macro_f1=0.4))
    assert decision.reasons == ["accuracy 0.6000 is below the floor gate.min_accuracy=0.7"]


def test_a_candidate_exactly_at_the_floor_passes():
    assert decide(single(50, 50), None, GateConfig()).passed


def test_a_single_predicted_class_is_degenerate():
    decision = decide(evaluation.score(["a", "b", "a", "a"], ["a", "a", "a", "a"], ["a", "b"]), None, OPEN)
    assert not decision.passed
    assert decision.reasons == [
        "degenerate: the model predicts a single class for every held-out row",
        "degenerate: macro-F1 0.4286 does not beat the majority-class baseline 0.4286",
    ]


def test_degenerate_checks_can_be_turned_off():
    lenient = OPEN.model_copy(update={"reject_degenerate": False})
    assert decide(evaluation.score(["a", "b", "a", "a"], ["a", "a", "a", "a"], ["a", "b"]), None, lenient).passed


def test_failures_are_all_reported_together():
    candidate, champion = reports(20, 0, 150, 30)  # 200 rows: 0.10 vs 0.85
    decision = decide(candidate, champion, GateConfig())
    assert not decision.passed
    assert [reason.split(" ")[0] for reason in decision.reasons] == [
        "accuracy", "macro-F1", "degenerate:", "accuracy", "macro_f1", "McNemar",
    ]


# --- training findings


FINDINGS = [{"kind": "overfitting", "message": "overfitting at step 16: ...", "step": 16, "details": {}},
            {"kind": "grad_spike", "message": "gradient norm spike at step 9: ...", "step": 9, "details": {}}]


def test_a_finding_in_refuse_findings_fails_an_otherwise_clear_win():
    candidate, champion = reports(270, 110, 10, 10)
    decision = decide(candidate, champion, GateConfig(), FINDINGS)
    assert decision.passed is False
    assert decision.reasons[0] == "training finding (overfitting, in gate.refuse_findings): overfitting at step 16: ..."
    assert len(decision.reasons) == 4  # the comparison is still reported


def test_findings_outside_refuse_findings_are_reported_only():
    candidate, champion = reports(270, 110, 10, 10)
    assert decide(candidate, champion, GateConfig(refuse_findings=["divergence"]), FINDINGS).passed is True
    first = decide(single(90, 10), None, OPEN, FINDINGS)  # no champion: the floors and the findings
    assert (first.passed, first.reasons[0]) == (False, "training finding (overfitting, in gate.refuse_findings): "
                                                       "overfitting at step 16: ...")


# --- latency


def test_a_candidate_much_slower_than_the_champion_fails_on_latency():
    from dataclasses import replace

    candidate, champion = reports(270, 110, 10, 10)
    slow, fast = replace(candidate, latency_p99_ms=40.0), replace(champion, latency_p99_ms=10.0)
    assert decide(slow, fast, GateConfig()).passed is True  # off by default: timings on a busy machine are noise
    decision = decide(slow, fast, GateConfig(max_latency_ratio=3.0))
    assert decision.passed is False
    assert decision.reasons[0] == ("latency: p99 40.0 ms per text is 4.00x the champion's 10.0 ms, over "
                                   "gate.max_latency_ratio=3; serve it only if the slowdown is worth it (raise the ratio)")
    assert decide(slow, fast, GateConfig(max_latency_ratio=5.0)).passed is True
    assert decide(slow, fast, GateConfig(max_latency_ratio=0.0)).passed is True
    # 4x, but 3 ms slower: a tiny model's scheduling noise fails nothing
    on = GateConfig(max_latency_ratio=3.0)
    assert decide(replace(candidate, latency_p99_ms=4.0), replace(champion, latency_p99_ms=1.0), on).passed is True
    assert decide(slow, replace(champion, latency_p99_ms=0.0), on).passed is True  # an older report: unmeasured
