"""`tuneloop registry`: what is registered, which version serves, and every alias move."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from tuneloop import registry
from tuneloop.cli.context import CONFIG_HELP, config_for
from tuneloop.cli.output import show_json, show_table

app = typer.Typer(help="The MLflow model registry.", no_args_is_help=True)


@app.command("status")
def status(
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show versions (newest first) with aliases, gate verdicts and metrics, and the alias history."""
    cfg = config_for(config)
    state = registry.status(cfg.registry)
    if as_json:
        show_json(state)
        return
    typer.echo(f"model {state['model']} at {cfg.registry.tracking_uri}")
    if not state["versions"]:
        typer.echo("no versions registered yet; run `tuneloop run`")
        return
    for row in state["versions"]:
        row["created"] = datetime.fromtimestamp(row["created"] / 1000).strftime("%Y-%m-%d %H:%M")
        row["data_rev"] = (row["data_rev"] or "")[:8]
    show_table(state["versions"], ["version", "aliases", "gate", "accuracy", "macro_f1", "champion_macro_f1",
                                   "data_rev", "created", "reasons"], {"reasons": 70})
    if state["audit"]:
        typer.echo("\nalias moves:")
        show_table(state["audit"], ["at", "alias", "from", "to", "by", "why"], {"why": 60, "at": 19})
