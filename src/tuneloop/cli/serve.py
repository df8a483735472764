"""`tuneloop serve`: the HTTP predictor for a registry alias (see `tuneloop.serving`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tuneloop import modeling, registry, serving, tasks
from tuneloop.cli.context import CONFIG_HELP, config_for
from tuneloop.errors import ConfigError, DataError


def serve(
    alias: Optional[str] = typer.Option(None, "--alias", help="champion or challenger (default: serve.alias)."),
    host: Optional[str] = typer.Option(None, "--host", help="Interface to listen on (default: serve.host)."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="Port (default: serve.port)."),
    log: Optional[Path] = typer.Option(None, "--log", help="Traffic log, a .jsonl file (default: serve.log)."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Serve a registry alias over HTTP (POST /predict), log every request, follow the alias; SIGTERM drains."""
    cfg = config_for(config)
    tasks.require_labels(cfg.model.task, "tuneloop serve")
    if alias is not None and alias not in (registry.CHAMPION, registry.CHALLENGER):
        raise ConfigError(f"--alias {alias!r} is not an alias; use champion or challenger")
    overrides = {key: value for key, value in (("alias", alias), ("host", host), ("port", port),
                                                ("log", str(log.resolve()) if log else None)) if value is not None}
    settings = cfg.serve.model_copy(update=overrides)
    device = modeling.pick_device(cfg.runtime.device)
    _make_log_folder(Path(settings.log))
    service = serving.Service(settings, cfg.registry, cfg.model.base, device, announce=typer.echo)  # checks the log
    try:
        service.alias_version()  # an unset alias or an unreachable store fails here, before the port is taken
        sock = serving.bind(settings.host, settings.port)
    except BaseException:
        service.close(settings.drain_timeout)
        raise

    def started(version: str) -> None:
        typer.echo(f"serving version {version} of {cfg.registry.model_name} at http://{settings.host}:{settings.port} "
                   f"(alias {settings.alias}), log: {settings.log}")

    lost = serving.run(service, sock, started)  # closes the service: log flushed, whatever happened
    if lost:
        raise DataError(f"stopped, but {lost} traffic row(s) were not written to {settings.log} within "
                        f"serve.drain_timeout={settings.drain_timeout}s; raise serve.drain_timeout")
    typer.echo(f"stopped: every request answered and logged to {settings.log}")


def _make_log_folder(log: Path) -> None:
    """Create the log's folder when missing (the default is traffic/ beside the config, which `init` does not make).

    Only for a .jsonl name: a wrong name is refused by `traffic.check_log` without creating anything.
    """
    if log.suffix.lower() != ".jsonl" or log.parent.exists():
        return
    try:
        log.parent.mkdir(parents=True)
    except OSError as exc:
        raise DataError(f"traffic log {str(log)!r}: its folder cannot be created ({exc.strerror}); "
                        "create it, or choose another path with serve.log or --log") from None
