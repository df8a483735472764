"""Tests for tuneloop.workspace and tuneloop.data on real git + DVC repositories with a local-folder remote.

The workspaces here carry a config without a model, so these tests never import torch (the shared
`workspace` fixture builds the tiny model, which costs ~8 s of imports).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tuneloop import data, gitrepo, tables
from tuneloop import workspace as ws
from tuneloop.config import DataConfig, load_config
from tuneloop.errors import DataError, Interrupted, WorkspaceError

CONFIG = "data:\n  path: data/tickets.csv\nregistry:\n  model_name: test-model\n"
DATA = DataConfig()  # text / label columns, any label, no duplicates


def write_csv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    frame = pd.DataFrame(pairs, columns=["text", "label"])
    frame.to_csv(path, index=False)
    return path


def remote_files(root: Path) -> list[Path]:
    return [p for p in (root / "storage" / "dvc-remote").rglob("*") if p.is_file()]


def head(root: Path) -> str:
    return gitrepo.git(root, "rev-parse", "HEAD")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def track_unchecked(root: Path, name: str, raw: bytes) -> str:
    """Track a file the way a colleague's own `dvc add` + `git commit` would, skipping add_dataset's checks.

    `prepare` must judge whatever is in the repository, however it got there.
    """
    from dvc.repo import Repo

    (root / "data" / name).write_bytes(raw)
    repo = Repo(str(root))
    repo.add(str(root / "data" / name))
    repo.close()
    return gitrepo.commit(root, [f"data/{name}.dvc", "data/.gitignore"], f"track data/{name} by hand")


def state(root: Path) -> tuple:
    """Everything a failed add must leave as it was: commits, index, work tree, data files, remote."""
    files = {
        str(p.relative_to(root)): sha256(p)
        for folder in ("data", "storage/dvc-remote") for p in sorted((root / folder).rglob("*")) if p.is_file()
    }
    return (
        gitrepo.git(root, "log", "--format=%H %s"),
        gitrepo.git(root, "ls-files", "--stage"),
        gitrepo.git(root, "status", "--porcelain", "--untracked-files=all"),
        sorted(p.name for p in (root / ".git").iterdir()),  # no index.lock left behind
        files,
    )


@pytest.fixture
def root(tmp_path) -> Path:
    """A fresh, empty workspace."""
    return ws.init(tmp_path / "ws", config_text=CONFIG).parent


# --- workspace.init ------------------------------------------------------------------------------


def test_init_creates_the_layout(tmp_path):
    config_path = ws.init(tmp_path / "ws", config_text=CONFIG)
    root = tmp_path / "ws"
    assert config_path == root / "tuneloop.yaml"
    assert gitrepo.is_repo(root)
    assert (root / ".dvc" / "config").is_file()
    assert (root / "data").is_dir()
    assert (root / "storage" / "dvc-remote").is_dir()
    tracked = gitrepo.git(root, "ls-files").splitlines()
    assert {"tuneloop.yaml", ".gitignore", ".dvc/config", ".dvcignore"} <= set(tracked)
    assert gitrepo.git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert gitrepo.git(root, "log", "--format=%s") == "workspace: init tuneloop"
    dvc_config = (root / ".dvc" / "config").read_text()
    assert str(root / "storage" / "dvc-remote") in dvc_config
    assert "remote = local" in dvc_config
    # the committed config loads, and its relative paths point into the workspace
    cfg = load_config(config_path)
    assert cfg.data.repo == str(root)
    assert cfg.registry.tracking_uri == f"sqlite:///{root}/mlflow.db"


def test_init_default_config_is_valid(tmp_path):
    cfg = load_config(ws.init(tmp_path / "ws"))
    assert cfg.method.name == "lora"
    assert cfg.data.path == "data/train.csv"


def test_init_into_an_existing_empty_folder(tmp_path):
    (tmp_path / "ws").mkdir()
    assert ws.init(tmp_path / "ws", config_text=CONFIG).is_file()


def test_init_into_a_non_empty_folder_fails_and_leaves_it_untouched(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    message = rf"^cannot init {re.escape(str(folder))}: the folder is not empty \(choose a new or empty folder\)$"
    with pytest.raises(WorkspaceError, match=message):
        ws.init(folder, config_text=CONFIG)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "keep me"


def test_init_twice_says_it_is_already_a_workspace(root):
    before = head(root)
    with pytest.raises(WorkspaceError, match=r"the folder is not empty \(it is already a workspace\)$"):
        ws.init(root, config_text=CONFIG)
    assert head(root) == before


def test_init_failure_leaves_nothing_half_made(tmp_path):
    (tmp_path / "a-file").write_text("")
    empty = tmp_path / "empty"
    empty.mkdir()
    message = r"^cannot init .*: Not a directory: .*a-file/remote; pass a writable folder \(and --remote\)$"
    with pytest.raises(WorkspaceError, match=message):
        ws.init(tmp_path / "new", remote=tmp_path / "a-file" / "remote", config_text=CONFIG)
    assert not (tmp_path / "new").exists()  # a folder init created is removed
    with pytest.raises(WorkspaceError, match=message):
        ws.init(empty, remote=tmp_path / "a-file" / "remote", config_text=CONFIG)
    assert list(empty.iterdir()) == []  # a folder that existed is emptied again, not removed


def test_find_config_walks_up_from_a_subfolder(root, tmp_path):
    assert ws.find_config(root / "data") == root / "tuneloop.yaml"
    with pytest.raises(WorkspaceError, match=r"^no tuneloop\.yaml in .* or its parents; pass --config or run `tuneloop init DIR`$"):
        ws.find_config(tmp_path / "elsewhere")


# --- data.add_dataset / data.read_at ---------------------------------------------------------------


def test_add_dataset_commits_the_dvc_file_and_pushes_to_the_remote(root, tickets_csv):
    before = head(root)
    version = data.add_dataset(root, tickets_csv, "tickets", DATA)
    assert re.fullmatch(r"[0-9a-f]{40}", version.rev)
    assert version.rev == head(root) != before
    assert (version.path, version.rows, version.sha256) == ("data/tickets.csv", 300, sha256(tickets_csv))
    tracked = gitrepo.git(root, "ls-files", "data").splitlines()
    assert sorted(tracked) == ["data/.gitignore", "data/tickets.csv.dvc"]  # the data itself is not in git
    assert gitrepo.git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert gitrepo.git(root, "log", "-1", "--format=%s") == "data: track data/tickets.csv with DVC"
    pushed = remote_files(root)
    assert [p.read_bytes() for p in pushed] == [tickets_csv.read_bytes()]


def test_a_second_version_keeps_the_first_readable(root, tickets_csv, tmp_path):
    first = data.add_dataset(root, tickets_csv, "tickets", DATA)
    newer = write_csv(tmp_path / "v2.csv", [("the app froze", "technical"), ("refund me", "billing")])
    second = data.add_dataset(root, newer, "tickets", DATA)
    assert second.rev != first.rev
    assert second.path == first.path
    assert len(remote_files(root)) == 2

    assert data.read_at(str(root), first.rev, "data/tickets.csv") == (tickets_csv.read_bytes(), first.rev)
    assert data.read_at(str(root), "HEAD", "data/tickets.csv") == (newer.read_bytes(), second.rev)
    assert data.read_at(str(root), "HEAD~1", "data/tickets.csv")[1] == first.rev

    # without the local cache and checkout, the old version comes back from the remote
    shutil.rmtree(root / ".dvc" / "cache")
    (root / "data" / "tickets.csv").unlink()
    assert data.read_at(str(root), first.rev, "data/tickets.csv")[0] == tickets_csv.read_bytes()


def test_read_at_an_unknown_rev(root, tickets_csv):
    data.add_dataset(root, tickets_csv, "tickets", DATA)
    message = rf"^rev 'v9\.9' not found in {re.escape(str(root))}; pass a commit, tag or branch listed by `git log`$"
    with pytest.raises(DataError, match=message):
        data.read_at(str(root), "v9.9", "data/tickets.csv")


def test_read_at_a_path_not_in_the_repo(root, tickets_csv):
    data.add_dataset(root, tickets_csv, "tickets", DATA)
    message = rf"^data file 'data/other\.csv' not found in {re.escape(str(root))} at rev HEAD; check data\.path or `git log`$"
    with pytest.raises(DataError, match=message):
        data.read_at(str(root), "HEAD", "data/other.csv")


def test_read_at_a_file_added_after_the_rev(root, tickets_csv):
    before = head(root)
    data.add_dataset(root, tickets_csv, "tickets", DATA)
    with pytest.raises(DataError, match=r"^data file 'data/tickets\.csv' not found in .* at rev [0-9a-f]{40};"):
        data.read_at(str(root), before, "data/tickets.csv")


def test_add_an_empty_file(root, tmp_path):
    empty = tmp_path / "empty.csv"
    for content in ["", " \n\n"]:
        empty.write_text(content)
        with pytest.raises(DataError, match=rf"^data file '{re.escape(str(empty))}' is empty; add a header and rows$"):
            data.add_dataset(root, empty, "tickets", DATA)
    assert gitrepo.git(root, "log", "--format=%s") == "workspace: init tuneloop"
    assert remote_files(root) == []


def test_add_refuses_bad_inputs(root, tmp_path, tickets_csv):
    with pytest.raises(DataError, match=r"^data file '.*missing\.csv' not found; pass the path of a CSV, TSV or JSONL file$"):
        data.add_dataset(root, tmp_path / "missing.csv", "tickets", DATA)
    parquet = tmp_path / "t.parquet"
    parquet.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"has unsupported format '\.parquet'; use \.csv, \.tsv or \.jsonl$"):
        data.add_dataset(root, parquet, "tickets", DATA)
    with pytest.raises(DataError, match=r"^dataset name 'my tickets' is not valid; use letters, digits, '-' and '_'$"):
        data.add_dataset(root, tickets_csv, "my tickets", DATA)
    with pytest.raises(WorkspaceError, match=r"is not a tuneloop workspace; create one with `tuneloop init "):
        data.add_dataset(tmp_path, tickets_csv, "tickets", DATA)
    assert gitrepo.git(root, "log", "--format=%s") == "workspace: init tuneloop"


CLEAN = b"text,label\ncard declined,billing\napp crashes,technical\n"
# A file add_dataset must refuse before it copies, commits or pushes anything: (file name, bytes,
# data config, the message it must raise).
BAD_FILES = [
    ("nul.csv", b"text,label\nfine,a\n\"nul\x00here\",b\n", DATA,
     r"^1 problem\(s\) in data file '.*nul\.csv': row 2 \(file\): text holds the control character '\\x00' at "
     r"character 4; delete it \(tab, newline and carriage return are the only ones allowed\)$"),
    ("big.csv", b'text,label\n"' + b"x" * 5_000_000 + b'",a\nsmall,b\n', DATA,
     r": row 1 \(file\): text is 5,000,000 characters, over the limit of 100,000; shorten or split the text"),
    ("dupes.csv", b"text,label\ncard declined,billing\napp crashes,technical\nCard  declined,billing\n", DATA,
     r": row 3 \(file\): duplicate of row 1 \(text 'Card  declined', label 'billing'\); remove the duplicates or "
     r"set data\.allow_duplicates: true$"),
    ("conflict.csv", b"text,label\ncard declined,billing\ncard declined,technical\n", DataConfig(allow_duplicates=True),
     r": row 2 \(file\): text 'card declined' is labelled 'technical' here and 'billing' in row 1; give the text one label"),
    ("labels.csv", b"text,label\ncard declined,billing\nplease refund,refund\n", DataConfig(labels=["billing", "technical"]),
     r": row 2 \(file\): label 'refund' is not in the allowed labels \['billing', 'technical'\]; fix the row or add "
     r"the label to data\.labels$"),
    ("blank-label.csv", b"text,label\ncard declined,billing\napp crashes,   \n", DATA,
     r": row 2 \(file\): label is empty; label the row or remove it$"),
    ("padded.csv", b"text,label\ncard declined,billing\napp crashes, technical\n", DATA,
     r": row 2 \(file\): label ' technical' has whitespace around it, so it would be a class apart from 'technical'"),
    ("latin1.csv", b"text,label\ncaf\xe9 closed,billing\nok,technical\n", DATA,
     r": row 1 \(file\): bytes that are not UTF-8; re-save the file as UTF-8$"),
    ("header.csv", b"text,label\n", DATA, r"^data file '.*header\.csv' has a header but no rows; add rows below the header$"),
    ("twice.csv", b"text,label,text\na,b,c\n", DATA, r"^data file '.*twice\.csv' repeats the column 'text' in its header;"),
    ("columns.csv", CLEAN, DataConfig(text_column="body"),
     r"^data file '.*columns\.csv' has no column 'body' or 'label' \(found: 'text', 'label'\); set data\.text_column"),
    ("utf16.csv", CLEAN.decode().encode("utf-16"), DATA, r"^data file '.*utf16\.csv' is UTF-16 or UTF-32 \(little-endian\)"),
    ("number.jsonl", b'{"text": "a", "label": "x"}\n7\n', DATA, r"^.*number\.jsonl: line 2 is a JSON number, not an object;"),
    ("nested.jsonl", b'{"text": {"body": "a"}, "label": "x"}\n', DATA,
     r": row 1 \(file\): text is a JSON object, not a string; write the text as a JSON string$"),
    ("surrogate.jsonl", b'{"text": "a \\ud800", "label": "x"}\n', DATA,
     r": row 1 \(file\): text holds the lone surrogate '\\ud800', which is not valid Unicode"),
]


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> Path:
    """A workspace that already tracks data/<name> for every BAD_FILES name, so a refusal must keep those bytes."""
    tmp = tmp_path_factory.mktemp("populated")
    root = ws.init(tmp / "ws", config_text=CONFIG).parent
    for name in {Path(name).stem for name, *_ in BAD_FILES if name.endswith(".csv")}:
        data.add_dataset(root, write_csv(tmp / f"{name}.csv", [("old text", "a"), ("other text", "b")]), name, DATA)
    return root


@pytest.mark.parametrize("name, raw, cfg, message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_add_refuses_a_bad_file_before_writing_anything(populated, tmp_path, name, raw, cfg, message):
    source = tmp_path / name
    source.write_bytes(raw)
    before = state(populated)
    with pytest.raises(DataError, match=message) as caught:
        data.add_dataset(populated, source, Path(name).stem, cfg)
    assert "\n" not in str(caught.value)
    assert state(populated) == before


def test_add_reads_the_configured_columns_and_accepts_bom_and_crlf(root, tmp_path):
    source = tmp_path / "custom.csv"
    source.write_bytes("\ufeffid,body,topic\r\n1,card declined,billing\r\n2,app crashes,technical\r\n".encode())
    version = data.add_dataset(root, source, "custom", DataConfig(text_column="body", label_column="topic"))
    assert (version.path, version.rows) == ("data/custom.csv", 2)
    assert data.read_at(str(root), version.rev, "data/custom.csv")[0] == source.read_bytes()


def test_add_refuses_sources_that_are_not_readable_files(root, tmp_path):
    before = state(root)
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(DataError, match=r"^data file '.*folder\.csv' is a directory; pass the path of a CSV, TSV or JSONL file$"):
        data.add_dataset(root, tmp_path / "folder.csv", "tickets", DATA)
    os.mkfifo(tmp_path / "fifo.csv")
    with pytest.raises(DataError, match=r"^data file '.*fifo\.csv' is not a regular file; pass the path of a CSV"):
        data.add_dataset(root, tmp_path / "fifo.csv", "tickets", DATA)
    (tmp_path / "mem.csv").symlink_to("/proc/self/mem")  # a regular file whose read fails, even for root
    with pytest.raises(DataError, match=r"^cannot read data file '.*mem\.csv' \(Input/output error\); check its permissions"):
        data.add_dataset(root, tmp_path / "mem.csv", "tickets", DATA)
    assert state(root) == before


def test_add_a_file_that_already_is_the_target_tracks_it_in_place(root, tickets_csv):
    target = root / "data" / "tickets.csv"
    shutil.copyfile(tickets_csv, target)
    version = data.add_dataset(root, target, "tickets", DATA)
    assert (version.path, version.rows, version.rev) == ("data/tickets.csv", 300, head(root))
    assert target.read_bytes() == tickets_csv.read_bytes()
    assert gitrepo.git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert [p.read_bytes() for p in remote_files(root)] == [tickets_csv.read_bytes()]
    again = data.add_dataset(root, target, "tickets", DATA)  # tracked already: the same version, no new commit
    assert again.rev == version.rev
    assert gitrepo_log_count(root) == 2


@pytest.fixture
def with_v1(root, tickets_csv, tmp_path) -> tuple[Path, Path]:
    """A workspace tracking data/tickets.csv, and a different second version of it to add."""
    from tuneloop import synthetic

    data.add_dataset(root, tickets_csv, "tickets", DATA)
    return root, synthetic.write_csv(synthetic.generate_tickets(2, 40, seed=1), tmp_path / "v2.csv")


def pre_commit_hook(root: Path, body: str) -> None:
    hook = root / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\n{body}\n")
    hook.chmod(0o755)


FAILURES = [
    ("push", r"^dvc push of data/tickets\.csv failed: \[Errno 20\] Not a directory: .*; the workspace is as it "
             r"was, nothing was committed; fix the remote \(\.dvc/config, `dvc remote list`\) and rerun$"),
    ("commit", r"^git commit failed in .*: the hook says no; the workspace is as it was, nothing was committed; "
               r"fix git \(hooks, identity, disk\) and rerun$"),
    ("interrupt", r"^interrupted during git commit of data/tickets\.csv; the workspace is as it was, nothing was "
                  r"committed; rerun `tuneloop data add` to add it$"),
]


@pytest.mark.parametrize("failure, message", FAILURES, ids=[case[0] for case in FAILURES])
def test_a_failure_after_the_copy_restores_the_workspace(with_v1, tmp_path, failure, message):
    root, v2 = with_v1
    old_bytes = (root / "data" / "tickets.csv").read_bytes()
    old_dvc = (root / "data" / "tickets.csv.dvc").read_bytes()
    before = state(root)
    if failure == "push":  # config.local is git-ignored, so the work tree stays clean
        (tmp_path / "a-file").write_text("")
        (root / ".dvc" / "config.local").write_text(f"['remote \"local\"']\n    url = {tmp_path / 'a-file' / 'remote'}\n")
    elif failure == "commit":  # the push has happened by now: its object must be taken back
        pre_commit_hook(root, "echo 'the hook says no' >&2\nexit 1")
    else:  # a real SIGINT to this process while git commit runs, as Ctrl-C would send
        pre_commit_hook(root, f"kill -INT {os.getpid()}\nsleep 2")
    error = {"push": DataError, "commit": WorkspaceError, "interrupt": Interrupted}[failure]
    with pytest.raises(error, match=message):
        data.add_dataset(root, v2, "tickets", DATA)
    assert state(root) == before
    assert (root / "data" / "tickets.csv").read_bytes() == old_bytes
    assert (root / "data" / "tickets.csv.dvc").read_bytes() == old_dvc
    # once the cause is gone, the same add goes through
    (root / ".dvc" / "config.local").unlink(missing_ok=True)
    (root / ".git" / "hooks" / "pre-commit").unlink(missing_ok=True)
    assert data.add_dataset(root, v2, "tickets", DATA).rev == head(root) != before[0].split()[0]
    assert len(remote_files(root)) == 2


def test_a_failing_dvc_add_restores_a_git_tracked_file(root, tmp_path):
    (root / "data" / "plain.csv").write_bytes(CLEAN)
    gitrepo.commit(root, ["data/plain.csv"], "track plain.csv in git")
    before = state(root)
    newer = write_csv(tmp_path / "plain.csv", [("refund me", "billing"), ("it froze", "technical")])
    with pytest.raises(DataError, match=r"^dvc add of data/plain\.csv failed: output 'data/plain\.csv' is already "
                                        r"tracked by SCM .*; the workspace is as it was, nothing was committed; fix"):
        data.add_dataset(root, newer, "plain", DATA)
    assert state(root) == before
    assert (root / "data" / "plain.csv").read_bytes() == CLEAN


# --- data.prepare ---------------------------------------------------------------------------------

GOOD_EVAL = [("my bill is too high this month", "billing"), ("the sync stopped working", "technical"),
             ("cannot reset my password", "account")]
SINGLE_CLASS = [(f"charged twice for order {i}", "billing") for i in range(30)]
UNKNOWN_LABEL = [("card declined", "billing"), ("app crashes", "technical"), ("please refund me", "refund"),
                 ("screen stays black", "technical"), ("double charge", "billing"), ("locked out", "account")]
BLANK_TEXT = [("card declined", "billing"), ("app crashes", "technical"), ("", "billing"),
              ("screen stays black", "technical"), ("   ", "technical"), ("double charge", "billing"),
              ("locked out", "account")]
# validation counts these as the same text; allowed duplicates must never straddle the split
SPACED = [(f"invoice {i} is wrong", "billing") for i in range(20)] + [(f"Invoice {i}  is  wrong", "billing") for i in range(20)] \
    + [(f"app {i} crashes", "technical") for i in range(20)]


def _v1_pairs() -> list[tuple[str, str]]:
    from tuneloop import synthetic

    return synthetic.generate_tickets(1, 300, seed=0)


V1 = _v1_pairs()
# rows 301-304, past any cap of 50 train rows: a duplicate, a conflicting label, a NUL, a 200k-character text
BEYOND_CAP = [V1[0], (V1[1][0], "billing" if V1[1][1] != "billing" else "account"), ("a NUL \x00 past the cap", V1[2][1]), ("y" * 200_000, V1[3][1])]
# sorted by label: the first 20 train rows are all billing
SORTED = [(f"{label} ticket number {i}", label) for label in ("billing", "technical", "account") for i in range(40)]
ODD_JSONL = (
    b'{"text": "card declined", "label": "billing"}\n{"text": "app crashes", "label": "technical"}\n'
    b'{"text": "bad \\ud800 escape", "label": "billing"}\n{"text": ["a", "list"], "label": "technical"}\n'
    b'{"text": "fine again", "label": "billing"}\n{"text": "and another", "label": "technical"}\n'
    b'{"text": "locked out", "label": "account"}\n'
)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """One workspace with every dataset the prepare tests read, and the rev of each version."""
    from tuneloop import synthetic

    tmp = tmp_path_factory.mktemp("prepare")
    root = ws.init(tmp / "ws", config_text=CONFIG).parent
    revs = {}
    v1 = synthetic.write_csv(synthetic.generate_tickets(1, 300, seed=0), tmp / "v1.csv")
    revs["v1"] = data.add_dataset(root, v1, "tickets", DATA).rev
    for name, pairs in [("eval", GOOD_EVAL), ("single", SINGLE_CLASS), ("unknown", UNKNOWN_LABEL),
                        ("one", [("my card was charged twice", "billing")])]:
        revs[name] = data.add_dataset(root, write_csv(tmp / f"{name}.csv", pairs), name, DATA).rev
    # files add_dataset would refuse, committed by hand: prepare must still catch them
    for name, pairs in [("blank", BLANK_TEXT), ("spaced", SPACED), ("beyond", V1 + BEYOND_CAP), ("sorted", SORTED)]:
        revs[name] = track_unchecked(root, f"{name}.csv", write_csv(tmp / f"{name}.csv", pairs).read_bytes())
    revs["odd"] = track_unchecked(root, "odd.jsonl", ODD_JSONL)
    v2 = synthetic.write_csv(synthetic.generate_tickets(2, 200, seed=1), tmp / "v2.csv")
    revs["v2"] = data.add_dataset(root, v2, "tickets", DATA).rev
    return root, revs


def test_prepare_writes_a_disjoint_snapshot(tracked, tmp_path):
    root, revs = tracked
    cfg = load_config(root / "tuneloop.yaml").data
    snapshot = data.prepare(cfg, revs["v1"], tmp_path / "snap")
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == ["held_out.jsonl", "meta.json", "train.jsonl", "validation.json"]

    meta, train, held_out = data.load_snapshot(tmp_path / "snap")
    assert meta == snapshot
    assert (meta.repo, meta.rev, meta.path, meta.eval_path) == (str(root), revs["v1"], "data/tickets.csv", None)
    raw, _ = data.read_at(str(root), revs["v1"], "data/tickets.csv")
    assert meta.sha256 == {"data/tickets.csv": hashlib.sha256(raw).hexdigest()}
    assert json.loads((tmp_path / "snap" / "meta.json").read_text())["rev"] == revs["v1"]

    assert set(train["row"]).isdisjoint(held_out["row"])
    assert sorted([*train["row"], *held_out["row"]]) == list(range(1, 301))
    assert (meta.train_rows, meta.held_out_rows) == (len(train), len(held_out))
    assert 30 <= len(held_out) <= 90  # eval_fraction 0.2 of 300
    assert meta.labels == ["account", "billing", "technical"]
    assert held_out["row"].tolist() == sorted(held_out["row"])

    report = json.loads((tmp_path / "snap" / "validation.json").read_text())
    assert (report["ok"], report["problems"], report["source"]) == (True, [], f"data/tickets.csv@{revs['v1'][:8]}")


def test_prepare_reads_the_rev_it_is_given(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/tickets.csv", rev=revs["v1"])
    old = data.prepare(cfg, revs["v1"], tmp_path / "old")
    new = data.prepare(cfg, "HEAD", tmp_path / "new")
    assert new.rev == revs["v2"]
    assert new.train_rows + new.held_out_rows == 200
    assert old.sha256 != new.sha256
    # the hash split is stable: a text held out in v1 is never trained on in v2
    _, old_train, old_held = data.load_snapshot(tmp_path / "old")
    _, new_train, new_held = data.load_snapshot(tmp_path / "new")
    assert set(old_held["text"]).isdisjoint(new_train["text"])
    assert set(old_train["text"]).isdisjoint(new_held["text"])


def test_prepare_with_eval_path_uses_that_file(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/tickets.csv", eval_path="data/eval.csv")
    snapshot = data.prepare(cfg, revs["eval"], tmp_path / "snap")  # v1 tickets + eval
    _, train, held_out = data.load_snapshot(tmp_path / "snap")
    assert len(train) == 300
    assert list(zip(held_out["text"], held_out["label"])) == GOOD_EVAL
    assert held_out["row"].tolist() == [1, 2, 3]
    eval_raw, _ = data.read_at(str(root), revs["eval"], "data/eval.csv")
    assert snapshot.sha256["data/eval.csv"] == hashlib.sha256(eval_raw).hexdigest()
    tickets_raw, _ = data.read_at(str(root), revs["v1"], "data/tickets.csv")
    assert snapshot.sha256["data/tickets.csv"] == hashlib.sha256(tickets_raw).hexdigest()
    assert sorted(snapshot.sha256) == ["data/eval.csv", "data/tickets.csv"]
    assert (snapshot.eval_path, snapshot.train_rows, snapshot.held_out_rows) == ("data/eval.csv", 300, 3)


def test_prepare_caps_rows(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/tickets.csv", max_train_rows=50, max_eval_rows=10)
    snapshot = data.prepare(cfg, revs["v1"], tmp_path / "snap")
    assert (snapshot.train_rows, snapshot.held_out_rows) == (50, 10)


def bad_prepare(cfg: DataConfig, rev: str, out: Path, **kwargs) -> tuple[str, dict]:
    with pytest.raises(DataError) as caught:
        data.prepare(cfg, rev, out, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert sorted(p.name for p in out.iterdir()) == ["validation.json"]  # the report, and no snapshot
    return message, json.loads((out / "validation.json").read_text())


def test_prepare_single_class(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/single.csv")
    message, report = bad_prepare(cfg, "HEAD", tmp_path / "snap")
    assert message == (
        f"1 problem(s) in data/single.csv@{revs['v2'][:8]}: train split has only the label 'billing'; "
        "classification needs at least two labels, so add rows of another class"
    )
    assert (report["ok"], report["counts"]) == (False, {"single_class": 1})


def test_prepare_unknown_label_names_the_row(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/unknown.csv", eval_path="data/eval.csv", labels=["billing", "technical", "account"])
    message, report = bad_prepare(cfg, revs["unknown"], tmp_path / "snap")
    assert message == (
        f"1 problem(s) in data/unknown.csv@{revs['unknown'][:8]}: row 3 (train): label 'refund' is not in the allowed "
        "labels ['account', 'billing', 'technical']; fix the row or add the label to data.labels"
    )
    assert [(p["check"], p["split"], p["row"]) for p in report["problems"]] == [("unknown_label", "train", 3)]


def test_prepare_empty_texts_name_the_rows(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/blank.csv", eval_path="data/eval.csv")
    message, report = bad_prepare(cfg, revs["blank"], tmp_path / "snap")
    assert message == (
        f"2 problem(s) in data/blank.csv@{revs['blank'][:8]}: "
        "row 3 (train): text is empty; fill in the text or remove the row; "
        "row 5 (train): text is empty; fill in the text or remove the row"
    )
    assert report["counts"] == {"missing_text": 2}


def test_prepare_keeps_allowed_duplicates_on_one_side(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/spaced.csv", allow_duplicates=True, eval_fraction=0.3)
    snapshot = data.prepare(cfg, revs["spaced"], tmp_path / "snap")
    assert snapshot.train_rows + snapshot.held_out_rows == 60
    assert 0 < snapshot.held_out_rows < 60
    _, train, held_out = data.load_snapshot(tmp_path / "snap")
    norm = lambda texts: set(" ".join(t.lower().split()) for t in texts)  # noqa: E731
    assert norm(train["text"]).isdisjoint(norm(held_out["text"]))


def test_prepare_at_a_missing_rev_writes_nothing(tracked, tmp_path):
    root, _ = tracked
    with pytest.raises(DataError, match=r"^rev 'nope' not found in "):
        data.prepare(DataConfig(repo=str(root), path="data/tickets.csv"), "nope", tmp_path / "snap")
    assert not (tmp_path / "snap").exists()


def test_parse_and_mask_agree_with_prepare(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/tickets.csv")
    data.prepare(cfg, revs["v1"], tmp_path / "snap")
    raw, _ = data.read_at(str(root), revs["v1"], "data/tickets.csv")
    frame = tables.parse_table(raw, "data/tickets.csv", "text", "label")
    expected = frame[tables.held_out_mask(frame["text"], 0.2)]["row"].tolist()
    assert data.load_snapshot(tmp_path / "snap")[2]["row"].tolist() == expected


def side(text: str, fraction: float = 0.2) -> str:
    return "held_out" if tables.held_out_mask(pd.Series([text]), fraction).iloc[0] else "train"


def test_prepare_validates_rows_beyond_the_caps(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/beyond.csv", max_train_rows=50, max_eval_rows=10)
    message, report = bad_prepare(cfg, revs["beyond"], tmp_path / "snap")
    texts = [text for text, _ in BEYOND_CAP]
    assert [(p["check"], p["split"], p["row"]) for p in report["problems"]] == sorted(
        [("duplicate", side(texts[0]), 301), ("conflicting_labels", side(texts[1]), 302),
         ("control_characters", side(texts[2]), 303), ("too_long", side(texts[3]), 304)],
        key=lambda problem: (problem[1] == "held_out", problem[2]),
    )
    assert f"row 301 ({side(texts[0])}): duplicate of row 1 (text " in message
    assert f"row 303 ({side(texts[2])}): text holds the control character '\\x00' at character 7;" in message
    assert f"row 304 ({side(texts[3])}): text is 200,000 characters, over the limit of 100,000;" in message
    assert (report["train_rows"], report["held_out_rows"]) == (50, 10)  # the sizes training would have used


def test_prepare_reports_what_only_the_cap_causes(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/sorted.csv", max_train_rows=20)
    with pytest.raises(DataError) as caught:
        data.prepare(cfg, revs["sorted"], tmp_path / "snap", champion_labels=["account", "billing", "technical"])
    report = json.loads((tmp_path / "snap" / "validation.json").read_text())
    held_out = [(i + 1, label) for i, (text, label) in enumerate(SORTED) if side(text) == "held_out"]
    assert [(p["check"], p["split"], p["row"]) for p in report["problems"]] == [
        ("single_class", "", None), ("label_set_changed", "", None),
        *[("unknown_label", "held_out", row) for row, label in held_out if label != "billing"],
    ]
    suffix = " (with data.max_train_rows: 20; raise or unset the cap)"
    assert str(caught.value).startswith(
        f"{len(report['problems'])} problem(s) in data/sorted.csv@{revs['sorted'][:8]}: train split has only the label "
        f"'billing'; classification needs at least two labels, so add rows of another class{suffix}; train label set "
        "differs from the champion's (added [], removed ['account', 'technical']); relabel to the champion's label "
        f"set or register under a new registry.model_name{suffix}; row "
    )
    assert all(p["message"].endswith(suffix) for p in report["problems"])
    assert (report["train_rows"], report["labels"]) == (20, ["billing"])


def test_prepare_needs_rows_for_the_dev_split(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/one.csv", eval_path="data/eval.csv")
    message, report = bad_prepare(cfg, revs["one"], tmp_path / "one")
    # one row is also one class, and the eval file's other two labels are unseen in train
    assert [p["check"] for p in report["problems"]] == ["too_few_rows", "single_class", "unknown_label", "unknown_label"]
    assert message.startswith(
        f"4 problem(s) in data/one.csv@{revs['one'][:8]}: train split of data/one.csv@{revs['one'][:8]} has 1 row(s); "
        "training sets aside a dev split and needs at least 2, so add rows or lower data.eval_fraction; "
    )
    capped = DataConfig(repo=str(root), path="data/tickets.csv", max_train_rows=20)
    message, report = bad_prepare(capped, revs["v1"], tmp_path / "capped", min_train_rows=30)
    assert [p["check"] for p in report["problems"]] == ["too_few_rows"]
    assert message.endswith(
        "has 20 row(s); training sets aside a dev split and needs at least 30, so add rows or lower "
        "data.eval_fraction (with data.max_train_rows: 20; raise or unset the cap)"
    )
    train_rows = 300 - sum(side(text) == "held_out" for text, _ in V1)
    with pytest.raises(DataError, match=rf": train split of data/tickets\.csv@{revs['v1'][:8]} has {train_rows} row\(s\); "
                       r"training sets aside a dev split and needs at least 1000, so add rows"):
        data.prepare(DataConfig(repo=str(root), path="data/tickets.csv"), revs["v1"], tmp_path / "min", min_train_rows=1000)


def test_caps_that_cut_nothing_are_not_mentioned(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/single.csv", max_train_rows=1000, max_eval_rows=1000)
    message, _ = bad_prepare(cfg, revs["single"], tmp_path / "snap")
    assert message.endswith("classification needs at least two labels, so add rows of another class")


def test_prepare_reports_odd_json_values_as_rows(tracked, tmp_path):
    root, revs = tracked
    cfg = DataConfig(repo=str(root), path="data/odd.jsonl", eval_path="data/eval.csv")
    message, report = bad_prepare(cfg, revs["odd"], tmp_path / "snap")
    assert [(p["check"], p["split"], p["row"]) for p in report["problems"]] == [
        ("invalid_unicode", "train", 3), ("not_a_string", "train", 4),
    ]
    assert "row 4 (train): text is a JSON array, not a string; write the text as a JSON string" in message


def in_repo(root: Path, **fields) -> DataConfig:
    # model_copy skips validation, so these bad paths reach the data layer even once config rejects them
    return DataConfig(repo=str(root), path="data/tickets.csv").model_copy(update=fields)


OUTSIDE = r" points outside the repository; set it to a path inside data\.repo, such as data/train\.csv$"
PATH_ERRORS = [
    ({"path": "../outside.csv"}, r"^data\.path '\.\./outside\.csv'" + OUTSIDE),
    ({"path": "/etc/passwd.csv"}, r"^data\.path '/etc/passwd\.csv'" + OUTSIDE),
    ({"path": "data/../../x.csv"}, r"^data\.path 'data/\.\./\.\./x\.csv'" + OUTSIDE),
    ({"path": ""}, r"^data\.path '' names no file; set it to a data file in the repository, such as data/train\.csv$"),
    ({"path": "./"}, r"^data\.path '\./' names no file;"),
    ({"path": "data"}, r"^data\.path 'data' is a directory in .* at rev HEAD; name a file in it, such as data/train\.csv$"),
    ({"eval_path": "../eval.csv"}, r"^data\.eval_path '\.\./eval\.csv'" + OUTSIDE),
    ({"eval_path": "data/missing.csv"},
     r"^data file 'data/missing\.csv' not found in .* at rev [0-9a-f]{40}; check data\.eval_path or `git log`$"),
    ({"eval_path": "./data/tickets.csv"}, r"^data\.eval_path '\./data/tickets\.csv' is the same file as data\.path; "
                                          r"name a separate held-out file, or unset data\.eval_path"),
]


@pytest.mark.parametrize("fields, message", PATH_ERRORS, ids=[str(case[0]) for case in PATH_ERRORS])
def test_prepare_refuses_bad_paths_before_writing(tracked, tmp_path, fields, message):
    root, _ = tracked
    with pytest.raises(DataError, match=message):
        data.prepare(in_repo(root, **fields), "HEAD", tmp_path / "snap")
    assert not (tmp_path / "snap").exists()


FIX = r"; set data\.rev or pass --rev with a commit, tag or branch \(e\.g\. HEAD\)$"
REV_ERRORS = [
    ("", r"^rev '' is empty" + FIX),
    ("  \t", r"^rev '  \\t' is empty" + FIX),
    ("--all", r"^rev '--all' starts with '-', which git reads as an option" + FIX),
    ("-1", r"^rev '-1' starts with '-', which git reads as an option" + FIX),
    ("HEAD\n", r"^rev 'HEAD\\n' holds a control character" + FIX),
]


@pytest.mark.parametrize("rev, message", REV_ERRORS, ids=[repr(case[0]) for case in REV_ERRORS])
def test_bad_revs_are_refused_locally_and_remotely(tracked, tmp_path, rev, message):
    root, _ = tracked
    with pytest.raises(DataError, match=message):
        data.prepare(in_repo(root), rev, tmp_path / "snap")
    assert not (tmp_path / "snap").exists()
    with pytest.raises(DataError, match=message):  # refused before any network call
        gitrepo.resolve_rev("https://example.invalid/data.git", rev)


def test_adding_the_same_bytes_twice_returns_the_tracked_version(tmp_path, tickets_csv):
    from tuneloop import data, workspace

    root = workspace.init(tmp_path / "again").parent
    first = data.add_dataset(root, tickets_csv, "tickets", DATA)
    second = data.add_dataset(root, tickets_csv, "tickets", DATA)
    assert second.rev == first.rev and second.sha256 == first.sha256
    assert gitrepo_log_count(root) == 2  # init + one data commit


def gitrepo_log_count(root):
    from tuneloop import gitrepo

    return len(gitrepo.git(root, "log", "--format=%H").splitlines())


def test_add_commits_the_data_alone_and_leaves_other_staged_work_staged(root, tickets_csv):
    (root / "notes.txt").write_text("work in progress\n")
    gitrepo.git(root, "add", "notes.txt")
    version = data.add_dataset(root, tickets_csv, "tickets", DataConfig(path="data/tickets.csv"))
    committed = gitrepo.git(root, "show", "--name-only", "--format=", version.rev).splitlines()
    assert committed == ["data/.gitignore", "data/tickets.csv.dvc"]
    assert gitrepo.git(root, "status", "--porcelain") == "A  notes.txt"
    again = data.add_dataset(root, tickets_csv, "tickets", DataConfig(path="data/tickets.csv"))  # same bytes: no-op
    assert again.rev == version.rev and gitrepo.git(root, "status", "--porcelain") == "A  notes.txt"


# --- slices (data.slice_column)

SLICED_EVAL = b"text,label,region\nmy card was charged twice,billing,emea\nthe app crashes on start,technical,apac\n"


@pytest.fixture(scope="module")
def sliced(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A workspace with v1 tickets (no slice column), a sliced eval file, and files with slice problems."""
    from tuneloop import synthetic

    tmp = tmp_path_factory.mktemp("sliced")
    root = ws.init(tmp / "ws", config_text=CONFIG).parent
    revs = {"v1": data.add_dataset(root, synthetic.write_csv(synthetic.generate_tickets(1, 300, seed=0), tmp / "v1.csv"),
                                   "tickets", DATA).rev}
    revs["eval"] = track_unchecked(root, "eval.csv", SLICED_EVAL)
    revs["unsliced"] = track_unchecked(root, "plain.csv", b"text,label\nmy card was charged twice,billing\n")
    revs["blank"] = track_unchecked(root, "blank.csv", SLICED_EVAL + b"locked out of my account,account,\n")
    regions = pd.DataFrame(synthetic.generate_tickets(1, 60, seed=5), columns=["text", "label"])
    regions["region"] = ["emea", "apac", "amer"] * 20
    revs["regions"] = track_unchecked(root, "regions.csv", regions.to_csv(index=False).encode())
    return root, revs


def test_prepare_reads_the_slice_column_of_the_held_out_file(sliced, tmp_path):
    root, revs = sliced
    cfg = DataConfig(repo=str(root), path="data/tickets.csv", eval_path="data/eval.csv", slice_column="region")
    data.prepare(cfg, revs["eval"], tmp_path / "snap")
    _, train, held_out = data.load_snapshot(tmp_path / "snap")
    assert held_out[["text", "slice"]].values.tolist() == [["my card was charged twice", "emea"],
                                                           ["the app crashes on start", "apac"]]
    assert "slice" not in train.columns  # the training file needs no slice column


def test_prepare_split_from_one_file_carries_the_slices_on_both_sides(sliced, tmp_path):
    root, revs = sliced
    cfg = DataConfig(repo=str(root), path="data/regions.csv", slice_column="region")
    data.prepare(cfg, revs["regions"], tmp_path / "snap")
    _, train, held_out = data.load_snapshot(tmp_path / "snap")
    rows = pd.concat([train, held_out]).sort_values("row")
    assert rows["slice"].tolist() == ["emea", "apac", "amer"] * 20
    assert sorted(set(held_out["slice"])) == ["amer", "apac", "emea"]


def test_prepare_refuses_a_held_out_file_without_the_slice_column(sliced, tmp_path):
    root, revs = sliced
    cfg = DataConfig(repo=str(root), path="data/tickets.csv", eval_path="data/plain.csv", slice_column="region")
    with pytest.raises(DataError) as caught:
        data.prepare(cfg, revs["unsliced"], tmp_path / "snap")
    assert str(caught.value) == (
        "data file 'data/plain.csv' has no column 'region' (found: 'text', 'label'); "
        "add the column to the file, or set or remove data.slice_column"
    )
    assert not (tmp_path / "snap").exists()


def test_prepare_names_a_held_out_row_without_a_slice(sliced, tmp_path):
    root, revs = sliced
    cfg = DataConfig(repo=str(root), path="data/tickets.csv", eval_path="data/blank.csv", slice_column="region")
    message, report = bad_prepare(cfg, revs["blank"], tmp_path / "snap")
    assert message == (
        f"1 problem(s) in data/tickets.csv@{revs['blank'][:8]}: row 3 (held_out): slice is empty "
        "(data.slice_column); name the row's slice or remove the row"
    )
    assert [(p["check"], p["split"], p["row"]) for p in report["problems"]] == [("missing_slice", "held_out", 3)]


def test_a_snapshot_made_without_the_slice_column_is_refused_before_scoring(sliced, tmp_path):
    from tuneloop import cycle

    root, revs = sliced
    cfg = load_config(root / "tuneloop.yaml")
    plain = cfg.data.model_copy(update={"eval_path": "data/eval.csv"})
    data.prepare(plain, revs["eval"], tmp_path / "snap")
    sliced_cfg = cfg.model_copy(update={"data": plain.model_copy(update={"slice_column": "region"})})
    with pytest.raises(DataError) as caught:
        cycle.evaluate_step(sliced_cfg, tmp_path / "snap", tmp_path / "no-adapter", tmp_path / "work")
    assert str(caught.value) == (
        f"the snapshot in {tmp_path / 'snap'} was made with data.slice_column None, the config has 'region'; "
        f"recreate it with `tuneloop data validate --out {tmp_path / 'snap'}` under this config"
    )
