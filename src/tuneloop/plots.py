"""The figures tuneloop draws (PNG, headless): the one module that imports matplotlib, on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use (~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training(result: Any, folder: Path) -> list[Path]:
    """The detectors' plots of one training run (a `TrainResult`), written beside its report: the
    train/dev loss gap per dev evaluation, and the singular values of each adapted module's update
    (LoRA-family methods). Returns the files written."""
    from tuneloop.training import PLOTS

    written = []
    if result.evaluations:
        written.append(_gap(result.evaluations, result.loss_curve, folder / PLOTS["gap"]))
    if result.rank_health:
        written.append(_spectrum(result.rank_health, folder / PLOTS["spectrum"]))
    return written


def _gap(evaluations: list[dict], curve: list[float], path: Path) -> Path:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    axes.plot(range(1, len(curve) + 1), curve, color="#c5ccd3", linewidth=0.8, label="train loss (each step)")
    steps = [e["step"] for e in evaluations]
    axes.plot(steps, [e["train_loss"] for e in evaluations], marker="o", color="#30638e", label="train loss (since last evaluation)")
    axes.plot(steps, [e["dev_loss"] for e in evaluations], marker="o", color="#d1495b", label="dev loss")
    axes.fill_between(steps, [e["train_loss"] for e in evaluations], [e["dev_loss"] for e in evaluations],
                      color="#d1495b", alpha=0.12, label="train/dev gap")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title("train vs dev loss")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _spectrum(health: dict[str, dict], path: Path) -> Path:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, module in health.items():
        values = module["values"]
        top = max(values, default=0.0) or 1.0
        axes.plot(range(1, len(values) + 1), [v / top for v in values], marker=".", linewidth=0.8, alpha=0.6)
    axes.set_yscale("log")
    axes.set_xlabel("singular value index")
    axes.set_ylabel("singular value / module's largest")
    axes.set_title(f"adapter update spectra ({len(health)} modules)")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
