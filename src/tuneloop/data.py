"""Versioned data: track datasets with DVC and read them back by (repo, rev, path).

This is the only module that imports `dvc`. A pipeline run reads its data at one git revision,
validates it, and freezes it as a snapshot folder (train.jsonl, held_out.jsonl, meta.json) that
every later step reads, so all steps see the same rows and the registry records their hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop import gitrepo, tables, validation
from tuneloop.config import DataConfig
from tuneloop.errors import DataError, WorkspaceError

log = logging.getLogger(__name__)

REMOTE_NAME = "local"
TRAIN_FILE, HELD_OUT_FILE, META_FILE, REPORT_FILE = "train.jsonl", "held_out.jsonl", "meta.json", "validation.json"


@dataclass(frozen=True)
class DatasetVersion:
    """A dataset committed to a workspace: where it is and at which revision."""

    path: str
    rev: str
    sha256: str
    rows: int


@dataclass(frozen=True)
class Snapshot:
    """A validated, frozen copy of one run's data."""

    repo: str
    rev: str
    path: str
    eval_path: str | None
    sha256: dict[str, str]
    train_rows: int
    held_out_rows: int
    labels: list[str]

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)


def _dvc_repo() -> Any:
    """Import DVC's Repo, keeping DVC's own console handlers to warnings.

    DVC installs stdout handlers at INFO on import; its INFO lines ("Initialized DVC repository.
    You can now commit the changes to git.") repeat what tuneloop logs, or advise what it does.
    """
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)
    return Repo


def init_dvc(root: Path, remote: Path) -> None:
    """Make `root` (already a git repo) a DVC repo whose default remote is the folder `remote`."""
    repo = _dvc_repo().init(str(root))
    remote.mkdir(parents=True, exist_ok=True)
    with repo.config.edit() as conf:
        conf["remote"][REMOTE_NAME] = {"url": str(remote.resolve())}
        conf["core"]["remote"] = REMOTE_NAME
        conf["core"]["autostage"] = True  # `dvc add` stages its .dvc file in git itself
    repo.close()


def add_dataset(root: Path, source: Path, name: str) -> DatasetVersion:
    """Copy a data file into the workspace, track it with DVC, commit, and push it to the remote.

    Args:
        root: the workspace (git + DVC repository).
        source: a CSV, TSV or JSONL file.
        name: dataset name; the file lands at data/<name><suffix>.

    Raises:
        DataError: when the file is missing, empty or of an unsupported format.
        WorkspaceError: when `root` is not a workspace.
    """
    if not source.is_file():
        raise DataError(f"data file {str(source)!r} not found; pass the path of a CSV, TSV or JSONL file")
    suffix = tables.table_format(source.name)
    if not (root / ".dvc").is_dir() or not gitrepo.is_repo(root):
        raise WorkspaceError(f"{root} is not a tuneloop workspace; create one with `tuneloop init {root}`")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise DataError(f"dataset name {name!r} is not valid; use letters, digits, '-' and '_'")
    raw = source.read_bytes()
    if not raw.strip():
        raise DataError(f"data file {str(source)!r} is empty; add a header and rows")
    target = Path("data") / f"{name}{suffix}"
    (root / "data").mkdir(exist_ok=True)
    shutil.copyfile(source, root / target)
    from dvc.exceptions import DvcException

    repo = _dvc_repo()(str(root))
    try:
        repo.add(str(root / target))
        gitrepo.git(root, "add", "--", f"{target}.dvc", "data/.gitignore")
        if gitrepo.has_staged_changes(root):
            rev = gitrepo.commit(root, [f"{target}.dvc"], f"data: track {target} with DVC")
        else:  # the same bytes are already tracked: adding them again is a no-op, not an error
            rev = gitrepo.git(root, "log", "-1", "--format=%H", "--", f"{target}.dvc")
        repo.push()
    except DvcException as exc:  # e.g. an unreachable remote; a rerun resumes (re-adding is a no-op)
        raise DataError(f"dvc could not track or push {target}: {exc}; fix the remote (.dvc/config) and rerun") from exc
    finally:
        repo.close()
    rows = tables.count_records(raw, str(target))
    version = DatasetVersion(path=str(target), rev=rev, sha256=hashlib.sha256(raw).hexdigest(), rows=rows)
    log.info("tracked %s at rev %s (%d rows)", target, rev[:8], rows)
    return version


def read_at(repo: str, rev: str, path: str) -> tuple[bytes, str]:
    """Read one tracked file at a revision through DVC; return its bytes and the resolved commit.

    Raises:
        DataError: when the revision or the file does not exist there.
    """
    import dvc.api
    from dvc.exceptions import DvcException, PathMissingError

    resolved = gitrepo.resolve_rev(repo, rev)
    try:
        raw = dvc.api.read(path, repo=repo, rev=resolved, mode="rb")
    except (FileNotFoundError, PathMissingError) as exc:
        raise DataError(f"data file {path!r} not found in {repo} at rev {rev}; check data.path or `git log`") from exc
    except DvcException as exc:
        raise DataError(f"cannot read {path!r} from {repo} at rev {rev}: {exc}; run `dvc pull` or check the remote") from exc
    return raw, resolved


def _load(cfg: DataConfig, rev: str, path: str) -> tuple[pd.DataFrame, str, str]:
    raw, resolved = read_at(cfg.repo, rev, path)
    frame = tables.parse_table(raw, path, cfg.text_column, cfg.label_column)
    return frame, resolved, hashlib.sha256(raw).hexdigest()


def prepare(cfg: DataConfig, rev: str, out_dir: Path, champion_labels: list[str] | None = None) -> Snapshot:
    """Read the data at `rev`, split off the held-out rows, validate, and freeze a snapshot.

    Args:
        cfg: the data section of the config.
        rev: git revision to read (overrides cfg.rev).
        out_dir: folder to write the snapshot into.
        champion_labels: the serving model's label set, to catch a changed label set.

    Raises:
        DataError: when the data cannot be read or fails validation (the report is written first).
    """
    frame, resolved, digest = _load(cfg, rev, cfg.path)
    hashes = {cfg.path: digest}
    if cfg.eval_path:
        train, (held_out, _, hashes[cfg.eval_path]) = frame, _load(cfg, resolved, cfg.eval_path)
    else:
        mask = tables.held_out_mask(frame["text"], cfg.eval_fraction)
        train, held_out = frame[~mask], frame[mask]
    if cfg.max_train_rows:
        train = train.head(cfg.max_train_rows)
    if cfg.max_eval_rows:
        held_out = held_out.head(cfg.max_eval_rows)
    source = f"{cfg.path}@{resolved[:8]}"
    report = validation.validate(
        train, held_out, source=source, allowed_labels=cfg.labels,
        champion_labels=champion_labels, allow_duplicates=cfg.allow_duplicates,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    validation.raise_for_problems(report)
    tables.write_frame(train, out_dir / TRAIN_FILE)
    tables.write_frame(held_out, out_dir / HELD_OUT_FILE)
    snapshot = Snapshot(
        repo=cfg.repo, rev=resolved, path=cfg.path, eval_path=cfg.eval_path, sha256=hashes,
        train_rows=len(train), held_out_rows=len(held_out), labels=report.labels,
    )
    (out_dir / META_FILE).write_text(json.dumps(snapshot.to_dict(), indent=2))
    log.info("snapshot %s: %d train / %d held-out rows, labels %s", source, len(train), len(held_out), report.labels)
    return snapshot


def load_snapshot(snapshot_dir: Path) -> tuple[Snapshot, pd.DataFrame, pd.DataFrame]:
    """Read a snapshot folder written by `prepare`: its metadata, train rows and held-out rows.

    Raises:
        DataError: when the folder holds no snapshot.
    """
    if not (snapshot_dir / META_FILE).is_file():
        raise DataError(f"{snapshot_dir} holds no data snapshot; create it with `tuneloop data validate --out {snapshot_dir}`")
    meta = Snapshot(**json.loads((snapshot_dir / META_FILE).read_text()))
    return meta, tables.read_frame(snapshot_dir / TRAIN_FILE), tables.read_frame(snapshot_dir / HELD_OUT_FILE)
