"""Components of the sweep pipeline: one cell (train and score, or its cached result), then the report."""

from typing import List

from kfp.dsl import Artifact, Dataset, Input, Output


def sweep_cell(cell: str, snapshot: Input[Dataset], cache_dir: str, result: Output[Artifact]) -> str:
    """Run one cell (`cell`: `sweep.Cell.to_json`); a failure is a failed result, not a failed step.
    `result` holds result.json (`sweep.CellResult`: a file, because with its per-row scores it is far
    larger than a parameter may be) and the cell's train/ folder. Returns the cell's status."""
    import json
    from pathlib import Path

    from tuneloop.progress import start_step
    from tuneloop.sweep import RESULT_OUTPUT, Cell, run_cell

    start_step()
    folder = Path(result.path)
    outcome = run_cell(Cell.from_json(cell), Path(snapshot.path), folder, Path(cache_dir) if cache_dir else None)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULT_OUTPUT).write_text(json.dumps(outcome.to_dict()))
    result.metadata.update(status=outcome.status, cached=outcome.cached)
    return outcome.status


def sweep_report(config: str, name: str, axes: str, results: Input[List[Artifact]], report: Output[Artifact]) -> str:
    """Write the sweep's report (table, HTML, plots) into `report` and onto an MLflow run; return
    {"run_id", "folder", "failed"} as JSON."""
    import json
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.progress import start_step
    from tuneloop.sweep import RESULT_OUTPUT, CellResult
    from tuneloop.sweep_report import publish

    start_step()
    cells = [CellResult.from_dict(json.loads((Path(item.path) / RESULT_OUTPUT).read_text())) for item in results]
    built, run_id = publish(config_from_json(config), name, cells, Path(report.path), json.loads(axes))
    return json.dumps({"run_id": run_id, "folder": report.path, "failed": [r["name"] for r in built["rows"] if r["status"] != "ok"]})
