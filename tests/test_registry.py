"""Tests for tuneloop.registry against a real MLflow sqlite store: register, gate tags, promote, audit.

Creating an MLflow sqlite store runs its schema migrations (~5 s), so the session builds one empty,
migrated store and each test starts from a copy of that file.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from tuneloop import registry
from tuneloop.config import RegistryConfig
from tuneloop.errors import RegistryError

LABELS = ["account", "billing", "technical"]


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite file with the current schema."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}")
    client.search_experiments()
    client.search_registered_models()
    return path


@pytest.fixture
def cfg(tmp_path, migrated_store) -> RegistryConfig:
    shutil.copyfile(migrated_store, tmp_path / "mlflow.db")
    return RegistryConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art"),
                          model_name="test-model")


@pytest.fixture
def adapter(tmp_path) -> Path:
    """A stand-in adapter folder: the registry stores the files without reading them."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    return folder


def record(passed: bool = True, reason: str = "", base_sha256: str = "b" * 64) -> registry.VersionRecord:
    """A version record as the cycle builds one (values made up; the registry does not read the adapter)."""
    return registry.VersionRecord(
        base_model="tiny-bert", base_sha256=base_sha256, tokenizer_sha256="t" * 64, task="classification",
        labels=LABELS, method="lora", method_config={"r": 8}, quantization={"bits": None}, libraries={"peft": "0.0"},
        data_repo="/data", data_rev="0123abcd", data_path="data/tickets.csv", data_sha256={"data/tickets.csv": "d" * 64},
        config_sha256="c" * 64, pipeline_run="run", metrics={"macro_f1": 0.8},
        gate="passed" if passed else "rejected",
        gate_reasons=[reason or ("all checks passed" if passed else "macro_f1 0.30 below the floor 0.50")],
        champion_version=None,
    )


def candidate(adapter: Path, passed: bool = True, macro_f1: float = 0.8, reason: str = "", **fields) -> registry.Candidate:
    return registry.Candidate(
        adapter_dir=adapter, record=record(passed, reason, **fields),
        params={"method": "lora", "r": 8, "labels": LABELS},
        metrics={"accuracy": macro_f1 + 0.05, "macro_f1": macro_f1},
        reports={"gate": {"passed": passed}},
    )


def champion_of(cfg: RegistryConfig) -> str | None:
    versions = registry.status(cfg)["versions"]
    return next((row["version"] for row in versions if "champion" in row["aliases"]), None)


def test_register_creates_numbered_versions(cfg, adapter):
    first = registry.register(cfg, candidate(adapter), "run-1")
    second = registry.register(cfg, candidate(adapter, macro_f1=0.85), "run-2")
    assert (first.version, second.version) == ("1", "2")
    assert first.run_id != second.run_id
    assert first.to_dict() == {"version": "1", "run_id": first.run_id}
    assert Path(cfg.artifact_root).is_dir()  # the experiment stores artifacts where the config says


def test_register_moves_no_alias(cfg, adapter, tmp_path):
    registry.register(cfg, candidate(adapter), "run-1")
    assert champion_of(cfg) is None
    assert registry.champion_labels(cfg) is None
    assert registry.fetch_champion(cfg, tmp_path / "dest") is None


def test_register_records_the_run(cfg, adapter):
    from mlflow import MlflowClient

    registered = registry.register(cfg, candidate(adapter, macro_f1=0.8), "cycle-7")
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    run = client.get_run(registered.run_id)
    assert run.info.run_name == "cycle-7"
    assert run.info.status == "FINISHED"
    assert run.data.metrics["macro_f1"] == 0.8
    assert run.data.params["r"] == "8"
    assert run.data.tags["tuneloop.data_rev"] == "0123abcd"
    assert "tuneloop.promotion" not in run.data.tags  # the state is the version's; a run's would go stale
    artifacts = sorted(a.path for a in client.list_artifacts(registered.run_id, "adapter"))
    assert artifacts == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
    assert [a.path for a in client.list_artifacts(registered.run_id, "reports")] == ["reports/gate.json"]


def test_register_logs_the_training_curves_per_step_and_the_plots(cfg, adapter, tmp_path):
    from dataclasses import replace

    from mlflow import MlflowClient

    plot = tmp_path / "train_dev_gap.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    found = replace(candidate(adapter), history={"train_loss": [1.5, 1.25, 1.0], "grad_norm": [0.5, 0.75, 0.25]},
                    files={"diagnostics": [plot]})
    registered = registry.register(cfg, found, "run-1")
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    history = sorted((m.step, m.value) for m in client.get_metric_history(registered.run_id, "train_loss"))
    assert history == [(1, 1.5), (2, 1.25), (3, 1.0)]
    assert [m.value for m in sorted(client.get_metric_history(registered.run_id, "grad_norm"), key=lambda m: m.step)] == [0.5, 0.75, 0.25]
    assert [a.path for a in client.list_artifacts(registered.run_id, "diagnostics")] == ["diagnostics/train_dev_gap.png"]


def test_rejected_candidate_is_registered_with_its_reasons_and_no_alias(cfg, adapter):
    registry.register(cfg, candidate(adapter, passed=False, macro_f1=0.3), "run-1")
    [row] = registry.status(cfg)["versions"]
    assert (row["version"], row["gate"], row["aliases"]) == ("1", "rejected", [])
    assert row["reasons"] == "macro_f1 0.30 below the floor 0.50"
    assert registry.champion_labels(cfg) is None


def test_promote_moves_the_champion(cfg, adapter):
    registry.register(cfg, candidate(adapter), "run-1")
    assert registry.promote(cfg, "1", None, why="first model", by="alice") is None
    assert champion_of(cfg) == "1"
    assert registry.champion_labels(cfg) == LABELS

    registry.register(cfg, candidate(adapter, macro_f1=0.9), "run-2")
    assert champion_of(cfg) == "1"  # registering a better candidate is not promoting it
    assert registry.promote(cfg, "2", "1", why="macro_f1 0.90 vs 0.80", by="bob") == "1"
    assert champion_of(cfg) == "2"


def test_promoting_the_champion_over_itself_writes_nothing(cfg, adapter):
    registry.register(cfg, candidate(adapter), "run-1")
    registry.register(cfg, candidate(adapter, macro_f1=0.9), "run-2")
    registry.promote(cfg, "1", None, why="first", by="alice")
    registry.promote(cfg, "2", "1", why="second", by="bob")

    assert registry.promote(cfg, "2", "2", why="again", by="carol") is None
    assert [(e.from_version, e.to_version) for e in registry.history(cfg)] == [(None, "1"), ("1", "2")]
    assert registry.rollback_plan(cfg) == ("2", "1")  # a self-move would have made 2 its own "previous"


def test_the_version_state_is_part_of_the_record(cfg, adapter):
    registry.register(cfg, candidate(adapter), "run-1")
    registry.register(cfg, candidate(adapter, passed=False, macro_f1=0.3), "run-2")
    registry.promote(cfg, "1", None, why="first", by="alice")

    first, second = (registry.show(cfg, v)["record"] for v in ("1", "2"))
    assert (first["promotion"], second["promotion"]) == ("promoted", "rejected")
    assert first["registered_by"] == f"{socket.gethostname()}:{os.getpid()}"
    assert first["dossier"] == ""  # this candidate carries no dossier document


def test_repair_passes_over_versions_made_outside_tuneloop(cfg, adapter):
    from mlflow import MlflowClient

    registered = registry.register(cfg, candidate(adapter), "run-1")
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    source = client.get_model_version("test-model", "1").source
    client.create_model_version("test-model", source=source, run_id=registered.run_id)  # as the MLflow UI would

    assert registry.repair(cfg, lease=0) == {"claims": [], "versions": [{"version": "1", "promotion": "orphaned"}]}


def test_a_version_registered_before_the_state_fields_reads_without_them(cfg, adapter):
    from mlflow import MlflowClient

    registry.register(cfg, candidate(adapter), "run-1")
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    for name in registry.VersionRecord.STATE:
        client.delete_model_version_tag("test-model", "1", registry.VersionRecord.key(name))

    shown = registry.show(cfg, "1")
    assert (shown["promotion"], shown["dossier"], shown["record"]["registered_by"]) == (None, None, "")


def test_promoting_a_rejected_version_fails(cfg, adapter):
    registry.register(cfg, candidate(adapter), "run-1")
    registry.promote(cfg, "1", None, why="first", by="alice")
    registry.register(cfg, candidate(adapter, passed=False, macro_f1=0.3), "run-2")
    message = r"^version 2 of test-model did not pass the gate; only passed versions can be promoted$"
    with pytest.raises(RegistryError, match=message):
        registry.promote(cfg, "2", "1", why="forced", by="mallory")
    assert champion_of(cfg) == "1"
    assert len(registry.status(cfg)["history"]) == 1


def test_promote_with_a_stale_expected_champion_fails(cfg, adapter):
    for run in ("run-1", "run-2", "run-3"):
        registry.register(cfg, candidate(adapter), run)
    registry.promote(cfg, "1", None, why="first", by="alice")
    # version 3 was gated against version 1, but version 2 was promoted meanwhile
    registry.promote(cfg, "2", "1", why="second", by="bob")
    message = (
        r"^champion is version 2, not 1 as expected for moving it to 3; nothing was moved "
        r"\(look at `tuneloop registry history`, then decide again\)$"
    )
    with pytest.raises(RegistryError, match=message):
        registry.promote(cfg, "3", "1", why="third", by="carol")
    assert champion_of(cfg) == "2"
    assert [event["to"] for event in registry.status(cfg)["history"]] == ["1", "2"]


def test_promote_expecting_no_champion_when_there_is_one(cfg, adapter):
    registry.register(cfg, candidate(adapter), "run-1")
    registry.register(cfg, candidate(adapter), "run-2")
    registry.promote(cfg, "1", None, why="first", by="alice")
    with pytest.raises(RegistryError, match=r"^champion is version 1, not unset as expected for moving it to 2; nothing was moved"):
        registry.promote(cfg, "2", None, why="second", by="bob")
    assert champion_of(cfg) == "1"


def test_promote_an_unknown_version(cfg, adapter):
    registry.register(cfg, candidate(adapter), "run-1")
    with pytest.raises(RegistryError, match=r"^test-model has no version 9; `tuneloop registry status` lists the versions$"):
        registry.promote(cfg, "9", None, why="typo", by="alice")


def test_status_lists_versions_newest_first_and_the_audit_trail(cfg, adapter):
    registry.register(cfg, candidate(adapter, macro_f1=0.7), "run-1")
    registry.register(cfg, candidate(adapter, passed=False, macro_f1=0.3), "run-2")
    registry.register(cfg, candidate(adapter, macro_f1=0.9), "run-3")
    registry.promote(cfg, "1", None, why="first model", by="alice")
    registry.promote(cfg, "3", "1", why="macro_f1 0.90 vs 0.70", by="bob")

    status = registry.status(cfg)
    assert status["model"] == "test-model"
    assert [(r["version"], r["aliases"], r["gate"]) for r in status["versions"]] == [
        ("3", ["champion"], "passed"), ("2", [], "rejected"), ("1", [], "passed"),
    ]
    assert [r["macro_f1"] for r in status["versions"]] == [0.9, 0.3, 0.7]
    assert {(r["data_rev"], r["method"]) for r in status["versions"]} == {("0123abcd", "lora")}
    moves = [{k: e[k] for k in ("alias", "from", "to", "actor", "reason", "kind", "status")} for e in status["history"]]
    assert moves == [
        {"alias": "champion", "from": None, "to": "1", "actor": "alice", "reason": "first model", "kind": "promote", "status": "done"},
        {"alias": "champion", "from": "1", "to": "3", "actor": "bob", "reason": "macro_f1 0.90 vs 0.70", "kind": "promote",
         "status": "done"},
    ]
    assert all(e["at"].endswith("+00:00") for e in status["history"])


def test_audit_names_the_local_user_when_by_is_empty(cfg, adapter):
    registry.register(cfg, candidate(adapter), "run-1")
    registry.promote(cfg, "1", None, why="first", by="")
    [event] = registry.status(cfg)["history"]
    assert event["actor"] == f"{getpass.getuser()}@{socket.gethostname()}"


def test_a_brand_new_store_is_read_without_being_created(tmp_path):
    cfg = RegistryConfig(tracking_uri=f"sqlite:///{tmp_path}/new/mlflow.db", artifact_root=str(tmp_path / "art"))
    assert registry.champion_labels(cfg) is None
    assert registry.fetch_champion(cfg, tmp_path / "dest") is None
    assert registry.status(cfg) == {"model": "tuneloop-classifier", "versions": [], "history": []}
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "art").exists()


def test_a_store_without_the_model_has_no_champion(cfg, tmp_path):
    assert registry.champion_labels(cfg) is None
    assert registry.fetch_champion(cfg, tmp_path / "dest") is None
    assert registry.status(cfg)["versions"] == []


def test_fetch_champion_downloads_the_adapter(cfg, adapter, tmp_path):
    registry.register(cfg, candidate(adapter), "run-1")
    registry.promote(cfg, "1", None, why="first", by="alice")
    champion = registry.fetch_champion(cfg, tmp_path / "dest")
    assert champion is not None
    assert (champion.version, champion.labels) == ("1", LABELS)
    assert champion.adapter_dir.is_relative_to(tmp_path / "dest")
    files = {p.name: p.read_bytes() for p in champion.adapter_dir.iterdir()}
    assert files == {p.name: p.read_bytes() for p in adapter.iterdir()}


def test_fetch_champion_follows_the_alias(cfg, tmp_path):
    folders = []
    for i in (1, 2):
        folder = tmp_path / f"adapter-{i}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(f"weights of version {i}".encode())
        folders.append(folder)
        registry.register(cfg, candidate(folder), f"run-{i}")
    registry.promote(cfg, "1", None, why="first", by="alice")
    registry.promote(cfg, "2", "1", why="second", by="alice")
    champion = registry.fetch_champion(cfg, tmp_path / "dest")
    assert champion.version == "2"
    assert (champion.adapter_dir / "adapter_model.safetensors").read_bytes() == b"weights of version 2"
