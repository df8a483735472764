"""Component: score the candidate and the champion on the same held-out rows."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def evaluate_candidate(config: str, snapshot: Input[Dataset], trained: Input[Model], scores: Output[Artifact]) -> str:
    """Evaluate; `scores` is a JSON file; return the champion version scored ('' when none serves)."""
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.cycle import evaluate_step
    from tuneloop.progress import start_step
    from tuneloop.training import ADAPTER_DIR

    start_step()
    result = evaluate_step(
        config_from_json(config), Path(snapshot.path), Path(trained.path) / ADAPTER_DIR, Path(scores.path + ".work")
    )
    result.save(Path(scores.path))
    scores.metadata.update(result.candidate.metrics)
    return result.champion_version or ""
