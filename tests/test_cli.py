"""The CLI through its real entry point: the loop on a tiny model, its tables, and the debug switch.

Bad input, one table of it, is tested in tests/test_bad_input.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.conftest import champion_workspace

TUNELOOP = shutil.which("tuneloop")
pytestmark = pytest.mark.skipif(TUNELOOP is None, reason="the tuneloop console script is not installed")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TUNELOOP, *args], capture_output=True, text=True, cwd=cwd, timeout=900)


def registry_state(config: Path) -> dict:
    """Versions, aliases and alias history, read in-process (the CLI's own output is tested once)."""
    from tuneloop import registry
    from tuneloop.config import load_config

    return registry.status(load_config(config).registry)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model) -> Path:
    """A workspace where one pipeline run through `tuneloop run` made version 1 the champion."""
    return champion_workspace(tmp_path_factory.mktemp("cli") / "ws", tiny_model)


def test_first_run_becomes_champion_with_the_registry_contract(trained):
    state = registry_state(trained)
    (version,) = state["versions"]
    assert version["aliases"] == ["champion"] and version["gate"] == "passed"
    assert [(move["from"], move["to"]) for move in state["history"]] == [(None, "1")]
    table = cli("registry", "status", "--config", str(trained))
    assert "champion" in table.stdout and "VERSION" in table.stdout
    assert json.loads(cli("registry", "status", "--json", "--config", str(trained)).stdout) == state


def test_version_tags_pin_what_is_needed_to_reproduce(trained):
    from mlflow import MlflowClient

    from tuneloop.config import load_config

    cfg = load_config(trained)
    client = MlflowClient(tracking_uri=cfg.registry.tracking_uri, registry_uri=cfg.registry.tracking_uri)
    tags = client.get_model_version(cfg.registry.model_name, "1").tags
    for key in ("base_model", "base_sha256", "tokenizer_sha256", "method", "method_config", "quantization",
                "labels", "data_rev", "data_sha256", "config_sha256", "version.torch", "version.peft",
                "version.transformers", "version.bitsandbytes", "gate", "gate_reasons"):
        assert tags.get(f"tuneloop.{key}"), key
    assert json.loads(tags["tuneloop.labels"]) == ["account", "billing", "technical"]
    source = urlparse(client.get_model_version(cfg.registry.model_name, "1").source)
    files = {p.name for p in Path(source.path).iterdir()}
    assert "adapter_model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)


def _rewrite_config(config: Path, tmp_path: Path, change: dict) -> Path:
    data = yaml.safe_load(config.read_text())
    for dotted, value in change.items():
        section, key = dotted.split(".")
        data.setdefault(section, {})[key] = value
    copy = config.parent / f"bad-{tmp_path.name}.yaml"
    copy.write_text(yaml.safe_dump(data))
    return copy


def test_debug_shows_the_traceback(trained, tmp_path):
    done = cli("--debug", "run", "--config", str(trained), "--rev", "no-such-rev")
    assert done.returncode == 1 and "Traceback" in done.stderr and "DataError" in done.stderr


def test_a_rejected_candidate_is_registered_but_never_promoted(trained, tmp_path):
    before = registry_state(trained)
    strict = _rewrite_config(trained, tmp_path, {"gate.min_accuracy": 1.0})
    done = cli("run", "--config", str(strict))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gate rejected, champion unchanged" in done.stdout and "gate.min_accuracy=1.0" in done.stdout
    after = registry_state(trained)
    newest = after["versions"][0]
    assert newest["gate"] == "rejected" and newest["aliases"] == []
    assert [v for v in after["versions"] if "champion" in v["aliases"]] == [v for v in before["versions"] if "champion" in v["aliases"]]
    assert after["history"] == before["history"]


def test_config_commands(tmp_path):
    schema = json.loads(cli("config", "schema").stdout)
    assert {"data", "model", "method", "quantization", "train", "gate", "registry", "runtime"} <= set(schema["properties"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {pathx: 1}\ntrain: {epochs: zero}\n")
    done = cli("config", "validate", str(bad))
    assert done.returncode == 1
    assert "data.pathx: unknown key" in done.stderr and "train.epochs" in done.stderr


def test_init_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    done = cli("init", str(tmp_path))
    assert done.returncode == 1 and "not empty" in done.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious" and not (tmp_path / ".git").exists()


def test_pipeline_compile_writes_ir_yaml(tmp_path):
    out = tmp_path / "ct.yaml"
    config = tmp_path / "tuneloop.yaml"
    config.write_text("runtime:\n  image: registry.example/tuneloop:test\n")
    done = cli("pipeline", "compile", "--output", str(out), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"compiled continuous-training for registry.example/tuneloop:test -> {out}\n"
    images = {executor["container"]["image"] for executor in next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/tuneloop:test"}
