"""The model registry (MLflow): the only module that imports `mlflow`.

Contract:
- A model version is an adapter folder (safetensors + metadata), never a copy of the base model.
- Every candidate that reaches the gate is registered, so its evidence is kept: a passing one gets
  `tuneloop.gate=passed` and the `champion` alias; a rejected one gets `tuneloop.gate=rejected`
  with the reasons and no alias. Nothing is registered for data that fails validation.
- The alias moves in `promote`, after the run, artifacts and version tags exist, and only if the
  champion is still the one the candidate was gated against (checked just before the move; two
  promoters racing against one shared server are not yet excluded). The audit record, a
  registered-model tag `tuneloop.audit.<utc time>` holding who, when, from, to and why, is
  written before the alias, so the alias is the last write and never moves unrecorded.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import shutil
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from tuneloop.config import RegistryConfig
from tuneloop.errors import RegistryError

log = logging.getLogger(__name__)

CHAMPION = "champion"
TAG = "tuneloop."
AUDIT_PREFIX = TAG + "audit."


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
    """Turn MLflow's exceptions into one RegistryError that names the store and the fix."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise RegistryError(f"registry at {cfg.tracking_uri} failed: {exc.message}; check registry.tracking_uri") from exc


def _is_empty_sqlite(cfg: RegistryConfig) -> bool:
    prefix = "sqlite:///"
    return cfg.tracking_uri.startswith(prefix) and not Path(cfg.tracking_uri[len(prefix):]).exists()


def _client(cfg: RegistryConfig) -> Any:
    # Adapters are a few hundred KB: a per-file download bar is noise in step logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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


def champion_labels(cfg: RegistryConfig) -> list[str] | None:
    """Return the serving version's label set, or None when nothing serves (reads only)."""
    if _is_empty_sqlite(cfg):
        return None
    with _translated(cfg):
        version = _champion_version(_client(cfg), cfg)
    return _labels(version) if version else None


def fetch_champion(cfg: RegistryConfig, dest: Path) -> Champion | None:
    """Download the serving adapter into `dest`; None when nothing serves yet (reads only)."""
    if _is_empty_sqlite(cfg):
        return None
    import mlflow.artifacts

    with _translated(cfg):
        version = _champion_version(_client(cfg), cfg)
        if version is None:
            return None
        if dest.exists():
            shutil.rmtree(dest)  # no files left from an earlier champion
        dest.mkdir(parents=True)
        local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest), tracking_uri=cfg.tracking_uri)
    return Champion(version=str(version.version), adapter_dir=Path(local), labels=_labels(version))


def _experiment_id(client: Any, cfg: RegistryConfig) -> str:
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    if not cfg.tracking_uri.startswith(("sqlite:", "file:")) and "://" in cfg.tracking_uri:
        return client.create_experiment(cfg.experiment)  # a tracking server decides where artifacts live
    artifact_root = cfg.artifact_root if "://" in cfg.artifact_root else Path(cfg.artifact_root).resolve().as_uri()
    return client.create_experiment(cfg.experiment, artifact_location=artifact_root)


def _log_run(client: Any, cfg: RegistryConfig, candidate: Candidate, run_name: str) -> Any:
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(_experiment_id(client, cfg), run_name=run_name)
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in candidate.metrics.items()],
        params=[Param(k, str(v)[:6000]) for k, v in candidate.params.items()],
        tags=[RunTag(k, v) for k, v in candidate.tags.items()],
    )
    for name, report in candidate.reports.items():
        client.log_dict(run.info.run_id, report, f"reports/{name}.json")
    client.log_artifacts(run.info.run_id, str(candidate.adapter_dir), "adapter")
    client.set_terminated(run.info.run_id)
    return run


def register(cfg: RegistryConfig, candidate: Candidate, run_name: str) -> Registered:
    """Log the candidate's run and register its adapter as a version tagged with the gate verdict.

    Moves no alias: promotion is its own step, taken only on the pipeline's passing branch.

    Raises:
        RegistryError: when the registry cannot be written.
    """
    client = _client(cfg)
    with _translated(cfg):
        run = _log_run(client, cfg, candidate, run_name)
        if not client.search_registered_models(filter_string=f"name = '{cfg.model_name}'"):
            client.create_registered_model(cfg.model_name, description="tuneloop adapters (PEFT, safetensors)")
        tags = {**candidate.tags, TAG + "gate": "passed" if candidate.passed else "rejected",
                TAG + "gate_reasons": candidate.reason[:5000]}
        version = client.create_model_version(
            cfg.model_name, source=f"{run.info.artifact_uri}/adapter", run_id=run.info.run_id, tags=tags,
        )
    log.info("registered %s version %s (gate %s)", cfg.model_name, version.version, tags[TAG + "gate"])
    return Registered(version=str(version.version), run_id=run.info.run_id)


def promote(cfg: RegistryConfig, version: str, expected_champion: str | None, why: str, by: str) -> str | None:
    """Move the champion alias to `version`; return the version it replaced.

    The move happens only if the champion is still `expected_champion`, the version the candidate
    was gated against; the alias is the last write, after its audit record.

    Raises:
        RegistryError: when the version was not passed by the gate, or the champion moved meanwhile.
    """
    client = _client(cfg)
    with _translated(cfg):
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
    if _is_empty_sqlite(cfg):
        return {"model": cfg.model_name, "versions": [], "audit": []}
    with _translated(cfg):
        client = _client(cfg)
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
