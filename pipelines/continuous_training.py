"""The continuous-training pipeline: validate → train → evaluate → gate → dsl.If: promote / else: reject.

Wiring only. Both branches register the candidate with its verdict and evidence; the champion
alias moves only in the branch taken when the gate passes. Registering and promoting share one
step because each step is a fresh process that pays MLflow's import again (bench/README.md).
"""

from kfp import dsl

from tuneloop.components.evaluate import evaluate_candidate
from tuneloop.components.gate import gate_candidate
from tuneloop.components.register import promote_candidate, reject_candidate
from tuneloop.components.train import train_adapter
from tuneloop.components.validate import validate_data

# Requests for a cluster; the local runner ignores them. Training MiniLM-sized models needs ~2 GiB.
TRAIN_CPU, TRAIN_MEMORY = "2", "8Gi"


@dsl.pipeline(name="continuous-training", description="Train, gate and promote a PEFT adapter.")
def continuous_training(config: str, data_rev: str = "HEAD") -> str:
    """One cycle on the data at `data_rev`; `config` is the validated config tree as JSON.

    Returns the outcome as JSON: {"version": ..., "decision": {"passed": ..., "reasons": [...]}}.
    """
    validated = validate_data(config=config, data_rev=data_rev)
    trained = train_adapter(config=config, snapshot=validated.outputs["snapshot"])
    trained.set_cpu_request(TRAIN_CPU).set_memory_request(TRAIN_MEMORY)
    scored = evaluate_candidate(config=config, snapshot=validated.outputs["snapshot"], trained=trained.outputs["trained"])
    gated = gate_candidate(config=config, snapshot=validated.outputs["snapshot"], scores=scored.outputs["scores"])
    evidence = dict(
        config=config, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, snapshot=validated.outputs["snapshot"],
        trained=trained.outputs["trained"], scores=scored.outputs["scores"], decision=gated.outputs["decision"],
        dossier=gated.outputs["dossier"], dossier_md=gated.outputs["dossier_md"],
    )
    with dsl.If(gated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
        promoted = promote_candidate(**evidence)
    with dsl.Else(name="gate-failed"):
        rejected = reject_candidate(**evidence)
    for task in (validated, trained, scored, gated, promoted, rejected):
        task.set_caching_options(False)  # every step reads or writes the live registry
    return dsl.OneOf(promoted.output, rejected.output)
