"""The pre-flight estimate against what each cell measured, on the qlora-prompt-tuning example sweep.

Builds the example's emotion workspace (examples/workspace.py: 2,000 training rows, 500 held-out),
runs `tuneloop sweep` on it (every cell is estimated first, then trained in its own process), and
prints, per cell, predicted and measured peak memory and training wall time and the error of each
(predicted / measured - 1; goal: within +-30%). With --report, reads a finished sweep's sweep.json
instead of running one.

    python bench/estimate.py [--report PATH/sweep.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location("workspace", ROOT / "examples" / "workspace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = module.emotion_workspace(folder, module.SHARED / "emotion", ROOT / "examples" / "qlora-prompt-tuning" / "sweep.yaml")
    done = subprocess.run([shutil.which("tuneloop"), "sweep", str(sweep)], capture_output=True, text=True, check=True)
    return Path(done.stdout.splitlines()[-1].split(" ")[1]).parent / "sweep.json"


def table(report: dict) -> str:
    lines = ["| cell | peak MB predicted | measured | error | train s predicted | measured | error |",
             "|---|---|---|---|---|---|---|"]
    worst = 0.0
    for row in report["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['name']} | failed: {row['error']} | | | | | |")
            continue
        estimate = row["estimate"]
        worst = max(worst, abs(estimate["memory_error"]), abs(estimate["time_error"]))
        lines.append(f"| {row['name']} | {estimate['peak_memory_mb']:,.0f} | {row['peak_memory_mb']:,.0f} | "
                     f"{100 * estimate['memory_error']:+.0f}% | {estimate['seconds']:,.0f} | {row['wall_seconds']:,.0f} | "
                     f"{100 * estimate['time_error']:+.0f}% |")
    return "\n".join(lines) + f"\n\nlargest error: {100 * worst:.0f}% (goal: 30%)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="A finished sweep's sweep.json (default: run the example).")
    parser.add_argument("--keep", type=Path, help="Build the workspace here and keep it (default: a temporary folder).")
    args = parser.parse_args()
    if args.report:
        print(table(json.loads(args.report.read_text())))
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch) / "ws"
        print(table(json.loads(run_example(folder).read_text())))


if __name__ == "__main__":
    main()
