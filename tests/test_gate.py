"""Unit tests for tuneloop.gate: pure decisions over hand-built evaluation reports."""

from __future__ import annotations

from tuneloop.config import GateConfig
from tuneloop.evaluation import EvalReport
from tuneloop.gate import GateDecision, decide

OPEN = GateConfig(min_accuracy=0.0, min_macro_f1=0.0)  # no floors, so one check is tested at a time


def report(accuracy: float = 0.8, macro_f1: float = 0.8, predicted_classes: int = 3, baseline: float = 0.2) -> EvalReport:
    """A three-class report with the given headline numbers (the rest is consistent filler)."""
    return EvalReport(
        rows=100, labels=["a", "b", "c"], accuracy=accuracy, macro_f1=macro_f1,
        per_class_f1={"a": macro_f1, "b": macro_f1, "c": macro_f1}, confusion=[[30, 0, 0], [0, 30, 0], [0, 0, 40]],
        predicted_classes=predicted_classes, majority_baseline_macro_f1=baseline,
        accuracy_ci=(accuracy - 0.05, accuracy + 0.05), macro_f1_ci=(macro_f1 - 0.05, macro_f1 + 0.05), latency_ms=1.0,
    )


def test_first_run_passes_on_the_floors_alone():
    decision = decide(report(), None, GateConfig())
    assert decision == GateDecision(
        passed=True, reasons=["no champion yet: passes on the floors alone"], metric="macro_f1", candidate=0.8,
        champion=None,
    )


def test_first_run_below_the_floors_fails_with_one_reason_per_floor():
    decision = decide(report(accuracy=0.4, macro_f1=0.45), None, GateConfig())
    assert not decision.passed
    assert decision.reasons == [
        "accuracy 0.4000 is below the floor gate.min_accuracy=0.5",
        "macro-F1 0.4500 is below the floor gate.min_macro_f1=0.5",
    ]


def test_each_floor_is_checked_on_its_own():
    decision = decide(report(accuracy=0.6, macro_f1=0.45), None, GateConfig(min_accuracy=0.7, min_macro_f1=0.4))
    assert decision.reasons == ["accuracy 0.6000 is below the floor gate.min_accuracy=0.7"]


def test_a_candidate_exactly_at_the_floor_passes():
    assert decide(report(accuracy=0.5, macro_f1=0.5), None, GateConfig()).passed


def test_a_regression_of_exactly_max_regression_passes():
    decision = decide(report(macro_f1=0.79), report(macro_f1=0.80), OPEN)
    assert decision.passed
    assert decision.reasons == ["macro_f1 0.7900 vs champion 0.8000 (-1.00 points)"]
    assert (decision.candidate, decision.champion) == (0.79, 0.80)


def test_a_regression_beyond_max_regression_fails():
    decision = decide(report(macro_f1=0.7899), report(macro_f1=0.80), OPEN)
    assert not decision.passed
    assert decision.reasons == [
        "macro_f1 0.7899 vs champion 0.8000 (-1.01 points) regresses more than gate.max_regression=1.0 points"
    ]


def test_max_regression_is_configurable():
    assert not decide(report(macro_f1=0.795), report(macro_f1=0.80), OPEN.model_copy(update={"max_regression": 0.0})).passed
    assert decide(report(macro_f1=0.70), report(macro_f1=0.80), OPEN.model_copy(update={"max_regression": 10.0})).passed


def test_an_improvement_passes():
    decision = decide(report(macro_f1=0.85), report(macro_f1=0.80), GateConfig())
    assert decision.passed
    assert decision.reasons == ["macro_f1 0.8500 vs champion 0.8000 (+5.00 points)"]


def test_a_single_predicted_class_is_degenerate():
    decision = decide(report(predicted_classes=1), None, OPEN)
    assert not decision.passed
    assert decision.reasons == ["degenerate: the model predicts a single class for every held-out row"]


def test_macro_f1_at_the_majority_baseline_is_degenerate():
    decision = decide(report(macro_f1=0.25, baseline=0.25), None, OPEN)
    assert not decision.passed
    assert decision.reasons == ["degenerate: macro-F1 0.2500 does not beat the majority-class baseline 0.2500"]


def test_macro_f1_below_the_majority_baseline_is_degenerate():
    decision = decide(report(macro_f1=0.2, baseline=0.25), None, OPEN)
    assert decision.reasons == ["degenerate: macro-F1 0.2000 does not beat the majority-class baseline 0.2500"]


def test_degenerate_checks_can_be_turned_off():
    lenient = OPEN.model_copy(update={"reject_degenerate": False})
    assert decide(report(macro_f1=0.2, predicted_classes=1, baseline=0.25), None, lenient).passed


def test_a_degenerate_candidate_fails_even_when_it_beats_the_champion():
    decision = decide(report(macro_f1=0.85, predicted_classes=1), report(macro_f1=0.80), OPEN)
    assert not decision.passed
    assert decision.reasons == ["degenerate: the model predicts a single class for every held-out row"]


def test_metric_accuracy_compares_accuracy():
    cfg = OPEN.model_copy(update={"metric": "accuracy"})
    candidate, champion = report(accuracy=0.78, macro_f1=0.9), report(accuracy=0.80, macro_f1=0.7)

    decision = decide(candidate, champion, cfg)

    assert not decision.passed
    assert (decision.metric, decision.candidate, decision.champion) == ("accuracy", 0.78, 0.80)
    assert decision.reasons == [
        "accuracy 0.7800 vs champion 0.8000 (-2.00 points) regresses more than gate.max_regression=1.0 points"
    ]
    assert decide(candidate, champion, OPEN).passed  # the same pair passes on macro-F1


def test_failures_are_all_reported_together():
    decision = decide(report(accuracy=0.3, macro_f1=0.2, predicted_classes=1, baseline=0.25), report(), GateConfig())
    assert [reason.split(" ")[0] for reason in decision.reasons] == [
        "accuracy", "macro-F1", "degenerate:", "degenerate:", "macro_f1",
    ]
