"""Unit tests for tuneloop.evaluation: `score` against scikit-learn, and `evaluate` on a trained adapter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from tuneloop import evaluation, modeling, synthetic, training
from tuneloop.config import parse_config
from tuneloop.errors import DataError
from tuneloop.evaluation import EvalReport
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


def test_a_report_keeps_every_row_in_order():
    report = evaluation.score(["a", "b", "c"], ["a", "c", "c"], ["a", "b", "c"], scores=[0.9, 0.5, 0.75],
                              slices=["eu", "us", "eu"])
    assert (report.truth, report.predictions, report.scores) == (["a", "b", "c"], ["a", "c", "c"], [0.9, 0.5, 0.75])
    assert (report.slices, report.model_labels) == (["eu", "us", "eu"], ["a", "b", "c"])
    bare = evaluation.score(["a", "b"], ["a", "a"], ["a", "b", "c"], model_labels=["a", "b", "c", "d"])
    assert (bare.scores, bare.slices, bare.model_labels) == ([], None, ["a", "b", "c", "d"])


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"scores": [0.9]}, r"^3 true labels but \{'scores': 1\}; pass one entry per held-out row$"),
        ({"slices": []}, r"^3 true labels but \{'slices': 0\}; pass one entry per held-out row$"),
    ],
)
def test_per_row_lists_of_another_length_are_refused(given, message):
    with pytest.raises(DataError, match=message):
        evaluation.score(["a", "b", "a"], ["a", "b", "b"], ["a", "b"], **given)


def test_a_report_round_trips_through_json():
    report = evaluation.score(["a", "b", "a"], ["a", "b", "b"], ["a", "b"], scores=[0.6, 0.7, 0.8], slices=["x", "y", "x"])
    assert EvalReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_a_report_written_before_the_per_row_fields_loads():
    report = evaluation.score(["a", "b", "a"], ["a", "b", "b"], ["a", "b"])
    old = {k: v for k, v in json.loads(json.dumps(report.to_dict())).items()
           if k not in ("truth", "predictions", "scores", "slices", "model_labels")}
    loaded = EvalReport.from_dict(old)
    assert (loaded.truth, loaded.slices, loaded.model_labels, loaded.accuracy_ci) == ([], None, ["a", "b"], report.accuracy_ci)
    with pytest.raises(TypeError, match=r"unknown evaluation report keys \['f1'\]"):
        EvalReport.from_dict({**old, "f1": 0.5})


def test_compare_gives_the_same_interval_whatever_the_chunk_size(monkeypatch):
    truth, predicted = all_labels(np.random.default_rng(7))
    candidate = evaluation.score(truth.tolist(), predicted.tolist(), LABELS)
    champion = evaluation.score(truth.tolist(), noisy_predictions(np.random.default_rng(8), truth, LABELS).tolist(), LABELS)
    whole = evaluation.compare(candidate, champion, draws=100, seed=2)
    monkeypatch.setattr(evaluation, "CHUNK_CELLS", 7 * (len(truth) + 16))  # 15 chunks of 7 draws, the last of 2
    assert evaluation.compare(candidate, champion, draws=100, seed=2) == whole


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
    assert (report.truth, report.predictions) == (held_out["label"].tolist(), predicted)
    assert (report.slices, report.model_labels) == (None, adapter.labels)


def test_predict_scored_gives_the_softmax_probability_of_each_predicted_label(adapter):
    import torch

    texts = [text for text, _ in synthetic.generate_tickets(1, 5, seed=2)]

    labels, probabilities, _ = evaluation.predict_scored(Path(adapter.adapter_dir), texts, "cpu", batch_size=2)

    model, tokenizer, meta = modeling.load_adapter(Path(adapter.adapter_dir), "cpu")
    with torch.no_grad():
        for text, label, probability in zip(texts, labels, probabilities):
            softmax = model(**tokenizer([text], truncation=True, max_length=meta.max_length, return_tensors="pt")).logits.softmax(-1)[0]
            assert (label, probability) == (meta.labels[int(softmax.argmax())], pytest.approx(float(softmax.max()), abs=1e-5))
    assert evaluation.predict(Path(adapter.adapter_dir), texts, "cpu")[0] == labels


def test_evaluate_reads_a_slice_column_when_the_rows_carry_one(adapter):
    held_out = pd.DataFrame(synthetic.generate_tickets(1, 12, seed=3), columns=["text", "label"])
    held_out["slice"] = ["eu", "us", "apac"] * 4

    report = evaluation.evaluate(Path(adapter.adapter_dir), held_out, "cpu")

    assert report.slices == ["eu", "us", "apac"] * 4
    _, probabilities, _ = evaluation.predict_scored(Path(adapter.adapter_dir), held_out["text"].tolist(), "cpu")
    assert report.scores == pytest.approx(probabilities, abs=1e-6)
