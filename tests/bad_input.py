"""Bad input never reaches the registry: one table of bad inputs, each through the real `tuneloop` command.

The table and its workspace live here; `test_bad_input.py` runs the config, revision, registry and
model rows and `test_bad_input_data.py` the data rows, so that the two halves can run side by side.

The workspace already has a champion. Every row is a bad input, the command it is given to and a
fragment the one-line error must contain (naming the key, the row or the value). For every row the
command must exit 1 with exactly one stderr line and no traceback, and leave the registry (its
database file, versions, aliases, alias history, runs, experiments, artifacts), the git history and
the DVC remote exactly as they were.

Bad data files are committed once, with dvc and git directly (as another tool would), since
`tuneloop data add` itself refuses them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.conftest import champion_workspace
from tuneloop import synthetic

TUNELOOP = shutil.which("tuneloop")

GOOD = synthetic.generate_tickets(1, 300, seed=0)
HELD_OUT = synthetic.generate_tickets(2, 60, seed=3)  # a frozen held-out file of other texts


def csv_text(rows: list[tuple[str, str]], header: str = "text,label") -> str:
    lines = [header] + [f'"{text}",{label}' for text, label in rows]
    return "\n".join(lines) + "\n"


def jsonl_text(records: list[object]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


# Bad data files committed into the workspace (name -> bytes). Good rows around each bad one, so
# that the bad row is the only thing wrong.
BAD_FILES: dict[str, bytes] = {
    "nul.csv": csv_text(GOOD[:100] + [("my invoice is wrong\x00 again", "billing")]).encode(),
    "escape.csv": csv_text(GOOD[:100] + [("the app \x1b[31mcrashed", "technical")]).encode(),
    "dup_late.csv": csv_text(GOOD + [GOOD[5]]).encode(),  # the duplicate is row 301, past max_train_rows
    "conflict_late.csv": csv_text(GOOD + [(GOOD[7][0], "account" if GOOD[7][1] != "account" else "billing")]).encode(),
    "huge_field.csv": csv_text(GOOD[:100] + [("word " * 1_000_000, "billing")]).encode(),
    "latin1.csv": csv_text(GOOD[:100]).encode() + b'"caf\xe9 bill is wrong",billing\n',
    "empty_text.csv": csv_text(GOOD[:100] + [("", "billing")]).encode(),
    "no_label.csv": csv_text(GOOD[:100]).encode() + b'"my password reset link never arrives",\n',
    "blank_label.csv": csv_text(GOOD[:100] + [("my password reset link never arrives", "   ")]).encode(),
    "single.csv": csv_text([(f"ticket number {i} about my invoice", "billing") for i in range(60)]).encode(),
    "new_label.csv": csv_text(GOOD[:100] + [(f"refund request number {i}", "refunds") for i in range(10)]).encode(),
    "header_only.csv": b"text,label\n",
    "body_column.csv": csv_text(GOOD[:50], header="body,label").encode(),
    "extra_cells.csv": csv_text(GOOD[:50]).encode() + b'"too many cells here",billing,extra\n',
    "dup_inside.csv": csv_text(GOOD[:100] + [GOOD[3]]).encode(),
    "bad_json.jsonl": (jsonl_text([{"text": t, "label": lab} for t, lab in GOOD[:50]]) + "{not json\n").encode(),
    "list_text.jsonl": jsonl_text([{"text": t, "label": lab} for t, lab in GOOD[:50]] + [{"text": ["a", "b"], "label": "billing"}]).encode(),
    "number_line.jsonl": (jsonl_text([{"text": t, "label": lab} for t, lab in GOOD[:50]]) + "42\n").encode(),
    "zero_width.csv": csv_text(GOOD[:100] + [("\u200b\u200b\u200b", "billing")]).encode(),
    "tab_label.csv": csv_text(GOOD[:100] + [("my card was declined twice today", "bill\ting")]).encode(),
    "eval_clean.csv": csv_text(HELD_OUT).encode(),  # frozen held-out rows, so every bad row above is in train
    "eval_overlap.csv": csv_text(HELD_OUT + [GOOD[10]]).encode(),  # held-out row 61 is train row 11
    "eval_unseen.csv": csv_text(HELD_OUT + [("where is my refund for order 55", "refunds")]).encode(),
}


@dataclass(frozen=True)
class Case:
    """One bad input: what to run, how the config differs, and what the error must say."""

    args: tuple[str, ...]
    expect: str
    config: dict = field(default_factory=dict)  # dotted key -> value, applied to the workspace config
    config_text: str | None = None  # a whole config file instead (then `config` is ignored)
    fast: bool = False  # must fail in the preflight's bounded store check, before any pipeline step (no retry loop)


RUN = ("run",)
FROZEN = {"data.eval_path": "data/eval_clean.csv"}
VALIDATE = ("config", "validate", "{config}")
# Refused by the config, the revision, the registry or the model: no data is read.
CONFIG_CASES: dict[str, Case] = {
    # --- config: strict types, empty names, ranges, the file itself
    "empty config file": Case(RUN, "is empty; write at least the keys that differ", config_text=""),
    "comment-only config file": Case(RUN, "is empty; write at least the keys", config_text="# all defaults?\n"),
    "duplicate yaml key": Case(RUN, "config key 'epochs' appears twice (lines 2 and 3)",
                               config_text="train:\n  epochs: 1\n  epochs: 2\n"),
    "duplicate yaml section": Case(RUN, "config key 'train' appears twice", config_text="train: {}\ntrain: {}\n"),
    "epochs true (validate)": Case(VALIDATE, "train.epochs = true: input should be a valid integer", {"train.epochs": True}),
    "margin string (validate)": Case(VALIDATE, 'gate.margin = "1.0": input should be a valid number',
                                     {"gate.margin": "1.0"}),
    "empty text_column (validate)": Case(VALIDATE, 'data.text_column = "": must not be empty', {"data.text_column": ""}),
    "epochs true (run)": Case(RUN, "train.epochs = true: input should be a valid integer", {"train.epochs": True}),
    "empty label_column": Case(RUN, 'data.label_column = "": must not be empty', {"data.label_column": ""}),
    "same text and label column": Case(RUN, "data.text_column and data.label_column are both 'text'",
                                       {"data.label_column": "text"}),
    "unknown key": Case(RUN, "train.epochz: unknown key", {"train.epochz": 2}),
    "word for a number": Case(RUN, 'train.epochs = "ten": input should be a valid integer', {"train.epochs": "ten"}),
    "negative seed": Case(RUN, "train.seed = -1: input should be greater than or equal to 0", {"train.seed": -1}),
    "learning rate zero": Case(RUN, "train.learning_rate = 0.0: input should be greater than 0", {"train.learning_rate": 0.0}),
    "dropout one": Case(RUN, "method.dropout = 1.0: input should be less than 1", {"method.dropout": 1.0}),
    "unknown method": Case(RUN, "method: unknown method 'lorra'; use one of: lora, dora, rslora, loftq, loha, lokr, adalora, ia3, prompt_tuning, prefix_tuning, p_tuning, full", {"method.name": "lorra"}),
    "one allowed label": Case(RUN, 'data.labels = ["billing"]: lists fewer than two labels', {"data.labels": ["billing"]}),
    "data path outside the repo": Case(RUN, 'data.path = "../elsewhere.csv": must be a path inside data.repo',
                                       {"data.path": "../elsewhere.csv"}),
    "data path with a bad suffix": Case(RUN, 'data.path = "data/tickets.xlsx": must end in .csv, .tsv or .jsonl',
                                        {"data.path": "data/tickets.xlsx"}),
    "eval file is the train file": Case(RUN, "data.eval_path is data.path ('data/tickets.csv')",
                                        {"data.eval_path": "data/tickets.csv"}),
    "ia3 feed-forward not a target": Case(
        RUN, "method.feedforward_modules ['output.dense'] are not in method.target_modules ['key', 'value']",
        {"method.name": "ia3", "method.target_modules": ["key", "value"], "method.feedforward_modules": ["output.dense"]}),
    "invalid yaml": Case(RUN, "is not valid YAML at line 3; fix the syntax", config_text="train:\n  epochs: 3\n bad: x\n"),
    "yaml list": Case(RUN, "config must be a mapping of sections", config_text="- data\n- model\n"),
    "missing config file": Case(("run", "--config", "{missing}"), "not found; pass an existing file"),
    "sqlite uri without a file": Case(RUN, "registry.tracking_uri 'sqlite:///' names no database file",
                                      {"registry.tracking_uri": "sqlite:///"}),
    "model name with a slash": Case(RUN, 'registry.model_name = "team/model": must not contain / :',
                                    {"registry.model_name": "team/model"}),
    "model name with a newline": Case(RUN, 'registry.model_name = "a\\nb": holds the invisible character',
                                      {"registry.model_name": "a\nb"}),
    "model name with a quote": Case(RUN, "registry.model_name = \"o'neil\": must not contain", {"registry.model_name": "o'neil"}),
    "complex yaml key": Case(RUN, "config key at line 1 is a list; keys are plain names", config_text="? [a, b]\n: 1\n"),
    "cluster without a host": Case(RUN, "runtime.mode is kfp but runtime.host is empty", {"runtime.mode": "kfp"}),
    "cluster host not a url": Case(RUN, 'runtime.host = "kfp.internal": must be an http:// or https:// URL',
                                   {"runtime.mode": "kfp", "runtime.host": "kfp.internal"}),
    "cluster with a sqlite registry": Case(RUN, "registry.tracking_uri 'sqlite:///",
                                           {"runtime.mode": "kfp", "runtime.host": "http://127.0.0.1:9"}),
    # --- revisions
    "empty --rev": Case(("run", "--rev", ""), "--rev '' is empty; pass a commit, tag or branch"),
    "blank --rev": Case(("run", "--rev", "  "), "--rev '  ' is empty"),
    "unknown --rev": Case(("run", "--rev", "no-such-rev"), "rev 'no-such-rev' not found"),
    "blank data.rev": Case(RUN, 'data.rev = " ": must not be empty', {"data.rev": " "}),
    "a revision range": Case(("run", "--rev", "HEAD..HEAD"), "rev 'HEAD..HEAD' not found"),
    "rev before the data existed": Case(("run", "--rev", "{first_commit}"), "data file 'data/tickets.csv' not found"),
    # --- registry
    "corrupted registry database": Case(RUN, "is not a readable MLflow database",
                                        {"registry.tracking_uri": "sqlite:///{outside}/corrupt.db"}, fast=True),
    "registry database of random bytes": Case(RUN, "is not a readable MLflow database",
                                              {"registry.tracking_uri": "sqlite:///{outside}/random.db"}, fast=True),
    "registry status on a corrupted database": Case(("registry", "status", "--config", "{config}"),
                                                    "is not a readable MLflow database",
                                                    {"registry.tracking_uri": "sqlite:///{outside}/corrupt.db"}, fast=True),
    "unreachable tracking server": Case(RUN, "registry.tracking_uri", {"registry.tracking_uri": "http://127.0.0.1:{port}"},
                                        fast=True),
    "registry status on an unreachable server": Case(("registry", "status", "--config", "{config}"), "registry.tracking_uri",
                                                     {"registry.tracking_uri": "http://127.0.0.1:{port}"}, fast=True),
    "registry database under a file": Case(RUN, "registry.tracking_uri",
                                           {"registry.tracking_uri": "sqlite:///{outside}/notes.txt/mlflow.db"}, fast=True),
    "unwritable artifact root": Case(RUN, "registry.artifact_root",
                                     {"registry.artifact_root": "{outside}/notes.txt/art", "registry.experiment": "fresh"}),
    # --- model and runtime, found before any training
    "base is an empty folder": Case(RUN, "is not a model folder: it has no config.json, no weights, no tokenizer files",
                                    {"model.base": "{outside}/empty-model"}),
    "base has a config only": Case(RUN, "is not a model folder: it has no weights", {"model.base": "{outside}/config-only"}),
    "base with a broken config": Case(RUN, "cannot be loaded", {"model.base": "{outside}/broken-config"}),
    "base that is not on this machine": Case(RUN, "model.base 'org/not-cached' is neither a folder nor a cached hub model",
                                             {"model.base": "org/not-cached"}),
    "max_length beyond the positions": Case(RUN, "model.max_length 256 exceeds the 128 positions", {"model.max_length": 256}),
    "unknown target module": Case(RUN, "method.target_modules: 'quer' matches no layer", {"method.target_modules": ["quer"]}),
    "one misspelled target among good ones": Case(RUN, "method.target_modules: 'valu' matches no layer",
                                                  {"method.target_modules": ["query", "valu"]}),
    "ia3 target a layer norm": Case(RUN, "names a LayerNorm layer", {"method.name": "ia3", "method.target_modules": ["LayerNorm"],
                                                                     "method.feedforward_modules": []}),
    "ia3 feed-forward that matches nothing": Case(
        RUN, "method.target_modules: 'ffn' matches no layer",
        {"method.name": "ia3", "method.target_modules": ["key", "ffn"], "method.feedforward_modules": ["ffn"]}),
    "classifier head as a target": Case(RUN, "method.target_modules: 'classifier' names the classification head of model.base",
                                        {"method.target_modules": ["classifier"]}),
    "config that does not match the weights": Case(
        RUN, "weight 'embeddings.word_embeddings.weight' has shape [30522, 32] but config.json implies [30522, 64]",
        {"model.base": "{outside}/wide-config"}),
    "weights that are not safetensors": Case(RUN, "model.safetensors cannot be read", {"model.base": "{outside}/bad-weights"}),
    "pipeline compile to a folder": Case(("pipeline", "compile", "-o", "{outside}"), "must be a file ending in .yaml or .yml"),
    "gate on a file that is not scores": Case(("gate", "--scores", "{outside}/notes.txt", "--out", "{outside}/decision.json",
                                               "--config", "{config}"), "is not a scores file from `tuneloop evaluate`"),
    "cuda without a GPU": Case(RUN, "runtime.device is cuda but no CUDA device is visible", {"runtime.device": "cuda"}),
    "pipeline root under a file": Case(RUN, "runtime.pipeline_root", {"runtime.pipeline_root": "{outside}/notes.txt/runs"}),
    "4-bit on CPU with narrow layers": Case(RUN, "quantization.bits 4 on CPU needs linear layers whose input width is a multiple of 64",
                                            {"quantization.bits": 4, "runtime.device": "cpu"}),
}
# Refused by data validation, in a run (the validate step) or in `tuneloop data add`.
DATA_CASES: dict[str, Case] = {
    # --- data at the revision: validated on all rows, before any cap or split
    "NUL byte in a text": Case(RUN, "row 101 (train): text holds the control character '\\x00' at character 20; delete it",
                               {"data.path": "data/nul.csv", **FROZEN}),
    "escape character in a text": Case(RUN, "row 101 (train): text holds the control character '\\x1b' at character 9",
                                       {"data.path": "data/escape.csv", **FROZEN}),
    "duplicate beyond max_train_rows": Case(RUN, "row 301 (train): duplicate of row 6",
                                            {"data.path": "data/dup_late.csv", "data.max_train_rows": 50, **FROZEN}),
    "conflict beyond max_train_rows": Case(RUN, "row 301 (train): text 'hi, why did my company card get charged…' is "
                                           "labelled 'account' here and 'billing' in row 8",
                                           {"data.path": "data/conflict_late.csv", "data.max_train_rows": 50, **FROZEN}),
    "5 MB field": Case(RUN, "row 101 (train): text is 5,000,000 characters, over the limit of 100,000",
                       {"data.path": "data/huge_field.csv", **FROZEN}),
    "bytes that are not UTF-8": Case(RUN, "row 101 (train): bytes that are not UTF-8", {"data.path": "data/latin1.csv", **FROZEN}),
    "empty text": Case(RUN, "row 101 (train): text is empty", {"data.path": "data/empty_text.csv", **FROZEN}),
    "missing label": Case(RUN, "row 101 (train): label is empty", {"data.path": "data/no_label.csv", **FROZEN}),
    "blank label": Case(RUN, "row 101 (train): label is empty", {"data.path": "data/blank_label.csv", **FROZEN}),
    "label outside data.labels": Case(RUN, "label 'account' is not in the allowed labels",
                                      {"data.labels": ["billing", "technical"]}),
    "single class": Case(RUN, "classification needs at least two labels", {"data.path": "data/single.csv"}),
    "label set changed vs champion": Case(RUN, "train label set differs from the champion's (added ['refunds']",
                                          {"data.path": "data/new_label.csv"}),
    "header only": Case(RUN, "has no rows", {"data.path": "data/header_only.csv"}),
    "text column missing": Case(RUN, "has no column 'text' or 'label' (found: 'body', 'label')",
                                {"data.path": "data/body_column.csv"}),
    "more cells than the header": Case(RUN, "has more cells than the header", {"data.path": "data/extra_cells.csv"}),
    "text of zero-width spaces": Case(RUN, "row 101 (train): text holds the control character '\\u200b' at character 1",
                                      {"data.path": "data/zero_width.csv", **FROZEN}),
    "label with a tab": Case(RUN, "row 101 (train): label holds the control character '\\t' at character 5; delete it "
                                  "(labels are one line)", {"data.path": "data/tab_label.csv", **FROZEN}),
    "duplicate rows": Case(RUN, "row 101 (train): duplicate of row 4", {"data.path": "data/dup_inside.csv", **FROZEN}),
    "jsonl line not json": Case(RUN, "line 51 is not valid JSON", {"data.path": "data/bad_json.jsonl"}),
    "jsonl text is a list": Case(RUN, "row 51 (train): text is a JSON array, not a string",
                                 {"data.path": "data/list_text.jsonl", **FROZEN}),
    "jsonl line is a number": Case(RUN, "line 51 is a JSON number, not an object", {"data.path": "data/number_line.jsonl"}),
    "data file not at the rev": Case(RUN, "data file 'data/nope.csv' not found", {"data.path": "data/nope.csv"}),
    "eval file not at the rev": Case(RUN, "data file 'data/nope-eval.csv' not found", {"data.eval_path": "data/nope-eval.csv"}),
    "held-out row also in train": Case(RUN, "row 61 (held_out): text", {"data.eval_path": "data/eval_overlap.csv"}),
    "held-out label unseen in train": Case(RUN, "label 'refunds' does not occur in the train split",
                                           {"data.eval_path": "data/eval_unseen.csv"}),
    "data repo that does not exist": Case(RUN, "{nowhere}", {"data.repo": "{nowhere}"}),
    # --- workspace: data add validates before any commit or push
    "data add: NUL byte": Case(("data", "add", "{outside}/nul.csv", "--name", "fresh"),
                               "row 101 (file): text holds the control character '\\x00'"),
    "data add: 5 MB field": Case(("data", "add", "{outside}/huge_field.csv", "--name", "fresh"),
                                 "row 101 (file): text is 5,000,000 characters, over the limit of 100,000"),
    "data add: duplicates": Case(("data", "add", "{outside}/dup_inside.csv", "--name", "fresh"), "row 101 (file): duplicate of row 4"),
    "data add: a bad file already in the workspace": Case(("data", "add", "{root}/data/dup_inside.csv", "--name", "dup_inside"),
                                                          "row 101 (file): duplicate of row 4"),
    "data add: missing file": Case(("data", "add", "{outside}/absent.csv", "--name", "fresh"), "not found"),
    "data add: a folder": Case(("data", "add", "{outside}", "--name", "fresh"), "{outside}"),
    "data add: unsupported format": Case(("data", "add", "{outside}/notes.txt", "--name", "fresh"),
                                         "unsupported format '.txt'"),
    "data add: bad name": Case(("data", "add", "{outside}/dup_inside.csv", "--name", "../evil"), "dataset name '../evil'"),
    "data add: empty file": Case(("data", "add", "{outside}/empty.csv", "--name", "fresh"), "is empty"),
    "data add: header only": Case(("data", "add", "{outside}/header_only.csv", "--name", "fresh"), "has a header but no rows"),
    "init into a non-empty folder": Case(("init", "{root}"), "the folder is not empty (it is already a workspace)"),
}
CASES = {**CONFIG_CASES, **DATA_CASES}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TUNELOOP, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not str(p.relative_to(folder)).startswith(skip)}


def mlflow_listing(tracking_uri: str) -> dict:
    """Experiments, runs (with status), registered models, versions, aliases and tags, as MLflow reports them."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)
    models = client.search_registered_models()
    return {
        "experiments": sorted((e.experiment_id, e.name, e.lifecycle_stage) for e in experiments),
        "runs": sorted((r.info.run_id, r.info.status, r.info.lifecycle_stage) for r in runs),
        "models": sorted((m.name, json.dumps(m.aliases, sort_keys=True), json.dumps(m.tags, sort_keys=True)) for m in models),
        "versions": sorted((v.name, v.version, v.status, json.dumps(v.tags, sort_keys=True))
                           for m in models for v in client.search_model_versions(f"name = '{m.name}'")),
    }


def git_state(root: Path) -> tuple[str, str]:
    log = subprocess.run(["git", "-C", str(root), "log", "--all", "--format=%H %T %s"], capture_output=True, text=True).stdout
    status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True).stdout
    return log, status


def run_files(root: Path) -> list[str]:
    """What the local runner wrote under runtime.pipeline_root (a run folder and a log per run)."""
    return sorted(p.name for p in (root / "runs").glob("*"))


def state(root: Path) -> dict:
    """Everything a failing command must leave as it was."""
    return {
        "mlflow.db": hashlib.sha256((root / "mlflow.db").read_bytes()).hexdigest(),
        "mlflow": mlflow_listing(f"sqlite:///{root / 'mlflow.db'}"),
        "artifacts": tree_digest(root / "mlartifacts"),
        "git": git_state(root),
        "dvc remote": tree_digest(root / "storage" / "dvc-remote"),
        "workspace files": tree_digest(root, skip=(".git", "runs", "storage", "mlartifacts", "mlflow.db", ".dvc/tmp", ".dvc/cache")),
    }


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model) -> Iterator[dict[str, str]]:
    """A workspace whose version 1 is champion, with every bad data file committed; returns placeholders."""
    base = tmp_path_factory.mktemp("bad-input")
    root, outside = base / "ws", base / "outside"
    champion_workspace(root, tiny_model)  # its data is GOOD: 300 v1 tickets, seed 0
    first_commit = subprocess.run(["git", "-C", str(root), "rev-list", "--max-parents=0", "HEAD"],
                                  capture_output=True, text=True).stdout.strip()
    outside.mkdir()
    _commit_bad_files(root)
    _make_outside(outside, tiny_model)
    # A loopback port with nothing listening, held (bound, never listening) for the module, so that no
    # server another test starts meanwhile can take it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        yield {"root": str(root), "outside": str(outside), "first_commit": first_commit, "port": str(port),
               "missing": str(outside / "missing.yaml"), "nowhere": str(outside / "no-such-repo")}


def _commit_bad_files(root: Path) -> None:
    for name, raw in BAD_FILES.items():
        (root / "data" / name).write_bytes(raw)
    paths = [f"data/{name}" for name in BAD_FILES]
    for command in (["dvc", "add", *paths], ["dvc", "push"]):
        done = subprocess.run(command, cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    subprocess.run(["git", "-C", str(root), "add", "data"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "bad data"], check=True)


def _make_outside(outside: Path, tiny_model: Path) -> None:
    for name in ("nul.csv", "huge_field.csv", "dup_inside.csv", "header_only.csv"):
        (outside / name).write_bytes(BAD_FILES[name])
    (outside / "notes.txt").write_text("a file where a folder is expected\n")
    (outside / "empty.csv").write_bytes(b"")
    (outside / "empty-model").mkdir()
    (outside / "config-only").mkdir()
    shutil.copy(tiny_model / "config.json", outside / "config-only" / "config.json")
    shutil.copytree(tiny_model, outside / "broken-config")
    (outside / "broken-config" / "config.json").write_text('{"model_type": "bert", "hidden_size": ')
    shutil.copytree(tiny_model, outside / "wide-config")
    wide = json.loads((tiny_model / "config.json").read_text())
    (outside / "wide-config" / "config.json").write_text(json.dumps({**wide, "hidden_size": 64}))
    shutil.copytree(tiny_model, outside / "bad-weights")
    (outside / "bad-weights" / "model.safetensors").write_bytes(b"\xff" * 64)
    registry_db = Path(str(outside).replace("outside", "ws")) / "mlflow.db"
    corrupt = bytearray(registry_db.read_bytes())
    corrupt[len(corrupt) // 3: len(corrupt) // 3 + 4096] = b"\xde\xad\xbe\xef" * 1024  # a torn write in the middle
    (outside / "corrupt.db").write_bytes(bytes(corrupt[: len(corrupt) // 2]))
    (outside / "random.db").write_bytes(hashlib.sha256(b"seed").digest() * 512)


def _fill(value, slots: dict[str, str]):
    if isinstance(value, str):
        return value.format(**slots) if "{" in value and "}" in value and not value.startswith("{not") else value
    if isinstance(value, list):
        return [_fill(v, slots) for v in value]
    return value


def _write_config(case: Case, slots: dict[str, str], folder: Path) -> Path:
    """The workspace config with the case's changes, written outside the workspace with absolute paths."""
    root = Path(slots["root"])
    path = folder / "case.yaml"
    if case.config_text is not None:
        path.write_text(case.config_text)
        return path
    data = yaml.safe_load((root / "tuneloop.yaml").read_text())
    data.setdefault("data", {})["repo"] = str(root)
    data.setdefault("registry", {}).update(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "mlartifacts"))
    data.setdefault("runtime", {})["pipeline_root"] = str(root / "runs")
    if any(dotted.startswith("method.") for dotted in case.config):
        data.setdefault("method", {"name": "lora"})
    for dotted, value in case.config.items():
        section, key = dotted.split(".")
        data.setdefault(section, {})[key] = _fill(value, slots)
    path.write_text(yaml.safe_dump(data))
    return path


def check(name: str, slots: dict[str, str], tmp_path: Path) -> None:
    """Run the case's command; it must exit 1 with one stderr line holding the expected text, and change nothing."""
    case = CASES[name]
    config = _write_config(case, slots, tmp_path)
    slots = {**slots, "config": str(config)}
    args = [_fill(arg, slots) for arg in case.args]
    if args[0] == "run" and "--config" not in args:
        args += ["--config", str(config)]
    if args[0] == "data":  # data add works on the workspace its config sits in
        args += ["--config", str(Path(slots["root"]) / "tuneloop.yaml")]
    root = Path(slots["root"])
    before = state(root)
    runs_before = run_files(root)
    done = cli(*args, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _fill(case.expect, slots) in lines[0], lines[0]
    if case.fast:  # refused by the preflight: no step started, no run folder or log written
        assert "tuneloop.pipeline step" not in done.stdout + done.stderr
        assert run_files(root) == runs_before
    assert state(root) == before
