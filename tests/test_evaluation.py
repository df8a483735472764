"""Unit tests for tuneloop.evaluation: `score` against scikit-learn, and `evaluate` on a trained adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from tuneloop import evaluation, synthetic, training
from tuneloop.config import parse_config
from tests.conftest import tiny_config_text

LABELS = ["account", "billing", "refund", "technical"]


def noisy_predictions(rng: np.random.Generator, truth: np.ndarray, choices: list[str]) -> np.ndarray:
    """Keep about 60% of the true labels and draw the rest from `choices`."""
    return np.where(rng.random(len(truth)) < 0.6, truth, rng.choice(choices, len(truth)))


def all_labels(rng):
    truth = rng.choice(LABELS, 300)
    return truth, noisy_predictions(rng, truth, LABELS)


def never_predicts_refund(rng):
    truth, predicted = all_labels(rng)
    return truth, np.where(predicted == "refund", "billing", predicted)


def predicts_a_label_missing_from_truth(rng):
    truth = rng.choice(LABELS[:3], 300)  # no "technical" in the truth
    return truth, noisy_predictions(rng, truth, LABELS)


@pytest.mark.parametrize("make", [all_labels, never_predicts_refund, predicts_a_label_missing_from_truth])
def test_score_matches_scikit_learn(make):
    truth, predicted = make(np.random.default_rng(7))
    present = [label for label in LABELS if label in set(truth)]  # macro-F1 covers the truth's labels only

    report = evaluation.score(truth.tolist(), predicted.tolist(), LABELS)

    assert report.rows == len(truth)
    assert report.labels == LABELS
    assert report.accuracy == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    assert report.macro_f1 == pytest.approx(
        f1_score(truth, predicted, labels=present, average="macro", zero_division=0), abs=1e-12
    )
    per_class = f1_score(truth, predicted, labels=present, average=None, zero_division=0)
    assert list(report.per_class_f1) == present
    assert list(report.per_class_f1.values()) == pytest.approx(per_class.tolist(), abs=1e-12)
    assert report.confusion == confusion_matrix(truth, predicted, labels=LABELS).tolist()
    assert report.predicted_classes == len(set(predicted))


def test_a_label_never_predicted_scores_zero_f1():
    truth, predicted = never_predicts_refund(np.random.default_rng(7))
    report = evaluation.score(truth.tolist(), predicted.tolist(), LABELS)
    assert report.per_class_f1["refund"] == 0.0
    assert report.predicted_classes == 3


def test_a_predicted_label_missing_from_truth_has_no_f1_but_counts_in_confusion():
    truth, predicted = predicts_a_label_missing_from_truth(np.random.default_rng(7))
    report = evaluation.score(truth.tolist(), predicted.tolist(), LABELS)
    assert "technical" not in report.per_class_f1
    assert report.confusion[LABELS.index("technical")] == [0, 0, 0, 0]
    assert sum(row[LABELS.index("technical")] for row in report.confusion) == (predicted == "technical").sum() > 0


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"a": 70, "b": 30}, 2 * 0.7 / 1.7 / 2),
        ({"a": 50, "b": 30, "c": 20}, 2 * 0.5 / 1.5 / 3),
        ({"a": 100}, 1.0),
    ],
)
def test_majority_baseline_is_the_macro_f1_of_always_guessing_the_commonest_label(counts, expected):
    truth = [label for label, n in counts.items() for _ in range(n)]
    majority = max(counts, key=counts.get)
    labels = sorted(counts)

    report = evaluation.score(truth, list(reversed(truth)), labels)

    assert report.majority_baseline_macro_f1 == pytest.approx(expected, abs=1e-12)
    constant = f1_score(truth, [majority] * len(truth), labels=labels, average="macro", zero_division=0)
    assert report.majority_baseline_macro_f1 == pytest.approx(constant, abs=1e-12)


def test_confidence_intervals_are_ordered_and_contain_the_estimate():
    truth, predicted = all_labels(np.random.default_rng(7))
    report = evaluation.score(truth.tolist(), predicted.tolist(), LABELS)
    for (low, high), point in [(report.accuracy_ci, report.accuracy), (report.macro_f1_ci, report.macro_f1)]:
        assert 0.0 <= low <= point <= high <= 1.0
        assert low < high  # 300 noisy rows cannot pin the metric exactly


def test_confidence_intervals_are_seeded_and_collapse_on_perfect_predictions():
    truth, predicted = all_labels(np.random.default_rng(7))
    first = evaluation.score(truth.tolist(), predicted.tolist(), LABELS, seed=3)
    assert evaluation.score(truth.tolist(), predicted.tolist(), LABELS, seed=3) == first
    perfect = evaluation.score(truth.tolist(), truth.tolist(), LABELS)
    assert perfect.accuracy_ci == (1.0, 1.0)
    assert perfect.macro_f1_ci == (1.0, 1.0)


def test_predicted_classes_counts_distinct_predictions():
    report = evaluation.score(["a", "b", "c", "a"], ["a", "a", "c", "c"], ["a", "b", "c"])
    assert report.predicted_classes == 2


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    """An adapter trained for one epoch on 80 synthetic tickets."""
    frame = pd.DataFrame(synthetic.generate_tickets(1, 80, seed=0), columns=["text", "label"])
    cfg = parse_config(yaml.safe_load(tiny_config_text(tiny_model)))
    return training.train(frame, cfg, tmp_path_factory.mktemp("run"))


def test_evaluate_scores_every_held_out_row(adapter):
    held_out = pd.DataFrame(synthetic.generate_tickets(1, 40, seed=1), columns=["text", "label"])

    report = evaluation.evaluate(Path(adapter.adapter_dir), held_out, "cpu")

    predicted, _ = evaluation.predict(Path(adapter.adapter_dir), held_out["text"].tolist(), "cpu")
    assert report.rows == len(held_out)
    assert sum(map(sum, report.confusion)) == len(held_out)
    assert set(held_out["label"]) <= set(report.labels) <= set(adapter.labels)
    assert report.accuracy == pytest.approx(float(np.mean(np.array(predicted) == held_out["label"].to_numpy())))
    assert report.latency_ms > 0
