"""Components: register the gated candidate (always), and promote it (only on the passing branch)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from tuneloop.components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_candidate(
    config: str, run_name: str, snapshot: Input[Dataset], trained: Input[Model], scores: Input[Artifact],
    decision: Input[Artifact],
) -> NamedTuple("Outputs", version=str, decision=str):
    """Log the run and register the adapter with its gate verdict; return the version and the verdict."""
    import json
    from pathlib import Path
    from typing import NamedTuple

    from tuneloop.config import config_from_json
    from tuneloop.cycle import Evaluation, register_step
    from tuneloop.gate import GateDecision
    from tuneloop.progress import configure_logging

    configure_logging()
    verdict = Path(decision.path).read_text()
    registered = register_step(
        config_from_json(config), Path(snapshot.path), Path(trained.path),
        Evaluation.from_dict(json.loads(Path(scores.path).read_text())), GateDecision(**json.loads(verdict)), run_name,
    )
    return NamedTuple("Outputs", version=str, decision=str)(registered.version, verdict)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote_candidate(config: str, run_name: str, version: str, decision: Input[Artifact], expected_champion: str) -> str:
    """Move the champion alias to `version` if the champion is still the one it was gated against."""
    import json
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.cycle import promote_step
    from tuneloop.gate import GateDecision
    from tuneloop.progress import configure_logging

    configure_logging()
    verdict = GateDecision(**json.loads(Path(decision.path).read_text()))
    promote_step(config_from_json(config), version, verdict, expected_champion, run_name)
    return version
