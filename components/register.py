"""Components for the two gate branches: promote a passed candidate, or register a rejected one.

Both register the adapter with all its evidence; only `promote_candidate` then moves the champion
alias. Each returns the outcome as JSON: {"version": ..., "decision": {...}}.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from tuneloop.components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote_candidate(
    config: str, run_name: str, snapshot: Input[Dataset], trained: Input[Model], scores: Input[Artifact],
    decision: Input[Artifact],
) -> str:
    """Register the passed candidate and make it champion (if the champion is still the one it beat)."""
    import json
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.cycle import Evaluation, promote_step
    from tuneloop.gate import GateDecision
    from tuneloop.progress import start_step

    start_step()
    verdict = json.loads(Path(decision.path).read_text())
    registered = promote_step(
        config_from_json(config), Path(snapshot.path), Path(trained.path),
        Evaluation.from_dict(json.loads(Path(scores.path).read_text())), GateDecision(**verdict), run_name,
    )
    return json.dumps({"version": registered.version, "decision": verdict})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def reject_candidate(
    config: str, run_name: str, snapshot: Input[Dataset], trained: Input[Model], scores: Input[Artifact],
    decision: Input[Artifact],
) -> str:
    """Register the rejected candidate with its reasons and evidence; move no alias."""
    import json
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.cycle import Evaluation, register_step
    from tuneloop.gate import GateDecision
    from tuneloop.progress import start_step

    start_step()
    verdict = json.loads(Path(decision.path).read_text())
    registered = register_step(
        config_from_json(config), Path(snapshot.path), Path(trained.path),
        Evaluation.from_dict(json.loads(Path(scores.path).read_text())), GateDecision(**verdict), run_name,
    )
    return json.dumps({"version": registered.version, "decision": verdict})
