"""Component: read the data at a revision through DVC, validate it, freeze a snapshot."""

from kfp.dsl import Dataset, Output


def validate_data(config: str, data_rev: str, snapshot: Output[Dataset]) -> str:
    """Validate the data at `data_rev`; return the resolved commit sha."""
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.cycle import validate_step
    from tuneloop.progress import start_step

    start_step()
    frozen = validate_step(config_from_json(config), data_rev, Path(snapshot.path))
    snapshot.metadata.update(
        rev=frozen.rev, path=frozen.path, sha256=frozen.sha256,
        train_rows=frozen.train_rows, held_out_rows=frozen.held_out_rows, labels=frozen.labels,
    )
    return frozen.rev
