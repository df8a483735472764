"""An out-of-domain held-out file (`data.ood_eval_path`): validated into the snapshot, scored for
both models, gated like the held-out rows, shown in the dossier and recorded on the version."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop import cycle, data, gate, registry, synthetic
from tuneloop.config import GateConfig, load_config, parse_config
from tuneloop.errors import ConfigError, DataError
from tuneloop.evaluation import score


def test_the_ood_file_must_be_a_third_file():
    with pytest.raises(ConfigError, match=r"data.ood_eval_path 'data/a.csv' is also data.path or data.eval_path"):
        parse_config({"data": {"path": "data/a.csv", "ood_eval_path": "data/a.csv"}})


def test_combine_passes_only_when_both_pass_and_prefixes_the_ood_reasons():
    truth = ["a", "b"] * 50
    good = gate.decide(score(truth, truth, ["a", "b"]), None, GateConfig())
    bad = gate.decide(score(truth, ["a"] * 100, ["a", "b"]), None, GateConfig())
    joined = gate.combine(good, bad, 100)
    assert (joined.passed, joined.manual) == (False, False)
    assert joined.reasons[len(good.reasons):] == [f"out-of-domain (100 rows): {reason}" for reason in bad.reasons]
    assert joined.ood == bad.to_dict()
    assert gate.combine(good, good, 100).passed is True
    assert gate.GateDecision.from_dict(joined.to_dict()) == joined


def tickets_file(rows, path: Path) -> Path:
    return synthetic.write_csv(rows, path)


def with_ood(workspace: Path, tmp_path: Path, ood: list[tuple[str, str]]) -> str:
    """Set data.ood_eval_path, add 200 v1 tickets and the `ood` rows; return the revision."""
    text = workspace.read_text().replace("data:\n  path: data/tickets.csv\n",
                                         "data:\n  path: data/tickets.csv\n  ood_eval_path: data/ood.csv\n")
    workspace.write_text(text)
    cfg = load_config(workspace)
    data.add_dataset(workspace.parent, tickets_file(synthetic.generate_tickets(1, 200, seed=0), tmp_path / "t.csv"),
                     "tickets", cfg.data)
    return data.add_dataset(workspace.parent, tickets_file(ood, tmp_path / "o.csv"), "ood", cfg.data).rev


@pytest.fixture
def ood_workspace(workspace, tmp_path) -> tuple[Path, str]:
    """Tickets v1 to train on and hold out, and v2 tickets (new templates) as the out-of-domain file."""
    v1 = {t for t, _ in synthetic.generate_tickets(1, 200, seed=0)}
    ood = [row for row in synthetic.generate_tickets(2, 80, seed=7) if row[0] not in v1]
    return workspace, with_ood(workspace, tmp_path, ood)


def test_the_ood_rows_are_scored_gated_shown_and_recorded(ood_workspace, tmp_path):
    config_path, rev = ood_workspace
    cfg = load_config(config_path)
    decision, registered = cycle.run_cycle(cfg, rev, tmp_path / "work")
    snapshot, _, _ = data.load_snapshot(tmp_path / "work" / "snapshot")
    ood = data.load_ood(tmp_path / "work" / "snapshot")
    assert (snapshot.ood_eval_path, snapshot.ood_rows) == ("data/ood.csv", len(ood))
    assert set(snapshot.sha256) == {"data/tickets.csv", "data/ood.csv"}
    assert decision.ood["policy"] == "first_run" and decision.ood["passed"] is True
    record = registry.show(cfg.registry, registered.version)["record"]
    assert sorted(k for k in record["metrics"] if k.startswith("ood_")) == ["ood_accuracy", "ood_macro_f1"]
    assert record["metrics"]["ood_macro_f1"] == decision.ood["candidate"]  # the gate's headline on those rows
    page = (tmp_path / "work" / "dossier" / "dossier.html").read_text()
    assert '<section id="ood">' in page and f"{len(ood)} rows of data/ood.csv, gated like the held-out rows: passed." in page


def test_an_ood_row_with_a_label_training_never_saw_stops_the_snapshot(workspace, tmp_path):
    rev = with_ood(workspace, tmp_path, [("where is my parcel, it is a week late", "shipping"),
                                         ("the app will not open on my phone", "bug")])
    cfg = load_config(workspace)
    with pytest.raises(DataError, match=r"row 1 \(held_out\): label 'shipping' does not occur in the train split"):
        data.prepare(cfg.data, rev, tmp_path / "snap")
    assert not (tmp_path / "snap" / data.META_FILE).exists() and not (tmp_path / "snap" / data.OOD_FILE).exists()


def test_against_a_champion_the_ood_rows_are_compared(ood_workspace, tmp_path):
    config_path, rev = ood_workspace
    cfg = load_config(config_path)
    first, _ = cycle.run_cycle(cfg, rev, tmp_path / "one")
    assert first.passed is True  # version 1 is champion
    again, _ = cycle.run_cycle(cfg, rev, tmp_path / "two")  # the same recipe: same scores on both sets
    assert again.ood["policy"] == "compared" and again.ood["champion"] == again.ood["candidate"]
    assert again.passed is True
    assert [r for r in again.reasons if r.startswith("out-of-domain (")] == [
        f"out-of-domain ({len(data.load_ood(tmp_path / 'two' / 'snapshot'))} rows): {reason}" for reason in again.ood["reasons"]]
