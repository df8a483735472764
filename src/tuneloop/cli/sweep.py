"""`tuneloop sweep CONFIG`, `tuneloop sweep show RUN` and `tuneloop estimate CONFIG`."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from tuneloop import sweep as sweeps
from tuneloop.cli.context import config_for, resolve_config_path
from tuneloop.cli.output import show_json
from tuneloop.errors import ConfigError, DataError
from tuneloop.progress import quiet


def _rev(rev: Optional[str], default: str) -> str:
    if rev is not None and not rev.strip():
        raise ConfigError(f"--rev {rev!r} is empty; pass a commit, tag or branch, or leave --rev out to use data.rev")
    return default if rev is None else rev


def _load(path: Path) -> sweeps.Sweep:
    """A sweep file's cells, or a plain config as its one cell (for `estimate`)."""
    from tuneloop.config import read_config_file

    data, _ = read_config_file(path)
    if isinstance(data, dict) and "sweep" in data:
        return sweeps.load_sweep(path)
    cfg = config_for(path)
    return sweeps.Sweep(sweeps.SweepSpec(), cfg, [sweeps.Cell("the run", {}, cfg)])


def preflight_cells(sweep: sweeps.Sweep, rev: str, scratch: Path, warmup_steps: int, verbose: bool,
                    to_stdout: bool = False) -> tuple[list[sweeps.Cell], str]:
    """Validate the data once and every cell's model and method, then estimate each cell (refusing one
    that would not fit the memory limit); print each estimate. Return the cells with their estimates
    and the data's resolved revision. Nothing starts training here but the warm-up steps."""
    from tuneloop import cycle, data, estimate, preflight
    from tuneloop.modeling import pick_device

    with quiet(verbose):
        snapshot = cycle.run_preflight(sweep.base, rev, scratch / "snapshot")
        for cell in sweep.cells:
            try:
                preflight.check_model(cell.config, pick_device(cell.config.runtime.device))
            except Exception as exc:  # a TuneloopError from the check, named with its cell
                raise type(exc)(f"sweep cell {cell.name}: {exc}") from None
    _, rows, _ = data.load_snapshot(scratch / "snapshot")
    limit = sweep.spec.memory_limit_mb or estimate.machine_limit_mb()
    start = estimate.baseline()
    typer.echo(f"estimating {len(sweep.cells)} cell(s) on {len(rows)} training rows (memory limit {limit:,.0f} MB"
               f"{'' if warmup_steps else '; no warm-up, so no time estimate'})", err=True)
    estimated = []
    for cell in sweep.cells:
        if sweeps.cached_result(cell, scratch / "snapshot", Path(sweep.spec.cache_dir)) is not None:
            typer.echo(f"  {cell.name}: cached (the same rows and settings trained before)", err=not to_stdout)
            estimated.append(cell)
            continue
        with quiet(verbose):
            found = estimate.estimate(cell.config, rows, start, warmup_steps, limit, f"sweep cell {cell.name}")
        typer.echo(f"  {cell.name}: {estimate.describe(found)}", err=not to_stdout)
        estimated.append(replace(cell, estimate=found.to_dict()))
    return estimated, snapshot.rev


def run_sweep(
    config: Path, rev: Optional[str], dry_run: bool, verbose: bool, wait: bool,
) -> None:
    """Validate, estimate, run the sweep pipeline, print the report's table."""
    from tuneloop.pipelines.launcher import ClusterLauncher, LocalLauncher, check_cluster_config

    sweep = sweeps.load_sweep(config)
    cfg = sweep.base
    data_rev = _rev(rev, cfg.data.rev)
    typer.echo(f"sweep {sweep.spec.name}: {len(sweep.cells)} cells: " + "; ".join(c.name for c in sweep.cells), err=True)
    if cfg.runtime.mode == "kfp":
        check_cluster_config(cfg, probe=not dry_run)
    with tempfile.TemporaryDirectory() as scratch:
        cells, resolved = preflight_cells(sweep, data_rev, Path(scratch), sweep.spec.warmup_steps, verbose)
    if dry_run:
        typer.echo("dry run: no cell was started", err=True)
        return
    arguments = {"cells": [c.to_json() for c in cells], "name": sweep.spec.name,
                 "axes": json.dumps(sweep.spec.axes), "data_rev": resolved, "cache_dir": sweep.spec.cache_dir}
    if cfg.runtime.mode == "kfp":
        outcome = ClusterLauncher(wait).sweep(cfg, arguments, sweep.spec.parallelism)
        typer.echo(f"submitted sweep run {outcome['run_name']} ({outcome['pipeline_run']}): {outcome['state']}")
        return
    outcome = LocalLauncher(cfg.runtime.pipeline_root, verbose).sweep(cfg, arguments, sweep.spec.parallelism)
    from tuneloop.sweep_report import REPORT_JSON, text_table

    report = json.loads((Path(outcome["folder"]) / REPORT_JSON).read_text())
    typer.echo(text_table(report), nl=False)
    typer.echo(f"report: {Path(outcome['folder']) / 'report.html'} (MLflow run {outcome['run_id']})")
    if outcome["failed"]:
        typer.echo(f"{len(outcome['failed'])} cell(s) failed: {', '.join(outcome['failed'])}; their errors are in the table",
                   err=True)


def show(run: str, config: Optional[Path], as_json: bool) -> None:
    """Re-print a sweep's table from its MLflow run id, or from a report folder or sweep.json."""
    from tuneloop import registry
    from tuneloop.sweep_report import REPORT_JSON, text_table

    path = Path(run)
    if path.is_dir() or path.is_file():
        file = path / REPORT_JSON if path.is_dir() else path
        try:
            report = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{file} is not a sweep report ({exc}); pass a sweep's MLflow run id or its report folder") from exc
    else:
        report = registry.sweep_report(_load(resolve_config_path(config)).base.registry, run)
    if as_json:
        show_json(report)
    else:
        typer.echo(text_table(report), nl=False)


def estimate(config: Path, rev: Optional[str], steps: int, verbose: bool) -> None:
    """Print each cell's (or the run's) predicted peak memory and time."""
    sweep = _load(config)
    with tempfile.TemporaryDirectory() as scratch:
        preflight_cells(sweep, _rev(rev, sweep.base.data.rev), Path(scratch), steps, verbose, to_stdout=True)
