"""Launch pipelines: one interface, two implementations (kfp.local subprocesses, or a KFP cluster).

The CLI and, later, the monitor call `launcher_for(cfg).run(...)` and never care which one runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, TextIO

from tuneloop import errors, progress
from tuneloop.config import Config
from tuneloop.errors import ConfigError, Interrupted, PipelineError

# What kfp.local prints when it starts a step (the step's own error comes as a record, not as log text).
_TASK_START = re.compile(r"Executing task \S*?'([\w-]+)'")
_STOP_GRACE_SECONDS = 60  # a step cleaning up after Ctrl-C ends its MLflow run and deletes partial writes


@dataclass(frozen=True)
class RunResult:
    """What a launched continuous-training run reported."""

    run_id: str
    state: str
    version: str | None = None
    decision: dict | None = None
    log_path: str | None = None
    action: str | None = None  # a monitoring tick's decision


class Launcher(Protocol):
    """Runs the continuous-training pipeline for a config and a data revision, and the monitor pipeline on a log."""

    def run(self, cfg: Config, data_rev: str) -> RunResult: ...

    def monitor(self, cfg: Config, log_path: str) -> RunResult: ...


class _StepOutput(io.TextIOBase):
    """Everything the steps print goes to a log file; the console sees tuneloop's progress lines."""

    def __init__(self, log: TextIO, console: TextIO, verbose: bool):
        self.log, self.console, self.verbose, self.partial = log, console, verbose, ""
        self.step = ""  # the step running now, from kfp.local's "Executing task" line

    def write(self, text: str) -> int:
        self.log.write(text)
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if self.verbose or progress.is_progress_line(line):  # the CLI says a step's error itself, once
                self.console.write(line + "\n")
            if started := _TASK_START.search(line):
                self.step = started.group(1)
                if not self.verbose:  # verbose shows kfp's own line
                    self.console.write(f"{time.strftime('%H:%M:%S')} tuneloop.pipeline step {self.step} started\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()


class LocalLauncher:
    """Runs the pipeline with kfp.local's SubprocessRunner: every step a process, no cluster."""

    def __init__(self, pipeline_root: str, verbose: bool = False):
        self.pipeline_root, self.verbose = Path(pipeline_root), verbose

    def run(self, cfg: Config, data_rev: str) -> RunResult:
        """Run one cycle to completion; raise the step's own error class when a step fails."""
        run_id, output, log_path = self._run(build_pipeline("continuous-training", cfg, cluster=False), "ct", config=cfg.to_json(),
                                             data_rev=data_rev)
        outcome = json.loads(output)
        return RunResult(run_id=run_id, state="SUCCEEDED", version=outcome["version"],
                         decision=outcome["decision"], log_path=str(log_path))

    def sweep(self, cfg: Config, arguments: dict[str, object], parallelism: int = 1) -> dict:
        """Run a sweep to completion (`arguments`: the sweep pipeline's); return its {"run_id", "folder", "failed"}."""
        run_id, output, log_path = self._run(build_pipeline("sweep", cfg, cluster=False, parallelism=parallelism), "sweep",
                                             config=cfg.to_json(), **arguments)
        return {**json.loads(output), "log": str(log_path), "pipeline_run": run_id}

    def monitor(self, cfg: Config, log_path: str) -> RunResult:
        """Run one monitoring tick to completion; `action` is what the policy decided."""
        run_id, action, log_file = self._run(build_pipeline("monitor", cfg, cluster=False), "monitor", config=cfg.to_json(),
                                             log_path=log_path)
        return RunResult(run_id=run_id, state="SUCCEEDED", action=action, log_path=str(log_file))

    def _run(self, pipeline: Callable, prefix: str, **arguments: object) -> tuple[str, str, Path]:
        """Run a pipeline in this process's kfp.local runner; return its run id, output and step log."""
        from kfp import local

        self.pipeline_root.mkdir(parents=True, exist_ok=True)
        run_id = time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
        log_path = self.pipeline_root / f"{run_id}.log"
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(self.pipeline_root))
        # The local runner warns that the cluster image and resource requests do not apply to it;
        # that is expected here (the steps run in this environment), so keep the console clean.
        warnings.filterwarnings("ignore", message=".*(non-Python base image|no effect in the current local runner)")
        with open(log_path, "w", encoding="utf-8") as log, tempfile.TemporaryDirectory() as records, \
                _environment(progress.ERRORS_ENV, records):  # the steps inherit it: a failing one writes its error there
            output = _StepOutput(log, sys.stderr, self.verbose)
            try:
                with contextlib.redirect_stdout(output):
                    task = pipeline(**arguments)
            except RuntimeError as exc:
                raise _step_error(output.step, progress.last_error_record(Path(records)), log_path) from exc
            except KeyboardInterrupt:
                _stop_steps()
                raise Interrupted(f"interrupted during step {output.step or 'start-up'} (log: {log_path})") from None
        return run_id, task.output, log_path


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _step_error(step: str, record: dict[str, str] | None, log_path: Path) -> errors.TuneloopError:
    """The failed step's own error, from the record it wrote: its class when it is tuneloop's, else a
    PipelineError naming it."""
    where = f"(step {step or '?'}; log: {log_path})"
    if record is None:
        return PipelineError(f"step {step or '?'} failed without a Python error; see the log {log_path}")
    name, message = record["class"], record["message"]
    kind = getattr(errors, name.removeprefix("tuneloop.errors."), None) if name.startswith("tuneloop.errors.") else None
    if isinstance(kind, type) and issubclass(kind, errors.TuneloopError):
        return kind(f"{message} {where}")
    return PipelineError(f"step {step or '?'} failed: {name}: {message} {where}")


def _stop_steps() -> None:
    """Stop the step processes still running after Ctrl-C, giving each time to clean up.

    A terminal's Ctrl-C reaches the steps too; `kill -INT` of the CLI alone does not. Either way,
    each step gets one SIGINT (a step's cleanup ignores a second one) and time to end its MLflow
    run, before anything is killed, so no run is left RUNNING.
    """
    import psutil

    steps = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(steps, timeout=1.0)  # those the terminal interrupted are exiting
    for step in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            step.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(alive, timeout=_STOP_GRACE_SECONDS)
    for step in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            step.kill()


class ClusterLauncher:
    """Submits a pipeline to runtime.host: uploaded as a new named version of that pipeline, then run."""

    def __init__(self, wait: bool = False, announce: Callable[[str], None] | None = None):
        self.wait = wait
        self.announce = announce or (lambda line: print(line, file=sys.stderr))

    def run(self, cfg: Config, data_rev: str) -> RunResult:
        """Submit one training cycle; with `wait`, follow it and read its version and verdict back from the registry."""
        return self._submit(cfg, "continuous-training", {"data_rev": data_rev})

    def monitor(self, cfg: Config, log_path: str) -> RunResult:
        """Submit one monitoring tick (`log_path` as the pods see it)."""
        return self._submit(cfg, "monitor", {"log_path": log_path})

    def sweep(self, cfg: Config, arguments: dict[str, object], parallelism: int = 1) -> dict:
        """Submit a sweep (`arguments`: the sweep pipeline's); with `wait`, follow it to its end."""
        result = self._submit(cfg, "sweep", arguments, parallelism)
        return {"pipeline_run": result.run_id, "state": result.state, "run_name": result.log_path}

    def plan(self, cfg: Config, name: str, parameters: dict[str, str]) -> dict:
        """What a submission would send, sending nothing (`--dry-run`)."""
        from tuneloop.pipelines import remote

        version, digest = remote.describe(cfg, name)
        config = cfg.to_json()
        return {"endpoint": cfg.runtime.host, "namespace": cfg.runtime.namespace, "pipeline": name, "version": version,
                "ir_sha256": digest, "image": cfg.runtime.image, "experiment": cfg.registry.experiment,
                "run": remote.run_name(name),
                "parameters": {**parameters, "config": f"<the validated config as JSON, {len(config)} characters>"}}

    def _submit(self, cfg: Config, name: str, parameters: dict[str, object], parallelism: int = 1) -> RunResult:
        from tuneloop import registry
        from tuneloop.pipelines import remote

        client = remote.connect(cfg, remote.bearer_token(cfg.runtime.host))
        uploaded = remote.publish(client, cfg, name, parallelism)
        run_name = remote.run_name(name)
        arguments = {"config": cfg.to_json(), **parameters}
        if name == "continuous-training":
            arguments["run_name"] = run_name  # the registration's MLflow run takes this name: --wait finds it
        run_id = remote.start_run(client, cfg, uploaded, run_name, arguments)
        if not self.wait:
            return RunResult(run_id=run_id, state="SUBMITTED", log_path=run_name)
        state = remote.wait(client, cfg, run_id, lambda s: self.announce(f"{time.strftime('%H:%M:%S')} run {run_name}: {s}"))
        if state != "SUCCEEDED":
            raise PipelineError(f"run {run_name} ({run_id}) ended {state}; see its logs in the Kubeflow UI at {cfg.runtime.host}")
        if name != "continuous-training":
            return RunResult(run_id=run_id, state=state, log_path=run_name)
        found = registry.registered_by(cfg.registry, run_name)
        if found is None:
            raise PipelineError(f"run {run_name} succeeded but registered no version in {cfg.registry.tracking_uri}; "
                                "check that the pods and this machine use the same registry.tracking_uri")
        version, record = found
        decision = {"passed": record.gate != "rejected", "reasons": record.gate_reasons, "manual": record.gate == "manual"}
        return RunResult(run_id=run_id, state=state, version=version, decision=decision, log_path=run_name)


def launcher_for(cfg: Config, verbose: bool = False, wait: bool = False) -> Launcher:
    """Pick the launcher for `runtime.mode`.

    Raises:
        PipelineError: when mode is kfp and no host is configured.
    """
    if cfg.runtime.mode == "local":
        return LocalLauncher(cfg.runtime.pipeline_root, verbose)
    check_cluster_config(cfg)
    return ClusterLauncher(wait)


def check_cluster_config(cfg: Config, probe: bool = True) -> None:
    """Refuse a config whose stores only exist on this machine (pods could not reach them), or (with
    `probe`) whose KFP endpoint does not answer.

    Raises:
        ConfigError: naming the key to change.
        PipelineError: when runtime.host does not accept a connection within 5 s.
    """
    if cfg.registry.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in cfg.registry.tracking_uri:
        raise ConfigError(f"registry.tracking_uri {cfg.registry.tracking_uri!r} is local to this machine; "
                          "on a cluster use the MLflow server's http(s) URI")
    if "://" not in cfg.data.repo and ":" not in cfg.data.repo.split("/")[0]:
        raise ConfigError(f"data.repo {cfg.data.repo!r} is a local folder; on a cluster use the data repo's git URL")
    if not probe:
        return
    url = urllib.parse.urlsplit(cfg.runtime.host)
    try:  # kfp.Client retries an unreachable host for minutes; a plain connect answers in seconds
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as exc:
        raise PipelineError(f"runtime.host {cfg.runtime.host!r} does not answer ({exc}); check the KFP endpoint and your network") from exc


PIPELINES = ("continuous-training", "monitor", "sweep")


def build_pipeline(name: str, cfg: Config, cluster: bool = True, parallelism: int = 1) -> Callable:
    """The pipeline called `name`, its steps in `runtime.image` and, for a cluster, with the pod
    settings of `runtime.kubernetes` (`parallelism`: the sweep's cells at once).

    Raises:
        ConfigError: for a name that is not one of PIPELINES.
    """
    from tuneloop.pipelines.continuous_training import continuous_training
    from tuneloop.pipelines.monitor import monitor
    from tuneloop.pipelines.steps import Steps
    from tuneloop.pipelines.sweep import sweep

    builders = dict(zip(PIPELINES, (continuous_training, monitor, lambda step: sweep(step, parallelism))))
    if name not in builders:
        raise ConfigError(f"no pipeline named {name!r}; choose one of {', '.join(PIPELINES)}")
    return builders[name](Steps(cfg.runtime, cluster))


def compile_pipeline(path: Path, cfg: Config, name: str = "continuous-training", parallelism: int = 1) -> Path:
    """Compile a pipeline (continuous-training, monitor or sweep) for `cfg`'s cluster settings to KFP IR YAML at `path`."""
    from kfp import compiler

    pipeline = build_pipeline(name, cfg, parallelism=parallelism)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(path))
    return path
