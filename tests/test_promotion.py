"""Promotion against a real `mlflow server` on the loopback PostgreSQL: the compare-and-set race,
crash injection between the registry writes of a promotion, a rollback and a challenger move,
rollback and history.

The server gets a database of its own per test session (created here, dropped after), and every
client talks to it through the REST API alone, as pipeline steps on a cluster do.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import mlflow_server
from tests.test_registry import adapter, candidate  # noqa: F401 (adapter is a fixture)
from tuneloop import ledger, registry
from tuneloop.config import RegistryConfig
from tuneloop.errors import RegistryError

psycopg2 = pytest.importorskip("psycopg2")
POSTGRES = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
RACERS = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """A real mlflow server on a free loopback port, backed by a fresh PostgreSQL database."""
    database = f"tuneloop_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(**POSTGRES)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {database}")
    try:
        with mlflow_server(tmp_path_factory.mktemp("mlflow-server"),
                           f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}") as url:
            yield url
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.close()


@pytest.fixture
def cfg(server) -> RegistryConfig:
    """A model of its own on the shared server, per test."""
    return RegistryConfig(tracking_uri=server, model_name=f"race-{uuid.uuid4().hex[:8]}", experiment=f"e-{uuid.uuid4().hex[:8]}")


def _fresh_connections() -> None:
    """A forked child must not reuse the parent's HTTP connections."""
    from mlflow.utils import request_utils

    request_utils._cached_get_request_session.cache_clear()


def _race(cfg: RegistryConfig, version: str, expected: str, start: float, results) -> None:
    _fresh_connections()
    while time.time() < start:
        time.sleep(0.001)
    try:
        registry.promote(cfg, version, expected, why=f"racer {version}", by=f"racer-{version}")
        results.put((version, "won"))
    except RegistryError as exc:
        results.put((version, f"refused: {exc}"))
    except Exception as exc:  # noqa: BLE001 - anything else is a failure the test must show
        results.put((version, f"crashed: {type(exc).__name__}: {exc}"))


def _champion_moves(cfg: RegistryConfig) -> list[ledger.Entry]:
    return ledger.history(registry.history(cfg), registry.CHAMPION)


def test_twenty_racing_promotions_have_exactly_one_winner(cfg, adapter):  # noqa: F811
    registry.register(cfg, candidate(adapter), "champion-run")
    registry.promote(cfg, "1", None, why="first", by="setup")
    context = multiprocessing.get_context("fork")
    for race in range(5):
        expected = registry.alias_of(cfg, registry.CHAMPION)
        contenders = [registry.register(cfg, candidate(adapter), f"race{race}-{i}").version for i in range(RACERS)]
        moves_before = len(_champion_moves(cfg))
        results = context.Queue()
        start = time.time() + 3
        racers = [context.Process(target=_race, args=(cfg, v, expected, start, results)) for v in contenders]
        for racer in racers:
            racer.start()
        outcomes = dict(results.get(timeout=300) for _ in racers)
        for racer in racers:
            racer.join(60)
        winners = [v for v, outcome in outcomes.items() if outcome == "won"]
        refused = [outcome for outcome in outcomes.values() if outcome.startswith("refused: ")]
        assert len(winners) == 1, outcomes
        assert len(refused) == RACERS - 1, outcomes
        assert registry.alias_of(cfg, registry.CHAMPION) == winners[0]
        new_moves = _champion_moves(cfg)[moves_before:]
        assert [(m.from_version, m.to_version, m.status) for m in new_moves] == [(expected, winners[0], "done")]
        assert all(e.status != ledger.PENDING for e in registry.history(cfg))


def _writes_killed_after(operation: Callable[[], object], limit: int, trace: Path) -> None:
    """In a forked child: run `operation`, SIGKILLing this process right after registry write number
    `limit`; the writes made are traced to `trace`, one "method model" per line."""
    _fresh_connections()
    made = registry._client

    def client(config):
        real = made(config)

        class Counting:
            def __getattr__(self, name):
                attribute = getattr(real, name)
                if not name.startswith(("log_", "create_", "set_", "delete_")):
                    return attribute

                def write(*args, **kwargs):
                    result = attribute(*args, **kwargs)
                    with trace.open("a") as out:
                        out.write(f"{name} {args[0] if args and isinstance(args[0], str) else ''}\n")
                    if len(trace.read_text().splitlines()) == limit:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return result

                return write

        return Counting()

    registry._client = client  # this child only: it was forked, the parent keeps the real one
    operation()
    os._exit(0)


def _run_child(context, operation: Callable[[], object], limit: int, trace: Path) -> int:
    """Run `operation` in a forked child killed after write `limit` (see `_writes_killed_after`); return its exit code."""
    trace.unlink(missing_ok=True)
    # A fork hands the child `operation` as it is, closures and all: nothing is pickled.
    child = context.Process(target=_writes_killed_after, args=(operation, limit, trace))
    child.start()
    child.join(120)
    return child.exitcode


def _register_and_promote(cfg: RegistryConfig, adapter_dir: Path, limit: int) -> None:
    """Register a candidate and promote it over the champion as it is now."""
    expected = registry.alias_of(cfg, registry.CHAMPION)
    registered = registry.register(cfg, candidate(adapter_dir), f"crash-{limit}")
    registry.promote(cfg, registered.version, expected, why=f"crash after write {limit}", by="crasher")


def test_a_promotion_killed_between_any_two_writes_leaves_a_consistent_registry(cfg, adapter, tmp_path):  # noqa: F811
    registry.register(cfg, candidate(adapter), "champion-run")
    registry.promote(cfg, "1", None, why="first", by="setup")
    context, trace = multiprocessing.get_context("fork"), tmp_path / "writes.txt"
    whole = functools.partial(_register_and_promote, cfg, adapter, 0)
    assert _run_child(context, whole, 10**6, trace) == 0  # one whole run, to trace its writes
    writes = trace.read_text().splitlines()
    # Kill right after each write from the version's creation (register's last) to promote's last.
    first = writes.index(f"create_model_version {cfg.model_name}")
    points = range(first + 1, len(writes) + 1)
    assert [writes[i - 1].split()[0] for i in points] == [
        "create_model_version",  # the candidate's version (pending)
        "create_model_version",  # the claim on the ledger
        "set_registered_model_alias", "set_model_version_tag",  # the alias, then the claim done
        "set_model_version_tag",  # the version's promotion state
    ]
    for limit in points:
        before = registry.alias_of(cfg, registry.CHAMPION)
        promotion = functools.partial(_register_and_promote, cfg, adapter, limit)
        assert _run_child(context, promotion, limit, trace) == -signal.SIGKILL
        newest = registry.latest_version(cfg)
        after = registry.alias_of(cfg, registry.CHAMPION)
        assert after in (before, newest), (limit, before, after, newest)
        claims = [e.status for e in registry.history(cfg) if e.to_version == newest]
        if after == newest:  # moved: never without its record
            assert claims in (["pending"], ["done"]), (limit, claims)
        registry.repair(cfg)
        entries = registry.history(cfg)
        assert [e for e in entries if e.status == ledger.PENDING] == [], limit
        assert registry.show(cfg, newest)["promotion"] == ("promoted" if after == newest else "orphaned"), limit
        moved = [e for e in entries if e.to_version == newest and e.status == ledger.DONE]
        assert len(moved) == (1 if after == newest else 0), (limit, entries)
    # the registry still works: the next promotion succeeds
    final = registry.register(cfg, candidate(adapter), "after-crashes").version
    registry.promote(cfg, final, registry.alias_of(cfg, registry.CHAMPION), why="after the crashes", by="setup")
    assert registry.alias_of(cfg, registry.CHAMPION) == final


def _assert_settled(cfg: RegistryConfig, limit: int, before: list[ledger.Entry], move: tuple[str, str, str, str],
                    points_at: str, status: str, settled: str | None) -> None:
    """Assert what an alias move killed after write `limit` left behind, and that `repair` settles it.

    Args:
        cfg: The registry.
        limit: The kill point, for the failure messages.
        before: The ledger before the killed move (no claim pending).
        move: The killed move's claim as (kind, alias, from, to).
        points_at: The version the alias must point at after the kill.
        status: The claim's status right after the kill.
        settled: What `repair` must settle the claim as; None when it must find nothing to settle.
    """
    entries = registry.history(cfg)
    claim = entries[-1]
    assert len(entries) == len(before) + 1, (limit, entries[len(before):])  # one claim, the killed move's
    assert entries[:-1] == before, limit  # and no earlier claim touched
    assert (claim.kind, claim.alias, claim.from_version, claim.to_version, claim.status) == (*move, status), limit
    assert registry.alias_of(cfg, claim.alias) == points_at, limit
    # The full lease: the claim is settled at once only because its owner is a dead process on this host.
    repaired = registry.repair(cfg, lease=ledger.LEASE_SECONDS)
    assert [(c["number"], c["status"]) for c in repaired["claims"]] == ([(claim.number, settled)] if settled else []), limit
    assert repaired["versions"] == [], limit
    entries = registry.history(cfg)
    assert [e for e in entries if e.status == ledger.PENDING] == [], limit
    assert entries == [*before, replace(claim, status=settled or status)], limit
    # The alias moved together with its record, or neither did: the newest completed move names it.
    newest = ledger.history(entries, claim.alias)[-1]
    assert newest == (entries[-1] if points_at == claim.to_version else ledger.history(before, claim.alias)[-1]), limit
    assert newest.to_version == points_at, limit


def test_a_rollback_killed_between_any_two_writes_leaves_a_consistent_registry(cfg, adapter, tmp_path):  # noqa: F811
    for run in range(2):
        registry.register(cfg, candidate(adapter), f"run-{run}")
    registry.promote(cfg, "1", None, why="first", by="setup")
    registry.promote(cfg, "2", "1", why="second", by="setup")
    context, trace = multiprocessing.get_context("fork"), tmp_path / "writes.txt"
    rollback = functools.partial(registry.rollback, cfg, "crash", by="crasher")
    assert _run_child(context, rollback, 10**6, trace) == 0  # one whole run, to trace its writes
    name = cfg.model_name
    assert trace.read_text().splitlines() == [
        f"create_model_version {name}.ledger",  # the claim
        f"set_registered_model_alias {name}",  # champion 2 -> 1
        f"set_model_version_tag {name}.ledger",  # the claim done
        f"set_model_version_tag {name}",  # version 2 rolled back
    ]
    # Per kill point: the champion and the claim's status right after the kill, what repair settles
    # the claim as, and version 2's promotion state; `rolled back` is the last write, so a kill
    # before it leaves `promoted` (it was champion; the alias and the ledger say it no longer is).
    outcomes = {
        1: ("2", ledger.PENDING, ledger.ABORTED, "promoted"),
        2: ("1", ledger.PENDING, ledger.DONE, "promoted"),
        3: ("1", ledger.DONE, None, "promoted"),
        4: ("1", ledger.DONE, None, "rolled back"),
    }
    for limit, (champion, status, settled, state) in outcomes.items():
        registry.promote(cfg, "2", "1", why="champion again", by="setup")
        before = registry.history(cfg)
        assert _run_child(context, rollback, limit, trace) == -signal.SIGKILL
        _assert_settled(cfg, limit, before, ("rollback", registry.CHAMPION, "2", "1"), champion, status, settled)
        assert registry.show(cfg, "2")["promotion"] == state, limit
        # A fresh rollback proceeds, or finds the killed one done and moves nothing.
        again = registry.rollback(cfg, "after the crash", by="setup")
        assert again == (("2", "1") if champion == "2" else ("1", None)), limit
        assert registry.alias_of(cfg, registry.CHAMPION) == "1", limit
        assert len(registry.history(cfg)) == len(before) + (2 if champion == "2" else 1), limit


def test_a_challenger_move_killed_between_any_two_writes_leaves_a_consistent_registry(cfg, adapter, tmp_path):  # noqa: F811
    for run in range(3):
        registry.register(cfg, candidate(adapter), f"run-{run}")
    registry.promote(cfg, "1", None, why="first", by="setup")
    registry.make_challenger(cfg, "2", "second", by="setup")
    context, trace = multiprocessing.get_context("fork"), tmp_path / "writes.txt"
    challenge = functools.partial(registry.make_challenger, cfg, "3", "crash", by="crasher")
    assert _run_child(context, challenge, 10**6, trace) == 0  # one whole run, to trace its writes
    name = cfg.model_name
    assert trace.read_text().splitlines() == [
        f"create_model_version {name}.ledger",  # the claim
        f"set_registered_model_alias {name}",  # challenger 2 -> 3
        f"set_model_version_tag {name}.ledger",  # the claim done
    ]
    # Per kill point: the challenger and the claim's status right after the kill, and what repair settles the claim as.
    outcomes = {1: ("2", ledger.PENDING, ledger.ABORTED), 2: ("3", ledger.PENDING, ledger.DONE), 3: ("3", ledger.DONE, None)}
    for limit, (challenger, status, settled) in outcomes.items():
        # make_challenger logs a lost move instead of raising, so each one is checked on the alias.
        registry.make_challenger(cfg, "2", "challenger again", by="setup")
        assert registry.alias_of(cfg, registry.CHALLENGER) == "2", limit
        before = registry.history(cfg)
        assert _run_child(context, challenge, limit, trace) == -signal.SIGKILL
        _assert_settled(cfg, limit, before, ("challenger", registry.CHALLENGER, "2", "3"), challenger, status, settled)
        assert registry.alias_of(cfg, registry.CHAMPION) == "1", limit
        # A fresh move proceeds from wherever the killed one left the alias.
        registry.make_challenger(cfg, "3", "after the crash", by="setup")
        fresh = registry.history(cfg)[-1]
        assert (fresh.kind, fresh.from_version, fresh.to_version, fresh.status) == ("challenger", challenger, "3", "done"), limit
        assert registry.alias_of(cfg, registry.CHALLENGER) == "3", limit


def test_rollback_twice_moves_once_and_history_at_answers_across_moves(cfg, adapter):  # noqa: F811
    for run in range(4):
        registry.register(cfg, candidate(adapter), f"run-{run}")
    stamps = []
    for version, expected in (("1", None), ("2", "1"), ("3", "2")):
        registry.promote(cfg, version, expected, why=f"promote {version}", by="alice")
        stamps.append(datetime.now(timezone.utc))
        time.sleep(0.05)
    assert registry.rollback(cfg, "3 mislabels refunds", by="bob") == ("3", "2")
    stamps.append(datetime.now(timezone.utc))
    assert registry.rollback(cfg, "again, by a retrying script", by="bob") == ("2", None)
    assert registry.alias_of(cfg, registry.CHAMPION) == "2"
    moves = _champion_moves(cfg)
    assert [(m.kind, m.from_version, m.to_version) for m in moves] == [
        ("promote", None, "1"), ("promote", "1", "2"), ("promote", "2", "3"), ("rollback", "3", "2"),
    ]
    first_claim = datetime.fromtimestamp(moves[0].created_ms / 1000, timezone.utc)
    assert registry.champion_at(cfg, first_claim - timedelta(seconds=1)) is None
    answers = [registry.champion_at(cfg, when).to_version for when in stamps]
    assert answers == ["1", "2", "3", "2"]
    assert registry.show(cfg, "3")["promotion"] == "rolled back"


def test_rollback_refuses_a_target_on_another_base(cfg, adapter):  # noqa: F811
    registry.register(cfg, candidate(adapter), "run-1")
    registry.register(cfg, candidate(adapter, base_sha256="e" * 64), "run-2")
    registry.promote(cfg, "1", None, why="first", by="alice")
    message = (r"^version 2 has base_sha256 eeeeeeeeeeee but champion 1 has bbbbbbbbbbbb; "
               r"a rollback target must serve on the same base model, tokenizer and task$")
    with pytest.raises(RegistryError, match=message):
        registry.rollback(cfg, "try", to="2")
    assert registry.alias_of(cfg, registry.CHAMPION) == "1"
