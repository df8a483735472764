"""Unit tests for the synthetic support-ticket generator behind `tuneloop demo`."""

import csv
from collections import Counter

import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from tuneloop.errors import DataError
from tuneloop.synthetic import (
    CLASS_MIX,
    LABELS,
    MAX_WORDS,
    MIN_WORDS,
    generate_tickets,
    with_label_noise,
    write_csv,
)


def _accuracy(model, rows):
    predicted = model.predict([text for text, _ in rows])
    return sum(p == label for p, (_, label) in zip(predicted, rows)) / len(rows)


def _fit(rows):
    texts, labels = zip(*rows)
    return make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)).fit(texts, labels)


@pytest.fixture(scope="module")
def v1_split():
    rows = generate_tickets(1, 1500, seed=0)
    return rows[:1000], rows[1000:]


@pytest.fixture(scope="module")
def v1_model(v1_split):
    return _fit(v1_split[0])


@pytest.mark.parametrize("version", [1, 2])
def test_same_arguments_give_identical_rows(version):
    assert generate_tickets(version, 300, seed=7) == generate_tickets(version, 300, seed=7)


@pytest.mark.parametrize("version", [1, 2])
def test_different_seeds_give_different_rows(version):
    first, second = generate_tickets(version, 300, seed=1), generate_tickets(version, 300, seed=2)
    assert len({text for text, _ in first} & {text for text, _ in second}) < 5


@pytest.mark.parametrize("rows", [0, 1, 7, 2000])
@pytest.mark.parametrize("version", [1, 2])
def test_row_count_and_word_count(version, rows):
    tickets = generate_tickets(version, rows)
    assert len(tickets) == rows
    assert all(MIN_WORDS <= len(text.split()) <= MAX_WORDS for text, _ in tickets)
    assert all(isinstance(text, str) and isinstance(label, str) for text, label in tickets)


@pytest.mark.parametrize("version", [1, 2])
def test_labels_are_the_three_classes(version):
    assert {label for _, label in generate_tickets(version, 2000)} == set(LABELS)


@pytest.mark.parametrize(
    ("version", "expected"),
    [(1, {"billing": 0.40, "technical": 0.35, "account": 0.25}),
     (2, {"billing": 0.30, "technical": 0.40, "account": 0.30})],
)
def test_class_mix_follows_the_version(version, expected):
    counts = Counter(label for _, label in generate_tickets(version, 2000, seed=3))
    assert CLASS_MIX[version] == expected
    for label, share in expected.items():
        assert abs(counts[label] / 2000 - share) <= 0.05


@pytest.mark.parametrize("version", [1, 2])
def test_fewer_than_one_percent_exact_duplicates(version):
    texts = [text for text, _ in generate_tickets(version, 2000)]
    assert 1 - len(set(texts)) / len(texts) < 0.01


def test_version_two_brings_new_vocabulary():
    def share_with_new_words(rows):
        return sum("acme go" in text.lower() or "plan" in text.lower() for text, _ in rows) / len(rows)

    assert share_with_new_words(generate_tickets(1, 2000)) == 0
    assert share_with_new_words(generate_tickets(2, 2000)) > 0.2


def test_bag_of_words_baseline_is_good_but_not_perfect_on_v1(v1_split, v1_model):
    assert 0.80 <= _accuracy(v1_model, v1_split[1]) <= 0.95


def test_v1_model_is_worse_but_still_useful_on_v2(v1_split, v1_model):
    on_v1 = _accuracy(v1_model, v1_split[1])
    on_v2 = _accuracy(v1_model, generate_tickets(2, 500, seed=1))
    assert on_v2 <= on_v1 - 0.02
    assert on_v2 >= 0.65


def test_heavy_label_noise_destroys_the_signal(v1_split):
    noisy_model = _fit(with_label_noise(v1_split[0], 0.7, seed=0))
    assert _accuracy(noisy_model, v1_split[1]) < 0.5


@pytest.mark.parametrize("fraction", [0.0, 0.1, 1 / 3, 0.7, 1.0])
def test_label_noise_changes_exactly_the_asked_share(fraction):
    rows = generate_tickets(1, 1001, seed=4)
    noisy = with_label_noise(rows, fraction, seed=5)
    changed = sum(old != new for (_, old), (_, new) in zip(rows, noisy))
    assert changed == round(fraction * len(rows))
    assert [text for text, _ in noisy] == [text for text, _ in rows]
    assert noisy == with_label_noise(rows, fraction, seed=5)


def test_label_noise_draws_uniformly_from_the_other_labels():
    rows = generate_tickets(1, 3000, seed=6)
    noisy = with_label_noise(rows, 1.0, seed=0)
    new_labels = Counter(new for (_, old), (_, new) in zip(rows, noisy) if old == "billing")
    assert set(new_labels) == {"technical", "account"}
    assert abs(new_labels["technical"] / sum(new_labels.values()) - 0.5) < 0.05


def test_label_noise_leaves_its_input_alone():
    rows = generate_tickets(1, 50)
    before = list(rows)
    with_label_noise(rows, 0.5, seed=0)
    assert rows == before


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_label_noise_rejects_a_fraction_outside_zero_one(fraction):
    with pytest.raises(DataError, match=rf"fraction={fraction} is outside \[0, 1\]"):
        with_label_noise(generate_tickets(1, 10), fraction, seed=0)


def test_unknown_version_is_a_data_error():
    with pytest.raises(DataError, match="synthetic data version 3 does not exist; use 1 or 2"):
        generate_tickets(3, 10)


def test_negative_row_count_is_a_data_error():
    with pytest.raises(DataError, match="rows=-1 is negative"):
        generate_tickets(1, -1)


def test_csv_round_trip_keeps_every_row(tmp_path):
    rows = generate_tickets(2, 200) + [('She said "refund me", twice', "billing"),
                                       ("Café login — ünïcode\nsecond line", "account")]
    path = write_csv(rows, tmp_path / "nested" / "tickets.csv")
    assert path == tmp_path / "nested" / "tickets.csv"
    assert path.read_bytes().startswith(b"text,label\r\n")
    with path.open(encoding="utf-8", newline="") as handle:
        assert [(r["text"], r["label"]) for r in csv.DictReader(handle)] == rows


def test_five_thousand_rows_have_the_requested_size():
    assert len(generate_tickets(2, 5000)) == 5000
