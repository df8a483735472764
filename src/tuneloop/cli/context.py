"""Finding and loading the config a command works on."""

from __future__ import annotations

from pathlib import Path

from tuneloop.config import Config, load_config
from tuneloop.errors import ConfigError
from tuneloop.workspace import find_config

CONFIG_HELP = "Config file (default: tuneloop.yaml in this folder or a parent)."


def resolve_config_path(path: Path | None) -> Path:
    """Return the config file to use: the one given, or the nearest tuneloop.yaml."""
    return path if path is not None else find_config(Path.cwd())


def config_for(path: Path | None) -> Config:
    """Load and validate the config a command should use."""
    return load_config(resolve_config_path(path))


def data_rev(rev: str | None, default: str) -> str:
    """The data revision a command works on: --rev, or `default` (data.rev) when it is not given.

    Raises:
        ConfigError: for an empty --rev.
    """
    if rev is not None and not rev.strip():
        raise ConfigError(f"--rev {rev!r} is empty; pass a commit, tag or branch, or leave --rev out to use data.rev")
    return default if rev is None else rev
