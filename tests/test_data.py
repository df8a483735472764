"""Tests for tuneloop.workspace and tuneloop.data on real git + DVC repositories with a local-folder remote.

The workspaces here carry a config without a model, so these tests never import torch (the shared
`workspace` fixture builds the tiny model, which costs ~8 s of imports).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tuneloop import data, gitrepo, tables
from tuneloop import workspace as ws
from tuneloop.config import DataConfig, load_config
from tuneloop.errors import DataError, WorkspaceError

CONFIG = "data:\n  path: data/tickets.csv\nregistry:\n  model_name: test-model\n"


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
    version = data.add_dataset(root, tickets_csv, "tickets")
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
    first = data.add_dataset(root, tickets_csv, "tickets")
    newer = write_csv(tmp_path / "v2.csv", [("the app froze", "technical"), ("refund me", "billing")])
    second = data.add_dataset(root, newer, "tickets")
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
    data.add_dataset(root, tickets_csv, "tickets")
    message = rf"^rev 'v9\.9' not found in {re.escape(str(root))}; pass a commit, tag or branch listed by `git log`$"
    with pytest.raises(DataError, match=message):
        data.read_at(str(root), "v9.9", "data/tickets.csv")


def test_read_at_a_path_not_in_the_repo(root, tickets_csv):
    data.add_dataset(root, tickets_csv, "tickets")
    message = rf"^data file 'data/other\.csv' not found in {re.escape(str(root))} at rev HEAD; check data\.path or `git log`$"
    with pytest.raises(DataError, match=message):
        data.read_at(str(root), "HEAD", "data/other.csv")


def test_read_at_a_file_added_after_the_rev(root, tickets_csv):
    before = head(root)
    data.add_dataset(root, tickets_csv, "tickets")
    with pytest.raises(DataError, match=r"^data file 'data/tickets\.csv' not found in .* at rev [0-9a-f]{40};"):
        data.read_at(str(root), before, "data/tickets.csv")


def test_add_an_empty_file(root, tmp_path):
    empty = tmp_path / "empty.csv"
    for content in ["", " \n\n"]:
        empty.write_text(content)
        with pytest.raises(DataError, match=rf"^data file '{re.escape(str(empty))}' is empty; add a header and rows$"):
            data.add_dataset(root, empty, "tickets")
    assert gitrepo.git(root, "log", "--format=%s") == "workspace: init tuneloop"
    assert remote_files(root) == []


def test_add_refuses_bad_inputs(root, tmp_path, tickets_csv):
    with pytest.raises(DataError, match=r"^data file '.*missing\.csv' not found; pass the path of a CSV, TSV or JSONL file$"):
        data.add_dataset(root, tmp_path / "missing.csv", "tickets")
    parquet = tmp_path / "t.parquet"
    parquet.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"has unsupported format '\.parquet'; use \.csv, \.tsv or \.jsonl$"):
        data.add_dataset(root, parquet, "tickets")
    with pytest.raises(DataError, match=r"^dataset name 'my tickets' is not valid; use letters, digits, '-' and '_'$"):
        data.add_dataset(root, tickets_csv, "my tickets")
    with pytest.raises(WorkspaceError, match=r"is not a tuneloop workspace; create one with `tuneloop init "):
        data.add_dataset(tmp_path, tickets_csv, "tickets")
    assert gitrepo.git(root, "log", "--format=%s") == "workspace: init tuneloop"


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


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """One workspace with every dataset the prepare tests read, and the rev of each version."""
    from tuneloop import synthetic

    tmp = tmp_path_factory.mktemp("prepare")
    root = ws.init(tmp / "ws", config_text=CONFIG).parent
    revs = {}
    v1 = synthetic.write_csv(synthetic.generate_tickets(1, 300, seed=0), tmp / "v1.csv")
    revs["v1"] = data.add_dataset(root, v1, "tickets").rev
    for name, pairs in [("eval", GOOD_EVAL), ("single", SINGLE_CLASS), ("unknown", UNKNOWN_LABEL),
                        ("blank", BLANK_TEXT), ("spaced", SPACED)]:
        revs[name] = data.add_dataset(root, write_csv(tmp / f"{name}.csv", pairs), name).rev
    v2 = synthetic.write_csv(synthetic.generate_tickets(2, 200, seed=1), tmp / "v2.csv")
    revs["v2"] = data.add_dataset(root, v2, "tickets").rev
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


def bad_prepare(cfg: DataConfig, rev: str, out: Path) -> tuple[str, dict]:
    with pytest.raises(DataError) as caught:
        data.prepare(cfg, rev, out)
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


def test_adding_the_same_bytes_twice_returns_the_tracked_version(tmp_path, tickets_csv):
    from tuneloop import data, workspace

    root = workspace.init(tmp_path / "again").parent
    first = data.add_dataset(root, tickets_csv, "tickets")
    second = data.add_dataset(root, tickets_csv, "tickets")
    assert second.rev == first.rev and second.sha256 == first.sha256
    assert gitrepo_log_count(root) == 2  # init + one data commit


def gitrepo_log_count(root):
    from tuneloop import gitrepo

    return len(gitrepo.git(root, "log", "--format=%H").splitlines())
