"""`tuneloop monitor`: run the monitor pipeline once, or on a schedule, against the traffic log."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import typer

from tuneloop import registry, tasks, traffic
from tuneloop.cli.context import CONFIG_HELP, config_for
from tuneloop.config import Config, duration_seconds
from tuneloop.errors import ConfigError, Interrupted, TuneloopError

MIN_EVERY = 60  # a tick scores drift and re-scores held-out rows: more often than a minute only queues ticks


def monitor(
    once: bool = typer.Option(False, "--once", help="Run one tick and exit."),
    every: Optional[str] = typer.Option(None, "--every", help="Run a tick every DURATION (e.g. 15m, 1h) until stopped."),
    log: Optional[Path] = typer.Option(None, "--log", help="Traffic log to watch (default: serve.log)."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    wait: bool = typer.Option(False, "--wait", help="On a cluster, wait for each tick to finish."),
) -> None:
    """Watch the champion: drift and degradation on its traffic, then ignore, retrain or roll back (the policy)."""
    from tuneloop.pipelines.launcher import launcher_for

    if once == (every is not None):
        raise ConfigError("pass --once for one tick, or --every DURATION (e.g. --every 15m) to keep watching")
    period = _period(every) if every is not None else 0
    cfg = config_for(config)
    tasks.require_labels(cfg.model.task, "tuneloop monitor")
    if cfg.runtime.mode == "local":
        log_path = log if log is not None else Path(cfg.serve.log)
        traffic.require_log(log_path)
    else:
        if log is None:
            raise ConfigError("on a cluster pass --log with the traffic log's path as the pipeline's pods see it "
                              "(a mounted volume), not this machine's serve.log")
        if cfg.policy.auto_retrain:
            raise ConfigError("a retrain commits new data to data.repo, which the monitor's pods cannot do with a git URL "
                              "yet; on a cluster set policy.auto_retrain: false (drift is still recorded, rollbacks "
                              "still happen), or run `tuneloop monitor` where data.repo is checked out")
        log_path = log
    if registry.alias_of(cfg.registry, registry.CHAMPION) is None:
        raise ConfigError(f"{cfg.registry.model_name} has no champion to monitor; run `tuneloop run` first")
    launcher = launcher_for(cfg, wait=wait)
    while True:
        started = time.monotonic()
        try:
            _tick(launcher, cfg, log_path)
        except Interrupted:
            raise
        except TuneloopError as exc:
            if once:
                raise
            typer.echo(f"error: {type(exc).__name__}: {exc} (next tick in {_span(period)})", err=True)
        if once:
            return
        try:
            time.sleep(max(0.0, period - (time.monotonic() - started)))
        except KeyboardInterrupt:
            typer.echo("monitor stopped between ticks")
            return


def _tick(launcher, cfg: Config, log_path: Path) -> None:
    result = launcher.monitor(cfg, str(log_path))
    if result.action is None:
        typer.echo(f"submitted monitor run {result.run_id}: {result.state}")
        return
    tick = registry.tick_history(cfg.registry, cfg.monitor.experiment, datetime.now(timezone.utc) - timedelta(hours=1))
    last = tick[-1] if tick else {}
    line = f"monitor: {result.action}"
    if last.get("key"):
        line += f" (champion {last['champion']}, key {last['key']}, run {last['run_id']})"
    if last.get("outcome"):
        line += f": {last['outcome']}"
    typer.echo(line)
    champion = registry.alias_of(cfg.registry, registry.CHAMPION)
    typer.echo(f"champion is version {champion}")


def _period(text: str) -> int:
    seconds = duration_seconds(text)
    if seconds is None:
        raise ConfigError(f"--every {text!r} is not a duration; write e.g. 90s, 15m, 6h or 1d")
    if seconds < MIN_EVERY:
        raise ConfigError(f"--every {text} is shorter than {MIN_EVERY}s; a tick takes longer than that, use --every 1m or more")
    return seconds


def _span(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds % 60 == 0 and seconds >= 60 else f"{seconds}s"
