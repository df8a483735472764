"""The continuous-training pipeline: validate → train → evaluate → gate → dsl.If: promote / else: reject.

Wiring only. Both branches register the candidate with its verdict and evidence; the champion
alias moves only in the branch taken when the gate passes. Registering and promoting share one
step because each step is a fresh process that pays MLflow's import again (bench/README.md).
"""

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from tuneloop.components.evaluate import evaluate_candidate
from tuneloop.components.gate import gate_candidate
from tuneloop.components.register import promote_candidate, reject_candidate
from tuneloop.components.train import train_adapter
from tuneloop.components.validate import validate_data
from tuneloop.pipelines.steps import Steps


def continuous_training(step: Steps) -> GraphComponent:
    """The pipeline, its steps built by `step` (for runtime.image and, on a cluster, runtime.kubernetes)."""

    @dsl.pipeline(name="continuous-training", description="Train, gate and promote a PEFT adapter.")
    def pipeline(config: str, data_rev: str = "HEAD", run_name: str = "") -> str:
        """One cycle on the data at `data_rev`; `config` is the validated config tree as JSON; `run_name`
        names the MLflow run the registration writes (default: the KFP job's name).

        Returns the outcome as JSON: {"version": ..., "decision": {"passed": ..., "reasons": [...]}}.
        """
        validated = step(validate_data, config=config, data_rev=data_rev)
        trained = step(train_adapter, config=config, snapshot=validated.outputs["snapshot"])
        scored = step(evaluate_candidate, config=config, snapshot=validated.outputs["snapshot"],
                      trained=trained.outputs["trained"])
        gated = step(gate_candidate, config=config, snapshot=validated.outputs["snapshot"], scores=scored.outputs["scores"])
        evidence = dict(
            config=config, run_name=run_name, job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, snapshot=validated.outputs["snapshot"],
            trained=trained.outputs["trained"], scores=scored.outputs["scores"], decision=gated.outputs["decision"],
            dossier=gated.outputs["dossier"], dossier_md=gated.outputs["dossier_md"],
        )
        with dsl.If(gated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
            promoted = step(promote_candidate, **evidence)
        with dsl.Else(name="gate-failed"):
            rejected = step(reject_candidate, **evidence)
        return dsl.OneOf(promoted.output, rejected.output)

    return pipeline
