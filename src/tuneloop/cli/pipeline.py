"""`tuneloop pipeline`: compile pipelines to KFP IR YAML for a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tuneloop.cli.context import CONFIG_HELP, config_for
from tuneloop.errors import PipelineError

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
