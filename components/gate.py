"""Component: the gate decision, as a boolean to branch on plus a JSON file with its reasons."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from tuneloop.components import IMAGE


# A single bool output on purpose: kfp.local 2.17 cannot branch on a NamedTuple field.
@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate_candidate(config: str, scores: Input[Artifact], decision: Output[Artifact]) -> bool:
    """Decide; write the GateDecision to `decision` as JSON; return whether it passed."""
    import json
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.cycle import Evaluation, gate_step
    from tuneloop.progress import start_step

    start_step()
    verdict = gate_step(config_from_json(config), Evaluation.from_dict(json.loads(Path(scores.path).read_text())))
    Path(decision.path).write_text(json.dumps(verdict.to_dict()))
    decision.metadata.update(passed=verdict.passed, reasons=verdict.reasons)
    return verdict.passed
