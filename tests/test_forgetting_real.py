"""Forgetting on the real MiniLM: a sentiment model trained on movie reviews (rt-polarity), refreshed
on tweets only (emotion, its six classes mapped to the two polarities), loses accuracy on the movie
reviews; a refresh that continues from the champion's adapter and replays 20% of the champion's
rows loses less.

Through the cycle's own steps: revision 1 (rt-polarity) is trained, gated and promoted; revision 2
(emotion) is validated, then trained twice from the same snapshot: `fresh` without replay, and
`continue` with `train.replay_share: 0.2` (the rows come from revision 1's file through
`data.replay`). All three models are scored on the same 600 held-out movie reviews.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import emotion_rows, shared_file
from tuneloop import cycle, data, evaluation, synthetic, training
from tuneloop import workspace as ws
from tuneloop.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

POLARITY = {"joy": "pos", "love": "pos", "surprise": "pos", "sadness": "neg", "anger": "neg", "fear": "neg"}
CONFIG = """\
data:
  path: data/train.csv
  eval_path: data/eval.csv
model:
  max_length: 64
train:
  epochs: 3
  batch_size: 32
  log_every: 50
gate:
  min_accuracy: 0.0
  min_macro_f1: 0.0
registry:
  model_name: polarity
"""


def reviews() -> list[tuple[str, str]]:
    rows = [(line, label) for label in ("pos", "neg")
            for line in shared_file("rt-polarity", f"rt-polarity.{label}").read_text(encoding="utf-8").splitlines()]
    unique = list({text: (text, label) for text, label in rows if Counter(t for t, _ in rows)[text] == 1}.values())
    random.Random(0).shuffle(unique)
    return unique


def tweets() -> list[tuple[str, str]]:
    counts = Counter(text for text, _ in emotion_rows("train"))
    rows = [(text, POLARITY[label]) for text, label in emotion_rows("train") if counts[text] == 1]
    random.Random(1).shuffle(rows)
    return rows


def test_continue_with_replay_forgets_the_old_domain_less_than_fresh(tmp_path):
    movies, twitter = reviews(), tweets()
    old_train, old_held = movies[:2000], movies[2000:2600]
    new_train, new_held = twitter[:2000], twitter[2000:2400]
    config_path = ws.init(tmp_path / "ws", config_text=CONFIG)
    root, cfg = config_path.parent, load_config(config_path)

    def revision(train_rows, held_rows, tag):
        data.add_dataset(root, synthetic.write_csv(train_rows, tmp_path / f"train-{tag}.csv"), "train", cfg.data)
        return data.add_dataset(root, synthetic.write_csv(held_rows, tmp_path / f"eval-{tag}.csv"), "eval", cfg.data).rev

    first = revision(old_train, old_held, "movies")
    decision, champion = cycle.run_cycle(cfg, first, tmp_path / "v1")
    assert decision.passed and champion.version == "1"
    second = revision(new_train, new_held, "tweets")
    snapshot = tmp_path / "snap2"
    cycle.validate_step(cfg, second, snapshot)

    def refreshed(tag: str, **train) -> Path:
        changed = cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})
        cycle.train_step(changed, snapshot, tmp_path / tag)
        return tmp_path / tag

    fresh = refreshed("fresh")
    kept = refreshed("continue", strategy="continue", replay_share=0.2)
    record = training.TrainResult.load(kept)
    assert (record.strategy, record.parent_version) == ("continue", "1")
    assert record.replay_sources[0]["rows"] == 500 and record.replay_sources[0]["rev"] == first  # 20% of 2,500

    held = pd.DataFrame(old_held, columns=["text", "label"])
    accuracy = {name: evaluation.evaluate(folder / "adapter", held, "cpu").accuracy
                for name, folder in (("champion", tmp_path / "v1" / "train"), ("fresh", fresh), ("continue", kept))}
    print(f"movie-review accuracy: {accuracy}")
    lost_fresh, lost_continue = accuracy["champion"] - accuracy["fresh"], accuracy["champion"] - accuracy["continue"]
    assert lost_fresh > 0  # fresh, on tweets only, forgets
    assert lost_continue < lost_fresh - 0.02  # measurably less: by more than 2 points of 600 rows
