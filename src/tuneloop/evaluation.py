"""Evaluation: predict held-out rows with an adapter and score them.

Scoring is plain numpy (scikit-learn's import alone costs ~3 s per pipeline step). Confidence
intervals are percentile bootstraps over held-out rows, so "1 point worse" can be read against the
noise of the held-out set's size. A report keeps every row's truth and prediction, so
`compare` can pair a candidate with the champion on the same rows: a paired bootstrap of the
difference, McNemar's exact test, and per-slice scores, the numbers the gate judges.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneloop import generation, modeling, tasks
from tuneloop.errors import DataError
from tuneloop.tokenization import batches

log = logging.getLogger(__name__)

BOOTSTRAP_SAMPLES = 200  # 200 resamples pin a 95% interval's ends to ~±0.5 point at n=1,000
PERCENTILES = (2.5, 97.5)  # a two-sided 95% interval: its lower bound is a one-sided 97.5% test
EXACT_MCNEMAR_MAX = 1000  # up to this many discordant rows the binomial tail is summed in integers
CHUNK_CELLS = 2_000_000  # bootstrap cells held at once (16 MB of int64), whatever the rows and labels
METRICS = ("accuracy", "macro_f1")
LATENCY_TEXTS = 32  # single-text predictions timed per evaluation: p95 of 32 is the second slowest


@dataclass(frozen=True)
class EvalReport:
    """Scores of one model on one held-out set, with the per-row results they came from.

    `metrics` holds every metric of the task (`tasks.REGISTRY`), `intervals` each one's 95%
    bootstrap interval and `directions` whether higher or lower is better; the gate and the
    registry read these. The classification fields (labels to majority_baseline_macro_f1) are
    zero or empty for a generative task.

    `truth`, `predictions` (labels, or reference and generated texts), `scores` (probability of
    the predicted label; empty when not given) and `slices` (None when the rows carry none) are per
    held-out row, in the held-out order; `row_values` holds a generative task's per-row figures
    (rouge1, rouge2, rougeL; nll and tokens for perplexity), from which a paired comparison resamples.
    `model_labels` is the label set the model was trained on (`labels` also holds any label only
    the truth or the predictions use).
    """

    rows: int
    labels: list[str] = field(default_factory=list)
    accuracy: float = 0.0
    macro_f1: float = 0.0
    per_class_f1: dict[str, float] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    predicted_classes: int = 0
    majority_baseline_macro_f1: float = 0.0
    accuracy_ci: tuple[float, float] = (0.0, 0.0)
    macro_f1_ci: tuple[float, float] = (0.0, 0.0)
    latency_ms: float = 0.0
    truth: list[str] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    slices: list[str] | None = None
    model_labels: list[str] = field(default_factory=list)
    latency_p50_ms: float = 0.0  # one text per forward pass (what a lone request waits), over LATENCY_TEXTS texts
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0  # of LATENCY_TEXTS texts: between the two slowest
    task: str = "sequence_classification"
    metrics: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    directions: dict[str, str] = field(default_factory=dict)
    row_values: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A classifier's metrics are its accuracy and macro-F1 fields (also in reports written before `metrics`).
        if not self.metrics and self.task == "sequence_classification":
            object.__setattr__(self, "metrics", {"accuracy": self.accuracy, "macro_f1": self.macro_f1})
            object.__setattr__(self, "intervals", {"accuracy": tuple(self.accuracy_ci), "macro_f1": tuple(self.macro_f1_ci)})
        task = tasks.get(self.task)
        object.__setattr__(self, "directions", {m: task.metric(m).direction for m in self.metrics})

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "EvalReport":
        """Rebuild from `to_dict` output, including reports written before the per-row fields.

        Raises:
            TypeError: when `raw` lacks a required key or holds an unknown one.
        """
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown evaluation report keys {unknown}")
        values = {**raw, "accuracy_ci": tuple(raw.get("accuracy_ci", (0.0, 0.0))),
                  "macro_f1_ci": tuple(raw.get("macro_f1_ci", (0.0, 0.0))),
                  "intervals": {m: tuple(ci) for m, ci in raw.get("intervals", {}).items()}}
        values.setdefault("model_labels", list(raw.get("labels", [])))  # older reports: the labels it was scored on
        return cls(**values)


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


def score(
    truth: list[str], predicted: list[str], labels: list[str], latency_ms: float = 0.0, seed: int = 0,
    scores: list[float] | None = None, slices: list[str] | None = None, model_labels: list[str] | None = None,
) -> EvalReport:
    """Score predictions against the truth.

    Macro-F1 averages over the labels present in the truth (a label the data lacks has no F1).
    The majority baseline is the macro-F1 of always predicting the most frequent true label.

    Args:
        truth: the true label of each held-out row.
        predicted: the predicted label of each row, in the same order.
        labels: every label either list uses (the confusion matrix's order).
        latency_ms: mean prediction time per row.
        seed: seeds the bootstrap of the intervals.
        scores: probability of each predicted label (0 to 1), or None.
        slices: each row's slice (region, language...), or None.
        model_labels: the model's own label set; None means `labels`.

    Raises:
        DataError: when the per-row lists differ in length.
    """
    given = {"predicted": predicted, "scores": scores, "slices": slices}
    wrong = {name: len(values) for name, values in given.items() if values is not None and len(values) != len(truth)}
    if wrong:
        raise DataError(f"{len(truth)} true labels but {wrong}; pass one entry per held-out row")
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
        latency_ms=latency_ms, truth=list(truth), predictions=list(predicted),
        scores=[float(x) for x in scores] if scores is not None else [],
        slices=list(slices) if slices is not None else None,
        model_labels=list(model_labels if model_labels is not None else labels),
    )


@dataclass(frozen=True)
class Comparison:
    """Candidate - champion on the same held-out rows.

    `intervals` maps each metric to the 95% paired-bootstrap interval of the difference, in
    points (1 point = 0.01; `tasks.Metric.delta_points`: positive when the candidate is better).
    For a classifier, `b` counts the rows only the candidate gets right, `c` the rows only the
    champion gets right, `p_value` is McNemar's exact test on them (all None for a generative task,
    whose rows are not right or wrong). `slices` maps each slice
    to its row count, both models' scores there ({metric: (candidate, champion)}) and the paired
    interval of the difference within the slice ({metric: (low, high)}, in points).
    """

    intervals: dict[str, tuple[float, float]]
    b: int | None
    c: int | None
    p_value: float | None
    slices: dict[str, tuple[int, dict[str, tuple[float, float]], dict[str, tuple[float, float]]]]


def mcnemar(b: int, c: int) -> float:
    """Return McNemar's exact two-sided p-value for b and c discordant rows.

    Under "both models are equally good", each of the b + c rows where exactly one is right is a
    fair coin: p = 2 * P(Binomial(b + c, 1/2) <= min(b, c)), capped at 1.
    """
    n, low = b + c, min(b, c)
    if n <= EXACT_MCNEMAR_MAX:
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2**n)
    # log C(n, i) from the ratio C(n, i + 1) / C(n, i) = (n - i) / (i + 1), summed by log-sum-exp
    i = np.arange(low)
    logs = np.concatenate([[0.0], np.cumsum(np.log((n - i) / (i + 1)))])
    top = float(logs.max())
    log_tail = top + math.log(float(np.exp(logs - top).sum())) - n * math.log(2)
    return min(1.0, 2 * math.exp(log_tail))


def _sample_metrics(y: np.ndarray, p: np.ndarray, rows: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 of each row of `rows` (a 2-d array of indices into y and p) at once.

    Macro-F1 averages over the labels present in that sample's truth, as `score` does.
    """
    truth, pred = y[rows], p[rows]
    offsets = np.arange(len(rows))[:, None] * (k * k)
    confusion = np.bincount((offsets + truth * k + pred).ravel(), minlength=len(rows) * k * k).reshape(-1, k, k)
    true_pos = np.diagonal(confusion, axis1=1, axis2=2).astype(float)
    actual, predicted = confusion.sum(axis=2), confusion.sum(axis=1)
    f1 = np.divide(2 * true_pos, actual + predicted, out=np.zeros_like(true_pos), where=actual + predicted > 0)
    present = actual > 0
    return {"accuracy": (truth == pred).mean(axis=1), "macro_f1": (f1 * present).sum(axis=1) / present.sum(axis=1)}


def _paired_rows(candidate: EvalReport, champion: EvalReport) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The shared truth and both prediction lists as label indices, and the number of labels."""
    for name, report in (("candidate", candidate), ("champion", champion)):
        if len(report.truth) != report.rows or len(report.predictions) != report.rows:
            raise DataError(f"the {name}'s evaluation report has no per-row predictions for its {report.rows} rows "
                            "(written by an older tuneloop?); rerun `tuneloop evaluate` to score both models again")
    if candidate.truth != champion.truth or candidate.slices != champion.slices:
        raise DataError(f"the candidate ({candidate.rows} rows) and the champion ({champion.rows} rows) were scored "
                        "on different held-out rows; rerun `tuneloop evaluate` to score both on one snapshot")
    labels = sorted(set(candidate.truth) | set(candidate.predictions) | set(champion.predictions))
    index = {label: i for i, label in enumerate(labels)}
    y, cand, champ = (np.array([index[x] for x in values], dtype=np.int64)
                      for values in (candidate.truth, candidate.predictions, champion.predictions))
    return y, cand, champ, len(labels)


def compare(candidate: EvalReport, champion: EvalReport, draws: int = 1000, seed: int = 0) -> Comparison:
    """Compare two models scored on the same held-out rows.

    Each bootstrap draw resamples the row indices once and scores both models on them, so the
    interval is of the paired difference: rows both get right or both get wrong cancel out.

    Args:
        candidate: the new model's report, with its per-row results.
        champion: the serving model's report on the same rows.
        draws: bootstrap resamples; with 1,000 the bounds move by ~0.25 point (one standard
            deviation) between seeds at 200 rows, ~0.1 at 1,000.
        seed: seeds the resampling, so the same reports always give the same interval.

    Raises:
        DataError: when a report lacks per-row results or the two cover different rows.
    """
    if tasks.get(candidate.task).generative:
        return _compare_rows(candidate, champion, draws, seed)
    y, cand, champ, k = _paired_rows(candidate, champion)
    intervals = _paired_intervals(y, cand, champ, k, np.arange(len(y)), draws, seed)
    b, c = int(((cand == y) & (champ != y)).sum()), int(((cand != y) & (champ == y)).sum())
    slices = {}
    if candidate.slices is not None:
        column = np.array(candidate.slices, dtype=object)
        for name in sorted(set(candidate.slices)):
            pool = np.flatnonzero(column == name)
            ours, theirs = _sample_metrics(y, cand, pool[None, :], k), _sample_metrics(y, champ, pool[None, :], k)
            scores = {m: (float(ours[m][0]), float(theirs[m][0])) for m in METRICS}
            slices[name] = (len(pool), scores, _paired_intervals(y, cand, champ, k, pool, draws, seed))
    return Comparison(intervals=intervals, b=b, c=c, p_value=mcnemar(b, c), slices=slices)


def _compare_rows(candidate: EvalReport, champion: EvalReport, draws: int, seed: int) -> Comparison:
    """`compare` for a generative task: every metric is a function of per-row figures (`row_values`)."""
    for name, report in (("candidate", candidate), ("champion", champion)):
        if len(report.truth) != report.rows or not report.row_values:
            raise DataError(f"the {name}'s evaluation report has no per-row figures for its {report.rows} rows; "
                            "rerun `tuneloop evaluate` to score both models again")
    if candidate.truth != champion.truth or candidate.slices != champion.slices or candidate.task != champion.task:
        raise DataError(f"the candidate ({candidate.rows} rows) and the champion ({champion.rows} rows) were scored "
                        "on different held-out rows; rerun `tuneloop evaluate` to score both on one snapshot")
    task = tasks.get(candidate.task)
    ours, theirs = ({key: np.asarray(values, dtype=float) for key, values in report.row_values.items()}
                    for report in (candidate, champion))

    def intervals(pool: np.ndarray) -> dict[str, tuple[float, float]]:
        rng = np.random.default_rng(seed)
        per_chunk, parts = max(1, CHUNK_CELLS // len(pool)), []
        for start in range(0, draws, per_chunk):
            rows = pool[rng.integers(0, len(pool), size=(min(per_chunk, draws - start), len(pool)))]
            parts.append({m.name: m.delta_points(m.value(ours, rows), m.value(theirs, rows)) for m in task.metrics})
        return {m.name: tuple(float(x) for x in np.percentile(np.concatenate([p[m.name] for p in parts]), PERCENTILES))
                for m in task.metrics}

    slices = {}
    if candidate.slices is not None:
        column = np.array(candidate.slices, dtype=object)
        for name in sorted(set(candidate.slices)):
            pool = np.flatnonzero(column == name)
            scores = {m.name: (float(m.value(ours, pool[None, :])[0]), float(m.value(theirs, pool[None, :])[0]))
                      for m in task.metrics}
            slices[name] = (len(pool), scores, intervals(pool))
    return Comparison(intervals=intervals(np.arange(candidate.rows)), b=None, c=None, p_value=None, slices=slices)


def _paired_intervals(
    y: np.ndarray, cand: np.ndarray, champ: np.ndarray, k: int, pool: np.ndarray, draws: int, seed: int,
) -> dict[str, tuple[float, float]]:
    """The 95% paired-bootstrap interval of candidate - champion, in points, over the rows in `pool`."""
    rng = np.random.default_rng(seed)
    per_chunk, parts = max(1, CHUNK_CELLS // (len(pool) + k * k)), []  # each draw holds n indices and a k x k confusion
    for start in range(0, draws, per_chunk):
        rows = pool[rng.integers(0, len(pool), size=(min(per_chunk, draws - start), len(pool)))]
        ours, theirs = _sample_metrics(y, cand, rows, k), _sample_metrics(y, champ, rows, k)
        parts.append({m: 100 * (ours[m] - theirs[m]) for m in METRICS})
    intervals = {}
    for m in METRICS:
        low, high = np.percentile(np.concatenate([part[m] for part in parts]), PERCENTILES)
        intervals[m] = (float(low), float(high))
    return intervals


def predict_scored(
    adapter_dir: Path, texts: list[str], device: str, batch_size: int = 64, base: str | None = None,
) -> tuple[list[str], list[float], float]:
    """Predict labels for texts with their softmax probabilities.

    With `base` (a model.base), the adapter is loaded onto that base after its contract is checked
    against it (`modeling.check_contract`); without, onto the base it records.

    Returns:
        The predicted labels, the probability of each (0 to 1), and the mean latency per text
        in milliseconds.
    """
    model, tokenizer, meta = modeling.load_adapter(adapter_dir, device, base=base)
    started = time.perf_counter()
    labels, probabilities = score_loaded(model, tokenizer, meta, texts, device, batch_size)
    return labels, probabilities, 1000 * (time.perf_counter() - started) / max(len(texts), 1)


def score_loaded(model: Any, tokenizer: Any, meta: modeling.AdapterMeta, texts: list[str], device: str,
                 batch_size: int) -> tuple[list[str], list[float]]:
    """Label texts with a model already in memory: each text's label and its softmax probability (0 to 1)."""
    import torch

    labels: list[str] = []
    probabilities: list[float] = []
    with torch.inference_mode():
        for batch in batches(tokenizer, texts, None, batch_size, meta.max_length):
            best = model(**batch.to(device)).logits.float().softmax(-1).max(-1)
            labels.extend(meta.labels[i] for i in best.indices.tolist())
            probabilities.extend(best.values.tolist())
    return labels, probabilities


def predict(adapter_dir: Path, texts: list[str], device: str, batch_size: int = 64) -> tuple[list[str], float]:
    """Predict labels for texts; return them and the mean latency per example in milliseconds."""
    labels, _, latency = predict_scored(adapter_dir, texts, device, batch_size)
    return labels, latency


def single_text_latency(model: Any, tokenizer: Any, meta: modeling.AdapterMeta, texts: list[str], device: str,
                        settings: Any = None) -> tuple[float, float, float]:
    """Median, 95th and 99th percentile of the time to answer one text alone (a label, or a whole generated
    output with `settings`, the generation section), in milliseconds (after one warm-up)."""
    def answer(text: str) -> None:
        if settings is None:
            score_loaded(model, tokenizer, meta, [text], device, 1)
        else:
            generation.generate(model, tokenizer, meta.task, [text], meta.max_length, settings, device, 1)

    sample = texts[:LATENCY_TEXTS]
    if not sample:
        return 0.0, 0.0, 0.0
    answer(sample[0])
    times = []
    for text in sample:
        started = time.perf_counter()
        answer(text)
        times.append(1000 * (time.perf_counter() - started))
    return tuple(float(np.percentile(times, q)) for q in (50, 95, 99))


def evaluate(adapter_dir: Path, held_out: pd.DataFrame, device: str, batch_size: int = 64,
             settings: Any = None) -> EvalReport:
    """Evaluate an adapter on held-out rows (columns text, label, and slice when the rows carry one).

    Args:
        adapter_dir: the adapter (or fully fine-tuned model) folder.
        held_out: the rows; for a generative task, text is the source or prompt and label the reference.
        device: torch device string.
        batch_size: rows per forward pass (per generate call).
        settings: the generation section, for a generative task (None: its defaults).
    """
    texts = held_out["text"].tolist()
    model, tokenizer, meta = modeling.load_adapter(adapter_dir, device)
    if tasks.get(meta.task).generative:
        return _evaluate_generative(model, tokenizer, meta, held_out, device, batch_size, settings)
    started = time.perf_counter()
    predicted, probabilities = score_loaded(model, tokenizer, meta, texts, device, batch_size)
    latency = 1000 * (time.perf_counter() - started) / max(len(texts), 1)
    p50, p95, p99 = single_text_latency(model, tokenizer, meta, texts, device)
    labels = sorted(set(held_out["label"]) | set(predicted))
    slices = held_out["slice"].astype(str).tolist() if "slice" in held_out.columns else None
    report = score(
        held_out["label"].tolist(), predicted, labels, latency, scores=probabilities, slices=slices,
        model_labels=meta.labels,
    )
    report = replace(report, latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99)
    log.info("evaluated %s on %d rows: accuracy %.4f macro-F1 %.4f", adapter_dir, report.rows, report.accuracy, report.macro_f1)
    return report


def score_texts(task_name: str, references: list[str], outputs: list[str], rows: dict[str, list[float]],
                latency_ms: float = 0.0, slices: list[str] | None = None, seed: int = 0) -> EvalReport:
    """Score a generative task's outputs from their per-row figures: each metric over all rows, and
    its 95% bootstrap interval (rows resampled, seeded by `seed`).

    Args:
        task_name: model.task (seq2seq or causal_lm).
        references: each row's reference text.
        outputs: each row's generated text.
        rows: per-row figures the task's metrics read (rouge1, rouge2, rougeL; nll and tokens).
        latency_ms: mean generation time per row.
        slices: each row's slice, or None.
        seed: seeds the bootstrap of the intervals.
    """
    task = tasks.get(task_name)
    arrays = {key: np.asarray(values, dtype=float) for key, values in rows.items()}
    draws = np.random.default_rng(seed).integers(0, len(references), size=(BOOTSTRAP_SAMPLES, len(references)))
    everything = np.arange(len(references))[None, :]
    return EvalReport(
        rows=len(references), latency_ms=latency_ms, truth=list(references), predictions=list(outputs), slices=slices,
        task=task_name, metrics={m.name: float(m.value(arrays, everything)[0]) for m in task.metrics},
        intervals={m.name: tuple(float(x) for x in np.percentile(m.value(arrays, draws), PERCENTILES))
                   for m in task.metrics},
        row_values={key: [float(x) for x in values] for key, values in rows.items()},
    )


def _evaluate_generative(model: Any, tokenizer: Any, meta: modeling.AdapterMeta, held_out: pd.DataFrame, device: str,
                         batch_size: int, settings: Any) -> EvalReport:
    """Generate an output for every held-out row and score it (ROUGE; perplexity of the references for causal_lm)."""
    if settings is None:
        from tuneloop.config import GenerationConfig

        settings = GenerationConfig()
    task = tasks.get(meta.task)
    texts, references = held_out["text"].tolist(), held_out["label"].tolist()
    started = time.perf_counter()
    outputs = generation.generate(model, tokenizer, meta.task, texts, meta.max_length, settings, device, batch_size)
    latency = 1000 * (time.perf_counter() - started) / max(len(texts), 1)
    rows: dict[str, list[float]] = generation.rouge_rows(references, outputs)
    if "perplexity" in task.metric_names:
        nll, counts = generation.response_nll(model, tokenizer, meta.task, texts, references, meta.max_length,
                                              settings.max_new_tokens, device, batch_size)
        rows.update(nll=nll, tokens=[float(n) for n in counts])
    p50, p95, p99 = single_text_latency(model, tokenizer, meta, texts, device, settings)
    slices = held_out["slice"].astype(str).tolist() if "slice" in held_out.columns else None
    report = replace(score_texts(meta.task, references, outputs, rows, latency, slices=slices),
                     latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99)
    log.info("evaluated %s on %d rows: %s", meta.task, report.rows,
             " ".join(f"{name} {value:.4f}" for name, value in report.metrics.items()))
    return report
