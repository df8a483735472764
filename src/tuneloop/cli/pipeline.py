"""`tuneloop pipeline`: compile pipelines to KFP IR YAML; submit and schedule them on a Kubeflow Pipelines endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tuneloop.cli.context import CONFIG_HELP, config_for
from tuneloop.cli.output import show_json
from tuneloop.config import Config
from tuneloop.errors import ConfigError, PipelineError

app = typer.Typer(help="Kubeflow pipelines.", no_args_is_help=True)


@app.command("compile")
def compile_(
    output: Path = typer.Option(Path("continuous_training.yaml"), "--output", "-o", help="IR YAML file to write."),
    name: str = typer.Option("continuous-training", "--pipeline", help="continuous-training or monitor."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Compile a pipeline (continuous-training, or monitor) to KFP IR YAML, for the image and cluster settings in `runtime`."""
    if output.suffix not in (".yaml", ".yml") or output.is_dir():
        raise PipelineError(f"--output {str(output)!r} must be a file ending in .yaml or .yml; e.g. -o continuous_training.yaml")
    cfg = config_for(config)
    from tuneloop.pipelines.launcher import compile_pipeline

    typer.echo(f"compiled {name} for {cfg.runtime.image} -> {compile_pipeline(output, cfg, name)}")


def _cluster_config(config: Optional[Path], probe: bool = True) -> Config:
    """The config, checked for a cluster: an endpoint (answering, with `probe`), and stores the pods can reach."""
    from tuneloop.pipelines.launcher import check_cluster_config

    cfg = config_for(config)
    if not cfg.runtime.host:
        raise ConfigError("runtime.host is empty; set it to the KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888")
    check_cluster_config(cfg, probe)
    return cfg


@app.command("submit")
def submit(
    rev: str = typer.Option("HEAD", "--rev", help="Data revision the run trains on."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run's state; end with its version and gate decision."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be sent, and send nothing."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Upload continuous-training to runtime.host as a new version of that pipeline, and start one run of it."""
    from tuneloop.pipelines.launcher import ClusterLauncher

    cfg = _cluster_config(config, probe=not dry_run)
    launcher = ClusterLauncher(wait=wait, announce=typer.echo)
    if dry_run:
        show_json(launcher.plan(cfg, "continuous-training", {"data_rev": rev}))
        return
    result = launcher.run(cfg, rev)
    if result.decision is None:
        typer.echo(f"submitted run {result.run_id} as {result.log_path}; follow it with --wait or in the Kubeflow UI")
        return
    verdict = ("passed, needs a person to promote it" if result.decision["manual"] else "passed") if result.decision["passed"] \
        else "rejected: " + "; ".join(result.decision["reasons"])
    typer.echo(f"run {result.log_path} {result.state}: version {result.version}, gate {verdict}")


@app.command("schedule")
def schedule(
    cron: Optional[str] = typer.Option(None, "--cron", help="KFP cron, 6 fields with seconds first, e.g. '0 0 2 * * *'."),
    max_concurrency: int = typer.Option(1, "--max-concurrency", min=1, max=10, help="Most runs of it at once."),
    name: str = typer.Option("continuous-training", "--name", help="The recurring run's name."),
    list_: bool = typer.Option(False, "--list", help="List the recurring runs."),
    pause: bool = typer.Option(False, "--pause", help="Pause the recurring run --name."),
    resume: bool = typer.Option(False, "--resume", help="Resume the recurring run --name."),
    delete: bool = typer.Option(False, "--delete", help="Delete the recurring run --name."),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --cron: print what would be sent, and send nothing."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Register recurring training on a new version of continuous-training (catch-up off); or list, pause, resume, delete."""
    from tuneloop.pipelines import remote
    from tuneloop.pipelines.launcher import ClusterLauncher

    chosen = [on for on in (cron is not None, list_, pause, resume, delete) if on]
    if len(chosen) != 1:
        raise ConfigError("pass one of --cron CRON (register), --list, --pause, --resume or --delete")
    if cron is not None:
        remote.check_cron(cron)
    cfg = _cluster_config(config, probe=not dry_run)
    if dry_run:
        if cron is None:
            raise ConfigError("--dry-run goes with --cron")
        plan = ClusterLauncher().plan(cfg, "continuous-training", {})
        show_json({**plan, "recurring_run": name, "cron": cron, "max_concurrency": max_concurrency, "no_catchup": True})
        return
    client = remote.connect(cfg, remote.bearer_token(cfg.runtime.host))
    if cron is not None:
        uploaded = remote.publish(client, cfg, "continuous-training")
        made = remote.schedule(client, cfg, uploaded, name, cron, max_concurrency)
        typer.echo(f"scheduled {name} ({made}) on {cron!r}, at most {max_concurrency} at once, no catch-up")
        return
    if list_:
        for found in remote.recurring_runs(client, cfg):
            trigger = found.trigger.cron_schedule.cron if found.trigger and found.trigger.cron_schedule else "-"
            typer.echo(f"{found.display_name}  {found.recurring_run_id}  {found.status}  cron {trigger!r}  "
                       f"max {found.max_concurrency}")
        return
    found = remote.find_recurring_run(client, cfg, name)
    action, verb, said = ((client.disable_recurring_run, "pausing", "paused") if pause else
                          (client.enable_recurring_run, "resuming", "resumed") if resume else
                          (client.delete_recurring_run, "deleting", "deleted"))
    remote.call(cfg, f"{verb} recurring run {name!r}", lambda: action(found.recurring_run_id))
    typer.echo(f"{said} {name} ({found.recurring_run_id})")
