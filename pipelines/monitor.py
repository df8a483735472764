"""The monitor pipeline: measure → decide → dsl.If retrain (new data rev → the continuous-training
pipeline, nested) / rollback. Wiring only.

The retrain branch runs `continuous_training` itself as a sub-pipeline on the revision the data
step committed, so a retrain is gated and promoted exactly as a scheduled run is.
"""

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from tuneloop.components.monitor import (decide_action, measure_traffic, note_retrain_outcome, prepare_retrain_data,
                                         rollback_champion)
from tuneloop.pipelines.continuous_training import continuous_training
from tuneloop.pipelines.steps import Steps


def monitor(step: Steps) -> GraphComponent:
    """The pipeline, its steps (the nested training cycle's too) built by `step`."""
    cycle_pipeline = continuous_training(step)

    @dsl.pipeline(name="monitor", description="Watch the champion's traffic; retrain or roll back when the policy says so.")
    def pipeline(config: str, log_path: str) -> str:
        """One monitoring tick; `config` is the validated config as JSON, `log_path` the traffic log.

        Returns the action taken: ignore, retrain or rollback (the decision's reasons are on its MLflow run).
        """
        measured = step(measure_traffic, config=config, log_path=log_path)
        decided = step(decide_action, config=config, measured=measured.outputs["measured"],
                       drift_report=measured.outputs["drift_report"])
        with dsl.If(decided.outputs["Output"] == "retrain", name="retrain"):
            prepared = step(prepare_retrain_data, config=config, log_path=log_path, measured=measured.outputs["measured"],
                            decision=decided.outputs["decision"])
            cycle = cycle_pipeline(config=config, data_rev=prepared.output)
            noted = step(note_retrain_outcome, config=config, decision=decided.outputs["decision"], outcome=cycle.output)
        with dsl.Elif(decided.outputs["Output"] == "rollback", name="rollback"):
            step(rollback_champion, config=config, decision=decided.outputs["decision"])
        return decided.outputs["Output"]

    return pipeline
