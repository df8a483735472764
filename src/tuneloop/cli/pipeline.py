"""`tuneloop pipeline`: compile pipelines to KFP IR YAML for a cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Kubeflow pipelines.", no_args_is_help=True)


@app.command("compile")
def compile_(
    output: Path = typer.Option(Path("continuous_training.yaml"), "--output", "-o", help="IR YAML file to write."),
    image: Optional[str] = typer.Option(None, "--image", help="Image every step runs in (default: the release image)."),
) -> None:
    """Compile the continuous-training pipeline to KFP IR YAML."""
    if image:
        os.environ["TUNELOOP_IMAGE"] = image  # read when the components are first imported, just below
    from tuneloop.pipelines.launcher import compile_pipeline

    typer.echo(f"compiled continuous-training -> {compile_pipeline(output)}")
