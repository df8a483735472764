"""Imports point one way: core ← components ← pipelines; each SDK has one owning module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "src" / "tuneloop"
EDGE_LIBS = {"kfp", "kubernetes", "typer", "click"}
SDK_OWNERS = {"mlflow": "registry.py", "evidently": "drift.py", "dvc": "data.py", "bitsandbytes": "quantization.py",
              "rouge_score": "generation.py", "matplotlib": "plots.py", "datasketch": "leakage.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (top-level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def core_files() -> list[Path]:
    return [p for p in CORE.rglob("*.py") if "cli" not in p.relative_to(CORE).parts]


def test_walker_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from kfp import dsl\n    import mlflow.artifacts\n")
    assert imported_modules(sample) == {"os", "kfp", "mlflow.artifacts"}


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_never_imports_orchestration_cli_or_edges(path):
    bad = {m for m in imported_modules(path)
           if m.split(".")[0] in EDGE_LIBS or m.startswith(("tuneloop.components", "tuneloop.pipelines", "tuneloop.cli"))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}; the core must stay free of them"


@pytest.mark.parametrize("sdk,owner", sorted(SDK_OWNERS.items()))
def test_each_sdk_has_one_owner(sdk, owner):
    importers = {p.name for p in core_files() if any(m.split(".")[0] == sdk for m in imported_modules(p))}
    assert importers <= {owner}, f"{sdk} is imported by {sorted(importers)}; only {owner} may"


@pytest.mark.parametrize("name", ["gate.py", "policy.py"])
def test_pure_decisions_import_no_sdk(name):
    third_party = {m.split(".")[0] for m in imported_modules(CORE / name)} - {"tuneloop"} - sys.stdlib_module_names
    assert not third_party


@pytest.mark.parametrize("path", sorted((ROOT / "components").glob("*.py")), ids=lambda p: p.name)
def test_components_do_not_import_pipelines_or_cli(path):
    bad = {m for m in imported_modules(path) if m.startswith(("tuneloop.pipelines", "tuneloop.cli", "typer", "click"))}
    assert not bad
