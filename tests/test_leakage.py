"""Near-duplicate leakage: the shingles, exact Jaccard, planted edited copies found in real emotion
texts, and what `data.on_leak` does to a snapshot."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import shared_texts
from tuneloop import data, leakage, validation
from tuneloop.config import parse_config
from tuneloop.errors import DataError


def test_shingles_are_5_grams_of_normalized_characters_or_words():
    assert leakage.shingles("Hi, THERE!") == frozenset({"hi th", "i the", " ther", "there"})
    assert leakage.shingles("one two three four five six", "words") == frozenset(
        {"one two three four five", "two three four five six"})
    assert leakage.shingles("just three words", "words") == frozenset({"just three words"})
    assert leakage.shingles("?!", "characters") == frozenset()
    assert leakage.jaccard(frozenset("abc"), frozenset("bcd")) == 0.5


def test_pairs_are_confirmed_on_their_exact_jaccard():
    train = ["the parcel never arrived and nobody answers my emails", "i love this app", "completely unrelated words"]
    held = ["The parcel never arrived, and nobody answers my e-mails!", "I love this app so much"]
    pairs = leakage.near_duplicates(train, held, 0.6)
    exact = leakage.jaccard(leakage.shingles(train[0]), leakage.shingles(held[0]))
    assert [(p.train, p.held_out) for p in pairs] == [(0, 0)] and pairs[0].jaccard == round(exact, 4)
    assert [(p.train, p.held_out) for p in leakage.near_duplicates(train, held, 0.5)] == [(0, 0), (1, 1)]
    assert leakage.near_duplicates(train, [], 0.5) == []


def _edit(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    """One light edit: a word swapped for another, dropped or added, or a comma after a word."""
    words = text.split()
    at = rng.randrange(len(words))
    kind = rng.choice(["swap", "drop", "add", "comma"])
    if kind == "swap":
        words[at] = rng.choice(vocabulary)
    elif kind == "drop":
        del words[at]
    elif kind == "add":
        words.insert(at, rng.choice(vocabulary))
    else:
        words[at] += ","
    return " ".join(words)


def test_planted_edited_copies_in_real_held_out_rows_are_found():
    texts = list(dict.fromkeys(shared_texts("emotion")))
    rng = random.Random(0)
    rng.shuffle(texts)
    train, pool = texts[:12000], texts[12000:]
    # Held-out rows that are no near-duplicate of a training row to begin with, so every pair found
    # is either planted or false.
    natural = {p.held_out for p in leakage.near_duplicates(train, pool[:2200], 0.3)}
    held = [t for j, t in enumerate(pool[:2200]) if j not in natural][:2000]
    vocabulary = [w for t in train[:500] for w in t.split()]
    sources = rng.sample([i for i, t in enumerate(train) if len(t.split()) >= 8], 200)  # 10% of held-out rows
    planted = {}
    for j, i in zip(rng.sample(range(len(held)), 200), sources):
        held[j], planted[j] = _edit(train[i], rng, vocabulary), i
    pairs = leakage.near_duplicates(train, held, parse_config({}).data.leak_threshold)
    found = {(p.train, p.held_out) for p in pairs}
    recall = sum((i, j) in found for j, i in planted.items()) / len(planted)
    false = [p for p in pairs if planted.get(p.held_out) != p.train]
    assert recall >= 0.9, recall
    assert len(false) / len(pairs) < 0.01, [(train[p.train], held[p.held_out]) for p in false]


def frames(texts_train: list[str], texts_held: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Frames as `tables.parse_table` reads them (no undecodable or malformed rows)."""
    def frame(texts: list[str], labels: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"row": range(1, len(texts) + 1), "text": texts, "label": labels,
                             "undecodable": False, "malformed": False})
    return frame(texts_train, ["a", "b"] * (len(texts_train) // 2)), frame(texts_held, ["a", "b"][:len(texts_held)])


TRAIN = ["my order arrived broken and the box was soaked", "the app crashes on start", "great support, thank you",
         "billing charged me twice this month"]
HELD = ["unrelated question about shipping times", "My order arrived broken, and the box was soaked!"]


@pytest.mark.parametrize("action", ["warn", "fail", "drop"])
def test_on_leak_reports_fails_or_drops(action):
    cfg = parse_config({"data": {"on_leak": action}}).data
    train, held = frames(TRAIN, HELD)
    # as a hash split leaves them: index labels that are neither positions nor file rows
    train.index, held.index = [10, 20, 30, 40], [5, 7]
    train["row"], held["row"] = [3, 5, 8, 9], [2, 4]
    report = validation.ValidationReport("x", 4, 2, ["a", "b"], [])
    checked, kept, pairs = data._leaks(cfg, report, train, held)
    pair = {"train_row": 3, "held_out_row": 4, "jaccard": 1.0}
    if action == "fail":
        assert (len(kept), pairs) == (4, [])
        assert [p.message for p in checked.problems] == [
            "row 4 (held_out) is a near-duplicate of train row 3 (Jaccard 1.00 over character 5-grams, "
            "data.leak_threshold 0.6); remove one of them, or set data.on_leak: drop"]
    else:
        assert checked.problems == [] and pairs == [pair]
        assert kept["row"].tolist() == ([5, 8, 9] if action == "drop" else [3, 5, 8, 9])
        assert checked.train_rows == len(kept)


@pytest.fixture(scope="module")
def leaky(tmp_path_factory) -> tuple[Path, str]:
    """A workspace whose eval file holds an edited copy of training row 1."""
    from tuneloop import synthetic, workspace
    from tuneloop.config import load_config

    tmp = tmp_path_factory.mktemp("leaky")
    config_path = workspace.init(tmp / "ws", config_text="data:\n  path: data/train.csv\n  eval_path: data/eval.csv\n")
    cfg = load_config(config_path)
    labels = ["a", "b"]
    data.add_dataset(config_path.parent, synthetic.write_csv(list(zip(TRAIN, labels * 2)), tmp / "train.csv"), "train", cfg.data)
    rev = data.add_dataset(config_path.parent, synthetic.write_csv(list(zip(HELD, labels)), tmp / "eval.csv"), "eval", cfg.data).rev
    return config_path, rev


def test_a_snapshot_records_the_dropped_rows(leaky, tmp_path):
    from tuneloop.config import load_config

    config_path, rev = leaky
    cfg = load_config(config_path).data.model_copy(update={"on_leak": "drop"})
    snapshot = data.prepare(cfg, rev, tmp_path / "snap")
    assert (snapshot.train_rows, snapshot.leak_action) == (3, "dropped")
    assert snapshot.near_duplicates == [{"train_row": 1, "held_out_row": 2, "jaccard": 1.0}]
    assert (snapshot.near_duplicate_count, snapshot.labels) == (1, ["a", "b"])  # labels of the rows kept
    saved = json.loads((tmp_path / "snap" / data.REPORT_FILE).read_text())
    assert (saved["leak_action"], saved["near_duplicates"]) == ("dropped", snapshot.near_duplicates)
    assert data.load_snapshot(tmp_path / "snap")[1]["text"].tolist() == TRAIN[1:]


def test_a_failed_leak_check_writes_no_snapshot(leaky, tmp_path):
    from tuneloop.config import load_config

    config_path, rev = leaky
    cfg = load_config(config_path).data.model_copy(update={"on_leak": "fail"})
    with pytest.raises(DataError, match=r"row 2 \(held_out\) is a near-duplicate of train row 1 \(Jaccard 1.00"):
        data.prepare(cfg, rev, tmp_path / "snap")
    assert not (tmp_path / "snap" / data.META_FILE).exists()
