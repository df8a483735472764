"""The continuous-training pipeline: validate → train → evaluate → gate → register → (pass) promote.

Wiring only. Every candidate that reaches the gate is registered with its verdict (evidence is
kept); the champion alias moves only inside the `dsl.If` branch taken when the gate passes.
"""

from typing import NamedTuple

from kfp import dsl

from tuneloop.components.evaluate import evaluate_candidate
from tuneloop.components.gate import gate_candidate
from tuneloop.components.register import promote_candidate, register_candidate
from tuneloop.components.train import train_adapter
from tuneloop.components.validate import validate_data

# Requests for a cluster; the local runner ignores them. Training MiniLM-sized models needs ~2 GiB.
TRAIN_CPU, TRAIN_MEMORY = "2", "8Gi"


@dsl.pipeline(name="continuous-training", description="Train, gate and promote a PEFT adapter.")
def continuous_training(config: str, data_rev: str = "HEAD") -> NamedTuple("Outputs", version=str, decision=str):
    """One cycle on the data at `data_rev`; `config` is the validated config tree as JSON."""
    run_name = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
    validated = validate_data(config=config, data_rev=data_rev)
    trained = train_adapter(config=config, snapshot=validated.outputs["snapshot"])
    trained.set_cpu_request(TRAIN_CPU).set_memory_request(TRAIN_MEMORY)
    scored = evaluate_candidate(config=config, snapshot=validated.outputs["snapshot"], trained=trained.outputs["trained"])
    gated = gate_candidate(config=config, scores=scored.outputs["scores"])
    registered = register_candidate(
        config=config, run_name=run_name, snapshot=validated.outputs["snapshot"], trained=trained.outputs["trained"],
        scores=scored.outputs["scores"], decision=gated.outputs["decision"],
    )
    with dsl.If(gated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
        promoted = promote_candidate(
            config=config, run_name=run_name, version=registered.outputs["version"], decision=gated.outputs["decision"],
            expected_champion=scored.outputs["Output"],
        )
    for task in (validated, trained, scored, gated, registered, promoted):
        task.set_caching_options(False)  # every step reads or writes the live registry
    return NamedTuple("Outputs", version=str, decision=str)(registered.outputs["version"], registered.outputs["decision"])
