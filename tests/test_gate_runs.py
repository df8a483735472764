"""The gate on real training runs: a clearly better candidate is promoted, one ahead by chance is not.

The runs go through the cycle's own steps (`tuneloop.cycle`: validate, train, score candidate and
champion on the same frozen held-out rows, gate with its dossier, then promote or register), with
LoRA on the packaged MiniLM (the tiny random BERT learns nothing from these tickets, so it cannot
show a win). The held-out file is 300 clean tickets in two regions (`data.slice_column`), so the
per-slice checks run on the same path.

1. A weak champion: trained on 40 tickets with half of their labels replaced.
2. Five adapters trained on the same 300 clean tickets with seeds 0 to 4 (the seed sets the
   initial weights, the shuffles and which rows form the dev split): models of one recipe that
   differ on a few rows in each direction. Of the ordered pairs (one scores higher than the other
   on every gated metric), the one with the smallest lead is taken, and its lower model goes
   through the gate first: it is clearly better than the weak champion and must be promoted.
   (With three seeds the closest pair could lead by two points, which is a real difference.)
3. The higher one goes through the gate next, against it: ahead on every point estimate by
   chance, with an interval that reaches past -margin, so it must not be promoted, and the
   dossier must say why.
"""

from __future__ import annotations

import csv
import html
import itertools
from pathlib import Path

import pytest

from tuneloop import cycle, evaluation, registry, synthetic
from tuneloop import workspace as ws
from tuneloop.config import Config, load_config
from tuneloop.data import add_dataset, load_snapshot
from tuneloop.modeling import pick_device

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # four MiniLM trainings in the module's fixture

SEEDS = (0, 1, 2, 3, 4)
HELD_OUT_ROWS = 300
CONFIG = (
    "data:\n  path: data/tickets.csv\n  eval_path: data/held_out.csv\n  slice_column: region\n"
    "model:\n  max_length: 48\n"  # the packaged MiniLM; synthetic tickets are at most 30 words
    "train:\n  epochs: 2\n  batch_size: 8\n  learning_rate: 0.003\n  log_every: 100\n"
    # the weak champion exists to be beaten: it may predict one class, so it is not refused for that
    "gate:\n  min_accuracy: 0.0\n  min_macro_f1: 0.0\n  reject_degenerate: false\n"
    "registry:\n  model_name: gate-runs\n"
)


def with_seed(cfg: Config, seed: int) -> Config:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})


def settle(cfg: Config, snapshot: Path, trained: Path, work: Path) -> tuple:
    """Score a trained adapter against the champion, gate it, then promote or register it, as the pipeline does."""
    scores = cycle.evaluate_step(cfg, snapshot, trained / "adapter", work)
    decision = cycle.gate_step(cfg, scores, snapshot, work / "dossier")
    act = cycle.promote_step if decision.passed else cycle.register_step
    files = (work / "dossier" / "dossier.html", work / "dossier" / "dossier.md")
    return decision, act(cfg, snapshot, trained, scores, decision, work.name, files), work


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Run the weak champion, train every seed, and gate the chosen pair; return what each produced."""
    tmp = tmp_path_factory.mktemp("gate-runs")
    config_path = ws.init(tmp / "ws", config_text=CONFIG)
    root, cfg = config_path.parent, load_config(config_path)
    # one draw, repeats dropped (as validation compares texts), so no text is in both files
    unique = {" ".join(text.lower().split()): (text, label) for text, label in synthetic.generate_tickets(1, 800, seed=3)}
    rows = list(unique.values())
    held_out, clean = rows[:HELD_OUT_ROWS], rows[HELD_OUT_ROWS:HELD_OUT_ROWS + 300]
    held_out_csv = tmp / "held_out.csv"
    with held_out_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "region"])
        writer.writerows((text, label, "emea" if i % 2 else "apac") for i, (text, label) in enumerate(held_out))
    add_dataset(root, held_out_csv, "held_out", cfg.data)
    weak = synthetic.write_csv(synthetic.with_label_noise(clean[:40], 0.5, seed=0), tmp / "weak.csv")

    found: dict = {"cfg": cfg, "weak": cycle.run_cycle(cfg, add_dataset(root, weak, "tickets", cfg.data).rev, tmp / "weak")}
    clean_rev = add_dataset(root, synthetic.write_csv(clean, tmp / "clean.csv"), "tickets", cfg.data).rev
    snapshot = tmp / "snapshot"
    cycle.validate_step(cfg, clean_rev, snapshot)
    _, _, held_out_rows = load_snapshot(snapshot)
    scored = {}
    for seed in SEEDS:
        cycle.train_step(with_seed(cfg, seed), snapshot, tmp / f"seed-{seed}")
        scored[seed] = evaluation.evaluate(tmp / f"seed-{seed}" / "adapter", held_out_rows, pick_device(cfg.runtime.device))
    found["scored"] = {seed: {m: getattr(r, m) for m in cfg.gate.metrics} for seed, r in scored.items()}
    ahead = [(low, high) for low, high in itertools.permutations(SEEDS, 2)
             if all(getattr(scored[high], m) > getattr(scored[low], m) for m in cfg.gate.metrics)]
    if not ahead:
        return found
    low, high = min(ahead, key=lambda pair: getattr(scored[pair[1]], "accuracy") - getattr(scored[pair[0]], "accuracy"))
    found["pair"] = (low, high)
    found["clear"] = settle(with_seed(cfg, low), snapshot, tmp / f"seed-{low}", tmp / "clear")
    found["champion_before"] = registry.alias_of(cfg.registry, registry.CHAMPION)
    found["chance"] = settle(with_seed(cfg, high), snapshot, tmp / f"seed-{high}", tmp / "chance")
    found["champion_after"] = registry.alias_of(cfg.registry, registry.CHAMPION)
    return found


def test_the_weak_champion_is_the_first_version(runs):
    decision, registered = runs["weak"]
    assert (decision.passed, decision.policy, registered.version) == (True, "first_run", "1")


def test_two_of_the_seeds_are_ordered_on_every_gated_metric(runs):
    assert "chance" in runs, f"no seed of {SEEDS} scores above another on every gated metric: {runs['scored']}"


def test_a_clearly_better_candidate_is_promoted_with_its_slices_judged(runs):
    decision, registered, work = runs["clear"]
    margin = runs["cfg"].gate.margin
    assert (decision.passed, decision.policy, registered.version) == (True, "compared", "2")
    assert [m for m, s in decision.stats.items() if s["ci_low_points"] < -margin] == []
    assert registry.show(runs["cfg"].registry, "2")["promotion"] == "promoted"
    assert [(s["slice"], s["rows"], s["gated"], s["passed"]) for s in decision.slices] == [
        ("apac", 150, True, True), ("emea", 150, True, True)]
    dossier = (work / "dossier" / "dossier.html").read_text()
    assert "PROMOTED" in dossier and html.escape(decision.reasons[-2]) in dossier
    assert decision.reasons[-2].startswith("slice 'apac' (150 rows): accuracy ")


def test_a_candidate_ahead_by_chance_is_not_promoted_and_the_dossier_says_why(runs):
    decision, registered, work = runs["chance"]
    margin = runs["cfg"].gate.margin
    assert (decision.policy, decision.passed) == ("compared", False)
    low, high = runs["pair"]
    assert {m: (s["candidate"], s["champion"]) for m, s in decision.stats.items()} == {
        m: (runs["scored"][high][m], runs["scored"][low][m]) for m in runs["cfg"].gate.metrics}
    failing = [m for m, s in decision.stats.items() if s["ci_low_points"] < -margin]
    assert failing == runs["cfg"].gate.metrics, decision.stats  # ahead on each, shown non-inferior on none
    assert runs["champion_after"] == runs["champion_before"]
    assert registry.show(runs["cfg"].registry, registered.version)["promotion"] == "rejected"
    dossier = (work / "dossier" / "dossier.html").read_text()
    assert "REJECTED" in dossier and "PROMOTED" not in dossier
    for m in failing:
        s = decision.stats[m]
        reason = (f"{m} {s['candidate']:.4f} vs champion {s['champion']:.4f}: {s['delta_points']:+.2f} points, "
                  f"95% CI [{s['ci_low_points']:+.2f}, {s['ci_high_points']:+.2f}]; lower bound "
                  f"{s['ci_low_points']:+.2f} regresses more than gate.margin={margin} points: not shown to be non-inferior")
        assert reason in decision.reasons
        assert html.escape(reason) in dossier
