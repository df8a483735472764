"""The continuous-training pipeline: validate → train → evaluate → gate → dsl.If: promote / else: reject.

Wiring only. Both branches register the candidate with its verdict and evidence; the champion
alias moves only in the branch taken when the gate passes. Registering and promoting share one
step because each step is a fresh process that pays MLflow's import again (bench/README.md).
"""

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from tuneloop.components import component
from tuneloop.components.evaluate import evaluate_candidate
from tuneloop.components.gate import gate_candidate
from tuneloop.components.register import promote_candidate, reject_candidate
from tuneloop.components.train import train_adapter
from tuneloop.components.validate import validate_data

# Requests for a cluster; the local runner ignores them. Training MiniLM-sized models needs ~2 GiB.
TRAIN_CPU, TRAIN_MEMORY = "2", "8Gi"


def continuous_training(image: str) -> GraphComponent:
    """The pipeline with every step running in `image`."""

    @dsl.pipeline(name="continuous-training", description="Train, gate and promote a PEFT adapter.")
    def pipeline(config: str, data_rev: str = "HEAD") -> str:
        """One cycle on the data at `data_rev`; `config` is the validated config tree as JSON.

        Returns the outcome as JSON: {"version": ..., "decision": {"passed": ..., "reasons": [...]}}.
        """
        validated = component(validate_data, image)(config=config, data_rev=data_rev)
        trained = component(train_adapter, image)(config=config, snapshot=validated.outputs["snapshot"])
        trained.set_cpu_request(TRAIN_CPU).set_memory_request(TRAIN_MEMORY)
        scored = component(evaluate_candidate, image)(
            config=config, snapshot=validated.outputs["snapshot"], trained=trained.outputs["trained"])
        gated = component(gate_candidate, image)(
            config=config, snapshot=validated.outputs["snapshot"], scores=scored.outputs["scores"])
        evidence = dict(
            config=config, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, snapshot=validated.outputs["snapshot"],
            trained=trained.outputs["trained"], scores=scored.outputs["scores"], decision=gated.outputs["decision"],
            dossier=gated.outputs["dossier"], dossier_md=gated.outputs["dossier_md"],
        )
        with dsl.If(gated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
            promoted = component(promote_candidate, image)(**evidence)
        with dsl.Else(name="gate-failed"):
            rejected = component(reject_candidate, image)(**evidence)
        for task in (validated, trained, scored, gated, promoted, rejected):
            task.set_caching_options(False)  # every step reads or writes the live registry
        return dsl.OneOf(promoted.output, rejected.output)

    return pipeline
