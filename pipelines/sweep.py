"""The sweep pipeline: validate the data once → every cell (dsl.ParallelFor) on that snapshot → one report.

Wiring only. A cell step never fails for its cell's own failure (it reports it), so one bad cell
leaves the others and the report standing.
"""

from typing import List

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from tuneloop.components.sweep import sweep_cell, sweep_report
from tuneloop.components.validate import validate_data
from tuneloop.pipelines.steps import Steps


def sweep(step: Steps, parallelism: int = 1) -> GraphComponent:
    """The pipeline, its steps built by `step`; `parallelism` cells run at once on a cluster."""

    @dsl.pipeline(name="sweep", description="Train and compare a matrix of PEFT methods on one snapshot.")
    def pipeline(config: str, cells: List[str], name: str = "sweep", axes: str = "{}", data_rev: str = "HEAD",
                 cache_dir: str = "") -> str:
        """`cells`: each cell as `sweep.Cell.to_json`; `cache_dir`: where results are cached ('' for none).

        Returns {"run_id", "folder", "failed"} as JSON.
        """
        validated = step(validate_data, config=config, data_rev=data_rev)
        with dsl.ParallelFor(cells, parallelism=parallelism) as cell:
            ran = step(sweep_cell, cell=cell, snapshot=validated.outputs["snapshot"], cache_dir=cache_dir)
        reported = step(sweep_report, config=config, name=name, axes=axes, results=dsl.Collected(ran.outputs["result"]))
        return reported.outputs["Output"]

    return pipeline
