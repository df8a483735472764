"""Drift between a reference (the champion's training rows) and a window of traffic, calibrated. Owns Evidently.

Signals, each a raw two-sample statistic where larger means more different:
- `embedding`: distance between the mean sentence embeddings (mean-pooled base encoder), i.e. MMD
  with a linear kernel. One (rows x 384) matrix product per null draw, so 200 draws at a
  10,000-row window cost well under a second; each text is embedded once and cached by sha256.
  It is the signal that sees rt-polarity windows with 10% emotion texts: 50/50 windows at n=500
  against 5/50 for Evidently's uncalibrated default (bench/README.md).
- `text_domain`: Evidently's text drift (domain classifier: TF-IDF + SGD, ROC AUC of telling
  window from reference), the very function behind Evidently's `ValueDrift` on a text column.
- `length`, `oov_rate`, `non_ascii`: Kolmogorov-Smirnov distance of the per-row length in
  characters, share of words the tokenizer has no single vocabulary entry for, and share of
  non-ASCII characters.
- `prediction` / `score`: total variation distance of predicted-class shares / KS of the top
  probability, when both sides carry them; `label`: total variation of label shares over the
  window's labelled rows, when both sides carry labels (at least `MIN_LABELLED` of them).

Calibration: a raw score means nothing until compared with its null. Each signal's null comes from
`monitor.null_resamples` seeded draws of the reference against itself at the window's size (the
draws depend only on the seed and the sizes, so one null is cached per reference, size and signal).
With n <= N/2 a draw splits the reference without replacement (n rows as window, the other N - n as
reference: no duplicates, slightly conservative as N - n < N). With a larger window the reference
cannot supply n distinct rows, so both sides are bootstrapped with replacement (n and N rows),
which keeps the variance of a two-sample statistic at the right 1/n + 1/N; duplicated rows let the
domain classifier memorize, which inflates its null and so costs power, not false alarms. Beyond
n ~ N the reference, not the window, limits what can be seen: a shift is only as visible as N
reference rows allow.

p = (1 + #null >= observed) / (1 + draws). Several signals are combined by max-T calibrated
against its own null (Westfall & Young): every statistic is standardized by the mean and spread of
its column over all draws, each draw's largest standardized statistic is its max-T, and a signal's
family-wise p is the share of draws (the observed one included) whose max-T reaches the signal's
standardized score. The window alarms when the smallest family-wise p is at most
`monitor.false_alarm_rate`; as the observed window and the draws are exchangeable under no drift
(nearly: the split's N - n reference rows make it slightly conservative, and the bootstrap's
duplicated rows make KS statistics tie more and the domain classifier memorize), the combined
false-alarm rate is the configured one however correlated the signals are.
Bonferroni would need p <= 0.01 / 5 = 0.002 for five text signals, beyond the 1/201 floor of the
default 200 draws, so it could never alarm; min-p over ranks has the same floor problem (a draw at
the top of any other signal ties with the observed window), while max-T compares continuous values.

Cost (bench/drift.py, 2 shared cores): a 10,000-row window with cached embeddings scores in 2.9 s
once the nulls at that size are cached, and in 119 s when they are computed, nearly all of it 200
fits of Evidently's domain classifier; the embedding null is one matrix product per draw.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tuneloop import modeling
from tuneloop.config import MonitorConfig
from tuneloop.errors import DataError
from tuneloop.policy import DriftSignal

log = logging.getLogger(__name__)

SIGNALS = ("embedding", "text_domain", "length", "oov_rate", "non_ascii", "prediction", "score", "label")
MIN_LABELLED = 10  # below 10 labelled rows the label shares move in steps of 10 points or more: nothing to read
SPLIT_FRACTION = 0.5  # windows up to N/2 rows split the reference; larger ones bootstrap it
EMBED_BATCH = 64
EMBED_MAX_TOKENS = 128  # 99% of rt-polarity snippets fit in 64 tokens; longer texts add little to a mean
MAX_SHARDS = 16  # the embedding store merges its shard files beyond this many
NULL_FORMAT = 1  # part of every cached null's key: raise it when a statistic changes


@dataclass(frozen=True)
class DriftReport:
    """The calibrated drift verdict on one window.

    `signals` carry family-wise p-values (alarm iff p <= monitor.false_alarm_rate); `raw_p` each
    signal's own calibrated p-value; `combined_p` the smallest family-wise p; `resampling` is
    "split" (without replacement) or "bootstrap" (with replacement).
    """

    window_rows: int
    reference_rows: int
    resampling: str
    draws: int
    signals: list[DriftSignal]
    raw_p: dict[str, float]
    combined_p: float
    alarm: bool
    reasons: list[str]

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)


def calibrate(observed: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Turn raw statistics into calibrated p-values against their null draws (Westfall-Young max-T).

    Args:
        observed: one statistic per signal, shape (k,); larger means more drift.
        null: the same statistics on reference-against-reference draws, shape (draws, k).

    Returns:
        (raw p per signal, family-wise p per signal, combined p = smallest family-wise p). Raw p =
        (1 + #null >= observed) / (1 + draws). Family-wise p = share of all draws, the observed one
        included, whose largest standardized statistic reaches the signal's own.
    """
    stats = np.vstack([np.asarray(observed, dtype=float)[None, :], np.asarray(null, dtype=float)])
    total = stats.shape[0]
    raw = (stats >= stats[0]).sum(axis=0) / total
    # standardized over every row, the observed one included, so all rows stay exchangeable
    spread = stats.std(axis=0)
    z = np.divide(stats - stats.mean(axis=0), spread, out=np.zeros_like(stats), where=spread > 0)
    largest = z.max(axis=1)
    # ties within float rounding count as ties: (5 - 3) / sqrt(2) and (4 - 2) / sqrt(2) may differ in the last bit
    adjusted = np.array([(largest >= score - 1e-9).sum() / total for score in z[0]])
    return raw, adjusted, float(adjusted.min())


def score_window(reference: pd.DataFrame, window: pd.DataFrame, monitor: MonitorConfig, base: str,
                 cache_dir: Path, signals: Sequence[str] = SIGNALS) -> DriftReport:
    """Score a traffic window against the reference on every signal both sides allow, calibrated.

    Args:
        reference: the champion's training rows: `text`, optionally `label`, `prediction`, `score`.
        window: logged rows: `text`, optionally `prediction`, `score`, `label` (None when unlabelled).
            Beyond monitor.max_window_rows only the last (newest) rows are scored.
        monitor: the monitor section (false-alarm rate, window limits, draws, seed).
        base: the base model whose encoder embeds and whose tokenizer defines the vocabulary.
        cache_dir: folder for the embedding store and the null distributions; created if missing.
        signals: the signals to compute, among SIGNALS; those a side lacks columns for are skipped.

    Returns:
        The report: one DriftSignal per signal computed, the combined verdict and reasons.

    Raises:
        DataError: an empty or too small window, a too small reference, or no usable `text` column.
    """
    _check(reference, "reference", monitor)
    _check(window, "window", monitor)
    cut = []
    if len(window) > monitor.max_window_rows:
        cut = [f"window of {len(window)} rows cut to its newest monitor.max_window_rows={monitor.max_window_rows}"]
        window = window.tail(monitor.max_window_rows)
    unknown = sorted(set(signals) - set(SIGNALS))
    if unknown:
        raise DataError(f"unknown drift signals {unknown}; choose among {list(SIGNALS)}")
    ref_view, win_view, names = _views(reference, window, base, cache_dir, signals)
    if not names:
        raise DataError(f"no drift signal among {list(signals)} can be computed: the reference has columns "
                        f"{list(map(str, reference.columns))} and the window {list(map(str, window.columns))}")
    n, labelled = len(window), len(win_view.get("label", ()))
    observed = np.array([_STATS[name](ref_view[name], win_view[name]) for name in names])
    null = np.column_stack([_null(name, ref_view, n, labelled, monitor, cache_dir) for name in names])
    raw, adjusted, combined = calibrate(observed, null)
    alpha = monitor.false_alarm_rate
    out = [DriftSignal(name, float(score), float(p), bool(p <= alpha)) for name, score, p in zip(names, observed, adjusted)]
    mode = "split" if n <= SPLIT_FRACTION * len(reference) else "bootstrap"
    return DriftReport(window_rows=n, reference_rows=len(reference), resampling=mode, draws=monitor.null_resamples,
                       signals=out, raw_p={name: float(p) for name, p in zip(names, raw)}, combined_p=combined,
                       alarm=combined <= alpha, reasons=cut + _reasons(out, raw, null, combined, len(reference), n, mode, monitor))


def _reasons(out: list[DriftSignal], raw: np.ndarray, null: np.ndarray, combined: float, size: int, n: int,
             mode: str, monitor: MonitorConfig) -> list[str]:
    """One line for the resampling, one per signal and one for the verdict, with every number."""
    how = ("reference split without replacement (window <= half the reference)" if mode == "split" else
           "reference bootstrapped with replacement on both sides (window > half the reference)")
    lines = [f"window of {n} rows against a reference of {size} rows; null: {monitor.null_resamples} draws, {how}"]
    for j, signal in enumerate(out):
        q50, q99 = np.percentile(null[:, j], [50, 99])
        lines.append(f"{signal.name}: score {signal.score:.4g} (null median {q50:.4g}, 99th percentile {q99:.4g}), "
                     f"p={raw[j]:.3g}, family-wise p={signal.p_value:.3g}: {'alarm' if signal.alarm else 'no alarm'}")
    alpha, verdict = monitor.false_alarm_rate, combined <= monitor.false_alarm_rate
    lines.append(f"combined (max-T over {len(out)} signals): p={combined:.3g} "
                 f"{'<=' if verdict else '>'} monitor.false_alarm_rate={alpha}: {'drift' if verdict else 'no drift'}")
    return lines


def _check(frame: pd.DataFrame, which: str, monitor: MonitorConfig) -> None:
    if "text" not in frame.columns:
        raise DataError(f"drift {which} has no 'text' column (columns: {list(map(str, frame.columns))}); "
                        "pass the input texts in a 'text' column")
    if len(frame) == 0:
        raise DataError(f"drift {which} is empty; there is nothing to score")
    if len(frame) < monitor.min_window_rows:
        raise DataError(f"drift {which} has {len(frame)} rows, fewer than monitor.min_window_rows="
                        f"{monitor.min_window_rows}; wait for more rows or lower monitor.min_window_rows")
    bad = next((i for i, t in enumerate(frame["text"]) if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"drift {which} row {bad} has text {frame['text'].iloc[bad]!r}, not a string; "
                        "drop rows without text before scoring")


def _views(reference: pd.DataFrame, window: pd.DataFrame, base: str, cache_dir: Path,
           wanted: Sequence[str]) -> tuple[dict, dict, list[str]]:
    """Per-row values of every signal on both sides (reference rows in reference order)."""
    ref, win = {}, {}
    texts_r, texts_w = list(reference["text"]), list(window["text"])
    if "embedding" in wanted:
        vectors = embed(texts_r + texts_w, base, cache_dir)
        ref["embedding"], win["embedding"] = vectors[:len(texts_r)], vectors[len(texts_r):]
    if "text_domain" in wanted:
        ref["text_domain"], win["text_domain"] = np.array(texts_r, dtype=object), np.array(texts_w, dtype=object)
    if {"length", "oov_rate", "non_ascii"} & set(wanted):
        described = describe(texts_r + texts_w, base)
        for name in ("length", "oov_rate", "non_ascii"):
            if name in wanted:
                ref[name], win[name] = described[name][:len(texts_r)], described[name][len(texts_r):]
    for name in ("prediction", "score", "label"):
        if name in wanted and name in reference.columns and name in window.columns:
            left, right = reference[name].dropna(), window[name].dropna()
            if name == "label" and len(right) < MIN_LABELLED:
                continue
            if name == "score":
                ref[name], win[name] = left.to_numpy(float), right.to_numpy(float)
            else:  # classes as codes over the union of both sides
                codes = {c: i for i, c in enumerate(sorted(set(map(str, left)) | set(map(str, right))))}
                ref[name] = np.array([codes[str(v)] for v in left])
                win[name] = np.array([codes[str(v)] for v in right])
    return ref, win, [name for name in SIGNALS if name in ref]


def _mean_distance(ref: np.ndarray, win: np.ndarray) -> float:
    return float(np.linalg.norm(ref.mean(axis=0) - win.mean(axis=0)))


def _ks(ref: np.ndarray, win: np.ndarray) -> float:
    a, b = np.sort(ref), np.sort(win)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))))


def _tvd(ref: np.ndarray, win: np.ndarray) -> float:
    width = int(max(ref.max(), win.max())) + 1
    return float(0.5 * np.abs(np.bincount(ref, minlength=width) / len(ref) - np.bincount(win, minlength=width) / len(win)).sum())


def _domain_auc(ref: np.ndarray, win: np.ndarray) -> float:
    from evidently.legacy.utils.data_drift_utils import calculate_text_drift_score
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Evidently fixes the SGD classifier at 50 epochs; on bootstrap draws with repeated texts it stops
        # short of convergence, and that fit is the AUC Evidently reports: the warning says nothing new
        warnings.simplefilter("ignore", ConvergenceWarning)
        auc, _ = calculate_text_drift_score(pd.Series(list(ref)), pd.Series(list(win)), bootstrap=False)
    return float(auc)


_STATS = {"embedding": _mean_distance, "text_domain": _domain_auc, "length": _ks, "oov_rate": _ks,
          "non_ascii": _ks, "prediction": _tvd, "score": _ks, "label": _tvd}


def _draws(size: int, n: int, monitor: MonitorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of every null draw: (draws, n) window rows and (draws, N - n or N) reference rows."""
    rng = np.random.default_rng([monitor.seed, size, n])
    if n <= SPLIT_FRACTION * size:
        order = np.argsort(rng.random((monitor.null_resamples, size)), axis=1)
        return order[:, :n], order[:, n:]
    return (rng.integers(0, size, (monitor.null_resamples, n)), rng.integers(0, size, (monitor.null_resamples, size)))


def _null(name: str, ref_view: dict, n: int, labelled: int, monitor: MonitorConfig, cache_dir: Path) -> np.ndarray:
    """The signal's statistic on every null draw, from the cache when this reference and size were seen."""
    values = ref_view[name]
    # labels are compared on the window's labelled rows only, so their null is drawn at that size
    size_here = labelled if name == "label" else n
    key = json.dumps([NULL_FORMAT, _fingerprint(values), name, len(values), size_here, monitor.null_resamples,
                      monitor.seed, SPLIT_FRACTION])
    path = Path(cache_dir) / "nulls" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    window_rows, reference_rows = _draws(len(values), size_here, monitor)
    if name == "embedding":  # per-draw means as one product of row counts with the embeddings
        stats = np.array([_counted_distance(values, w, r) for w, r in zip(window_rows, reference_rows)])
    else:
        stats = np.array([_STATS[name](values[r], values[w]) for w, r in zip(window_rows, reference_rows)])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")  # renamed when complete: a concurrent monitor never reads half a file
    with open(partial, "wb") as handle:
        np.save(handle, stats, allow_pickle=False)
    os.replace(partial, path)
    log.info("drift null for %s at %d rows: %d draws cached in %s", name, size_here, len(stats), path)
    return stats


def _counted_distance(vectors: np.ndarray, window_rows: np.ndarray, reference_rows: np.ndarray) -> float:
    size = len(vectors)
    weights = np.bincount(window_rows, minlength=size) / len(window_rows) - np.bincount(reference_rows, minlength=size) / len(reference_rows)
    return float(np.linalg.norm(weights @ vectors))


def _fingerprint(values: np.ndarray) -> str:
    sha = hashlib.sha256()
    if values.dtype == object:
        for text in values:
            sha.update(hashlib.sha256(text.encode()).digest())
    else:
        sha.update(str(values.dtype).encode() + str(values.shape).encode())
        sha.update(np.ascontiguousarray(values).tobytes())
    return sha.hexdigest()


def describe(texts: Sequence[str], base: str) -> dict[str, np.ndarray]:
    """Per-text descriptors: length in characters, out-of-vocabulary word share, non-ASCII character share.

    A word is out of vocabulary when the base tokenizer has no single entry for it (it splits it into
    pieces or maps it to the unknown token), the closest a WordPiece/BPE tokenizer comes to an OOV rate.

    Args:
        texts: the texts.
        base: the base model (as model.base) whose tokenizer defines the vocabulary.

    Returns:
        Arrays "length", "oov_rate" (0-1) and "non_ascii" (0-1), one value per text.
    """
    tokenizer = _tokenizer(str(modeling.resolve_base(base)))
    encoded = tokenizer(list(texts), add_special_tokens=False)
    oov = np.zeros(len(texts))
    for i in range(len(texts)):
        words = [w for w in encoded.word_ids(i) if w is not None]
        if words:
            pieces = np.bincount(words)
            oov[i] = np.mean(pieces[pieces > 0] > 1)
    return {
        "length": np.array([len(t) for t in texts], dtype=float),
        "oov_rate": oov,
        "non_ascii": np.array([sum(ord(c) > 127 for c in t) / max(len(t), 1) for t in texts]),
    }


@functools.lru_cache(maxsize=2)
def _tokenizer(folder: str) -> Any:
    return modeling.load_tokenizer(Path(folder))


@functools.lru_cache(maxsize=2)
def _encoder(folder: str) -> tuple[Any, Any, str]:
    """The base encoder, its tokenizer and a key naming its weights (an embedding store per encoder)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # a classifier checkpoint's head is "unexpected" for the bare encoder: expected
    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(folder)
    model.eval()
    weights, _ = modeling.fingerprint(Path(folder))
    return model, _tokenizer(folder), weights[:16]


def _encode(texts: list[str], folder: str) -> np.ndarray:
    """Mean-pooled last hidden states of the base encoder (padding excluded), float32, one row per text."""
    import torch

    model, tokenizer, _ = _encoder(folder)
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), EMBED_BATCH):
            rows = order[start:start + EMBED_BATCH]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=EMBED_MAX_TOKENS,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[rows] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
    return out


def embed(texts: Sequence[str], base: str, cache_dir: Path) -> np.ndarray:
    """Return one mean-pooled base-encoder embedding per text, embedding only texts not cached before.

    The store is a folder per encoder (named by its weights' hash) of safetensors shards holding
    sha256 keys of the texts and their vectors; each call adds one shard of new texts.

    Args:
        texts: the texts, repeats allowed (each distinct text is embedded once).
        base: the base model (as model.base) whose encoder embeds.
        cache_dir: folder of the store; created if missing.

    Returns:
        float32 array, one row per text in the given order (hidden size columns, 384 for MiniLM).
    """
    from safetensors.numpy import load_file, save_file

    folder = str(modeling.resolve_base(base))
    _, _, encoder = _encoder(folder)
    store = Path(cache_dir) / "embeddings" / encoder
    keys = [hashlib.sha256(t.encode()).digest() for t in texts]
    shards = sorted(store.glob("*.safetensors")) if store.is_dir() else []
    known: dict[bytes, np.ndarray] = {}
    for shard in shards:
        content = load_file(str(shard))
        known.update(zip(map(bytes, content["keys"]), content["vectors"]))
    missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in known))
    if missing:
        vectors = _encode(missing, folder)
        new_keys = [hashlib.sha256(t.encode()).digest() for t in missing]
        known.update(zip(new_keys, vectors))
        store.mkdir(parents=True, exist_ok=True)
        if len(shards) >= MAX_SHARDS:  # merge: loading many small files costs more than one large one
            new_keys, vectors = list(known), np.stack(list(known.values()))
        name = hashlib.sha256(b"".join(new_keys)).hexdigest()[:16]
        partial = store / f"{name}.partial"  # written aside, then renamed: a reader never sees half a shard
        save_file({"keys": np.frombuffer(b"".join(new_keys), np.uint8).reshape(-1, 32), "vectors": vectors}, str(partial))
        os.replace(partial, store / f"{name}.safetensors")
        if len(shards) >= MAX_SHARDS:
            for shard in shards:
                shard.unlink()
        log.info("embedded %d new texts (%d cached) with %s", len(missing), len(texts) - len(missing), encoder)
    return np.stack([known[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)


def write_html(reference: pd.DataFrame, window: pd.DataFrame, path: Path) -> Path:
    """Write Evidently's data drift report (text, predictions, scores, labels as present) as one HTML file.

    Returns:
        The path written.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [c for c in ("text", "prediction", "score", "label") if c in reference.columns and c in window.columns]
    definition = DataDefinition(text_columns=["text"], numerical_columns=[c for c in columns if c == "score"],
                                categorical_columns=[c for c in columns if c in ("prediction", "label")])
    run = Report([DataDriftPreset()]).run(Dataset.from_pandas(window[columns], data_definition=definition),
                                          Dataset.from_pandas(reference[columns], data_definition=definition))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    run.save_html(str(path))
    return path
