"""The error hierarchy: broken inputs and broken infrastructure, never expected outcomes.

A failing gate is a value (`GateDecision`), not an exception. Every message names the bad value and
the fix, because the CLI shows it as a single line.
"""


class TuneloopError(Exception):
    """Base of every error tuneloop raises on purpose."""


class ConfigError(TuneloopError):
    """The configuration file is missing, malformed or has invalid values."""


class DataError(TuneloopError):
    """A dataset is missing, unreadable or fails validation."""


class WorkspaceError(TuneloopError):
    """A workspace is missing, half-made or not a git + DVC repository."""


class TrainingError(TuneloopError):
    """Training could not run with the given model, method or quantization."""


class RegistryError(TuneloopError):
    """The model registry is unreachable or holds something unexpected."""


class RegistryConflict(RegistryError):
    """An alias move lost to another: the alias was not the expected version, or a rival claim came first."""


class PipelineError(TuneloopError):
    """A pipeline could not be compiled, submitted or did not succeed."""


class Interrupted(TuneloopError):
    """A run was stopped by Ctrl-C or a termination signal before it finished."""
