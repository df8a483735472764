"""Versioned data: track datasets with DVC and read them back by (repo, rev, path).

This is the only module that imports `dvc`. A pipeline run reads its data at one git revision,
validates it, and freezes it as a snapshot folder (train.jsonl, held_out.jsonl, meta.json) that
every later step reads, so all steps see the same rows and the registry records their hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop import gitrepo, leakage, tables, validation
from tuneloop.config import DataConfig
from tuneloop.errors import DataError, Interrupted, WorkspaceError

log = logging.getLogger(__name__)

REMOTE_NAME = "local"
TRAIN_FILE, HELD_OUT_FILE, META_FILE, REPORT_FILE = "train.jsonl", "held_out.jsonl", "meta.json", "validation.json"
OOD_FILE = "ood.jsonl"  # data.ood_eval_path's rows, when set
MAX_PAIRS = 100  # near-duplicate pairs kept in a snapshot and its report (all are counted)


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
    slice_column: str | None = None  # the held-out rows carry a `slice` column read from it
    # Near-duplicate (train, held-out) pairs found, {train_row, held_out_row, jaccard}, and what data.on_leak did
    # with them: "warned" (kept), "dropped" (the training rows removed), "" when none was found.
    near_duplicates: list[dict] = field(default_factory=list)  # the first MAX_PAIRS
    near_duplicate_count: int = 0
    leak_action: str = ""
    ood_eval_path: str | None = None  # the out-of-domain held-out file, and its rows (OOD_FILE)
    ood_rows: int = 0

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


def add_dataset(root: Path, source: Path, name: str, cfg: DataConfig,
                rules: validation.Rules = validation.CLASSIFICATION) -> DatasetVersion:
    """Validate a data file, copy it into the workspace, track it with DVC, push it, and commit.

    The whole file is parsed and judged (every row check, repeats within the file, data.labels)
    before anything is written. The commit comes last, so a failing push leaves no commit; on any
    failure after the copy, the workspace (data file, .dvc file, data/.gitignore, git index and HEAD)
    is put back as it was. A source that already is the target file is tracked in place.

    Args:
        root: the workspace (git + DVC repository).
        source: a CSV, TSV or JSONL file.
        name: dataset name; the file lands at data/<name><suffix>.
        cfg: the data section of the config: the columns to read, the allowed labels, duplicates.
        rules: what a row's target is (`validation.Rules` of model.task).

    Raises:
        DataError: when the file is missing, unreadable, empty, of an unsupported format, fails
            validation, or DVC cannot track or push it.
        WorkspaceError: when `root` is not a workspace, or git cannot commit.
        Interrupted: on Ctrl-C after the copy (the workspace is restored first).
    """
    raw = _read_source(source)
    suffix = tables.table_format(source.name)
    if not (root / ".dvc").is_dir() or not gitrepo.is_repo(root):
        raise WorkspaceError(f"{root} is not a tuneloop workspace; create one with `tuneloop init {root}`")
    if not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
        raise DataError(f"dataset name {name!r} is not valid; use letters, digits, '-' and '_'")
    frame = tables.parse_table(raw, str(source), cfg.text_column, cfg.label_column)
    if frame.empty:
        raise DataError(f"data file {str(source)!r} has a header but no rows; add rows below the header")
    report = validation.validate_file(
        frame, source=f"data file {str(source)!r}", allowed_labels=cfg.labels, allow_duplicates=cfg.allow_duplicates,
        rules=rules,
    )
    validation.raise_for_problems(report)
    target = Path("data") / f"{name}{suffix}"
    in_place = (root / target).exists() and os.path.samefile(source, root / target)
    rollback = _Rollback.save(root, [target, Path(f"{target}.dvc"), Path("data/.gitignore")])
    try:
        rev = _track(root, source, target, in_place, rollback)
    except BaseException as exc:  # restore first, whatever happened; only known failures are translated
        rollback.restore()
        failure = _failure(exc, target, rollback.step)
        if failure is exc:
            raise
        raise failure from exc
    version = DatasetVersion(path=str(target), rev=rev, sha256=hashlib.sha256(raw).hexdigest(), rows=len(frame))
    log.info("tracked %s at rev %s (%d rows)", target, rev[:8], len(frame))
    return version


def _read_source(source: Path) -> bytes:
    """Read the file to add, or say in one line why it cannot be."""
    shown = repr(str(source))
    if source.is_dir():
        raise DataError(f"data file {shown} is a directory; pass the path of a CSV, TSV or JSONL file")
    if not source.exists():
        raise DataError(f"data file {shown} not found; pass the path of a CSV, TSV or JSONL file")
    if not source.is_file():
        raise DataError(f"data file {shown} is not a regular file; pass the path of a CSV, TSV or JSONL file")
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read data file {shown} ({exc.strerror}); check its permissions and rerun") from exc
    if not raw.strip():
        raise DataError(f"data file {shown} is empty; add a header and rows")
    return raw


def _track(root: Path, source: Path, target: Path, in_place: bool, rollback: "_Rollback") -> str:
    """Copy, `dvc add`, stage, push, then commit; return the commit that tracks `target`."""
    rollback.step = "copy"
    if not in_place:
        (root / target).parent.mkdir(exist_ok=True)
        (root / target).unlink(missing_ok=True)  # never write through a link into the DVC cache
        shutil.copyfile(source, root / target)
    repo = _dvc_repo()(str(root))
    try:
        rollback.step = "dvc add"
        (stage,) = repo.add(str(root / target))
        gitrepo.git(root, "add", "--", f"{target}.dvc", "data/.gitignore")
        remote = repo.cloud.get_remote_odb()
        if remote.fs.protocol == "local":  # a cloud remote keeps the object: unreferenced, removed by `dvc gc -c`
            pushed = Path(remote.oid_to_path(stage.outs[0].hash_info.value))
            rollback.remote_object = None if pushed.exists() else pushed
        rollback.step = "dvc push"
        repo.push()
    finally:
        repo.close()
    rollback.step = "git commit"
    own = (f"{target}.dvc", "data/.gitignore")
    if not gitrepo.has_staged_changes(root, own):  # the same bytes are already tracked: a no-op, not an error
        return gitrepo.git(root, "log", "-1", "--format=%H", "--", f"{target}.dvc")
    return gitrepo.commit(root, list(own), f"data: track {target} with DVC")


@dataclass
class _Rollback:
    """What `add_dataset` may change, as it was before: file bytes (None: absent), the data folder, HEAD."""

    root: Path
    files: dict[Path, bytes | None]
    had_data_dir: bool
    head: str
    remote_object: Path | None = None  # the object a push will create in a local-folder remote
    step: str = "copy"  # the step under way, for the message when it fails

    @classmethod
    def save(cls, root: Path, paths: list[Path]) -> "_Rollback":
        """Record `paths`, the git index and its lock, the data folder and HEAD as they are now."""
        index = Path(gitrepo.git(root, "rev-parse", "--git-path", "index"))
        paths = [*paths, index, Path(f"{index}.lock")]  # a git killed mid-commit leaves the lock behind
        files = {p: (root / p).read_bytes() if (root / p).is_file() else None for p in paths}
        head = gitrepo.git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False)  # "" before a first commit
        return cls(root, files, (root / "data").is_dir(), head)

    def restore(self) -> None:
        """Put every saved file back (or remove it), move HEAD back, take back a pushed object."""
        for path, content in self.files.items():
            (self.root / path).unlink(missing_ok=True)
            if content is not None:
                (self.root / path).write_bytes(content)
        index = self.root / gitrepo.git(self.root, "rev-parse", "--git-path", "index")
        for stale in index.parent.glob("next-index-*.lock"):  # a killed `git commit -- paths` leaves its own index
            stale.unlink(missing_ok=True)
        data_dir = self.root / "data"
        if not self.had_data_dir and data_dir.is_dir() and not any(data_dir.iterdir()):
            data_dir.rmdir()
        if gitrepo.git(self.root, "rev-parse", "--verify", "--quiet", "HEAD", check=False) != self.head:
            gitrepo.git(self.root, "update-ref", *(["HEAD", self.head] if self.head else ["-d", "HEAD"]))
        if self.remote_object is not None and self.remote_object.is_file():
            self.remote_object.unlink()


_FIXES = {
    "copy": "free disk space or fix the permissions of data/",
    "dvc add": "fix what DVC names and rerun",
    "dvc push": "fix the remote (.dvc/config, `dvc remote list`) and rerun",
    "git commit": "fix git (hooks, identity, disk) and rerun",
}


def _failure(exc: BaseException, target: Path, step: str) -> BaseException:
    """Turn a failure while tracking `target` into one line; unknown errors pass through as they are."""
    from dulwich.file import FileLocked  # DVC's git layer: another git process holds .git/index.lock
    from dvc.exceptions import DvcException

    done = "the workspace is as it was, nothing was committed"
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(f"interrupted during {step} of {target}; {done}; rerun `tuneloop data add` to add it")
    if isinstance(exc, FileLocked):
        return WorkspaceError(f"{step} of {target} failed: git is locked by another process ({exc}); {done}; "
                              "wait for it to finish (or remove a stale .git/index.lock) and rerun")
    if isinstance(exc, (DvcException, OSError)):
        detail = " ".join(" ".join(str(e) for e in (exc, exc.__cause__) if e).split())
        return DataError(f"{step} of {target} failed: {detail}; {done}; {_FIXES[step]}")
    if isinstance(exc, WorkspaceError):
        return WorkspaceError(f"{exc}; {done}; {_FIXES[step]}")
    return exc


def read_at(repo: str, rev: str, path: str, key: str = "data.path") -> tuple[bytes, str]:
    """Read one tracked file at a revision through DVC; return its bytes and the resolved commit.

    Args:
        repo: the git + DVC repository (folder or URL).
        rev: git revision.
        path: file inside the repository.
        key: the config key that named `path`, for messages.

    Raises:
        DataError: when the path leaves the repository, or the revision or file does not exist.
    """
    import dvc.api
    from dvc.exceptions import DvcException, PathMissingError
    from dvc.exceptions import IsADirectoryError as DvcIsADirectoryError

    _check_path(path, key)
    resolved = gitrepo.resolve_rev(repo, rev)
    try:
        raw = dvc.api.read(path, repo=repo, rev=resolved, mode="rb")
    except (FileNotFoundError, PathMissingError) as exc:
        raise DataError(f"data file {path!r} not found in {repo} at rev {rev}; check {key} or `git log`") from exc
    except (IsADirectoryError, DvcIsADirectoryError) as exc:
        message = f"{key} {path!r} is a directory in {repo} at rev {rev}; name a file in it, such as data/train.csv"
        raise DataError(message) from exc
    except DvcException as exc:
        raise DataError(f"cannot read {path!r} from {repo} at rev {rev}: {exc}; run `dvc pull` or check the remote") from exc
    return raw, resolved


def _check_path(path: str, key: str) -> None:
    """Refuse a path that names no file or leaves the repository, before any git or DVC call."""
    normal = posixpath.normpath(path) if path.strip() else "."
    if normal == ".":
        raise DataError(f"{key} {path!r} names no file; set it to a data file in the repository, such as data/train.csv")
    if posixpath.isabs(path) or normal == ".." or normal.startswith("../"):
        raise DataError(
            f"{key} {path!r} points outside the repository; set it to a path inside data.repo, such as data/train.csv"
        )


def _load(cfg: DataConfig, rev: str, path: str, key: str, slices: bool) -> tuple[pd.DataFrame, str, str]:
    """Read and parse one data file at `rev`, with data.slice_column when `slices` (the held-out rows come from it)."""
    raw, resolved = read_at(cfg.repo, rev, path, key)
    frame = tables.parse_table(raw, path, cfg.text_column, cfg.label_column, cfg.slice_column if slices else None)
    return frame, resolved, hashlib.sha256(raw).hexdigest()


def prepare(
    cfg: DataConfig, rev: str, out_dir: Path, champion_labels: list[str] | None = None, *, min_train_rows: int = 2,
    rules: validation.Rules = validation.CLASSIFICATION,
) -> Snapshot:
    """Read the data at `rev`, split off the held-out rows, validate, and freeze a snapshot.

    With data.slice_column, the file the held-out rows come from (data.eval_path, or data.path
    when it is split) must have that column, and every held-out row a slice name.

    Every row is validated before data.max_train_rows / data.max_eval_rows cut the splits (a
    duplicate beyond the cap is still a bad dataset); the capped splits are validated too, for
    what only the cap causes (one class left, a held-out label no longer in train).

    Args:
        cfg: the data section of the config.
        rev: git revision to read (overrides cfg.rev).
        out_dir: folder to write the snapshot into.
        champion_labels: the serving model's label set, to catch a changed label set.
        min_train_rows: fewest train rows training can use (see `validation.validate`).
        rules: what a row's target is (`validation.Rules` of model.task).

    Raises:
        DataError: when the data cannot be read or fails validation (the report is written first).
    """
    frame, resolved, digest = _load(cfg, rev, cfg.path, "data.path", slices=not cfg.eval_path)
    hashes = {cfg.path: digest}
    if cfg.eval_path:
        if posixpath.normpath(cfg.eval_path) == posixpath.normpath(cfg.path):
            raise DataError(
                f"data.eval_path {cfg.eval_path!r} is the same file as data.path; name a separate held-out "
                "file, or unset data.eval_path to hold out a stable hash split of data.path"
            )
        train, (held_out, _, hashes[cfg.eval_path]) = frame, _load(cfg, resolved, cfg.eval_path, "data.eval_path", slices=True)
    else:
        mask = tables.held_out_mask(frame["text"], cfg.eval_fraction)
        train, held_out = frame[~mask], frame[mask]
    source = f"{cfg.path}@{resolved[:8]}"
    report, train, held_out = _validate(cfg, train, held_out, source, champion_labels, min_train_rows, rules)
    def again(kept: pd.DataFrame) -> validation.ValidationReport:  # the rows data.on_leak drop left
        return validation.validate(kept, held_out, source=source, allowed_labels=cfg.labels, champion_labels=champion_labels,
                                   allow_duplicates=cfg.allow_duplicates, min_train_rows=min_train_rows, rules=rules)

    report, train, leaks = _leaks(cfg, report, train, held_out, again)
    action = ("dropped" if cfg.on_leak == "drop" else "warned") if leaks else ""
    leak_record = {"near_duplicates": leaks[:MAX_PAIRS], "near_duplicate_count": len(leaks), "leak_action": action}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_FILE).write_text(json.dumps({**report.to_dict(), **leak_record}, indent=2))
    validation.raise_for_problems(report)
    ood = _ood(cfg, resolved, train, report, hashes, min_train_rows, rules) if cfg.ood_eval_path else None
    tables.write_frame(train, out_dir / TRAIN_FILE)
    tables.write_frame(held_out, out_dir / HELD_OUT_FILE)
    if ood is not None:
        tables.write_frame(ood, out_dir / OOD_FILE)
    snapshot = Snapshot(
        repo=cfg.repo, rev=resolved, path=cfg.path, eval_path=cfg.eval_path, sha256=hashes,
        train_rows=len(train), held_out_rows=len(held_out), labels=report.labels, slice_column=cfg.slice_column,
        **leak_record, ood_eval_path=cfg.ood_eval_path, ood_rows=0 if ood is None else len(ood),
    )
    (out_dir / META_FILE).write_text(json.dumps(snapshot.to_dict(), indent=2))
    log.info("snapshot %s: %d train / %d held-out rows, labels %s", source, len(train), len(held_out), report.labels)
    return snapshot


def _validate(
    cfg: DataConfig, train: pd.DataFrame, held_out: pd.DataFrame, source: str,
    champion_labels: list[str] | None, min_train_rows: int, rules: validation.Rules,
) -> tuple[validation.ValidationReport, pd.DataFrame, pd.DataFrame]:
    """Validate all rows, then the capped rows when a cap cuts any; return the report and the capped splits."""
    def judge(train_rows: pd.DataFrame, held_out_rows: pd.DataFrame) -> validation.ValidationReport:
        return validation.validate(
            train_rows, held_out_rows, source=source, allowed_labels=cfg.labels, champion_labels=champion_labels,
            allow_duplicates=cfg.allow_duplicates, min_train_rows=min_train_rows, rules=rules,
        )

    report = judge(train, held_out)
    caps = [
        f"{key}: {cap}" for key, cap, rows in
        (("data.max_train_rows", cfg.max_train_rows, train), ("data.max_eval_rows", cfg.max_eval_rows, held_out))
        if cap and len(rows) > cap
    ]
    if not caps:
        return report, train, held_out
    train = train.head(cfg.max_train_rows) if cfg.max_train_rows else train
    held_out = held_out.head(cfg.max_eval_rows) if cfg.max_eval_rows else held_out
    return validation.merge_capped(report, judge(train, held_out), " and ".join(caps)), train, held_out


def _leaks(cfg: DataConfig, report: validation.ValidationReport, train: pd.DataFrame, held_out: pd.DataFrame,
           judge: Any = None) -> tuple[validation.ValidationReport, pd.DataFrame, list[dict]]:
    """Find near-duplicate (training, held-out) pairs; by data.on_leak, log them (warn), add them to the
    report as problems (fail), or remove the training rows involved (drop; the rows left are validated
    again with `judge`, which returns their report). Returns the report, the training rows, and the
    pairs found (file row numbers) unless they failed the data."""
    if not report.ok or train.empty or held_out.empty:  # an invalid dataset fails on what is wrong first
        return report, train, []
    pairs = leakage.near_duplicates(train["text"].tolist(), held_out["text"].tolist(), cfg.leak_threshold, cfg.leak_shingles)
    found = [{"train_row": int(train["row"].iloc[p.train]), "held_out_row": int(held_out["row"].iloc[p.held_out]),
              "jaccard": p.jaccard} for p in pairs]
    if not found:
        return report, train, []
    rows = sorted({p.train for p in pairs})
    shown = ", ".join(f"train row {f['train_row']} ~ held_out row {f['held_out_row']} ({f['jaccard']:.2f})"
                      for f in found[:5]) + (" ..." if len(found) > 5 else "")
    if cfg.on_leak == "warn":  # INFO: a preflight stays quiet but for its errors; the dossier shows the pairs
        log.info("%d training row(s) are near-duplicates of held-out rows, which rewards memorizing them: %s; "
                    "set data.on_leak: drop to train without them, or fail to stop", len(rows), shown)
        return report, train, found
    if cfg.on_leak == "drop":
        log.warning("dropped %d training row(s) that are near-duplicates of held-out rows (data.on_leak: drop): %s",
                    len(rows), shown)
        kept = train.drop(train.index[rows])
        return (judge(kept) if judge else replace(report, train_rows=len(kept))), kept, found
    problems = [validation.Problem(
        "near_duplicate", f"row {f['held_out_row']} (held_out) is a near-duplicate of train row {f['train_row']} "
                          f"(Jaccard {f['jaccard']:.2f} over {cfg.leak_shingles[:-1]} 5-grams, data.leak_threshold "
                          f"{cfg.leak_threshold:g}); remove one of them, or set data.on_leak: drop", "held_out",
        f["held_out_row"]) for f in found[:MAX_PAIRS]]
    if len(found) > MAX_PAIRS:
        problems.append(validation.Problem("near_duplicate", f"{len(found) - MAX_PAIRS} more near-duplicate pairs; "
                                                             "remove them, or set data.on_leak: drop", "held_out", None))
    return replace(report, problems=report.problems + problems), train, []


def _ood(cfg: DataConfig, rev: str, train: pd.DataFrame, report: validation.ValidationReport, hashes: dict[str, str],
         min_train_rows: int, rules: validation.Rules) -> pd.DataFrame:
    """Read and validate data.ood_eval_path at `rev` as held-out rows of the training rows (its row
    checks, no text shared with training, only training labels); record its hash in `hashes`."""
    ood, _, hashes[cfg.ood_eval_path] = _load(cfg, rev, cfg.ood_eval_path, "data.ood_eval_path", slices=False)
    checked = validation.validate(train, ood, source=f"{cfg.ood_eval_path}@{rev[:8]}", allowed_labels=cfg.labels,
                                  allow_duplicates=cfg.allow_duplicates, min_train_rows=min_train_rows, rules=rules)
    validation.raise_for_problems(checked)
    return ood


def replay(cfg: DataConfig, origin: dict, train: pd.DataFrame, held_out: pd.DataFrame, share: float,
           seed: int, labels: list[str] | None) -> tuple[pd.DataFrame, dict]:
    """Rows to replay from an earlier data revision, so a refresh does not forget what it taught.

    The file at `origin` (data_repo, data_rev, data_path: the champion's) is read; left out are its
    held-out rows (the stable hash split, when data.eval_path is unset), any text in this snapshot's
    training or held-out rows, repeats, and (for a classifier) labels outside `labels`. Of what is
    left, share / (1 - share) x len(train) rows are drawn, so they make up `share` of the mixed set:
    seeded, and stable (the pool is ordered by content first, so the file's row order does not matter).

    Returns:
        The rows (columns text, label) and their source: repo, rev, path, rows, available.
    """
    import random

    raw, resolved = read_at(origin["data_repo"], origin["data_rev"], origin["data_path"], "the champion's data_path")
    old = tables.parse_table(raw, origin["data_path"], cfg.text_column, cfg.label_column)
    old = old[old["text"].notna() & old["label"].notna() & ~old["undecodable"].astype(bool) & (old["malformed"].fillna("") == "")]
    if not cfg.eval_path:  # that revision's held-out rows, by the same hash split
        old = old[~tables.held_out_mask(old["text"], cfg.eval_fraction)]
    old = old.assign(norm=validation.normalize_text(old["text"]))
    seen = set(validation.normalize_text(pd.concat([train["text"], held_out["text"]])))
    old = old[~old["norm"].isin(seen)].drop_duplicates("norm")
    if labels:
        old = old[old["label"].isin(labels)]
    pool = sorted(zip(old["norm"], old["text"], old["label"]))  # content order: stable whatever the file's order
    wanted = min(len(pool), round(share / (1 - share) * len(train)))
    drawn = sorted(random.Random(seed).sample(range(len(pool)), wanted))
    rows = pd.DataFrame([(pool[i][1], pool[i][2]) for i in drawn], columns=["text", "label"])
    source = {"repo": origin["data_repo"], "rev": resolved, "path": origin["data_path"], "rows": wanted,
              "available": len(pool)}
    return rows, source


def load_ood(snapshot_dir: Path) -> pd.DataFrame | None:
    """A snapshot's out-of-domain held-out rows, or None when it has none."""
    path = snapshot_dir / OOD_FILE
    return tables.read_frame(path) if path.is_file() else None


def load_snapshot(snapshot_dir: Path) -> tuple[Snapshot, pd.DataFrame, pd.DataFrame]:
    """Read a snapshot folder written by `prepare`: its metadata, train rows and held-out rows.

    Raises:
        DataError: when the folder holds no snapshot.
    """
    if not (snapshot_dir / META_FILE).is_file():
        raise DataError(f"{snapshot_dir} holds no data snapshot; create it with `tuneloop data validate --out {snapshot_dir}`")
    try:
        meta = Snapshot(**json.loads((snapshot_dir / META_FILE).read_text()))
        return meta, tables.read_frame(snapshot_dir / TRAIN_FILE), tables.read_frame(snapshot_dir / HELD_OUT_FILE)
    except (ValueError, TypeError, KeyError, OSError) as exc:  # hand-edited or half-written: never guess
        raise DataError(f"{snapshot_dir} holds a damaged snapshot ({type(exc).__name__}: {exc}); "
                        f"recreate it with `tuneloop data validate --out {snapshot_dir}`") from exc
