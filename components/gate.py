"""Component: the gate decision, as a boolean to branch on, a JSON file with its reasons, and the
promotion dossier as an HTML artifact (shown in the KFP UI) with its markdown twin."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output


# A single bool output on purpose: kfp.local 2.17 cannot branch on a NamedTuple field.
def gate_candidate(
    config: str, snapshot: Input[Dataset], scores: Input[Artifact], decision: Output[Artifact],
    dossier: Output[HTML], dossier_md: Output[Markdown],
) -> bool:
    """Decide; write the GateDecision to `decision` as JSON and the dossier; return whether it passed."""
    import shutil
    import tempfile
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.cycle import Evaluation, gate_step
    from tuneloop.progress import start_step

    start_step()
    with tempfile.TemporaryDirectory() as folder:
        verdict = gate_step(config_from_json(config), Evaluation.load(Path(scores.path)), Path(snapshot.path), Path(folder))
        shutil.copyfile(Path(folder) / "dossier.html", dossier.path)
        shutil.copyfile(Path(folder) / "dossier.md", dossier_md.path)
    verdict.save(Path(decision.path))
    decision.metadata.update(passed=verdict.passed, reasons=verdict.reasons)
    return verdict.passed
