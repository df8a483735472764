"""`tuneloop train`, `evaluate`, `gate`: the training steps one at a time (what dvc.yaml runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tuneloop import cycle
from tuneloop.cli.context import CONFIG_HELP, config_for
from tuneloop.errors import DataError
from tuneloop.evaluation import EvalReport
from tuneloop.training import ADAPTER_DIR

SNAPSHOT = typer.Option(Path("outputs/snapshot"), "--snapshot", help="Snapshot folder from `data validate`.")
TRAINED = typer.Option(Path("outputs/trained"), "--trained", help="Folder from `train`.")
CONFIG = typer.Option(None, "--config", help=CONFIG_HELP)


def train(
    snapshot: Path = SNAPSHOT,
    out: Path = typer.Option(Path("outputs/trained"), "--out", help="Folder to write adapter/, checkpoints/, train.json."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Train an adapter on a snapshot (progress is logged); write adapter/, checkpoints/, train.json."""
    result = cycle.train_step(config_for(config), snapshot, out)
    typer.echo(
        f"trained {out / 'adapter'}: best epoch {result.best_epoch}/{result.epochs_run}, dev {'token ' if not result.labels else ''}accuracy "
        f"{result.dev_accuracy:.4f}, {result.trainable_params:,} trainable params, {result.wall_seconds:.0f}s"
    )
    for finding in result.findings:  # the detectors' findings, one line each
        typer.echo(f"finding ({finding['kind']}): {finding['message']}")


def evaluate(
    snapshot: Path = SNAPSHOT, trained: Path = TRAINED,
    out: Path = typer.Option(Path("outputs/scores.json"), "--out", help="Scores file to write."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Score the trained adapter and the current champion on the snapshot's held-out rows."""
    if not (trained / ADAPTER_DIR).is_dir():
        raise DataError(f"{trained} holds no trained adapter; create it with `tuneloop train --out {trained}`")
    result = cycle.evaluate_step(config_for(config), snapshot, trained / ADAPTER_DIR, out.parent / "evaluate-work")
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    def shown(report: EvalReport) -> str:
        return ", ".join(f"{name} {value:.4f}" for name, value in report.metrics.items())

    champion = f"; champion v{result.champion_version} {shown(result.champion)}" if result.champion else ""
    typer.echo(f"candidate {shown(result.candidate)}{champion}")


def gate(
    scores: Path = typer.Option(Path("outputs/scores.json"), "--scores", help="Scores file from `evaluate`."),
    out: Path = typer.Option(Path("outputs/decision.json"), "--out", help="Decision file to write."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Apply the gate to a scores file; write the decision (exit 0 whether it passes or not)."""
    if not scores.is_file():
        raise DataError(f"scores file {str(scores)!r} not found; create it with `tuneloop evaluate --out {scores}`")
    decision = cycle.gate_step(config_for(config), cycle.Evaluation.load(scores))
    decision.save(out)
    typer.echo(f"gate {'passed' if decision.passed else 'rejected'}: " + "; ".join(decision.reasons))
