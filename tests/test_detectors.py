"""Training's detectors inside the loop, on tiny random models, with injected failures: a batch that
makes the loss NaN, labels that are noise (overfitting), and what the report, the plots and the gate
make of the findings."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import tiny_config_text
from tuneloop import diagnostics, evaluation, gate, modeling, synthetic, training
from tuneloop.config import parse_config
from tuneloop.errors import TrainingError

POISON = "zebra"  # a word the synthetic tickets never use: its batch's loss turns NaN


def config(model_dir: Path, **sections: dict):
    data = yaml.safe_load(tiny_config_text(model_dir))
    for name, fields in sections.items():
        data.setdefault(name, {}).update(fields)
    return parse_config(data)


def tickets(rows: int = 80) -> pd.DataFrame:
    return pd.DataFrame(synthetic.generate_tickets(1, rows, seed=0), columns=["text", "label"])


def poison(monkeypatch, tiny_model, alone: bool = True) -> None:
    """Models built by training turn their embeddings NaN on a batch holding the poison word (with
    `alone` false, only in a batch of several rows: no row is to blame by itself)."""
    poison_id = modeling.load_tokenizer(tiny_model).convert_tokens_to_ids(POISON)
    attach = modeling.attach_adapter

    def attach_and_poison(*args, **kwargs):
        model = attach(*args, **kwargs)

        def hook(module, inputs, output):
            hit = (inputs[0] == poison_id).any() and (alone or inputs[0].shape[0] > 1)
            return output * float("nan") if hit else output
        model.get_input_embeddings().register_forward_hook(hook)
        return model
    monkeypatch.setattr(modeling, "attach_adapter", attach_and_poison)


def poisoned_frame() -> tuple[pd.DataFrame, int]:
    """Tickets with the poison word in one row training fits on; returns the frame and the row."""
    frame = tickets()
    fit, _ = training._dev_split(frame, 0.1, 0)  # the rows training fits on (the dev rows are only scored)
    row = frame.index[frame["text"] == fit["text"].iloc[0]][0]
    frame.loc[row, "text"] = f"{POISON} {frame.loc[row, 'text']}"
    return frame, row


@pytest.fixture
def poisoned(monkeypatch, tiny_model):
    """A NaN-making row in the frame, and models that turn NaN on it."""
    poison(monkeypatch, tiny_model)
    return poisoned_frame()


def test_a_nan_row_stops_training_naming_the_step_and_the_row_without_a_retry(poisoned, tiny_model, tmp_path):
    frame, index = poisoned
    row = diagnostics.row_hash(frame.loc[index, "text"], frame.loc[index, "label"])
    with pytest.raises(TrainingError) as caught:
        training.train(frame, config(tiny_model), tmp_path / "run")
    message = str(caught.value)
    # The step's one NaN row is found among its 16 and named by content hash; a lower rate would not help it.
    blame = f"on rows {row} (of the step's 16); inspect or drop those rows, or lower train.learning_rate"
    assert message == f"non-finite loss and gradient norm at step 3 (loss nan, gradient norm nan) {blame} (not retried: those rows fail alone)"
    assert not (tmp_path / "run" / "adapter").exists() and not (tmp_path / "run" / "train.json").exists()


def test_a_nan_no_row_explains_is_retried_once_then_fails(monkeypatch, tiny_model, tmp_path):
    poison(monkeypatch, tiny_model, alone=False)
    with pytest.raises(TrainingError) as caught:
        training.train(poisoned_frame()[0], config(tiny_model), tmp_path / "run")
    first = "non-finite loss and gradient norm at step 3 (loss nan, gradient norm nan) on rows "
    message = str(caught.value)
    assert message.startswith(first) and "(also on the retry at learning rate 0.002, after: " + first in message
    assert message.count("(of the step's") == 0  # no row alone: all 16 of the step's are named (8 shown, 8 more)
    assert message.count("and 8 more") == 2


def test_without_retry_a_divergence_fails(monkeypatch, tiny_model, tmp_path):
    monkeypatch.setattr(diagnostics, "diverged", lambda curve, norms, factor, grad_factor: diagnostics.Finding(
        "divergence", "training diverged by step 1: test", 1, {}))
    with pytest.raises(TrainingError, match=r"^training diverged by step 1: test \(train.retry_on_divergence is off\)$"):
        training.train(tickets(), config(tiny_model, train={"retry_on_divergence": False}), tmp_path / "run")


def test_a_divergence_is_retried_at_a_fifth_of_the_rate_and_recorded(monkeypatch, tiny_model, tmp_path):
    # The divergence rule fires at the configured rate only (the real rule is tested in test_diagnostics
    # and on MiniLM in the slow tier); what is checked here is the retry and its record.
    real = diagnostics.diverged
    rates = []

    def diverged_at_the_first_rate(curve, norms, factor, grad_factor):
        if len(curve) == 3 and not rates:
            rates.append(len(curve))
            return diagnostics.Finding("divergence", "training diverged by step 3: test", 3, {})
        return real(curve, norms, factor, grad_factor)
    monkeypatch.setattr(diagnostics, "diverged", diverged_at_the_first_rate)
    result = training.train(tickets(), config(tiny_model), tmp_path / "run")
    assert result.learning_rate == pytest.approx(0.002)
    assert result.findings[0] == {
        "kind": "divergence", "step": 3,
        "message": "training diverged by step 3: test; retried from the start at learning rate 0.002, a fifth of 0.01",
        "details": {"retry_learning_rate": pytest.approx(0.002)}}
    assert result.steps == 5  # the retry ran the whole epoch: 72 fit rows in batches of 16


def test_noise_labels_overfit_and_training_stops_on_the_best_evaluation(tiny_model, tmp_path):
    rng = random.Random(0)
    labels = sorted(synthetic.LABELS)
    frame = pd.DataFrame([(text, rng.choice(labels)) for text, _ in synthetic.generate_tickets(1, 80, seed=0)],
                         columns=["text", "label"])
    cfg = config(tiny_model, method={"name": "full"},
                 train={"epochs": 40, "patience": 0, "learning_rate": 0.001, "dev_fraction": 0.25})
    result = training.train(frame, cfg, tmp_path / "run")
    kinds = [f["kind"] for f in result.findings]
    assert kinds == ["overfitting"]
    assert result.epochs_run == 4 and result.best_epoch == 1  # three evaluations of rising dev loss after the best
    assert [e["step"] for e in result.evaluations] == [4, 8, 12, 16]
    dev = [e["dev_loss"] for e in result.evaluations]
    assert dev == sorted(dev) and result.dev_loss == dev[0]
    assert (tmp_path / "run" / training.PLOTS["gap"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    perfect = evaluation.score(["a", "b"] * 10, ["a", "b"] * 10, ["a", "b"])
    decision = gate.decide(perfect, None, cfg.gate, result.findings)
    assert not decision.passed
    assert decision.reasons[0].startswith("training finding (overfitting, in gate.refuse_findings): overfitting at step 16")


def test_dev_evaluations_within_an_epoch_keep_only_the_best_mid_epoch_checkpoint(tiny_model, tmp_path):
    cfg = config(tiny_model, train={"epochs": 2, "eval_every_steps": 2, "patience": 0})
    result = training.train(tickets(), cfg, tmp_path / "run")
    assert [(e["step"], e["epoch"]) for e in result.evaluations] == [(2, 1), (4, 1), (5, 1), (6, 2), (8, 2), (10, 2)]
    best = min(result.evaluations, key=lambda e: e["dev_loss"])
    assert (result.best_step, result.dev_loss) == (best["step"], best["dev_loss"])
    kept = sorted(p.name for p in (tmp_path / "run" / training.CHECKPOINTS_DIR).iterdir())
    mid = [] if best["step"] in (5, 10) else [f"step-{best['step']}"]  # every N steps, counted over the run
    assert kept == sorted(["epoch-1", "epoch-2", *mid])
    saved = json.loads((tmp_path / "run" / training.REPORT_FILE).read_text())
    assert len(saved["grad_norms"]) == saved["steps"] == 10
    assert sorted(saved["rank_health"]) == [f"base_model.model.bert.encoder.layer.{i}.attention.self.{m}"
                                             for i in (0, 1) for m in ("query", "value")]
    assert (tmp_path / "run" / training.PLOTS["spectrum"]).is_file()


def test_with_the_detectors_off_nothing_is_measured_or_drawn(tiny_model, tmp_path):
    result = training.train(tickets(), config(tiny_model, train={"detectors": False}), tmp_path / "run")
    assert (result.grad_norms, result.findings, result.rank_health) == ([], [], {})
    assert [name for name in training.PLOTS.values() if (tmp_path / "run" / name).exists()] == []


def test_an_overfit_candidate_goes_through_the_cycle_and_is_registered_rejected(workspace, tmp_path):
    from tuneloop import cycle, data, registry
    from tuneloop.config import load_config

    rng = random.Random(0)
    labels = sorted(synthetic.LABELS)
    noise = [(text, rng.choice(labels)) for text, _ in synthetic.generate_tickets(1, 120, seed=0)]
    cfg = load_config(workspace)
    rev = data.add_dataset(workspace.parent, synthetic.write_csv(noise, tmp_path / "noise.csv"), "tickets", cfg.data).rev
    cfg = cfg.model_copy(update={
        "method": parse_config({"method": {"name": "full"}}).method,
        "train": cfg.train.model_copy(update={"epochs": 40, "patience": 0, "learning_rate": 0.001, "dev_fraction": 0.25})})
    decision, registered = cycle.run_cycle(cfg, rev, tmp_path / "work")
    assert decision.passed is False
    assert decision.reasons[0].startswith("training finding (overfitting, in gate.refuse_findings): overfitting at step ")
    assert registry.show(cfg.registry, registered.version)["record"]["gate"] == "rejected"
    assert registry.fetch_champion(cfg.registry, tmp_path / "champion") is None  # nothing promoted
    page = (tmp_path / "work" / "dossier" / "dossier.html").read_text()
    assert '<section id="training">' in page and "<td>overfitting</td>" in page
