"""The model registry (MLflow): the only module that imports `mlflow`.

Contract:
- A model version is an adapter folder (safetensors + metadata), never a copy of the base model.
- Every candidate that reaches the gate is registered, so its evidence is kept: a passing one gets
  `tuneloop.gate=passed` and the `champion` alias; a rejected one gets `tuneloop.gate=rejected`
  with the reasons and no alias. Nothing is registered for data that fails validation.
- `check_store` is the preflight: it reads the store (a bounded HTTP request or a read-only sqlite
  connection) and the artifact location and writes nothing. Every entry point runs it first, so a
  broken store fails in one line before anything is written, and every MLflow error that still
  happens later is one `RegistryError` line.
- `register` is all or nothing: when any step fails or is interrupted, the run, version, model and
  experiment it created are taken back before the error is raised again.
- The alias moves in `promote`, after the run, artifacts and version tags exist, and only if the
  champion is still the one the candidate was gated against (checked just before the move; two
  promoters racing against one shared server are not yet excluded). The audit record, a
  registered-model tag `tuneloop.audit.<utc time>` holding who, when, from, to and why, is
  written before the alias, so the alias is the last write and never moves unrecorded.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from tuneloop import store
from tuneloop.config import RegistryConfig
from tuneloop.errors import RegistryError

log = logging.getLogger(__name__)

CHAMPION = "champion"
TAG = "tuneloop."
AUDIT_PREFIX = TAG + "audit."

# MLflow's defaults retry an HTTP call 7 times with backoff 2 and a 120 s timeout: about 4 minutes
# before an unreachable server is reported. One retry after ~1 s and a 10 s timeout bound a dead
# server to ~21 s per call and a refused connection to ~1 s. Read per request by
# mlflow.utils.rest_utils.http_request (names from mlflow/environment_variables.py, 3.17.2).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


@dataclass(frozen=True)
class Champion:
    """The serving version and where its adapter was downloaded."""

    version: str
    adapter_dir: Path
    labels: list[str]


@dataclass(frozen=True)
class Registered:
    """What `register` wrote."""

    version: str
    run_id: str

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)


@dataclass(frozen=True)
class Candidate:
    """Everything the registry stores about one gated candidate."""

    adapter_dir: Path
    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    reports: dict[str, dict]
    passed: bool
    reason: str


@contextlib.contextmanager
def _translated(cfg: RegistryConfig) -> Iterator[None]:
    """Turn every error the store raises into one RegistryError line that names the store and the fix."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    try:
        yield
    except ImportError as exc:  # postgresql:// or mysql:// without its driver
        raise RegistryError(
            f"registry.tracking_uri {cfg.tracking_uri.split('://')[0]}:// needs a database driver that is not installed "
            f"({exc}); install it (PostgreSQL: pip install psycopg2-binary, MySQL: pip install pymysql)"
        ) from exc
    except (MlflowException, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, requests.RequestException, OSError) as exc:
        detail = store.one_line(exc)
        if store.sqlite_path(cfg) is not None and any(marker in detail for marker in store.CORRUPT):
            raise store.unreadable(cfg, detail) from exc
        raise RegistryError(f"registry at {cfg.tracking_uri} failed: {detail}; check registry.tracking_uri") from exc


@functools.cache
def _schema_head() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def check_store(cfg: RegistryConfig, timeout: float = 5.0) -> None:
    """Check that a run could be registered, writing nothing (see `tuneloop.store.check_store`).

    Raises:
        RegistryError: naming the key, the bad value and the fix.
    """
    store.check_store(cfg, _schema_head(), timeout)


def _client(cfg: RegistryConfig) -> Any:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # Adapters are a few hundred KB: a per-file download bar is noise in step logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # With a tracking server MLflow writes "View run … at" to stdout, which would break `--json` output.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)


def _champion_version(client: Any, cfg: RegistryConfig) -> Any | None:
    """The version behind the champion alias, or None (no such model, or no alias yet)."""
    from mlflow.exceptions import MlflowException

    if not client.search_registered_models(filter_string=f"name = '{cfg.model_name}'"):
        return None
    try:
        return client.get_model_version_by_alias(cfg.model_name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # the alias is not set
            return None
        raise


def _labels(version: Any) -> list[str]:
    if TAG + "labels" not in version.tags:
        raise RegistryError(f"champion version {version.version} has no {TAG}labels tag; it was not registered by tuneloop")
    return json.loads(version.tags[TAG + "labels"])


def _reader(cfg: RegistryConfig) -> Any | None:
    """A client for reading, after a bounded check of the store; None when the sqlite store does not exist yet."""
    if store.is_empty_sqlite(cfg):
        return None
    store.check_tracking(cfg, 5.0, False, _schema_head())
    with _translated(cfg):
        return _client(cfg)


def champion_labels(cfg: RegistryConfig) -> list[str] | None:
    """Return the serving version's label set, or None when nothing serves (reads only)."""
    client = _reader(cfg)
    if client is None:
        return None
    with _translated(cfg):
        version = _champion_version(client, cfg)
    return _labels(version) if version else None


def fetch_champion(cfg: RegistryConfig, dest: Path) -> Champion | None:
    """Download the serving adapter into `dest`; None when nothing serves yet (reads only)."""
    client = _reader(cfg)
    if client is None:
        return None
    import mlflow.artifacts

    with _translated(cfg):
        version = _champion_version(client, cfg)
    if version is None:
        return None
    if dest.exists():
        shutil.rmtree(dest)  # no files left from an earlier champion
    dest.mkdir(parents=True)
    with _translated(cfg):
        local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest), tracking_uri=cfg.tracking_uri)
    return Champion(version=str(version.version), adapter_dir=Path(local), labels=_labels(version))


def latest_version(cfg: RegistryConfig) -> str | None:
    """Return the newest version number of `registry.model_name`; None when there is no store or no version (reads only).

    Raises:
        RegistryError: when the store cannot be read, so "nothing registered" is never said without knowing.
    """
    client = _reader(cfg)
    if client is None:
        return None
    with _translated(cfg):
        if not client.search_registered_models(filter_string=f"name = '{cfg.model_name}'"):
            return None
        versions = client.search_model_versions(f"name = '{cfg.model_name}'")
    return str(max(int(v.version) for v in versions)) if versions else None


@dataclass
class _Written:
    """What one `register` call may have created, so that a failure can take it back.

    The flags are set before each create call, not after it returns: a create that the store committed
    but whose answer was lost (a timeout, Ctrl-C) is still found, by name, and taken back.
    """

    new_experiment: bool = False
    run: Any = None
    new_model: bool = False
    artifact_floor: Path | None = None  # the deepest local folder that existed before the run


def _prepared(candidate: Candidate) -> tuple[list, dict[str, str]]:
    """Build the run's batch and report files before the first write, so bad values fail while nothing exists."""
    from mlflow.entities import Metric, Param, RunTag

    folder = candidate.adapter_dir
    if not folder.is_dir() or not any(path.is_file() for path in folder.rglob("*")):
        raise RegistryError(f"adapter folder {folder} is missing or holds no files; train the candidate again (nothing was registered)")
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    try:
        metrics = [Metric(k, float(v), now, 0) for k, v in candidate.metrics.items()]
        reports = {f"reports/{name}.json": json.dumps(report, indent=2) for name, report in candidate.reports.items()}
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"candidate metrics or reports are not numbers/JSON ({exc}); nothing was registered") from exc
    params = [Param(k, str(v)[:6000]) for k, v in candidate.params.items()]
    return [metrics, params, [RunTag(k, v) for k, v in candidate.tags.items()]], reports


def _write(client: Any, cfg: RegistryConfig, candidate: Candidate, run_name: str, written: _Written) -> Any:
    """Create the run, its artifacts and the version, recording each creation in `written` as it happens."""
    (metrics, params, tags), reports = _prepared(candidate)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        written.new_experiment = True
        if store.server_places_artifacts(cfg):
            experiment_id = client.create_experiment(cfg.experiment)
        else:
            root = cfg.artifact_root if "://" in cfg.artifact_root else Path(cfg.artifact_root).resolve().as_uri()
            experiment_id = client.create_experiment(cfg.experiment, artifact_location=root)
        experiment = client.get_experiment(experiment_id)
    local = store.local_path(experiment.artifact_location)
    written.artifact_floor = store.nearest_existing(local) if local else None
    written.run = client.create_run(experiment.experiment_id, run_name=run_name)
    run_id = written.run.info.run_id
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    for path, text in reports.items():
        client.log_text(run_id, text, path)
    client.log_artifacts(run_id, str(candidate.adapter_dir), "adapter")
    client.set_terminated(run_id)
    if not client.search_registered_models(filter_string=f"name = '{cfg.model_name}'"):
        written.new_model = True
        client.create_registered_model(cfg.model_name, description="tuneloop adapters (PEFT, safetensors)")
    version_tags = {**candidate.tags, TAG + "gate": "passed" if candidate.passed else "rejected",
                    TAG + "gate_reasons": candidate.reason[:5000]}
    return client.create_model_version(
        cfg.model_name, source=f"{written.run.info.artifact_uri}/adapter", run_id=run_id, tags=version_tags,
    )


def _purger(client: Any, cfg: RegistryConfig, method: str) -> Callable[[str], None] | None:
    """The sqlite store's permanent delete (what `mlflow gc` calls), or None for stores that only soft-delete."""
    if store.sqlite_path(cfg) is None:
        return None
    return getattr(getattr(getattr(client, "_tracking_client", None), "store", None), method, None)


def _delete_run(client: Any, cfg: RegistryConfig, written: _Written) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run_id, artifact_uri = written.run.info.run_id, written.run.info.artifact_uri
    client.set_terminated(run_id, status="FAILED")
    client.delete_run(run_id)
    local, floor = store.local_path(artifact_uri), written.artifact_floor
    if local is None or floor is None:
        get_artifact_repository(artifact_uri, tracking_uri=cfg.tracking_uri).delete_artifacts()
    else:
        if local.exists():
            shutil.rmtree(local)
        folder = local.parent  # <location>/<run_id>, and the parents MLflow created for this run
        while folder != floor and folder.is_relative_to(floor) and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    purge = _purger(client, cfg, "_hard_delete_run")
    if purge is not None:
        purge(run_id)


def _delete_model(client: Any, cfg: RegistryConfig) -> None:
    name = cfg.model_name
    if client.search_registered_models(filter_string=f"name = '{name}'") and not client.search_model_versions(f"name = '{name}'"):
        client.delete_registered_model(name)  # also removes the versions deleted above, which MLflow only hides


def _delete_experiment(client: Any, cfg: RegistryConfig) -> None:
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return  # never created
    experiment_id = experiment.experiment_id
    if client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1):
        return  # another writer's run arrived meanwhile: the experiment is not ours alone any more
    purge = _purger(client, cfg, "_hard_delete_experiment")
    if purge is None:
        # Over REST an experiment can only be soft-deleted, which keeps its name reserved and would make
        # the next run fail; an empty experiment that the next run reuses is the lesser harm.
        log.warning("left the empty experiment %s in %s (MLflow cannot delete it for good)", cfg.experiment, cfg.tracking_uri)
        return
    client.delete_experiment(experiment_id)
    purge(experiment_id)


def _attempt(left: list[str], what: str, action: Callable[[], object]) -> None:
    try:
        action()
    # A failing cleanup step must not replace the error that started the cleanup: it is reported with it.
    except Exception as exc:  # noqa: BLE001
        left.append(f"{what} ({store.one_line(exc, 200)})")


def _undo(client: Any, cfg: RegistryConfig, written: _Written) -> list[str]:
    """Take back what `written` records, newest first; return what could not be taken back."""
    left: list[str] = []
    if written.run is not None:
        run_id = written.run.info.run_id

        def delete_versions() -> None:
            for version in client.search_model_versions(f"name = '{cfg.model_name}' and run_id = '{run_id}'"):
                client.delete_model_version(cfg.model_name, version.version)

        _attempt(left, f"versions of run {run_id}", delete_versions)
    if written.new_model:
        _attempt(left, f"registered model {cfg.model_name}", lambda: _delete_model(client, cfg))
    if written.run is not None:
        _attempt(left, f"run {written.run.info.run_id}", lambda: _delete_run(client, cfg, written))
    if written.new_experiment:
        _attempt(left, f"experiment {cfg.experiment}", lambda: _delete_experiment(client, cfg))
    return left


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[list[int]]:
    """Hold Ctrl-C while the cleanup runs (well under a second on sqlite), so a second press cannot cut it short."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield []
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, previous)


def register(cfg: RegistryConfig, candidate: Candidate, run_name: str) -> Registered:
    """Log the candidate's run and register its adapter as a version tagged with the gate verdict.

    Moves no alias: promotion is its own step, taken only on the pipeline's passing branch. All or
    nothing: on any failure, Ctrl-C included, the run (ended FAILED, then deleted), the version, and
    the registered model and experiment this call created are taken back before the error propagates.

    Raises:
        RegistryError: when the store fails `check_store`, a value cannot be stored, or a write fails.
    """
    check_store(cfg)
    written, client = _Written(), None
    try:
        with _translated(cfg):
            client = _client(cfg)
            version = _write(client, cfg, candidate, run_name, written)
    except BaseException as exc:
        if client is not None and (written.run is not None or written.new_experiment):
            with _sigint_deferred() as interrupted:
                left = _undo(client, cfg, written)
            if left:
                log.error("register failed and could not undo: %s", ", ".join(left))
                if isinstance(exc, RegistryError):
                    raise RegistryError(f"{exc}; could not undo: {', '.join(left)}") from exc
            if interrupted and not isinstance(exc, KeyboardInterrupt):
                raise KeyboardInterrupt from exc
        raise
    gate = version.tags.get(TAG + "gate")
    log.info("registered %s version %s (gate %s)", cfg.model_name, version.version, gate)
    return Registered(version=str(version.version), run_id=written.run.info.run_id)


def promote(cfg: RegistryConfig, version: str, expected_champion: str | None, why: str, by: str) -> str | None:
    """Move the champion alias to `version`; return the version it replaced.

    The move happens only if the champion is still `expected_champion`, the version the candidate
    was gated against; the alias is the last write, after its audit record.

    Raises:
        RegistryError: when the store is unreachable, the version was not passed by the gate, or the
            champion moved meanwhile.
    """
    store.check_tracking(cfg, 5.0, True, _schema_head())
    with _translated(cfg):
        client = _client(cfg)
        target = client.get_model_version(cfg.model_name, version)
        if target.tags.get(TAG + "gate") != "passed":
            raise RegistryError(f"version {version} of {cfg.model_name} did not pass the gate; only passed versions can be promoted")
        current = _champion_version(client, cfg)
        current_version = str(current.version) if current else None
        if current_version != (expected_champion or None):
            raise RegistryError(
                f"champion moved from {expected_champion or 'none'} to {current_version} while version {version} "
                "was being gated; run the pipeline again to gate against the new champion"
            )
        _move_alias(client, cfg, CHAMPION, version, current_version, why, by)
    log.info("champion of %s: %s -> %s", cfg.model_name, current_version or "none", version)
    return current_version


def _move_alias(client: Any, cfg: RegistryConfig, alias: str, to: str, previous: str | None, why: str, by: str) -> None:
    at = datetime.now(timezone.utc)
    event = {"alias": alias, "from": previous, "to": to,
             "at": at.isoformat(), "by": by or f"{getpass.getuser()}@{socket.gethostname()}", "why": why[:2000]}
    # Audit first: an alias that moved without its record could not be explained later.
    client.set_registered_model_tag(cfg.model_name, f"{AUDIT_PREFIX}{at.strftime('%Y%m%dT%H%M%S%fZ')}", json.dumps(event))
    client.set_registered_model_alias(cfg.model_name, alias, to)


def status(cfg: RegistryConfig) -> dict[str, Any]:
    """Return the registered versions (newest first) with aliases, gate verdicts and metrics."""
    client = _reader(cfg)
    if client is None:
        return {"model": cfg.model_name, "versions": [], "audit": []}
    with _translated(cfg):
        if not client.search_registered_models(filter_string=f"name = '{cfg.model_name}'"):
            return {"model": cfg.model_name, "versions": [], "audit": []}
        model = client.get_registered_model(cfg.model_name)
        # search_model_versions leaves `aliases` empty; the registered model holds the mapping.
        aliases: dict[str, list[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        rows = []
        for version in client.search_model_versions(f"name = '{cfg.model_name}'"):
            metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
            rows.append({
                "version": str(version.version), "aliases": aliases.get(str(version.version), []),
                "gate": version.tags.get(TAG + "gate"), "reasons": version.tags.get(TAG + "gate_reasons"),
                "data_rev": version.tags.get(TAG + "data_rev"), "method": version.tags.get(TAG + "method"),
                "accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"),
                "champion_macro_f1": metrics.get("champion_macro_f1"), "created": version.creation_timestamp,
            })
        rows.sort(key=lambda row: int(row["version"]), reverse=True)
        audit = [json.loads(v) for k, v in sorted(model.tags.items()) if k.startswith(AUDIT_PREFIX)]
    return {"model": cfg.model_name, "versions": rows, "audit": audit}
