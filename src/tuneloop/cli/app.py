"""The `tuneloop` entry point: wires the noun modules and turns errors into one line and exit 1."""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from tuneloop import cycle, registry, workspace
from tuneloop.cli import config as config_cli
from tuneloop.cli import data as data_cli
from tuneloop.cli import feedback as feedback_cli
from tuneloop.cli import monitor as monitor_cli
from tuneloop.cli import pipeline as pipeline_cli
from tuneloop.cli import predict as predict_cli
from tuneloop.cli import registry as registry_cli
from tuneloop.cli import serve as serve_cli
from tuneloop.cli import train as train_cli
from tuneloop.cli.context import CONFIG_HELP, config_for, data_rev
from tuneloop.errors import ConfigError, Interrupted, TuneloopError
from tuneloop.progress import configure_logging, quiet

app = typer.Typer(
    help="tuneloop: keep a PEFT fine-tuned model healthy — train, gate, promote, on KFP or a laptop.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
app.add_typer(config_cli.app, name="config")
app.add_typer(data_cli.app, name="data")
app.add_typer(registry_cli.app, name="registry")
app.add_typer(pipeline_cli.app, name="pipeline")
app.add_typer(feedback_cli.app, name="feedback")
app.command("train")(train_cli.train)
app.command("evaluate")(train_cli.evaluate)
app.command("gate")(train_cli.gate)
app.command("predict")(predict_cli.predict)
app.command("monitor")(monitor_cli.monitor)
app.command("serve")(serve_cli.serve)
_OPTIONS = {"verbose": False}


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every line the pipeline steps print."),
) -> None:
    _OPTIONS["verbose"] = verbose
    configure_logging(verbose)


@app.command("init")
def init(
    directory: Path = typer.Argument(..., help="Folder to create (new or empty)."),
    remote: Optional[Path] = typer.Option(None, "--remote", help="DVC remote folder (default: DIR/storage/dvc-remote)."),
) -> None:
    """Create a workspace: git + DVC with a local remote, an MLflow store, and a default config."""
    path = workspace.init(directory, remote)
    typer.echo(f"workspace ready: {path.parent}\nnext: tuneloop data add FILE --name train --config {path}")


@app.command("run")
def run(
    rev: Optional[str] = typer.Option(None, "--rev", help="Data revision to train on (default: data.rev)."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    wait: bool = typer.Option(False, "--wait", help="On a cluster, wait for the run to finish."),
) -> None:
    """Run the continuous-training pipeline once (locally, or submitted to runtime.host)."""
    from tuneloop.pipelines.launcher import launcher_for

    cfg = config_for(config)
    revision = data_rev(rev, cfg.data.rev)
    try:
        with tempfile.TemporaryDirectory() as scratch, quiet(_OPTIONS["verbose"]):  # fail here, before any step
            snapshot = cycle.run_preflight(cfg, revision, Path(scratch))
    except KeyboardInterrupt:
        raise Interrupted("interrupted during the preflight checks, before any step started; nothing was registered") from None
    launcher = launcher_for(cfg, verbose=_OPTIONS["verbose"], wait=wait)
    newest = registry.latest_version(cfg.registry)
    try:
        result = launcher.run(cfg, snapshot.rev)
    except Interrupted as exc:
        after = registry.latest_version(cfg.registry)
        told = "nothing was registered" if after == newest else f"version {after} was registered before the stop"
        raise Interrupted(f"{exc}; {told}") from None
    if result.decision is None:
        typer.echo(f"submitted run {result.run_id}: {result.state}")
        return
    if result.decision.get("manual"):
        verdict = f"passed, needs a person to promote it (challenger; `tuneloop registry promote {result.version}`)"
    elif result.decision["passed"]:
        verdict = "passed, now champion"
    else:
        verdict = "rejected, champion unchanged"
    typer.echo(f"version {result.version}: gate {verdict}: " + "; ".join(result.decision["reasons"]))


@app.command("sweep")
def sweep(
    target: str = typer.Argument(..., metavar="CONFIG | show", help="A sweep file (a config with a `sweep:` section), or `show`."),
    run: Optional[str] = typer.Argument(None, metavar="[RUN]", help="With show: the sweep's MLflow run id, or its report folder."),
    rev: Optional[str] = typer.Option(None, "--rev", help="Data revision every cell trains on (default: data.rev)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and estimate every cell, start none."),
    wait: bool = typer.Option(False, "--wait", help="On a cluster, wait for the sweep to finish."),
    config: Optional[Path] = typer.Option(None, "--config", help="With show: " + CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="With show: the whole report as JSON."),
) -> None:
    """Run a method x quantization x hyperparameter sweep and print its comparison table; `sweep show RUN` re-prints one."""
    from tuneloop.cli import sweep as sweep_cli

    if target == "show":
        if run is None:
            raise ConfigError("`tuneloop sweep show` needs the sweep's MLflow run id (printed by `tuneloop sweep`) or its report folder")
        sweep_cli.show(run, config, as_json)
        return
    if run is not None:
        raise ConfigError(f"unexpected argument {run!r}; run a sweep with `tuneloop sweep FILE`, or show one with `tuneloop sweep show RUN`")
    sweep_cli.run_sweep(Path(target), rev, dry_run, _OPTIONS["verbose"], wait)


@app.command("estimate")
def estimate(
    config: Path = typer.Argument(..., help="A config or a sweep file."),
    rev: Optional[str] = typer.Option(None, "--rev", help="Data revision to estimate on (default: data.rev)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=0,
                                        help="Warm-up optimizer steps timed per cell (default: sweep.warmup_steps, 5); 0: memory only."),
) -> None:
    """Predict each run's (or sweep cell's) peak memory and wall time before it starts."""
    from tuneloop.cli import sweep as sweep_cli

    sweep_cli.estimate(config, rev, steps, _OPTIONS["verbose"])


@app.command("demo")
def demo(
    directory: Path = typer.Option(Path("tuneloop-demo"), "--dir", help="Workspace folder to create."),
    rows: int = typer.Option(700, "--rows", min=650, help="Rows per synthetic dataset version."),
) -> None:
    """Run the whole loop offline on synthetic data: train, gate, serve, then drift -> retrain and degraded -> rollback."""
    from tuneloop.cli.demo import run_demo

    run_demo(directory, rows)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill` stops a run the way Ctrl-C does: steps cleaned up, one line said


def main() -> None:
    """Console entry point: a TuneloopError is one line and exit 1; an interruption exit 130."""
    debug = "--debug" in sys.argv
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()  # usage errors are typer's: a message and exit code 2
    except Interrupted as exc:
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        if debug:
            raise
        command = " ".join(arg for arg in sys.argv[1:3] if not arg.startswith("-"))
        typer.echo(f"error: Interrupted: `tuneloop {command}` stopped before it finished", err=True)
        sys.exit(130)
    except (TuneloopError, OSError) as exc:  # OSError: a disk or permission problem no check could foresee
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
if __name__ == "__main__":
    main()
