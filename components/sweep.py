"""Components of the sweep pipeline: one cell (train and score, or its cached result), then the report."""

from typing import List

from kfp.dsl import Artifact, Dataset, Input, Output


def sweep_cell(cell: str, snapshot: Input[Dataset], cache_dir: str, result: Output[Artifact]) -> str:
    """Run one cell (`cell`: `sweep.Cell.to_json`); a failure is a failed result, not a failed step.
    Returns the result as JSON (`sweep.CellResult`)."""
    import json
    from pathlib import Path

    from tuneloop.progress import start_step
    from tuneloop.sweep import Cell, run_cell

    start_step()
    outcome = run_cell(Cell.from_json(cell), Path(snapshot.path), Path(result.path), Path(cache_dir) if cache_dir else None)
    result.metadata.update(status=outcome.status, cached=outcome.cached)
    return json.dumps(outcome.to_dict())


def sweep_report(config: str, name: str, axes: str, results: List[str], report: Output[Artifact]) -> str:
    """Write the sweep's report (table, HTML, plots) into `report` and onto an MLflow run; return
    {"run_id", "folder", "failed"} as JSON."""
    import json
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.progress import start_step
    from tuneloop.sweep import CellResult
    from tuneloop.sweep_report import publish

    start_step()
    cells = [CellResult.from_dict(json.loads(text)) for text in results]
    built, run_id = publish(config_from_json(config), name, cells, Path(report.path), json.loads(axes))
    return json.dumps({"run_id": run_id, "folder": report.path, "failed": [r["name"] for r in built["rows"] if r["status"] != "ok"]})
