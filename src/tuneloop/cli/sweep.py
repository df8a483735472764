"""`tuneloop sweep CONFIG`, `tuneloop sweep show RUN` and `tuneloop estimate CONFIG`."""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

import typer

from tuneloop import sweep as sweeps
from tuneloop.cli.context import config_for, data_rev, resolve_config_path
from tuneloop.cli.output import show_json
from tuneloop.errors import ConfigError, DataError, TrainingError, TuneloopError
from tuneloop.progress import quiet


def _load(path: Path) -> sweeps.Sweep:
    """A sweep file's cells, or a plain config as its one cell (for `estimate`)."""
    from tuneloop.config import read_config_file

    data, _ = read_config_file(path)
    if isinstance(data, dict) and "sweep" in data:
        return sweeps.load_sweep(path)
    cfg = config_for(path)
    return sweeps.Sweep(sweeps.SweepSpec(), cfg, [sweeps.Cell("the run", {}, cfg)])


def _named(cell: sweeps.Cell, exc: Exception) -> TuneloopError:
    """A cell's failure during the pre-flight as one line naming the cell, of the error's own class
    when it is tuneloop's."""
    kind = type(exc) if isinstance(exc, TuneloopError) else TrainingError
    return kind(" ".join(f"sweep cell {cell.name}: {exc}".split()))


@contextlib.contextmanager
def _quietly(verbose: bool) -> Iterator[None]:
    """tuneloop's INFO lines held back (`progress.quiet`), and transformers' deprecation notes met inside peft."""
    with quiet(verbose), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def preflight_cells(sweep: sweeps.Sweep, rev: str, scratch: Path, warmup_steps: int, verbose: bool,
                    to_stdout: bool = False, use_cache: bool = True) -> tuple[list[sweeps.Cell], str]:
    """Validate the data once and every cell's model and method, predict every cell's peak memory
    (refusing, all at once, those over the limit), then time each cell's warm-up steps; print each
    estimate. Return the cells with their estimates and the data's resolved revision. Nothing
    trains here but the warm-up steps, and only once every cell is known to fit.

    With `use_cache`, a cell whose result is cached for these rows is said to be, and not timed.
    """
    from tuneloop import cycle, data, estimate, preflight
    from tuneloop.modeling import pick_device

    say = functools.partial(typer.echo, err=not to_stdout)
    with quiet(verbose):
        snapshot = cycle.run_preflight(sweep.base, rev, scratch / "snapshot")
        for cell in sweep.cells:
            try:
                preflight.check_model(cell.config, pick_device(cell.config.runtime.device))
            except TuneloopError as exc:
                raise _named(cell, exc) from None
    _, rows, _ = data.load_snapshot(scratch / "snapshot")
    start = estimate.baseline()
    memory = {}
    for cell in sweep.cells:
        try:
            with _quietly(verbose):
                memory[cell.name] = estimate.memory_estimate(cell.config, rows, start)
        except Exception as exc:  # noqa: BLE001 (named with its cell, as one line)
            raise _named(cell, exc) from exc
    device = pick_device(sweep.base.runtime.device)
    limit, where = sweep.spec.memory_limit_mb, "limit (sweep.memory_limit_mb)"
    if limit is None and sweep.base.runtime.mode == "local":  # a cluster's pods have their own limits
        limit, where = estimate.device_limit_mb(device), f"of this machine's {'GPU' if device.startswith('cuda') else 'memory'}"
    if limit is not None:
        estimate.over_limit(memory, limit, where)
    say(f"estimating {len(sweep.cells)} cell(s) on {len(rows)} training rows"
        + (f" (memory limit {limit:,.0f} MB)" if limit else "") + ("" if warmup_steps else "; no warm-up, so no time estimate"))
    cache = Path(sweep.spec.cache_dir) if use_cache and sweep.spec.cache_dir else None
    estimated = []
    for cell in sweep.cells:
        if cache is not None and sweeps.cached_result(cache, sweeps.cache_key(cell, scratch / "snapshot")) is not None:
            say(f"  {cell.name}: cached (the same rows and settings trained before)")
            estimated.append(cell)
            continue
        found = memory[cell.name]
        if warmup_steps:
            try:
                with _quietly(verbose):
                    found = estimate.with_time(found, cell.config, rows, start, warmup_steps)
            except Exception as exc:  # noqa: BLE001 (named with its cell, as one line)
                raise _named(cell, exc) from exc
        say(f"  {cell.name}: {estimate.describe(found)}")
        estimated.append(replace(cell, estimate=found.to_dict()))
    return estimated, snapshot.rev


def _cluster_cache(cfg, cache_dir: str) -> str:
    """The cache folder the pods can share: under the workspace volume's mount, else none (said)."""
    k8s = cfg.runtime.kubernetes
    if k8s.workspace_pvc and cache_dir and Path(cache_dir).is_relative_to(k8s.workspace_path):
        return cache_dir
    typer.echo(f"sweep.cache_dir {cache_dir!r} is not under runtime.kubernetes.workspace_path "
               f"({k8s.workspace_path}, the workspace volume): on the cluster every cell trains, none is cached", err=True)
    return ""


def run_sweep(
    config: Path, rev: Optional[str], dry_run: bool, verbose: bool, wait: bool,
) -> None:
    """Validate, estimate, run the sweep pipeline, print the report's table."""
    from tuneloop.pipelines.launcher import ClusterLauncher, LocalLauncher, check_cluster_config

    sweep = sweeps.load_sweep(config)
    cfg = sweep.base
    revision = data_rev(rev, cfg.data.rev)
    typer.echo(f"sweep {sweep.spec.name}: {len(sweep.cells)} cells: " + "; ".join(c.name for c in sweep.cells), err=True)
    if cfg.runtime.mode == "kfp":
        check_cluster_config(cfg, probe=not dry_run)
    cluster = cfg.runtime.mode == "kfp"
    cache_dir = _cluster_cache(cfg, sweep.spec.cache_dir) if cluster else sweep.spec.cache_dir
    with tempfile.TemporaryDirectory() as scratch:
        cells, resolved = preflight_cells(sweep, revision, Path(scratch), sweep.spec.warmup_steps, verbose,
                                          use_cache=not cluster)
    if dry_run:
        typer.echo("dry run: no cell was started", err=True)
        return
    arguments = {"cells": [c.to_json() for c in cells], "name": sweep.spec.name,
                 "axes": json.dumps(sweep.spec.axes), "data_rev": resolved, "cache_dir": cache_dir}
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


def estimate(config: Path, rev: Optional[str], steps: Optional[int], verbose: bool) -> None:
    """Print each cell's (or the run's) predicted peak memory and time (`steps`: default sweep.warmup_steps)."""
    sweep = _load(config)
    steps = sweep.spec.warmup_steps if steps is None else steps
    with tempfile.TemporaryDirectory() as scratch:
        preflight_cells(sweep, data_rev(rev, sweep.base.data.rev), Path(scratch), steps, verbose, to_stdout=True,
                        use_cache=False)
