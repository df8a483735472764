"""Git plumbing for workspaces and data versions: run git, resolve revisions, commit.

Plain `git` subprocesses: every machine that runs DVC has git, and the porcelain's error text is
what users know.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tuneloop.errors import DataError, WorkspaceError

_IDENTITY = ("-c", "user.name=tuneloop", "-c", "user.email=tuneloop@localhost")


def git(repo: Path | str, *args: str, check: bool = True) -> str:
    """Run one git command in `repo`; return its stdout stripped.

    Raises:
        WorkspaceError: when git exits non-zero and `check` is set.
    """
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise WorkspaceError(f"git {args[0]} failed in {repo}: {detail[-1] if detail else 'no output'}")
    return done.stdout.strip()


def is_repo(path: Path) -> bool:
    """Tell whether `path` is the top of a git work tree."""
    if not path.is_dir():
        return False
    top = git(path, "rev-parse", "--show-toplevel", check=False)
    return bool(top) and Path(top).resolve() == path.resolve()


def resolve_rev(repo: Path | str, rev: str) -> str:
    """Return the full commit sha that `rev` names, in a local folder or a remote git URL.

    A run records this sha, never a moving name like HEAD, so it can be reproduced.

    Raises:
        DataError: when the revision is empty, looks like an option, or does not exist.
    """
    _check_rev(rev)
    if not Path(repo).is_dir():
        return _resolve_remote(str(repo), rev)
    sha = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if not re.fullmatch(r"[0-9a-f]{40,64}", sha):  # "A..B" or "A...B" name a range, not one commit
        raise DataError(f"rev {rev!r} not found in {repo}; pass a commit, tag or branch listed by `git log`")
    return sha


def _check_rev(rev: str) -> None:
    """Refuse what git would misread: nothing (git treats '' as no argument) or an option."""
    fix = "set data.rev or pass --rev with a commit, tag or branch (e.g. HEAD)"
    if not rev.strip():
        raise DataError(f"rev {rev!r} is empty; {fix}")
    if rev.startswith("-"):
        raise DataError(f"rev {rev!r} starts with '-', which git reads as an option; {fix}")
    if any(ord(char) < 32 or ord(char) == 127 for char in rev):
        raise DataError(f"rev {rev!r} holds a control character; {fix}")


def _resolve_remote(url: str, rev: str) -> str:
    if len(rev) == 40 and all(c in "0123456789abcdef" for c in rev.lower()):
        return rev.lower()  # a full sha names itself; ls-remote lists only refs
    done = subprocess.run(["git", "ls-remote", url, rev], capture_output=True, text=True)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no answer"])[0]
        raise DataError(f"cannot reach data repo {url} ({first}); check data.repo and access")
    lines = done.stdout.split()
    if not lines:
        raise DataError(f"rev {rev!r} not found in {url}; pass a branch, a tag or a full commit sha")
    return lines[0]


def has_staged_changes(repo: Path, paths: tuple[str, ...] = ()) -> bool:
    """Tell whether the index differs from HEAD (only under `paths`, when given)."""
    return subprocess.run(["git", "-C", str(repo), "diff", "--cached", "--quiet", "--", *paths]).returncode == 1


def commit(repo: Path, paths: list[str], message: str) -> str:
    """Stage `paths` and commit them alone (with a fallback identity when none is configured); return the sha.

    Whatever else the user has staged stays staged and out of this commit.
    """
    git(repo, "add", "--", *paths)
    identity = () if git(repo, "config", "user.email", check=False) else _IDENTITY
    git(repo, *identity, "commit", "--quiet", "-m", message, "--", *paths)
    return git(repo, "rev-parse", "HEAD")
