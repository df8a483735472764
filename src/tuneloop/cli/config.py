"""`tuneloop config`: the schema, and validation of a config file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tuneloop.cli.output import show_json
from tuneloop import modeling, preflight
from tuneloop.config import chart_values_schema, config_problems, json_schema, parse_config, read_config_file
from tuneloop.errors import ConfigError

app = typer.Typer(help="Inspect and check configuration.", no_args_is_help=True)


@app.command("schema")
def schema(
    chart: Optional[Path] = typer.Option(None, "--chart", help="Regenerate this Helm chart's values.schema.json instead."),
) -> None:
    """Print the JSON schema of the config tree, or write it into a chart's values schema."""
    if chart is None:
        show_json(json_schema())
        return
    path = chart / "values.schema.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found; pass the chart's folder, e.g. --chart charts/tuneloop")
    path.write_text(json.dumps(chart_values_schema(json.loads(path.read_text())), indent=2) + "\n")
    typer.echo(f"wrote {path}")


@app.command("validate")
def validate(
    path: Path = typer.Argument(..., help="Config file to check."),
    model: bool = typer.Option(True, "--model/--no-model",
                               help="Also check the method against the base model (its layers, positions, storage)."),
) -> None:
    """Report every problem in a config file (key, value, fix); exit 1 if there is any."""
    data, root = read_config_file(path)
    problems = config_problems(data, root)
    for problem in problems:  # one line each, in the form every other failing command uses
        typer.echo(f"error: ConfigError: {path}: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    if model:  # loads the architecture only (no weights); a failure is one line and exit 1
        cfg = parse_config(data, root)
        # As the configured device: a config for a GPU cluster is checked on a laptop without one.
        device = "cuda" if cfg.runtime.device == "cuda" else modeling.pick_device(cfg.runtime.device)
        method = preflight.resolved_method(cfg, preflight.check_model(cfg, device))
        typer.echo(f"{path}: valid; method {json.dumps(method.model_dump(mode='json'))}")
        return
    typer.echo(f"{path}: valid")
