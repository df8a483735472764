"""`tuneloop data`: track datasets in the workspace, and validate + freeze a revision."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from tuneloop import cycle, data
from tuneloop.cli.context import CONFIG_HELP, config_for, resolve_config_path
from tuneloop.cli.output import show_json, show_table
from tuneloop.config import load_config

app = typer.Typer(help="Versioned datasets (git + DVC).", no_args_is_help=True)


@app.command("add")
def add(
    file: Path = typer.Argument(..., help="CSV, TSV or JSONL file with the task's two columns (text/label, source/target, prompt/response)."),
    name: str = typer.Option(..., "--name", help="Dataset name; stored as data/<name>.<ext>."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Track a data file with DVC, commit it, push it to the remote, and print the revision."""
    path = resolve_config_path(config)
    cfg = load_config(path)
    # a target's length in tokens is checked by `data validate`, which has the base model's tokenizer
    version = data.add_dataset(path.parent, file, name, cfg.data, cycle.validation_rules(cfg, count_tokens=False))
    if as_json:
        show_json(asdict(version))
    else:
        show_table([asdict(version)], ["path", "rev", "rows", "sha256"], {"sha256": 16})


@app.command("validate")
def validate(
    rev: Optional[str] = typer.Option(None, "--rev", help="Git revision (default: data.rev)."),
    out: Path = typer.Option(Path("outputs/snapshot"), "--out", help="Folder for the frozen snapshot."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Read the data at a revision, validate it against the champion, freeze it as a snapshot."""
    cfg = config_for(config)
    snapshot = cycle.validate_step(cfg, rev or cfg.data.rev, out)
    typer.echo(f"valid: {snapshot.train_rows} train / {snapshot.held_out_rows} held-out rows at {snapshot.rev[:8]} -> {out}")
