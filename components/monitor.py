"""Components of the `monitor` pipeline: measure the traffic window, decide, and act (each one `tuneloop.monitor` call).

`decide_action` returns the action as a single string to branch on (kfp.local 2.17 cannot branch
on a NamedTuple field); the decision with its reasons and the id of the run that records it travel
as a JSON artifact.
"""

from kfp.dsl import HTML, Artifact, Input, Output


def measure_traffic(config: str, log_path: str, measured: Output[Artifact], drift_report: Output[HTML]) -> None:
    """Drift of the champion's traffic window and the champion on fresh and held-out labelled rows."""
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.monitor import measure_step
    from tuneloop.progress import start_step

    start_step()
    found = measure_step(config_from_json(config), Path(log_path), Path(measured.path), Path(drift_report.path))
    if found.html is None:  # the window was too small to score: the artifact says so instead of staying empty
        Path(drift_report.path).write_text("<html><body><p>" + "</p><p>".join(found.notes) + "</p></body></html>")
    measured.metadata.update(window_rows=found.signals.window_rows, new_rows=found.signals.new_rows,
                             alarm=bool(found.drift and found.drift["alarm"]))


def decide_action(config: str, measured: Input[Artifact], drift_report: Input[HTML], decision: Output[Artifact]) -> str:
    """Run the policy, record the decision (and the drift report) in the monitor experiment; return the action."""
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.monitor import decide_step
    from tuneloop.progress import start_step

    start_step()
    made = decide_step(config_from_json(config), Path(measured.path), Path(decision.path), Path(drift_report.path))
    decision.metadata.update(action=made.action, wanted=made.wanted, key=made.key)
    return made.action


def rollback_champion(config: str, decision: Input[Artifact]) -> str:
    """Move the champion back to the version the decision names, through the audited rollback."""
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.monitor import rollback_step
    from tuneloop.progress import start_step

    start_step()
    return rollback_step(config_from_json(config), Path(decision.path))


def prepare_retrain_data(config: str, log_path: str, measured: Input[Artifact], decision: Input[Artifact]) -> str:
    """Commit training data plus the newly labelled traffic as a new data revision; return the revision."""
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.monitor import retrain_data_step
    from tuneloop.progress import start_step

    start_step()
    return retrain_data_step(config_from_json(config), Path(log_path), Path(measured.path), Path(decision.path))


def note_retrain_outcome(config: str, decision: Input[Artifact], outcome: str) -> str:
    """Write what the retrain led to (version, gate verdict) onto the decision's run."""
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.monitor import outcome_step
    from tuneloop.progress import start_step

    start_step()
    return outcome_step(config_from_json(config), Path(decision.path), outcome)
