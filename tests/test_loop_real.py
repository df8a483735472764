"""The closed loop end to end on real data and the real MiniLM: shift -> one retrain -> champion; degraded -> rollback.

Version 1 is LoRA on MiniLM trained on 1,000 rt-polarity movie-review snippets (../shared/data,
read in place), gated on 600 frozen held-out rows. Its traffic then shifts: 800 more movie snippets
mixed with 300 texts of another domain, emotion texts (dair-ai/emotion) whose emotion names are
mapped to polarity (joy, love -> pos; sadness, anger, fear -> neg; surprise left out), served
through `tuneloop predict --log` and labelled through `tuneloop feedback add`. One `tuneloop
monitor --once` must retrain, on a new data revision holding those labelled rows, and land it as
champion (with 1,800 movie rows instead of 1,000 it is better on the frozen held-out rows, so the
gate's verdict does not rest on chance).

Then a labelled batch on which the new champion is worse than the previous one: unused rt-polarity
rows that version 1 gets right, half of them rows the new champion gets wrong (picked by scoring
both versions, which is how such a batch is found, not how traffic arrives). The next tick must
roll back to version 1.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tuneloop import data, gitrepo, registry, synthetic, tables, workspace
from tuneloop.config import load_config

RT, EMOTION = SHARED_DATA / "rt-polarity", SHARED_DATA / "emotion" / "train.txt"
TUNELOOP = shutil.which("tuneloop")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(not (RT / "rt-polarity.pos").is_file() or not EMOTION.is_file(),
                       reason="../shared/data is not beside the repo"),
    pytest.mark.skipif(TUNELOOP is None, reason="the tuneloop console script is not installed"),
]

CONFIG = """\
data:
  path: data/train.csv
  eval_path: data/eval.csv
model:
  max_length: 64
train:
  epochs: 2
  batch_size: 16
  learning_rate: 0.001
gate:
  min_accuracy: 0.7
registry:
  model_name: rt-loop
policy:
  min_new_rows: 200
"""
POLARITY = {"joy": "pos", "love": "pos", "sadness": "neg", "anger": "neg", "fear": "neg"}


def cli(*args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([TUNELOOP, *args], capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, (args, run.stderr[-4000:])
    return run


def polarity_rows() -> list[tuple[str, str]]:
    rows = [(line, label) for label in ("pos", "neg")
            for line in (RT / f"rt-polarity.{label}").read_text(encoding="utf-8").splitlines()]
    random.Random(0).shuffle(rows)
    return rows


def emotion_rows(count: int) -> list[tuple[str, str]]:
    rows = []
    for line in EMOTION.read_text(encoding="utf-8").splitlines():
        text, emotion = line.rsplit(";", 1)
        if emotion in POLARITY:
            rows.append((text, POLARITY[emotion]))
    return rows[:count]


def predict(config: Path, texts: list[str], version: str | None = None, log: Path | None = None) -> list[dict]:
    batch = config.parent / "batch.jsonl"
    batch.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    extra = (["--version", version] if version else []) + (["--log", str(log)] if log else [])
    return json.loads(cli("predict", "--file", str(batch), "--json", *extra, "--config", str(config)).stdout)


def label(config: Path, log: Path, ids: list[str], labels: list[str]) -> None:
    path = config.parent / "labels.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["request_id", "label"])
        writer.writerows(zip(ids, labels))
    cli("feedback", "add", str(path), "--log", str(log), "--config", str(config))


def actions(config: Path) -> list[tuple[str, str, str]]:
    from datetime import datetime, timedelta, timezone

    cfg = load_config(config)
    ticks = registry.tick_history(cfg.registry, cfg.monitor.experiment, datetime.now(timezone.utc) - timedelta(hours=3))
    return [(t["action"], t["champion"], t["rollback_to"]) for t in ticks]


def test_shift_retrains_once_and_lands_then_a_worse_champion_is_rolled_back(tmp_path):
    rows = polarity_rows()
    config = workspace.init(tmp_path / "ws", config_text=CONFIG)
    root, cfg = config.parent, load_config(config)
    data.add_dataset(root, synthetic.write_csv(rows[:1000], tmp_path / "train.csv"), "train", cfg.data)
    data.add_dataset(root, synthetic.write_csv(rows[1000:1600], tmp_path / "eval.csv"), "eval", cfg.data)
    first = cli("run", "--config", str(config))
    assert "version 1: gate passed, now champion" in first.stdout, first.stdout
    rev1 = gitrepo.resolve_rev(str(root), "HEAD")
    log = root / "traffic" / "traffic.jsonl"
    log.parent.mkdir()

    # the traffic shifts: another domain joins the movie snippets, and the labels arrive
    shifted = rows[1600:2400] + emotion_rows(300)
    random.Random(1).shuffle(shifted)
    served = predict(config, [t for t, _ in shifted], log=log)
    label(config, log, [r["request_id"] for r in served], [lab for _, lab in shifted])
    tick = cli("monitor", "--once", "--config", str(config))
    assert "monitor: retrain (champion 1, key retrain@1" in tick.stdout, tick.stdout
    assert "retrained: version 2 gate passed" in tick.stdout, tick.stdout
    assert registry.alias_of(cfg.registry, registry.CHAMPION) == "2"
    rev2 = registry.show(cfg.registry, "2")["record"]["data_rev"]
    assert rev2 != rev1 and rev2 == gitrepo.resolve_rev(str(root), "HEAD")
    train2 = tables.parse_table(data.read_at(str(root), rev2, "data/train.csv")[0], "train.csv", "text", "label")
    assert len(train2) == 1000 + len({" ".join(t.lower().split()) for t, _ in shifted})

    # a labelled batch the new champion gets worse than version 1 did
    pool = [t for t, _ in rows[2400:4400]]
    truth = dict(rows[2400:4400])
    old = {r["text"]: r["label"] for r in predict(config, pool, version="1")}
    new = {r["text"]: r["label"] for r in predict(config, pool, version="2")}
    lost = [t for t in pool if old[t] == truth[t] != new[t]][:60]
    kept = [t for t in pool if old[t] == truth[t] == new[t]][:len(lost)]
    assert len(lost) >= 40, f"only {len(lost)} rows where version 2 is wrong and version 1 right"
    batch = lost + kept
    served = predict(config, batch, log=log)
    assert [r["label"] for r in served] == [new[t] for t in batch]  # the champion, version 2, answered
    label(config, log, [r["request_id"] for r in served], [truth[t] for t in batch])
    tick = cli("monitor", "--once", "--config", str(config))
    assert "monitor: rollback (champion 2, key rollback@2->1" in tick.stdout, tick.stdout
    assert "rolled back 2 -> 1" in tick.stdout
    assert registry.alias_of(cfg.registry, registry.CHAMPION) == "1"
    # exactly one retrain: the tick after it judged version 2, and rolled it back
    assert actions(config) == [("retrain", "1", ""), ("rollback", "2", "1")]
