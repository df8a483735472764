"""`tuneloop registry promote | rollback | history | show | repair` through the real CLI, on a sqlite registry."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.conftest import tiny_config_text
from tests.test_registry import adapter, candidate, migrated_store  # noqa: F401 (fixtures)
from tuneloop import registry
from tuneloop.config import load_config

TUNELOOP = shutil.which("tuneloop")


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([TUNELOOP, *args], capture_output=True, text=True, timeout=300, input=stdin)


@pytest.fixture
def config(tmp_path, migrated_store, adapter) -> Path:  # noqa: F811
    """A config whose registry holds versions 1 (passed), 2 (rejected), 3 and 4 (passed); 1 is champion."""
    shutil.copyfile(migrated_store, tmp_path / "mlflow.db")
    path = tmp_path / "tuneloop.yaml"
    path.write_text(tiny_config_text(tmp_path / "model").replace(
        "registry:\n", f"registry:\n  tracking_uri: sqlite:///{tmp_path}/mlflow.db\n  artifact_root: {tmp_path}/art\n"))
    cfg = load_config(path).registry
    for passed in (True, False, True, True):
        registry.register(cfg, candidate(adapter, passed=passed), "run")
    registry.promote(cfg, "1", None, why="first", by="setup")
    return path


def champion(config: Path) -> str | None:
    return registry.alias_of(load_config(config).registry, registry.CHAMPION)


def test_promote_shows_the_plan_and_a_dry_run_changes_nothing(config):
    done = cli("registry", "promote", "3", "--reason", "reviewed", "--dry-run", "--config", str(config))
    assert (done.returncode, done.stdout) == (0, "promote test-model: champion 1 -> 3 (reviewed)\ndry run: nothing was changed\n")
    assert champion(config) == "1"


def test_promoting_the_champion_is_a_no_op(config):
    done = cli("registry", "promote", "1", "--reason", "x", "--yes", "--config", str(config))
    assert (done.returncode, done.stdout) == (0, "version 1 is already champion; nothing to do\n")


def test_a_dry_run_still_checks_the_version(config):
    done = cli("registry", "promote", "2", "--reason", "x", "--dry-run", "--config", str(config))
    assert (done.returncode, done.stdout, done.stderr.strip()) == (
        1, "", "error: RegistryError: version 2 of test-model did not pass the gate; only passed versions can be promoted")


def test_without_a_terminal_or_an_answer_nothing_is_promoted(config):
    done = cli("registry", "promote", "3", "--reason", "reviewed", "--json", "--config", str(config))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == (
        "error: RegistryError: not confirmed; nothing was changed (pass --yes to skip the question)")
    assert champion(config) == "1"


def test_promote_asks_and_a_no_changes_nothing(config):
    done = cli("registry", "promote", "3", "--reason", "reviewed", "--config", str(config), stdin="n\n")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: RegistryError: not confirmed; nothing was changed (pass --yes to skip the question)")
    assert champion(config) == "1"


def test_promote_with_yes_moves_and_json_says_so(config):
    done = cli("registry", "promote", "3", "--reason", "reviewed", "--yes", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"from": "1", "to": "3", "moved": True, "dry_run": False}
    assert champion(config) == "3"


@pytest.mark.parametrize("args, message", [
    (["promote", "2", "--reason", "x", "--yes"],
     "error: RegistryError: version 2 of test-model did not pass the gate; only passed versions can be promoted"),
    (["promote", "9", "--reason", "x", "--yes"],
     "error: RegistryError: test-model has no version 9; `tuneloop registry status` lists the versions"),
    (["promote", "3", "--reason", " ", "--yes"],
     "error: ConfigError: --reason is empty; say why, for the history (for example --reason 'v7 mislabels refunds')"),
    (["rollback", "--reason", "x", "--yes"],
     "error: RegistryError: champion version 1 has no earlier champion in the history; name one with --to VERSION"),
    (["rollback", "--to", "2", "--reason", "x", "--yes"],
     "error: RegistryError: version 2 of test-model did not pass the gate; only passed versions can be promoted"),
    (["history", "--at", "yesterday"],
     "error: ConfigError: --at 'yesterday' is not an ISO time; write e.g. 2026-12-01T14:30 or 2026-12-01T14:30:00+00:00"),
    (["show", "champ"], "error: RegistryError: 'champ' is neither a version number nor an alias; use champion, challenger or a number"),
])
def test_bad_requests_fail_in_one_line_and_move_nothing(config, args, message):
    before = registry.history(load_config(config).registry)
    done = cli("registry", *args, "--config", str(config))
    assert (done.returncode, done.stderr.strip().splitlines()) == (1, [message])
    assert champion(config) == "1"
    assert registry.history(load_config(config).registry) == before


def test_rollback_twice_moves_once_and_history_at_answers(config):
    assert cli("registry", "promote", "3", "--reason", "better", "--yes", "--config", str(config)).returncode == 0
    after_promote = datetime.now(timezone.utc).isoformat()
    first = cli("registry", "rollback", "--reason", "3 mislabels refunds", "--yes", "--config", str(config))
    assert (first.returncode, first.stdout.splitlines()[-1]) == (0, "champion is now version 1 (was 3)")
    second = cli("registry", "rollback", "--reason", "retry", "--yes", "--json", "--config", str(config))
    assert json.loads(second.stdout) == {"from": "1", "to": None, "moved": False, "dry_run": False}
    at = cli("registry", "history", "--at", after_promote, "--json", "--config", str(config))
    assert json.loads(at.stdout)["champion"] == "3"
    history = json.loads(cli("registry", "history", "--json", "--config", str(config)).stdout)
    assert [(e["kind"], e["from"], e["to"], e["status"], e["reason"]) for e in history] == [
        ("promote", None, "1", "done", "first"), ("promote", "1", "3", "done", "better"),
        ("rollback", "3", "1", "done", "3 mislabels refunds"),
    ]
    shown = json.loads(cli("registry", "show", "3", "--json", "--config", str(config)).stdout)
    assert (shown["promotion"], shown["aliases"], shown["record"]["gate"]) == ("rolled back", [], "passed")


def test_repair_leaves_versions_whose_promoter_still_runs(config):
    # versions 3 and 4 were registered by this (living) test process and never promoted
    done = cli("registry", "repair", "--config", str(config))
    assert (done.returncode, done.stdout) == (0, "nothing to repair\n")
    assert registry.show(load_config(config).registry, "3")["promotion"] == "pending"


def test_repair_marks_a_pending_version_orphaned_once_its_lease_is_over(config):
    fixed = registry.repair(load_config(config).registry, lease=0.0)
    assert fixed == {"claims": [], "versions": [{"version": "3", "promotion": "orphaned"},
                                                  {"version": "4", "promotion": "orphaned"}]}
