"""Refresh strategies on tiny models: continue (warm start from the champion's adapter),
merge_then_adapt (a new adapter on the base with the champion merged in, its parent kept with it),
and the replay buffer of rows from the champion's data revision."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import tiny_config_text
from tuneloop import cycle, data, modeling, registry, synthetic, training
from tuneloop.config import load_config, parse_config
from tuneloop.errors import ConfigError, RegistryError


def config(model_dir: Path, **sections: dict):
    raw = yaml.safe_load(tiny_config_text(model_dir))
    for name, fields in sections.items():
        raw.setdefault(name, {}).update(fields)
    return parse_config(raw)


def tickets(version: int = 1, rows: int = 80, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(synthetic.generate_tickets(version, rows, seed=seed), columns=["text", "label"])


@pytest.fixture(scope="module")
def champion(tiny_model, tmp_path_factory) -> training.Parent:
    """A LoRA adapter trained on v1 tickets: what a refresh starts from."""
    out = tmp_path_factory.mktemp("champion")
    training.train(tickets(), config(tiny_model, train={"epochs": 2}), out)
    return training.Parent("1", out / training.ADAPTER_DIR)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / modeling.ADAPTER_WEIGHTS))


def test_continue_starts_from_the_champions_weights(champion, tiny_model, tmp_path):
    still = {"learning_rate": 1e-9, "strategy": "continue"}  # a rate too small to move: the weights are the start
    result = training.train(tickets(2, seed=1), config(tiny_model, train=still), tmp_path / "c", champion)
    assert (result.strategy, result.parent_version) == ("continue", "1")
    before, after = weights(champion.adapter_dir), weights(tmp_path / "c" / "adapter")
    assert sorted(after) == sorted(before)
    assert all(torch.allclose(after[k], before[k], atol=1e-6) for k in before)
    fresh = training.train(tickets(2, seed=1), config(tiny_model, train={"learning_rate": 1e-9}), tmp_path / "f", champion)
    assert (fresh.strategy, fresh.parent_version) == ("fresh", "")
    lora_b = [k for k in before if "lora_B" in k]
    assert all(float(weights(tmp_path / "f" / "adapter")[k].abs().max()) < 1e-6 for k in lora_b)  # a new adapter: B = 0
    assert any(float(before[k].abs().max()) > 1e-3 for k in lora_b)


def test_continue_refuses_a_champion_of_other_settings(champion, tiny_model, tmp_path):
    cfg = config(tiny_model, method={"name": "lora", "r": 4}, train={"strategy": "continue"})
    with pytest.raises(ConfigError, match=r"^train.strategy continue needs the champion's adapter as it is: version 1 is "
                                          r"lora with other settings; set method to match it, or use train.strategy "
                                          r"merge_then_adapt or fresh$"):
        training.train(tickets(2, seed=1), cfg, tmp_path / "c", champion)
    assert not (tmp_path / "c" / "adapter").exists()


def test_merge_then_adapt_is_loadable_and_equals_the_merged_base_plus_the_new_adapter(champion, tiny_model, tmp_path):
    from peft import PeftModel

    cfg = config(tiny_model, train={"strategy": "merge_then_adapt"})
    result = training.train(tickets(2, seed=1), cfg, tmp_path / "m", champion)
    adapter = tmp_path / "m" / "adapter"
    assert (result.strategy, result.parent_version) == ("merge_then_adapt", "1")
    meta = modeling.read_adapter_meta(adapter)
    assert meta.parent == {"version": "1", "method": "lora"}
    assert meta.base_sha256 == modeling.fingerprint(tiny_model)[0]  # the version names the base, not the merged copy
    assert sorted(p.name for p in (adapter / modeling.PARENT_DIR).iterdir()) == sorted(p.name for p in champion.adapter_dir.iterdir())
    assert not list((tmp_path / "m").glob(f"{training.MERGED_DIR}*"))  # the merged base is not left behind

    texts = tickets(2, rows=12, seed=5)["text"].tolist()
    model, tokenizer, _ = modeling.load_adapter(adapter, "cpu")
    merged = modeling.merge_adapter(champion.adapter_dir, tmp_path / "merged", "cpu")
    by_hand = PeftModel.from_pretrained(modeling.load_model(merged, "sequence_classification", meta.labels,
                                                            parse_config({}).quantization, "cpu"), str(adapter)).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, by_hand(**batch).logits, atol=1e-5)

    shutil.rmtree(adapter / modeling.PARENT_DIR)
    with pytest.raises(RegistryError, match=r"was trained on .* with version 1's lora adapter merged in, and that "
                                            r"adapter \(.*parent\) is missing; use the whole registered version folder"):
        modeling.load_adapter(adapter, "cpu")


@pytest.fixture
def two_revisions(workspace, tmp_path) -> tuple[Path, str, str]:
    """A workspace whose tickets file is v1 tickets at the first revision and other v2 tickets at the second."""
    cfg = load_config(workspace)
    first = data.add_dataset(workspace.parent, synthetic.write_csv(synthetic.generate_tickets(1, 200, seed=0), tmp_path / "a.csv"),
                             "tickets", cfg.data).rev
    second = data.add_dataset(workspace.parent, synthetic.write_csv(synthetic.generate_tickets(2, 200, seed=9), tmp_path / "b.csv"),
                              "tickets", cfg.data).rev
    return workspace, first, second


def test_replay_draws_a_stable_share_of_the_old_rows_never_held_out_or_repeated(two_revisions, tmp_path):
    config_path, first, second = two_revisions
    cfg = load_config(config_path)
    snapshot = data.prepare(cfg.data, second, tmp_path / "snap")
    _, train, held_out = data.load_snapshot(tmp_path / "snap")
    origin = {"data_repo": cfg.data.repo, "data_rev": first, "data_path": cfg.data.path}
    rows, source = data.replay(cfg.data, origin, train, held_out, 0.2, 0, sorted(train["label"].unique()))
    assert source == {"repo": cfg.data.repo, "rev": first, "path": "data/tickets.csv", "rows": round(0.25 * len(train)),
                      "available": source["available"]}
    assert len(rows) == source["rows"] and rows["text"].is_unique
    norm = set(data.validation.normalize_text(pd.concat([train["text"], held_out["text"]])))
    assert not set(data.validation.normalize_text(rows["text"])) & norm  # nothing shown now, nothing held out
    old_held = data.tables.held_out_mask(rows["text"], cfg.data.eval_fraction)
    assert not old_held.any()  # nor a row the first revision held out
    again, _ = data.replay(cfg.data, origin, train.sample(frac=1.0, random_state=3), held_out, 0.2, 0, None)
    assert again.equals(rows)  # seeded and stable: the order of the new rows changes nothing
    other, _ = data.replay(cfg.data, origin, train, held_out, 0.2, 1, None)
    assert not other.equals(rows)
    assert snapshot.rev == second


def test_a_refresh_records_its_strategy_parent_and_replay_on_the_version(two_revisions, tmp_path):
    config_path, first, second = two_revisions
    cfg = load_config(config_path)
    _, one = cycle.run_cycle(cfg, first, tmp_path / "one")
    refresh = cfg.model_copy(update={"train": cfg.train.model_copy(update={"strategy": "continue", "replay_share": 0.2})})
    _, two = cycle.run_cycle(refresh, second, tmp_path / "two")
    record = registry.show(cfg.registry, two.version)["record"]
    assert (record["strategy"], record["parent_version"]) == ("continue", one.version)
    [source] = record["replay_sources"]
    trained = training.TrainResult.load(tmp_path / "two" / "train")
    assert source == trained.replay_sources[0] and (source["rev"], source["path"]) == (first, "data/tickets.csv")
    first_record = registry.show(cfg.registry, one.version)["record"]
    assert (first_record["strategy"], first_record["parent_version"], first_record["replay_sources"]) == ("fresh", "", [])
