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
- Every version carries one `VersionRecord`: the adapter contract, and its state (the promotion
  state, the dossier link, the registering process); no other place spells a tag key.
- Aliases (`champion`, `challenger`) move only through the ledger (`tuneloop.ledger`): a
  compare-and-set over claims appended as versions of `<model>.ledger`, which works through the
  REST API alone and keeps the history ("champion at time T", "last good version") in the registry.
- Crashes: a claim is written before its alias move, so an alias never moves unrecorded; `repair`
  (or the next move) settles claims whose process died and marks passed versions left pending.
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
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from tuneloop import ledger, methods, store, tasks
from tuneloop.config import RegistryConfig
from tuneloop.errors import RegistryConflict, RegistryError

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
TAG = "tuneloop."
LEDGER_SUFFIX = ".ledger"  # the registered model that holds the alias ledger (see tuneloop.ledger)
GATE_VERDICTS = ("passed", "manual", "rejected")  # manual: passed, but the policy needs a person to promote

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
class Registered:
    """What `register` wrote."""

    version: str
    run_id: str

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)


@dataclass(frozen=True)
class VersionRecord:
    """The adapter contract: every tag tuneloop writes on a model version, and reads back.

    Built by `cycle.candidate_record`; no other module spells a tag key. `config_sha256` hashes the
    training-relevant sections only, so the same config gives the same hash on every machine.
    The last three fields are the version's state, filled in by `register`: `promotion` is the one
    tag that changes after registration (pending: passed, not yet decided; promoted: was champion
    at some time, the alias says whether it still is; refused, rolled back, orphaned; or the gate
    verdict of one not passed), `dossier` the URI of the promotion dossier on the run, and
    `registered_by` the registering process (host:pid), so `repair` knows when a pending
    version's promoter died.
    """

    base_model: str
    base_sha256: str
    tokenizer_sha256: str
    task: str
    labels: list[str]
    method: str
    method_config: dict
    quantization: dict
    libraries: dict[str, str]
    data_repo: str
    data_rev: str
    data_path: str
    data_sha256: dict
    config_sha256: str
    pipeline_run: str
    metrics: dict[str, float]
    gate: str  # one of GATE_VERDICTS
    gate_reasons: list[str]
    champion_version: str | None
    strategy: str = "fresh"  # how training started: fresh, continue or merge_then_adapt (train.strategy)
    parent_version: str = ""  # the version it started from (continue, merge_then_adapt)
    replay_sources: list = field(default_factory=list)  # rows replayed from earlier data: repo, rev, path, rows
    promotion: str = ""
    dossier: str = ""
    registered_by: str = ""

    STATE = ("promotion", "dossier", "registered_by")
    _JSON = ("labels", "method_config", "quantization", "data_sha256", "metrics", "gate_reasons", "replay_sources")
    _REQUIRED = ("base_model", "base_sha256", "tokenizer_sha256", "task", "labels", "method", "gate")

    def tags(self, state: bool = True) -> dict[str, str]:
        """The record as MLflow version tags (each value within MLflow's 5,000-character limit).

        Args:
            state: include the state fields (a version's tags do; a run's do not, as they never change there).
        """
        raw = asdict(self)
        for name in () if state else self.STATE:
            raw.pop(name)
        tags = {f"{TAG}version.{name}": value for name, value in raw.pop("libraries").items()}
        raw["champion_version"] = raw["champion_version"] or ""
        for key, value in raw.items():
            text = json.dumps(value) if key in self._JSON else str(value)
            if len(text) > 5000 and key == "gate_reasons":
                text = json.dumps([reason[:4000 // max(len(value), 1)] for reason in value])
            tags[TAG + key] = text
        return tags

    @staticmethod
    def key(name: str) -> str:
        """The tag key of one field (for the state fields that change after registration)."""
        return TAG + name

    @classmethod
    def state_of(cls, tags: dict[str, str]) -> dict[str, str]:
        """A version's state fields ("" when absent), read even where the contract is missing."""
        return {name: tags.get(cls.key(name), "") for name in cls.STATE}

    @classmethod
    def from_tags(cls, version: str, tags: dict[str, str]) -> "VersionRecord":
        """Read a version's record back.

        Raises:
            RegistryError: when the version lacks the contract's tags (it was not registered by tuneloop).
        """
        missing = [key for key in cls._REQUIRED if TAG + key not in tags]
        if missing:
            raise RegistryError(f"version {version} has no {', '.join(TAG + key for key in missing)} tag; "
                                "it was not registered by tuneloop, so it cannot be served or promoted")
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name == "libraries":
                values[name] = {key[len(TAG + "version."):]: value for key, value in tags.items() if key.startswith(TAG + "version.")}
                continue
            text = tags.get(TAG + name, "")
            if name not in cls._JSON:
                values[name] = text
            elif text.startswith(("[", "{")):
                values[name] = json.loads(text)
            elif name == "gate_reasons":  # versions registered before reasons were a list: one joined string
                values[name] = [text] if text else []
            elif name == "replay_sources":  # versions registered before refresh strategies: none
                values[name] = []
            else:
                values[name] = {}
        values["champion_version"] = values["champion_version"] or None
        values["strategy"] = values["strategy"] or "fresh"
        return cls(**values)


@dataclass(frozen=True)
class Candidate:
    """Everything the registry stores about one gated candidate."""

    adapter_dir: Path
    record: VersionRecord
    params: dict[str, Any]
    metrics: dict[str, float]
    reports: dict[str, dict]
    documents: dict[str, str] = field(default_factory=dict)  # artifact path -> text (the dossier)
    history: dict[str, list[float]] = field(default_factory=dict)  # metric -> its value at each training step
    files: dict[str, list[Path]] = field(default_factory=dict)  # artifact folder -> files logged into it (plots)

    @property
    def passed(self) -> bool:
        """Whether the gate let the candidate through (automatically or for a person to promote)."""
        return self.record.gate != "rejected"


@dataclass(frozen=True)
class Fetched:
    """A version's adapter, downloaded."""

    version: str
    adapter_dir: Path
    labels: list[str]
    record: VersionRecord
    params: dict[str, str]  # the run's params: the config it was trained with, as section.key


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
            f"({exc}); install it (PostgreSQL: pip install 'psycopg[binary]' for postgresql://, or psycopg2-binary with "
            "postgresql+psycopg2://; MySQL: pip install pymysql)"
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


def _by_name(name: str) -> str:
    """The search filter for one registered model (the config refuses quotes in model names)."""
    if any(quote in name for quote in "'\"`"):
        raise RegistryError(f"registry.model_name {name!r} contains a quote, which MLflow filters cannot hold; rename it")
    return f"name = '{name}'"


def _model_exists(client: Any, name: str) -> bool:
    return bool(client.search_registered_models(filter_string=_by_name(name)))


def _alias_version(client: Any, model: str, alias: str) -> Any | None:
    """The version behind an alias, or None (no such model, or the alias is not set)."""
    from mlflow.exceptions import MlflowException

    if not _model_exists(client, model):
        return None
    try:
        return client.get_model_version_by_alias(model, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # the alias is not set
            return None
        raise


def _record(version: Any) -> VersionRecord:
    return VersionRecord.from_tags(str(version.version), version.tags)


def _reader(cfg: RegistryConfig) -> Any | None:
    """A client for reading, after a bounded check of the store; None when the sqlite store does not exist yet."""
    if store.is_empty_sqlite(cfg):
        return None
    store.check_tracking(cfg, 5.0, False, _schema_head())
    with _translated(cfg):
        return _client(cfg)


def alias_of(cfg: RegistryConfig, alias: str) -> str | None:
    """The version number an alias points at, or None (reads only)."""
    client = _reader(cfg)
    if client is None:
        return None
    with _translated(cfg):
        version = _alias_version(client, cfg.model_name, alias)
    return str(version.version) if version else None


def champion_labels(cfg: RegistryConfig, task: str | None = None) -> list[str] | None:
    """Return the serving version's label set, or None when nothing serves, or it serves another
    task than `task` (then no label set carries over; reads only)."""
    client = _reader(cfg)
    if client is None:
        return None
    with _translated(cfg):
        version = _alias_version(client, cfg.model_name, CHAMPION)
    if version is None:
        return None
    record = _record(version)
    return record.labels if task is None or record.task == task else None


def _resolve(client: Any, cfg: RegistryConfig, ref: str) -> Any:
    """The version a reference names: an alias, or a version number."""
    from mlflow.exceptions import MlflowException

    if ref.isdigit():
        try:
            return client.get_model_version(cfg.model_name, ref)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        raise RegistryError(f"{cfg.model_name} has no version {ref}; `tuneloop registry status` lists the versions")
    if ref not in (CHAMPION, CHALLENGER):
        raise RegistryError(f"{ref!r} is neither a version number nor an alias; use champion, challenger or a number")
    version = _alias_version(client, cfg.model_name, ref)
    if version is None:
        raise RegistryError(f"{cfg.model_name} has no {ref} yet; run `tuneloop run` (or name a version number)")
    return version


def fetch(cfg: RegistryConfig, ref: str, dest: Path) -> Fetched:
    """Download the adapter of a version (`ref`: champion, challenger or a number) into `dest` (reads only).

    Raises:
        RegistryError: when the store is unreadable, the alias is unset, the version does not exist,
            or it was not registered by tuneloop.
    """
    client = _reader(cfg)
    if client is None:
        raise RegistryError(f"no registry at {cfg.tracking_uri} yet; run `tuneloop run` first")
    import mlflow.artifacts

    with _translated(cfg):
        version = _resolve(client, cfg, ref)
    record = _record(version)
    if dest.exists():
        shutil.rmtree(dest)  # no files left from an earlier version
    dest.mkdir(parents=True)
    with _translated(cfg):
        local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest), tracking_uri=cfg.tracking_uri)
        params = client.get_run(version.run_id).data.params if version.run_id else {}
    return Fetched(version=str(version.version), adapter_dir=Path(local), labels=record.labels, record=record, params=params)


def fetch_champion(cfg: RegistryConfig, dest: Path) -> Fetched | None:
    """Download the serving adapter into `dest`; None when nothing serves yet (reads only)."""
    return fetch(cfg, CHAMPION, dest) if alias_of(cfg, CHAMPION) is not None else None


def latest_version(cfg: RegistryConfig) -> str | None:
    """Return the newest version number of `registry.model_name`; None when there is no store or no version (reads only).

    Raises:
        RegistryError: when the store cannot be read, so "nothing registered" is never said without knowing.
    """
    client = _reader(cfg)
    if client is None:
        return None
    with _translated(cfg):
        if not client.search_registered_models(filter_string=_by_name(cfg.model_name)):
            return None
        versions = client.search_model_versions(_by_name(cfg.model_name))
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
        metrics += [Metric(k, float(v), now, step) for k, values in candidate.history.items()
                    for step, v in enumerate(values, start=1) if v is not None]  # None: a step fp16 skipped
        reports = {f"reports/{name}.json": json.dumps(report, indent=2) for name, report in candidate.reports.items()}
        reports.update(candidate.documents)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"candidate metrics or reports are not numbers/JSON ({exc}); nothing was registered") from exc
    params = [Param(k, str(v)[:6000]) for k, v in candidate.params.items()]
    return [metrics, params, [RunTag(k, v) for k, v in candidate.record.tags(state=False).items()]], reports


def _experiment_id(client: Any, cfg: RegistryConfig, name: str, folder: str = "") -> tuple[str, bool]:
    """The id of experiment `name`, and whether this call created it (artifacts under registry.artifact_root/`folder`).

    A tracking server places artifacts itself; a sqlite or file store puts them where the config says.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id, False
    if store.server_places_artifacts(cfg):
        return client.create_experiment(name), True
    root = cfg.artifact_root if "://" in cfg.artifact_root else Path(cfg.artifact_root).resolve().as_uri()
    return client.create_experiment(name, artifact_location=f"{root}/{folder}" if folder else root), True


def _write(client: Any, cfg: RegistryConfig, candidate: Candidate, run_name: str, written: _Written) -> Any:
    """Create the run, its artifacts and the version, recording each creation in `written` as it happens."""
    (metrics, params, tags), reports = _prepared(candidate)
    experiment_id, written.new_experiment = _experiment_id(client, cfg, cfg.experiment)
    experiment = client.get_experiment(experiment_id)
    local = store.local_path(experiment.artifact_location)
    written.artifact_floor = store.nearest_existing(local) if local else None
    written.run = client.create_run(experiment.experiment_id, run_name=run_name)
    run_id = written.run.info.run_id
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    for path, text in reports.items():
        client.log_text(run_id, text, path)
    for folder, paths in candidate.files.items():
        for path in paths:
            client.log_artifact(run_id, str(path), folder)
    # A fully fine-tuned model is registered as the model it is, not as an adapter.
    kind = "model" if methods.get(candidate.record.method).full else "adapter"
    client.log_artifacts(run_id, str(candidate.adapter_dir), kind)
    client.set_terminated(run_id)
    if not client.search_registered_models(filter_string=_by_name(cfg.model_name)):
        written.new_model = True
        client.create_registered_model(cfg.model_name, description="tuneloop models: PEFT adapters or fully "
                                                                   "fine-tuned weights (safetensors)")
    dossier = f"{written.run.info.artifact_uri}/dossier/dossier.html" if "dossier/dossier.html" in candidate.documents else ""
    record = replace(candidate.record, promotion="pending" if candidate.record.gate == "passed" else candidate.record.gate,
                     dossier=dossier, registered_by=ledger.owner())
    return client.create_model_version(
        cfg.model_name, source=f"{written.run.info.artifact_uri}/{kind}", run_id=run_id, tags=record.tags(),
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
    if client.search_registered_models(filter_string=_by_name(name)) and not client.search_model_versions(_by_name(name)):
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
            for version in client.search_model_versions(f"{_by_name(cfg.model_name)} and run_id = '{run_id}'"):
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
    gate = version.tags.get(VersionRecord.key("gate"))
    log.info("registered %s version %s (gate %s)", cfg.model_name, version.version, gate)
    return Registered(version=str(version.version), run_id=written.run.info.run_id)


class _Ledger:
    """The alias ledger (`tuneloop.ledger.Store`) on MLflow: claims are versions of `<model>.ledger`.

    A claim version points at the same source and run as the version it moves the alias to, since
    an MLflow server accepts only a source that belongs to a run.
    """

    def __init__(self, client: Any, cfg: RegistryConfig) -> None:
        self.client, self.cfg, self.model, self.name = client, cfg, cfg.model_name, cfg.model_name + LEDGER_SUFFIX

    def entries(self) -> list[ledger.Entry]:
        if not _model_exists(self.client, self.name):
            return []
        found = [ledger.Entry.from_tags(int(v.version), int(v.creation_timestamp), v.tags)
                 for v in self.client.search_model_versions(_by_name(self.name))]
        return sorted(found, key=lambda entry: entry.number)

    def append(self, entry: ledger.Entry) -> ledger.Entry:
        from mlflow.exceptions import MlflowException

        target = self.client.get_model_version(self.model, entry.to_version)
        if not _model_exists(self.client, self.name):
            try:
                self.client.create_registered_model(self.name, description=f"alias moves of {self.model} (tuneloop ledger)")
            except MlflowException as exc:  # a rival created it first
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        made = self.client.create_model_version(self.name, source=target.source, run_id=target.run_id, tags=entry.tags())
        return replace(entry, number=int(made.version), created_ms=int(made.creation_timestamp))

    def mark(self, number: int, status: str) -> None:
        self.client.set_model_version_tag(self.name, str(number), "status", status)

    def alias(self, alias: str) -> str | None:
        version = _alias_version(self.client, self.model, alias)
        return str(version.version) if version else None

    def point(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model, alias, version)

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self._server_offset_ms

    @functools.cached_property
    def _server_offset_ms(self) -> int:
        return store.server_clock_offset_ms(self.cfg)


def _writer(cfg: RegistryConfig) -> Any:
    store.check_tracking(cfg, 5.0, True, _schema_head())
    return _client(cfg)


def _actor(by: str) -> str:
    return by or f"{getpass.getuser()}@{socket.gethostname()}"


def _set_promotion(client: Any, cfg: RegistryConfig, number: str, state: str) -> None:
    client.set_model_version_tag(cfg.model_name, number, VersionRecord.key("promotion"), state)


def _claim(alias: str, to: str, kind: str, why: str, by: str, run: str, evidence: str) -> ledger.Entry:
    return ledger.Entry(number=0, alias=alias, from_version=None, to_version=to, head=0, kind=kind, actor=_actor(by),
                        reason=why[:2000], run=run, evidence=evidence, status=ledger.PENDING, created_ms=0)


def _promotable(client: Any, cfg: RegistryConfig, version: str) -> Any:
    target = _resolve(client, cfg, version)
    gate = _record(target).gate
    if gate not in ("passed", "manual"):
        raise RegistryError(f"version {version} of {cfg.model_name} did not pass the gate; only passed versions can be promoted")
    return target


def promote(cfg: RegistryConfig, version: str, expected_champion: str | None, why: str, by: str = "",
            run: str = "", lease: float = ledger.LEASE_SECONDS) -> str | None:
    """Make `version` champion if the champion is still `expected_champion`; return the version it replaced.

    Promoting the champion over itself moves nothing, writes nothing and returns None.

    A compare-and-set over the ledger (see `tuneloop.ledger`): of promoters racing for the same
    expected champion exactly one moves the alias; the others get a RegistryConflict and move nothing.

    Raises:
        RegistryConflict: when the champion is not (or stopped being) `expected_champion`.
        RegistryError: when the store is unreachable or the version did not pass the gate.
    """
    with _translated(cfg):
        client = _writer(cfg)
        target = _promotable(client, cfg, version)
        number = str(target.version)
        claim = _claim(CHAMPION, number, "promote", why, by, run, _record(target).dossier)
        ledger_store = _Ledger(client, cfg)
        if (expected_champion or None) == number and ledger_store.alias(CHAMPION) == number:
            log.info("version %s is already champion of %s; nothing was moved", number, cfg.model_name)
            return None  # a no-op, not a move from a version to itself (rollback would take that as history)
        try:
            ledger.move(ledger_store, claim, expected_champion or None, lease)
        except RegistryConflict:
            if ledger_store.alias(CHAMPION) != number:  # a retry of a promotion that won is not "refused"
                _set_promotion(client, cfg, number, "refused")
            raise
        _set_promotion(client, cfg, number, "promoted")
    log.info("champion of %s: %s -> %s", cfg.model_name, expected_champion or "none", number)
    return expected_champion or None


def check_promotable(cfg: RegistryConfig, version: str) -> str:
    """Return the version number `version` names, if it passed the gate (reads only).

    Raises:
        RegistryError: when there is no such version, or it did not pass the gate.
    """
    client = _reader(cfg)
    if client is None:
        raise RegistryError(f"no registry at {cfg.tracking_uri} yet; run `tuneloop run` first")
    with _translated(cfg):
        return str(_promotable(client, cfg, version).version)


def make_challenger(cfg: RegistryConfig, version: str, why: str, by: str = "", run: str = "") -> None:
    """Point `challenger` at a passed version that did not become champion (a lost race is logged, not raised)."""
    with _translated(cfg):
        client = _writer(cfg)
        target = _promotable(client, cfg, version)
        ledger_store = _Ledger(client, cfg)
        claim = _claim(CHALLENGER, str(target.version), "challenger", why, by, run, _record(target).dossier)
        try:
            ledger.move(ledger_store, claim, ledger_store.alias(CHALLENGER))
        except RegistryError as exc:
            log.warning("challenger not moved to %s: %s", version, exc)


def rollback_plan(cfg: RegistryConfig, to: str | None = None) -> tuple[str | None, str | None]:
    """Return (current champion, version a rollback would move it to); the target is None when there is nothing to do.

    Without `to`, the target is the champion before the current one. A rollback that already
    happened is not repeated: when the newest champion move is a rollback to the current champion,
    there is nothing to do (name `to` to go further back).

    Raises:
        RegistryError: when there is no champion, no earlier champion, or `to` is not a passed
            version on the same base model and tokenizer as the champion.
    """
    client = _reader(cfg)
    with _translated(cfg):
        current = _alias_version(client, cfg.model_name, CHAMPION) if client is not None else None
        if current is None:
            raise RegistryError(f"{cfg.model_name} has no champion to roll back; run `tuneloop run` first")
        number = str(current.version)
        # A move whose claimant died after pointing the alias is a move, settled or not.
        moves = [e for e in _Ledger(client, cfg).entries() if e.alias == CHAMPION and (
            e.status == ledger.DONE or (e.status == ledger.PENDING and e.to_version == number))]
        if to is None:
            if moves and moves[-1].kind == "rollback" and moves[-1].to_version == number:
                return number, None
            previous = next((m.from_version for m in reversed(moves) if m.to_version == number), None)
            if previous is None:
                raise RegistryError(f"champion version {number} has no earlier champion in the history; name one with --to VERSION")
            to = previous
        if to == number:
            return number, None
        target = _promotable(client, cfg, to)
        to = str(target.version)
        if to == number:
            return number, None
        mine, theirs = _record(current), _record(target)
        for key in ("base_sha256", "tokenizer_sha256", "task"):
            if getattr(mine, key) != getattr(theirs, key):
                raise RegistryError(
                    f"version {to} has {key} {getattr(theirs, key)[:12]} but champion {number} has {getattr(mine, key)[:12]}; "
                    "a rollback target must serve on the same base model, tokenizer and task"
                )
    return number, to


def rollback(cfg: RegistryConfig, why: str, to: str | None = None, by: str = "", expected: str | None = None) -> tuple[str, str | None]:
    """Move the champion back (see `rollback_plan`); return (from, to), with to None when nothing moved.

    Idempotent: a second call finds the rollback done and moves nothing. With `expected`, the
    rollback happens only if the champion is still that version (the plan a person confirmed).

    Raises:
        RegistryConflict: when the champion is not `expected`, or moved while rolling back.
    """
    current, target = rollback_plan(cfg, to)
    if expected is not None and current != expected:
        raise RegistryConflict(f"champion is version {current}, not {expected} as planned; nothing was moved "
                               "(run the rollback again to see the new plan)")
    if target is None:
        return current, None
    with _translated(cfg):
        client = _writer(cfg)
        evidence = _record(client.get_model_version(cfg.model_name, target)).dossier
        claim = _claim(CHAMPION, target, "rollback", why, by, "", evidence)
        ledger.move(_Ledger(client, cfg), claim, current)
        _set_promotion(client, cfg, current, "rolled back")
    log.info("champion of %s rolled back: %s -> %s", cfg.model_name, current, target)
    return current, target


def history(cfg: RegistryConfig) -> list[ledger.Entry]:
    """Every claim on the ledger, oldest first: completed moves (status done) and the attempts that lost."""
    client = _reader(cfg)
    if client is None:
        return []
    with _translated(cfg):
        return _Ledger(client, cfg).entries()


def champion_at(cfg: RegistryConfig, when: datetime) -> ledger.Entry | None:
    """The move that made the champion of time `when` (None when there was none then)."""
    return ledger.at(history(cfg), CHAMPION, int(when.timestamp() * 1000))


def last_good(cfg: RegistryConfig) -> str | None:
    """The version a rollback without --to would move the champion to (None when there is nothing to do)."""
    return rollback_plan(cfg)[1]


def repair(cfg: RegistryConfig, lease: float = ledger.LEASE_SECONDS) -> dict[str, list]:
    """Settle what crashed promotions left: pending claims whose process is gone or whose lease ran out,
    and passed versions left `pending` with no claim, the same way (marked `orphaned`; promote one
    by hand if wanted).
    """
    if store.is_empty_sqlite(cfg):
        return {"claims": [], "versions": []}
    with _translated(cfg):
        client = _writer(cfg)
        ledger_store = _Ledger(client, cfg)
        settled = ledger.resolve_orphans(ledger_store, ledger_store.entries(), lease)
        entries = ledger_store.entries()
        champion = ledger_store.alias(CHAMPION)
        live = {e.to_version for e in entries if e.status == ledger.PENDING}
        marked = []
        if _model_exists(client, cfg.model_name):
            for version in sorted(client.search_model_versions(_by_name(cfg.model_name)), key=lambda v: int(v.version)):
                # versions made outside tuneloop (the MLflow UI) carry no contract, and are never pending
                number, state = str(version.version), VersionRecord.state_of(version.tags)
                if state["promotion"] != "pending" or number in live:
                    continue
                age = ledger_store.now_ms() - int(version.creation_timestamp)
                if age < lease * 1000 and not ledger.gone(state["registered_by"], int(version.creation_timestamp)):
                    continue  # its promoter may still be on its way to the claim
                state = "promoted" if number == champion else "orphaned"
                _set_promotion(client, cfg, number, state)
                marked.append({"version": number, "promotion": state})
    return {"claims": [entry.to_dict() for entry in settled], "versions": marked}


def registered_by(cfg: RegistryConfig, run_name: str) -> tuple[str, VersionRecord] | None:
    """The version a pipeline run registered and its record, found by the name of the MLflow run the
    registration wrote (`run_name` is the submitter's own, without quotes); None when there is none."""
    client = _reader(cfg)
    if client is None:
        return None
    with _translated(cfg):
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            return None
        for run in client.search_runs([experiment.experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}'"):
            for version in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
                return str(version.version), _record(version)
    return None


def show(cfg: RegistryConfig, version: str) -> dict[str, Any]:
    """One version: its contract record, run metrics, aliases, promotion state, gate reasons and dossier."""
    client = _reader(cfg)
    if client is None:
        raise RegistryError(f"no registry at {cfg.tracking_uri} yet; run `tuneloop run` first")
    with _translated(cfg):
        found = _resolve(client, cfg, version)
        number = str(found.version)
        model = client.get_registered_model(cfg.model_name)
        metrics = client.get_run(found.run_id).data.metrics if found.run_id else {}
        moves = [e.to_dict() for e in _Ledger(client, cfg).entries() if number in (e.to_version, e.from_version)]
        record = _record(found)
    return {
        "model": cfg.model_name, "version": number, "record": asdict(record),
        "aliases": sorted(alias for alias, v in (model.aliases or {}).items() if str(v) == number),
        "promotion": record.promotion or None, "dossier": record.dossier or None, "run_id": found.run_id,
        "metrics": metrics, "moves": moves,
    }


def status(cfg: RegistryConfig) -> dict[str, Any]:
    """Return the registered versions (newest first) with aliases, gate verdicts and metrics, and the alias history."""
    client = _reader(cfg)
    empty = {"model": cfg.model_name, "versions": [], "history": []}
    if client is None:
        return empty
    with _translated(cfg):
        if not _model_exists(client, cfg.model_name):
            return empty
        model = client.get_registered_model(cfg.model_name)
        # search_model_versions leaves `aliases` empty; the registered model holds the mapping.
        aliases: dict[str, list[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        rows = []
        for version in client.search_model_versions(_by_name(cfg.model_name)):
            metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
            record = _record(version)
            head = tasks.REGISTRY[record.task].headline if record.task in tasks.REGISTRY else "macro_f1"
            rows.append({
                "version": str(version.version), "aliases": sorted(aliases.get(str(version.version), [])),
                "gate": record.gate, "promotion": record.promotion or None, "reasons": "; ".join(record.gate_reasons),
                "data_rev": record.data_rev, "method": record.method,
                "accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"),
                "champion_macro_f1": metrics.get("champion_macro_f1"), "created": version.creation_timestamp,
                "task": record.task, "metric": head, "score": metrics.get(head), "champion_score": metrics.get(f"champion_{head}"),
            })
        rows.sort(key=lambda row: int(row["version"]), reverse=True)
        moves = [e.to_dict() for e in ledger.history(_Ledger(client, cfg).entries())]
    return {"model": cfg.model_name, "versions": rows, "history": moves}


# --- the monitor's decisions: one run each in the monitor experiment -------------------------------

TICK_TAGS = ("model", "action", "wanted", "key", "at", "champion", "rollback_to", "outcome")




def record_tick(cfg: RegistryConfig, experiment: str, summary: dict[str, str], metrics: dict[str, float],
                documents: dict[str, str], files: dict[str, Path]) -> str:
    """Record one monitoring decision as a finished run of `experiment`; return the run id.

    Args:
        summary: the decision's fields in TICK_TAGS (strings), kept as tags so `tick_history` reads
            them in one search.
        metrics: numbers to chart across ticks (window rows, p-values, deltas).
        documents: artifact path -> text (the whole decision and signals as JSON).
        files: artifact folder -> local file (the drift report's HTML).
    """
    with _translated(cfg):
        client = _writer(cfg)
        experiment_id, _ = _experiment_id(client, cfg, experiment, folder=experiment)
        run_id = client.create_run(experiment_id, run_name=f"{summary['action']}@{summary['champion']}").info.run_id

        def write() -> None:  # the tags last: a run cut short has none, so `tick_history` never takes it for a decision
            for path, text in documents.items():
                client.log_text(run_id, text, path)
            for folder, path in files.items():
                client.log_artifact(run_id, str(path), folder)
            client.log_batch(run_id, metrics=_metric_list(metrics),
                             tags=_tag_list({f"{TAG}{key}": summary.get(key, "") for key in TICK_TAGS}))

        _finish_run(client, run_id, write)
    return run_id


def _finish_run(client: Any, run_id: str, write: Callable[[], None]) -> None:
    """Write a run's contents and end it FINISHED; a write that fails ends it FAILED and raises."""
    try:
        write()
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)


def _metric_list(metrics: dict[str, float]) -> list:
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    return [Metric(key, float(value), stamp, 0) for key, value in metrics.items()]


def _tag_list(tags: dict[str, str]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(key, value[:5000]) for key, value in tags.items()]


def set_tick_outcome(cfg: RegistryConfig, run_id: str, outcome: str) -> None:
    """Say on a decision's run what its action led to (the retrain's version and verdict, the rollback's move)."""
    with _translated(cfg):
        _writer(cfg).set_tag(run_id, f"{TAG}outcome", outcome[:5000])


def tick_history(cfg: RegistryConfig, experiment: str, since: datetime) -> list[dict[str, str]]:
    """The recorded decisions about `cfg.model_name` since `since`, oldest first, as their TICK_TAGS (reads only)."""
    client = _reader(cfg)
    if client is None:
        return []
    with _translated(cfg):
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return []
        runs = client.search_runs(
            [found.experiment_id], filter_string=f"attributes.start_time >= {int(since.timestamp() * 1000)}",
            max_results=10_000, order_by=["attributes.start_time ASC"],
        )
    ticks = [{key: run.data.tags.get(f"{TAG}{key}", "") for key in TICK_TAGS} | {"run_id": run.info.run_id} for run in runs]
    return [tick for tick in ticks if tick["model"] == cfg.model_name]


SWEEP_REPORT = "sweep/sweep.json"


def record_sweep(cfg: RegistryConfig, name: str, files: dict[str, Path], metrics: dict[str, float], params: dict[str, str]) -> str:
    """Record a sweep's report as a finished run of the experiment `<registry.experiment>-sweeps`; return its id.

    Args:
        name: the sweep's name (the run's name).
        files: the report's files (sweep.json, report.md, report.html, the plots), logged under sweep/.
        metrics: per-cell figures to chart (`<cell>.<figure>`).
        params: what the sweep compared (its axes, the reference, the metric).
    """
    with _translated(cfg):
        client = _writer(cfg)
        experiment = f"{cfg.experiment}-sweeps"
        experiment_id, _ = _experiment_id(client, cfg, experiment, folder=experiment)
        run_id = client.create_run(experiment_id, run_name=name, tags={f"{TAG}sweep": name}).info.run_id

        def write() -> None:
            for path in files.values():
                client.log_artifact(run_id, str(path), "sweep")
            client.log_batch(run_id, metrics=_metric_list(metrics),
                             params=[_param(key, value) for key, value in params.items()])

        _finish_run(client, run_id, write)
    return run_id


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, str(value)[:6000])


def sweep_report(cfg: RegistryConfig, run_id: str) -> dict:
    """The report (sweep.json) of a sweep's run.

    Raises:
        RegistryError: when the run does not exist or holds no sweep report.
    """
    client = _reader(cfg)
    if client is None:
        raise RegistryError(f"no registry at {cfg.tracking_uri} yet, so no sweep run {run_id!r}; run `tuneloop sweep` first")
    with _translated(cfg), tempfile.TemporaryDirectory() as scratch:
        try:
            run = client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001 (mlflow raises its own class for a missing run)
            raise RegistryError(f"no sweep run {run_id!r} in {cfg.tracking_uri} ({store.one_line(exc)}); pass the run id "
                                "`tuneloop sweep` printed, or the report's folder") from exc
        if f"{TAG}sweep" not in run.data.tags:
            raise RegistryError(f"run {run_id} is not a sweep's run; pass the run id `tuneloop sweep` printed")
        local = client.download_artifacts(run_id, SWEEP_REPORT, scratch)
        return json.loads(Path(local).read_text())
