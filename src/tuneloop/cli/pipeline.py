"""`tuneloop pipeline`: compile pipelines to KFP IR YAML for a cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from tuneloop.errors import PipelineError

app = typer.Typer(help="Kubeflow pipelines.", no_args_is_help=True)


@app.command("compile")
def compile_(
    output: Path = typer.Option(Path("continuous_training.yaml"), "--output", "-o", help="IR YAML file to write."),
    image: Optional[str] = typer.Option(None, "--image", help="Image every step runs in (default: the release image)."),
    name: str = typer.Option("continuous-training", "--pipeline", help="continuous-training or monitor."),
) -> None:
    """Compile a pipeline (continuous-training, or monitor) to KFP IR YAML."""
    if output.suffix not in (".yaml", ".yml") or output.is_dir():
        raise PipelineError(f"--output {str(output)!r} must be a file ending in .yaml or .yml; e.g. -o continuous_training.yaml")
    if image is not None and (not image.strip() or any(c.isspace() for c in image)):
        raise PipelineError(f"--image {image!r} must be an image reference without spaces, e.g. registry.example.com/tuneloop:0.1.0")
    if image:
        os.environ["TUNELOOP_IMAGE"] = image  # read when the components are first imported, just below
    from tuneloop.pipelines.launcher import compile_pipeline

    typer.echo(f"compiled {name} -> {compile_pipeline(output, name)}")
