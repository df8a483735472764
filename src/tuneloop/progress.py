"""Progress output and step start-up: how tuneloop's log lines look wherever a step runs (CLI, KFP step, bench)."""

import contextlib
import logging
import signal
from collections.abc import Iterator

FORMAT = "%(asctime)s %(name)s %(message)s"
DATE_FORMAT = "%H:%M:%S"


def configure_logging(verbose: bool = False) -> None:
    """Send tuneloop's INFO lines (and everyone's warnings) to stderr in one compact format."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT, datefmt=DATE_FORMAT, force=True)
    logging.getLogger("tuneloop").setLevel(logging.DEBUG if verbose else logging.INFO)
    # bitsandbytes warns on every import (which peft does) that an optional CPU kernel package is
    # missing; it changes no result, and it would be the first line of every command's output.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def start_step() -> None:
    """Set up a pipeline step process: tuneloop's logging, and SIGTERM handled like Ctrl-C.

    A pod being deleted, or the CLI stopping a local run, sends SIGTERM; as an exception it lets the
    registry end its MLflow run and remove partial writes instead of dying mid-write.
    """
    configure_logging()
    signal.signal(signal.SIGTERM, _terminate)


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Hold back tuneloop's INFO lines (a failure still reaches the user as its one-line error).

    The CLI's preflight does what the pipeline steps do again and log; its own lines would say it twice.
    """
    logger = logging.getLogger("tuneloop")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
