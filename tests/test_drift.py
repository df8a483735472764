"""Calibrated drift: p-values against resampled nulls, the max-T combination, the embedding cache, bad input.

Real text from ../shared/data (rt-polarity, emotion), embedded by the tiny random BERT fixture (it
has MiniLM's real tokenizer); Evidently runs for real on the frames where its signal is asked for.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from tuneloop import drift
from tuneloop.config import MonitorConfig
from tuneloop.errors import DataError
from tests.conftest import shared_texts

# 99 draws: p-values in steps of 1/100, the coarsest that reaches the default false_alarm_rate 0.01
MONITOR = MonitorConfig(min_window_rows=50, null_resamples=99, seed=0)
TEXT = ("embedding", "length", "oov_rate", "non_ascii")


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    rt = shared_texts("rt-polarity")
    random.Random(0).shuffle(rt)
    emotion = shared_texts("emotion")
    random.Random(1).shuffle(emotion)
    return {"reference": rt[:300], "same": rt[300:400], "large": rt[400:600], "emotion": emotion[:100]}


def frame(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": texts})


def test_calibration_p_values_exact():
    observed = np.array([5.0, 2.0])
    null = np.array([[1.0, 4.0], [2.0, 0.0], [3.0, 3.0], [4.0, 1.0]])
    raw, adjusted, combined = drift.calibrate(observed, null)
    # raw p = (1 + #null >= observed) / (1 + 4): nothing reaches 5; 4 and 3 reach 2
    assert raw.tolist() == [1 / 5, 3 / 5]
    # both columns have mean 3 and 2, spread sqrt(2); in units of 1/sqrt(2) the rows' z are
    # (2, 0), (-2, 2), (-1, -2), (0, 1), (1, -1), so max-T is 2, 2, -1, 1, 1.
    # signal 1 (z 2): two of five rows reach it; signal 2 (z 0): four of five
    assert adjusted.tolist() == [2 / 5, 4 / 5]
    assert combined == 2 / 5


def test_one_extreme_signal_alarms_among_many():
    # five signals, 200 draws: the observed window tops one signal only; each other signal has its
    # own top draw, so ranks alone (min-p) would give p = 5/201 > 0.01; max-T gives 1/201
    rng = np.random.default_rng(0)
    null = rng.normal(size=(200, 5))
    observed = np.array([9.0, 0.0, 0.0, 0.0, 0.0])
    raw, adjusted, combined = drift.calibrate(observed, null)
    assert raw[0] == 1 / 201 and adjusted[0] == 1 / 201 and combined == 1 / 201
    assert adjusted[1:].min() > 0.5


def test_same_distribution_does_not_alarm(tiny_model, texts, tmp_path):
    report = drift.score_window(frame(texts["reference"]), frame(texts["same"]), MONITOR, str(tiny_model), tmp_path,
                                signals=TEXT)
    assert [s.name for s in report.signals] == list(TEXT)
    assert (report.window_rows, report.reference_rows, report.resampling, report.draws) == (100, 300, "split", 99)
    assert report.alarm is False and not any(s.alarm for s in report.signals)
    # the smallest raw p (non_ascii, 4/100) is its 4th-largest score; 13 of 100 draws have a max-T as large
    assert report.raw_p == pytest.approx({"embedding": 0.15, "length": 0.45, "oov_rate": 0.11, "non_ascii": 0.04})
    assert report.combined_p == pytest.approx(0.13)
    assert report.reasons[-1] == "combined (max-T over 4 signals): p=0.13 > monitor.false_alarm_rate=0.01: no drift"


def test_large_window_bootstraps_and_does_not_alarm(tiny_model, texts, tmp_path):
    report = drift.score_window(frame(texts["reference"]), frame(texts["large"]), MONITOR, str(tiny_model), tmp_path,
                                signals=TEXT)
    assert report.resampling == "bootstrap"
    assert "reference bootstrapped with replacement on both sides (window > half the reference)" in report.reasons[0]
    # this window's length KS (0.157) tops all 99 draws, p = 0.01: alone it would alarm at 0.01; as
    # one of four signals, 2 of 100 draws reach its standardized score, so the window does not alarm
    assert report.raw_p == pytest.approx({"embedding": 0.05, "length": 0.01, "oov_rate": 0.91, "non_ascii": 0.35})
    assert report.combined_p == pytest.approx(0.02)
    assert report.alarm is False


def test_emotion_text_alarms_on_every_text_signal(tiny_model, texts, tmp_path):
    # Evidently fits a classifier per draw: 39 draws, so p-values in steps of 1/40, and alarms at 0.05
    monitor = MonitorConfig(false_alarm_rate=0.05, min_window_rows=50, null_resamples=39, seed=0)
    report = drift.score_window(frame(texts["reference"]), frame(texts["emotion"]), monitor, str(tiny_model), tmp_path,
                                signals=("embedding", "text_domain", "length"))
    assert report.alarm is True
    assert {s.name: s.alarm for s in report.signals} == {"embedding": True, "text_domain": True, "length": True}
    # nothing in 39 draws reaches any of the three scores: the smallest p there is
    assert report.combined_p == 1 / 40
    html = drift.write_html(frame(texts["reference"]), frame(texts["emotion"]), tmp_path / "out" / "drift.html")
    page = html.read_text(encoding="utf-8").strip()
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")


def test_prediction_and_label_drift(tmp_path):
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"text": ["x"] * 200, "prediction": rng.choice(["pos", "neg"], 200),
                              "label": rng.choice(["pos", "neg"], 200), "score": rng.uniform(0.5, 1.0, 200)})
    window = pd.DataFrame({"text": ["x"] * 100, "prediction": ["pos"] * 90 + ["neg"] * 10,
                           "label": ["neg"] * 40 + [None] * 60, "score": rng.uniform(0.5, 1.0, 100)})
    report = drift.score_window(reference, window, MONITOR, "unused", tmp_path, signals=("prediction", "score", "label"))
    by_name = {s.name: s for s in report.signals}
    assert by_name["prediction"].alarm and by_name["label"].alarm and not by_name["score"].alarm
    assert by_name["label"].score == pytest.approx(1 - (reference["label"] == "neg").mean())
    few = window.assign(label=["neg"] * 9 + [None] * 91)  # 9 labelled rows: below MIN_LABELLED, no label signal
    names = [s.name for s in drift.score_window(reference, few, MONITOR, "unused", tmp_path,
                                                signals=("prediction", "label")).signals]
    assert names == ["prediction"]


def test_each_text_is_embedded_once(tiny_model, tmp_path, monkeypatch):
    encoded: list[str] = []
    real = drift._encode

    def counting(batch, folder):
        encoded.extend(batch)
        return real(batch, folder)

    monkeypatch.setattr(drift, "_encode", counting)
    first = drift.embed(["a cat", "a dog", "a cat"], str(tiny_model), tmp_path)
    second = drift.embed(["a dog", "a bird"], str(tiny_model), tmp_path)
    assert encoded == ["a cat", "a dog", "a bird"]
    assert np.array_equal(first[1], second[0]) and np.array_equal(first[0], first[2])
    assert len(list((tmp_path / "embeddings").glob("*/*.safetensors"))) == 2


def test_null_is_drawn_once_per_reference_and_size(tiny_model, texts, tmp_path, monkeypatch):
    drawn: list[int] = []
    real = drift._draws

    def counting(size, n, monitor):
        drawn.append(n)
        return real(size, n, monitor)

    monkeypatch.setattr(drift, "_draws", counting)
    reference = frame(texts["reference"])
    first = drift.score_window(reference, frame(texts["same"]), MONITOR, str(tiny_model), tmp_path, signals=TEXT)
    again = drift.score_window(reference, frame(texts["same"]), MONITOR, str(tiny_model), tmp_path, signals=TEXT)
    assert drawn == [100] * 4 and again == first
    drift.score_window(reference, frame(texts["large"]), MONITOR, str(tiny_model), tmp_path, signals=("length",))
    assert drawn == [100] * 4 + [200]


@pytest.mark.parametrize("window, message", [
    (pd.DataFrame({"text": []}), "drift window is empty; there is nothing to score"),
    (pd.DataFrame({"text": ["a"] * 49}), "drift window has 49 rows, fewer than monitor.min_window_rows=50; "
                                         "wait for more rows or lower monitor.min_window_rows"),
    (pd.DataFrame({"prompt": ["a"] * 60}), "drift window has no 'text' column (columns: ['prompt']); "
                                           "pass the input texts in a 'text' column"),
    (pd.DataFrame({"text": ["a"] * 59 + [None]}), "drift window row 59 has text nan, not a string; "
                                                  "drop rows without text before scoring"),
])
def test_bad_window_is_one_line_data_error(window, message, tmp_path):
    reference = pd.DataFrame({"text": ["a"] * 100})
    with pytest.raises(DataError) as caught:
        drift.score_window(reference, window, MONITOR, "unused", tmp_path)
    assert str(caught.value) == message
