"""Progress output: how tuneloop's log lines look wherever a step runs (CLI, KFP step, bench)."""

import logging

FORMAT = "%(asctime)s %(name)s %(message)s"
DATE_FORMAT = "%H:%M:%S"


def configure_logging(verbose: bool = False) -> None:
    """Send tuneloop's INFO lines (and everyone's warnings) to stderr in one compact format."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT, datefmt=DATE_FORMAT, force=True)
    logging.getLogger("tuneloop").setLevel(logging.DEBUG if verbose else logging.INFO)
