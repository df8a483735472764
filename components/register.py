"""Components for the two gate branches: promote a passed candidate, or register a rejected one.

Both run one body, `cycle.settle_step`: register the adapter with all its evidence and its
dossier; only `promote_candidate` then moves an alias (champion, or challenger when the policy or
a lost race says so). Each returns the outcome as JSON: {"version": ..., "decision": {...}}. The MLflow
run is named `run_name` when the submitter chose one (so it can find the version afterwards), else
after the KFP job.
"""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Model


def promote_candidate(
    config: str, run_name: str, job_name: str, snapshot: Input[Dataset], trained: Input[Model], scores: Input[Artifact],
    decision: Input[Artifact], dossier: Input[HTML], dossier_md: Input[Markdown],
) -> str:
    """Register the passed candidate and make it champion (if the champion is still the one it beat)."""
    from tuneloop.cycle import settle_step

    return settle_step(True, config, run_name or job_name, snapshot.path, trained.path, scores.path, decision.path, dossier.path, dossier_md.path)


def reject_candidate(
    config: str, run_name: str, job_name: str, snapshot: Input[Dataset], trained: Input[Model], scores: Input[Artifact],
    decision: Input[Artifact], dossier: Input[HTML], dossier_md: Input[Markdown],
) -> str:
    """Register the rejected candidate with its reasons and evidence; move no alias."""
    from tuneloop.cycle import settle_step

    return settle_step(False, config, run_name or job_name, snapshot.path, trained.path, scores.path, decision.path, dossier.path, dossier_md.path)
