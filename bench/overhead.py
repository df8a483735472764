"""Overhead of the local KFP pipeline over direct core calls, on the same ~2-minute job.

Both sides train LoRA on the packaged MiniLM with 2,000 rt-polarity rows (2 epochs), evaluate on
1,000 frozen held-out rows, gate, register and promote, each in a fresh workspace and a fresh
Python process (so each pays its own imports: the direct side once, the pipeline once per step).
Prints both wall times and their ratio (goal: at most 1.15).

    python bench/overhead.py [--repeats N]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "rt-polarity"
CONFIG = """\
data: {path: data/train.csv, eval_path: data/eval.csv}
model: {max_length: 64}
train: {epochs: 2, batch_size: 16, learning_rate: 0.001, patience: 0}
registry: {model_name: overhead-bench}
"""

CHILD = """
import sys
from pathlib import Path
from tuneloop.config import load_config
from tuneloop.progress import configure_logging
configure_logging()
mode, config, rev = sys.argv[1:4]
cfg = load_config(config)
if mode == "direct":
    from tuneloop.cycle import run_cycle
    decision, _ = run_cycle(cfg, rev, Path(cfg.runtime.pipeline_root) / "direct")
    print("passed" if decision.passed else "rejected", decision.candidate)
else:
    from tuneloop.pipelines.launcher import LocalLauncher
    result = LocalLauncher(cfg.runtime.pipeline_root).run(cfg, rev)
    print("passed" if result.decision["passed"] else "rejected", result.decision["candidate"])
"""


def make_workspace(root: Path) -> tuple[Path, str]:
    """A fresh workspace with the bench data committed; return its config and the data rev."""
    from tuneloop import data, synthetic, workspace
    from tuneloop.config import load_config

    rows = [(line, label) for label in ("pos", "neg")
            for line in (SHARED / f"rt-polarity.{label}").read_text(encoding="utf-8").splitlines()]
    random.Random(0).shuffle(rows)
    config = workspace.init(root, config_text=CONFIG)
    cfg = load_config(config).data
    data.add_dataset(root, synthetic.write_csv(rows[:2000], root.parent / f"{root.name}-train.csv"), "train", cfg)
    rev = data.add_dataset(root, synthetic.write_csv(rows[2000:3000], root.parent / f"{root.name}-eval.csv"), "eval", cfg).rev
    return config, rev


def timed(mode: str, config: Path, rev: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(config), rev], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return elapsed, done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="Pairs of runs (alternating order).")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: put ../shared beside the repository")
    times: dict[str, list[float]] = {"direct": [], "pipeline": []}
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.repeats):
            order = ["direct", "pipeline"] if i % 2 == 0 else ["pipeline", "direct"]
            for mode in order:
                config, rev = make_workspace(Path(scratch) / f"{mode}-{i}")
                seconds, outcome = timed(mode, config, rev)
                times[mode].append(seconds)
                print(f"run {i + 1} {mode:<8} {seconds:7.1f} s  (gate {outcome})", flush=True)
    direct, pipeline = (sum(times[m]) / len(times[m]) for m in ("direct", "pipeline"))
    print(f"\ndirect core calls : {direct:7.1f} s (mean of {args.repeats})")
    print(f"local KFP pipeline: {pipeline:7.1f} s (mean of {args.repeats})")
    print(f"ratio pipeline/direct: {pipeline / direct:.3f} (goal <= 1.15)")


if __name__ == "__main__":
    main()
