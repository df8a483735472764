"""Evaluation: predict held-out rows with an adapter and score them.

Scoring is plain numpy (scikit-learn's import alone costs ~3 s per pipeline step). Confidence
intervals are percentile bootstraps over held-out rows, so "1 point worse" can be read against the
noise of the held-out set's size.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tuneloop import modeling
from tuneloop.tokenization import batches

log = logging.getLogger(__name__)

BOOTSTRAP_SAMPLES = 200  # 200 resamples pin a 95% interval's ends to ~±0.5 point at n=1,000


@dataclass(frozen=True)
class EvalReport:
    """Scores of one model on one held-out set."""

    rows: int
    labels: list[str]
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    confusion: list[list[int]]
    predicted_classes: int
    majority_baseline_macro_f1: float
    accuracy_ci: tuple[float, float]
    macro_f1_ci: tuple[float, float]
    latency_ms: float

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)


def _f1_per_class(confusion: np.ndarray) -> np.ndarray:
    true_pos = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    denominator = predicted + actual
    return np.divide(2 * true_pos, denominator, out=np.zeros_like(true_pos), where=denominator > 0)


def _confusion(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)


def _macro_f1(truth: np.ndarray, pred: np.ndarray, k: int, present: np.ndarray) -> float:
    return float(_f1_per_class(_confusion(truth, pred, k))[present].mean())


def score(truth: list[str], predicted: list[str], labels: list[str], latency_ms: float = 0.0, seed: int = 0) -> EvalReport:
    """Score predictions against the truth.

    Macro-F1 averages over the labels present in the truth (a label the data lacks has no F1).
    The majority baseline is the macro-F1 of always predicting the most frequent true label.
    """
    index = {label: i for i, label in enumerate(labels)}
    y, p, k = np.array([index[t] for t in truth]), np.array([index[x] for x in predicted]), len(labels)
    confusion = _confusion(y, p, k)
    f1 = _f1_per_class(confusion)
    counts = confusion.sum(axis=1)
    present = counts > 0
    majority_share = counts.max() / len(y)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(y), size=(BOOTSTRAP_SAMPLES, len(y)))
    acc_samples = [(y[d] == p[d]).mean() for d in draws]
    f1_samples = [_macro_f1(y[d], p[d], k, present) for d in draws]
    return EvalReport(
        rows=len(y), labels=list(labels), accuracy=float((y == p).mean()), macro_f1=float(f1[present].mean()),
        per_class_f1={label: float(f1[i]) for i, label in enumerate(labels) if present[i]},
        confusion=confusion.tolist(), predicted_classes=int(len(np.unique(p))),
        majority_baseline_macro_f1=float(2 * majority_share / (1 + majority_share) / present.sum()),
        accuracy_ci=tuple(float(x) for x in np.percentile(acc_samples, [2.5, 97.5])),
        macro_f1_ci=tuple(float(x) for x in np.percentile(f1_samples, [2.5, 97.5])),
        latency_ms=latency_ms,
    )


def predict(adapter_dir: Path, texts: list[str], device: str, batch_size: int = 64) -> tuple[list[str], float]:
    """Predict labels for texts; return them and the mean latency per example in milliseconds."""
    import torch

    model, tokenizer, meta = modeling.load_adapter(adapter_dir, device)
    out: list[str] = []
    started = time.perf_counter()
    with torch.no_grad():
        for batch in batches(tokenizer, texts, None, batch_size, meta.max_length):
            logits = model(**batch.to(device)).logits
            out.extend(meta.labels[i] for i in logits.argmax(-1).tolist())
    return out, 1000 * (time.perf_counter() - started) / max(len(texts), 1)


def evaluate(adapter_dir: Path, held_out: pd.DataFrame, device: str, batch_size: int = 64) -> EvalReport:
    """Evaluate an adapter on held-out rows (columns text, label)."""
    predicted, latency = predict(adapter_dir, held_out["text"].tolist(), device, batch_size)
    labels = sorted(set(held_out["label"]) | set(predicted))
    report = score(held_out["label"].tolist(), predicted, labels, latency)
    log.info("evaluated %s on %d rows: accuracy %.4f macro-F1 %.4f", adapter_dir, report.rows, report.accuracy, report.macro_f1)
    return report
