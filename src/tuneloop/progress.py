"""Progress output and step start-up: how tuneloop's log lines look wherever a step runs (CLI, KFP step, bench)."""

import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(name)s %(message)s"
DATE_FORMAT = "%H:%M:%S"
# FORMAT with DATE_FORMAT from tuneloop's loggers, as a runner may indent it (kfp.local does)
_PROGRESS_LINE = re.compile(r"^\s*\d\d:\d\d:\d\d tuneloop(\.\S+)? ")
ERRORS_ENV = "TUNELOOP_STEP_ERRORS"  # a folder where a failing step writes its error record


def is_progress_line(line: str) -> bool:
    """Whether a line of a step's output is one of tuneloop's own progress lines."""
    return bool(_PROGRESS_LINE.match(line))


def configure_logging(verbose: bool = False) -> None:
    """Send tuneloop's INFO lines (and everyone's warnings) to stderr in one compact format."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT, datefmt=DATE_FORMAT, force=True)
    logging.getLogger("tuneloop").setLevel(logging.DEBUG if verbose else logging.INFO)
    # bitsandbytes warns on every import (which peft does) that an optional CPU kernel package is
    # missing; it changes no result, and it would be the first line of every command's output.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # kernels (which bitsandbytes asks for its CPU kernel) says, offline, that it skips a hub check.
    logging.getLogger("kernels").setLevel(logging.ERROR)
    # An 8-bit base logs, on every forward pass, that it casts fp32 inputs to fp16 (how LLM.int8 works).
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def start_step() -> None:
    """Set up a pipeline step process: tuneloop's logging, and SIGTERM handled like Ctrl-C.

    A pod being deleted, or the CLI stopping a local run, sends SIGTERM; as an exception it lets the
    registry end its MLflow run and remove partial writes instead of dying mid-write.
    """
    configure_logging()
    signal.signal(signal.SIGTERM, _terminate)
    folder = os.environ.get(ERRORS_ENV)
    if folder:
        shown = sys.excepthook

        def record_then_show(kind: type, error: BaseException, trace: object) -> None:
            write_error_record(Path(folder), error)
            shown(kind, error, trace)

        sys.excepthook = record_then_show


def write_error_record(folder: Path, error: BaseException) -> Path:
    """Record the error a step ends with (its class and message), for whoever launched the step."""
    folder.mkdir(parents=True, exist_ok=True)
    kind = type(error)
    path = folder / f"{time.time_ns()}-{os.getpid()}.json"
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    path.write_text(json.dumps({"class": name, "message": str(error)}))
    return path


def last_error_record(folder: Path) -> dict[str, str] | None:
    """The newest error record in `folder`, or None."""
    records = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return json.loads(records[-1].read_text()) if records else None


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
