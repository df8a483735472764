"""Kubeflow Pipelines over its API: upload a pipeline as a named version, then run or schedule that version.

Every call goes through `kfp.Client`. The endpoint is probed first with one plain request (kfp's own
constructor retries a failing health check for half a minute), and every error the API answers with
becomes one PipelineError line naming the status, the endpoint and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tuneloop.config import Config
from tuneloop.errors import ConfigError, PipelineError

TOKEN_ENV = "TUNELOOP_KFP_TOKEN"
POD_TOKEN = Path("/var/run/secrets/kubeflow/pipelines/token")  # where the chart projects the pipelines token
FINISHED = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "ERROR")
POLL_SECONDS = 10.0  # between two reads of a followed run's state
_FIXES = {
    401: "the endpoint wants a token: set TUNELOOP_KFP_TOKEN, run where the pipelines token is mounted, or log in with kubectl",
    403: "the token is not allowed there: check the profile (runtime.namespace) and the account's rights",
    404: "check runtime.host: it must be the KFP API server (e.g. http://ml-pipeline.kubeflow:8888), not the UI",
}


@dataclass(frozen=True)
class Uploaded:
    """A pipeline version on the endpoint."""

    pipeline: str
    pipeline_id: str
    version: str
    version_id: str


def bearer_token(host: str) -> str | None:
    """The token to present: $TUNELOOP_KFP_TOKEN, else the pod's pipelines token, else (to an https
    endpoint only, never in clear text) the kubeconfig user's token."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    if POD_TOKEN.is_file():
        return POD_TOKEN.read_text().strip()
    if not host.startswith("https://"):
        return None
    try:
        from kubernetes import config as kube

        api = kube.new_client_from_config()
    except Exception:  # no kubeconfig, or one without a usable user: the endpoint may not need a token
        return None
    header = api.configuration.api_key.get("authorization", "")
    return header.removeprefix("Bearer ").strip() or None


def connect(cfg: Config, token: str | None) -> Any:
    """A kfp.Client for runtime.host, after one plain health check that fails in one line.

    Raises:
        PipelineError: the endpoint is unreachable or answers the health check with an error.
    """
    import kfp

    host = cfg.runtime.host.rstrip("/")
    request = urllib.request.Request(f"{host}/apis/v2beta1/healthz")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as exc:
        raise _answered(cfg, exc.code, exc.reason, _message(exc.read().decode("utf-8", "replace")), "the health check") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(f"runtime.host {cfg.runtime.host!r} does not answer ({reason}); check the KFP endpoint and "
                            "your network") from None
    return kfp.Client(host=host, existing_token=token, namespace=cfg.runtime.namespace)


def call(cfg: Config, what: str, action: Callable[[], Any]) -> Any:
    """Run one API call; turn an error answer or a lost connection into one PipelineError line."""
    import kfp_server_api

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # kfp prints UI links for every object it creates
            return action()
    except kfp_server_api.ApiException as exc:
        raise _answered(cfg, exc.status, exc.reason, _message(exc.body), what) from None
    except ValueError as exc:  # kfp's own refusals, e.g. two pipelines of one name
        raise PipelineError(f"KFP at {cfg.runtime.host}: {what} failed: {exc}") from None
    except Exception as exc:  # urllib3 raises its own connection errors, not ApiException
        if "MaxRetryError" in type(exc).__name__ or isinstance(exc, (ConnectionError, OSError)):
            raise PipelineError(f"runtime.host {cfg.runtime.host!r} stopped answering during {what}; retry") from None
        raise


def _message(body: str | None) -> str:
    """The error message in an answer's body: a JSON object's `message`, a JSON string, or the text."""
    try:
        parsed = json.loads(body or "")
    except ValueError:
        return (body or "").strip()[:200]
    return str(parsed.get("message", "")) if isinstance(parsed, dict) else str(parsed)[:200]


def _answered(cfg: Config, status: int, reason: str, message: str, what: str) -> PipelineError:
    fix = _FIXES.get(status, "the KFP API server failed; see its logs and retry" if status >= 500 else "see the message")
    said = f"{status} {reason}" + (f" ({message})" if message else "")
    return PipelineError(f"KFP at {cfg.runtime.host} answered {said} to {what}; {fix}")


def _compiled(cfg: Config, name: str, folder: Path, parallelism: int = 1) -> tuple[Path, str, str]:
    """Compile pipeline `name` for cfg into `folder`; return the file, its version name and its sha256.
    The IR's digest names the version: the same pipeline for the same settings is one version, however often sent."""
    from tuneloop.pipelines.launcher import compile_pipeline

    path = compile_pipeline(folder / f"{name}.yaml", cfg, name, parallelism)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return path, f"{name}-{digest[:12]}", digest


def describe(cfg: Config, name: str, parallelism: int = 1) -> tuple[str, str]:
    """The version name and IR sha256 that `publish` would upload (for --dry-run)."""
    with tempfile.TemporaryDirectory(prefix="tuneloop-ir-") as folder:
        _, version, digest = _compiled(cfg, name, Path(folder), parallelism)
    return version, digest


def publish(client: Any, cfg: Config, name: str, parallelism: int = 1) -> Uploaded:
    """Compile pipeline `name` for cfg and make it a version of the pipeline of that name on the endpoint
    (`parallelism`: a sweep's cells at once)."""
    with tempfile.TemporaryDirectory(prefix="tuneloop-ir-") as folder:
        path, version, _ = _compiled(cfg, name, Path(folder), parallelism)
        return upload(client, cfg, name, path, version)


def _by_name(name: str) -> str:
    """A KFP list filter for one display name (operation 1 is EQUALS)."""
    return json.dumps({"predicates": [{"operation": 1, "key": "display_name", "stringValue": name}]})


def upload(client: Any, cfg: Config, name: str, path: Path, version: str) -> Uploaded:
    """Make `path` version `version` of the pipeline called `name`: created the first time, reused after."""
    pipeline_id = call(cfg, f"looking up pipeline {name!r}", lambda: client.get_pipeline_id(name))
    if pipeline_id is None:
        created = call(cfg, f"creating pipeline {name!r}", lambda: client.upload_pipeline(
            str(path), pipeline_name=name, description="tuneloop: train, gate and promote a PEFT model"))
        pipeline_id = created.pipeline_id
    found = call(cfg, f"looking up version {version!r}", lambda: client.list_pipeline_versions(
        pipeline_id, page_size=1, filter=_by_name(version))).pipeline_versions or []
    if found:
        return Uploaded(name, pipeline_id, version, found[0].pipeline_version_id)
    made = call(cfg, f"uploading version {version!r}", lambda: client.upload_pipeline_version(
        str(path), pipeline_version_name=version, pipeline_id=pipeline_id))
    return Uploaded(name, pipeline_id, version, made.pipeline_version_id)


def experiment_id(client: Any, cfg: Config) -> str:
    """The id of the KFP experiment named like the MLflow experiment (created when missing)."""
    name = cfg.registry.experiment
    return call(cfg, f"finding experiment {name!r}",
                lambda: client.create_experiment(name, namespace=cfg.runtime.namespace)).experiment_id


def run_name(pipeline: str) -> str:
    """A run's display name, also the name of the MLflow run its registration writes (how --wait finds it)."""
    return f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def start_run(client: Any, cfg: Config, uploaded: Uploaded, name: str, parameters: dict[str, str]) -> str:
    """Start one run of the uploaded version; return its id."""
    experiment = experiment_id(client, cfg)
    started = call(cfg, f"starting run {name!r}", lambda: client.run_pipeline(
        experiment, job_name=name, params=parameters, pipeline_id=uploaded.pipeline_id,
        version_id=uploaded.version_id, enable_caching=False))
    return started.run_id


def wait(client: Any, cfg: Config, run_id: str, report: Callable[[str], None]) -> str:
    """Poll the run until it finishes, reporting each state it enters; return the final state.

    kfp's own wait_for_run_completion never ends on a cancelled run; this ends on every final state.
    """
    seen = None
    while True:
        state = str(call(cfg, f"reading run {run_id}", lambda: client.get_run(run_id)).state).upper()
        if state != seen:
            report(state)
            seen = state
        if state in FINISHED:
            return state
        time.sleep(POLL_SECONDS)


def check_cron(cron: str) -> str:
    """KFP reads a 6-field cron (seconds first); refuse anything else before it reaches the endpoint."""
    fields = cron.split()
    if len(fields) != 6 or not all(re.fullmatch(r"[\d*?/,LW#A-Za-z-]+", f) for f in fields):
        raise ConfigError(f"--cron {cron!r} has {len(fields)} fields; KFP reads 6, seconds first "
                          "(e.g. '0 0 2 * * *' for 02:00 every day)")
    return cron


def recurring_runs(client: Any, cfg: Config) -> list[Any]:
    """Every recurring run in the experiment."""
    experiment = experiment_id(client, cfg)
    found, token = [], ""
    while True:
        page = call(cfg, "listing recurring runs", lambda: client.list_recurring_runs(
            experiment_id=experiment, page_size=100, page_token=token))
        found += page.recurring_runs or []
        token = page.next_page_token or ""
        if not token:
            return found


def schedule(client: Any, cfg: Config, uploaded: Uploaded, name: str, cron: str, max_concurrency: int) -> str:
    """Register recurring run `name` on the uploaded version (replacing one of that name); return its id.

    Catch-up is off: a paused or late schedule starts one run when it resumes, not one per missed slot.
    """
    experiment = experiment_id(client, cfg)
    old = [found.recurring_run_id for found in recurring_runs(client, cfg) if found.display_name == name]
    made = call(cfg, f"creating recurring run {name!r}", lambda: client.create_recurring_run(
        experiment, name, cron_expression=cron, max_concurrency=max_concurrency, no_catchup=True,
        params={"config": cfg.to_json()}, pipeline_id=uploaded.pipeline_id, version_id=uploaded.version_id,
        enable_caching=False))
    for run_id in old:  # only once the new one exists: a failed creation leaves the old schedule running
        call(cfg, f"removing the previous recurring run {name!r} ({run_id})", lambda: client.delete_recurring_run(run_id))
    return made.recurring_run_id


def find_recurring_run(client: Any, cfg: Config, name: str) -> Any:
    """The recurring run called `name`.

    Raises:
        PipelineError: when there is none.
    """
    runs = recurring_runs(client, cfg)
    for found in runs:
        if found.display_name == name:
            return found
    names = ", ".join(sorted(r.display_name for r in runs)) or "none"
    raise PipelineError(f"no recurring run named {name!r} in experiment {cfg.registry.experiment!r} (there: {names}); "
                        "see `tuneloop pipeline schedule --list`")
