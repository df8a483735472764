"""`tuneloop demo`: the whole loop, offline, on synthetic data, through the real local pipelines.

Two training cycles on one workspace: v1 of a synthetic support-ticket dataset, from a small first
labelled set (becomes champion), and the same rows with 70% of their labels replaced at random
while the curated held-out file stays clean (the gate must reject it). Then the loop: the champion
is served over HTTP (`tuneloop serve`), in-distribution traffic with its labels arrives (the
monitor leaves it alone), then shifted traffic (v2 tickets) with labels (the monitor retrains on a
new data revision, the gate judges, the server follows the new champion), then a labelled batch on
which the new champion is worse than v1 (the monitor rolls back). A summary lists every decision.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import typer

from tuneloop import data, evaluation, feedback, modeling, registry, synthetic, tables, workspace
from tuneloop.cli.output import show_table
from tuneloop.config import Config, load_config
from tuneloop.errors import TuneloopError
from tuneloop.progress import quiet

# Sized for ~3.5 minutes on 2 CPU cores with the packaged MiniLM: tickets are 8–30 words (< 48
# tokens), and LoRA at lr 3e-3 with batch 8 reaches ~0.95 accuracy on v1 in 2 epochs of ~560 rows.
DEMO_CONFIG = """\
# tuneloop demo config: the defaults, except what keeps the demo to a few minutes on a laptop CPU.
data:
  path: data/tickets.csv
  eval_path: data/tickets-eval.csv   # curated held-out rows, committed beside each version
model:
  max_length: 48            # synthetic tickets are at most 30 words
train:
  epochs: 2
  batch_size: 8
  learning_rate: 0.003
gate:
  margin: 1.0               # lower end of the 95% CI of candidate - champion >= -1 point
registry:
  model_name: demo-ticket-router
serve:
  poll_interval: 2s         # follow the champion quickly; the default is 30s
policy:
  min_new_rows: 100         # the demo's traffic is small
"""

NOISE = 0.7
HELD_OUT = 0.3  # ~210 held-out rows of 700: a 1-point macro-F1 gap is then ~2 rows
FIRST_ROWS = 200  # v1 starts from a small labelled set, which the labelled traffic then grows
QUIET, SHIFTED, POOL = 150, 300, 400  # requests of each kind of traffic, and tickets searched for a bad batch


def _banner(text: str) -> None:
    typer.secho(f"\n== {text}", bold=True)


def _split(rows: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split rows into training and held-out by the same text hash the pipeline uses (no overlap)."""
    held_out = tables.held_out_mask(pd.Series([text for text, _ in rows]), HELD_OUT).tolist()
    return [r for r, h in zip(rows, held_out) if not h], [r for r, h in zip(rows, held_out) if h]


def run_demo(directory: Path, rows: int) -> None:
    """Create a demo workspace, run two continuous-training cycles in it, then the closed loop."""
    from tuneloop.pipelines.launcher import LocalLauncher

    started = time.perf_counter()
    config_path = workspace.init(directory, config_text=DEMO_CONFIG)
    cfg = load_config(config_path)
    typer.echo(
        f"demo workspace: {config_path.parent}\n"
        "the data is SYNTHETIC: generated support tickets (billing / technical / account), made up on this "
        "machine by tuneloop.synthetic; v2 shifts the vocabulary and the label mix."
    )
    train, held_out = _split(synthetic.generate_tickets(1, rows, seed=1))
    first = train[:FIRST_ROWS]
    cycles = [("v1", first), (f"v1, {NOISE:.0%} label noise in training rows", synthetic.with_label_noise(first, NOISE, seed=3))]
    summary = []
    launcher = LocalLauncher(cfg.runtime.pipeline_root)
    with tempfile.TemporaryDirectory() as scratch:
        data.add_dataset(config_path.parent, synthetic.write_csv(held_out, Path(scratch) / "tickets-eval.csv"), "tickets-eval", cfg.data)
        for name, train_rows in cycles:
            _banner(f"cycle {len(summary) + 1}/2: data {name}")
            version = data.add_dataset(config_path.parent, synthetic.write_csv(train_rows, Path(scratch) / "tickets.csv"), "tickets", cfg.data)
            typer.echo(f"data {name}: {version.rows} training + {len(held_out)} held-out rows at rev {version.rev[:8]}")
            result = launcher.run(cfg, version.rev)
            decision = result.decision or {}
            typer.echo(("PASSED: " if decision.get("passed") else "REJECTED: ") + "; ".join(decision.get("reasons", [])))
            summary.append({"cycle": len(summary) + 1, "data": name, "rev": version.rev[:8], "version": result.version,
                            "gate": "passed" if decision.get("passed") else "rejected",
                            "macro_f1": decision.get("candidate"), "champion_f1": decision.get("champion"),
                            "reasons": "; ".join(decision.get("reasons", []))})
        # the noisy cycle left its file at HEAD; the loop grows the clean rows the champion was trained on
        data.add_dataset(config_path.parent, synthetic.write_csv(first, Path(scratch) / "tickets.csv"), "tickets", cfg.data)
    _banner(f"training cycles done ({time.perf_counter() - started:.0f}s)")
    show_table(summary, ["cycle", "data", "rev", "version", "gate", "macro_f1", "champion_f1", "reasons"], {"reasons": 90})
    _loop(config_path, launcher)
    _banner(f"summary ({time.perf_counter() - started:.0f}s): champion is version {registry.alias_of(cfg.registry, registry.CHAMPION)}")
    since = datetime.now(timezone.utc) - timedelta(days=1)
    ticks = registry.tick_history(cfg.registry, cfg.monitor.experiment, since)
    show_table([{"tick": i, "champion": t["champion"], "action": t["action"], "wanted": t["wanted"],
                 "outcome": t["outcome"] or "-"} for i, t in enumerate(ticks, start=1)],
               ["tick", "champion", "action", "wanted", "outcome"], {"outcome": 90})
    typer.echo(f"\nexplore: tuneloop registry status --config {config_path}  (decisions: the MLflow experiment "
               f"{cfg.monitor.experiment!r})")


def _loop(config_path: Path, launcher: object) -> None:
    """Serve the champion, send three kinds of labelled traffic, and run a monitoring tick after each."""
    cfg = load_config(config_path)
    log = Path(cfg.serve.log)
    port = _free_port()
    server = _start_server(config_path, port)
    client = None
    try:
        client = _ready_client(port, server)
        _banner(f"serving the champion at http://127.0.0.1:{port} (tuneloop serve); traffic is logged to {log}")
        quiet = synthetic.generate_tickets(1, QUIET, seed=21)
        _send_labelled(client, cfg, log, quiet, "in-distribution traffic (v1 tickets)")
        _tick(launcher, cfg, log)
        shifted = synthetic.generate_tickets(2, SHIFTED, seed=22)
        _send_labelled(client, cfg, log, shifted, "shifted traffic (v2 tickets)")
        _tick(launcher, cfg, log)
        champion = registry.alias_of(cfg.registry, registry.CHAMPION)
        if champion == "1":
            typer.echo("the retrain did not replace version 1, so there is no newer champion to roll back")
            return
        _wait_for_version(client, champion)
        seen = {text for text, _ in quiet + shifted} | _training_texts(cfg)
        batch = _worse_batch(cfg, champion, seen)
        if not batch:
            typer.echo(f"no ticket found on which version {champion} errs where version 1 does not; nothing to roll back")
            return
        _send_labelled(client, cfg, log, batch, f"a labelled batch on which version {champion} is worse than version 1")
        _tick(launcher, cfg, log)
    finally:
        if client is not None:
            client.close()
        server.terminate()  # SIGTERM: the server drains, writes every log row, and exits
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(config_path: Path, port: int) -> subprocess.Popen:
    output = open(config_path.parent / "serve.log", "w", encoding="utf-8")  # noqa: SIM115 - the server writes it until the end
    return subprocess.Popen([sys.executable, "-m", "tuneloop.cli.app", "serve", "--config", str(config_path),
                             "--port", str(port)], stdout=output, stderr=subprocess.STDOUT)


def _ready_client(port: int, server: subprocess.Popen) -> Any:
    """A client for the demo's server, once it is ready (/readyz 200)."""
    import httpx

    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            client.close()
            raise TuneloopError(f"tuneloop serve exited ({server.returncode}) before it was ready; see serve.log")
        try:
            if client.get("/readyz").status_code == 200:
                return client
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    client.close()
    raise TuneloopError(f"tuneloop serve did not become ready on port {port} within 5 minutes; see serve.log")


def _send_labelled(client: object, cfg: Config, log: Path, rows: list[tuple[str, str]], what: str) -> None:
    """Send each text as its own request (4 at a time), then label the logged requests."""
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda row: client.post("/predict", json={"text": row[0]}).json(), rows))
    versions = sorted({a["model_version"] for a in answers})
    typer.echo(f"sent {len(rows)} requests of {what}, answered by version(s) {', '.join(versions)}")
    with tempfile.TemporaryDirectory() as scratch:
        labels = Path(scratch) / "labels.csv"
        with open(labels, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["request_id", "label"])
            writer.writerows((a["predictions"][0]["request_id"], label) for a, (_, label) in zip(answers, rows))
        added = feedback.add_feedback(labels, log, cfg.registry.model_name,
                                      lambda version: registry.show(cfg.registry, version)["record"]["labels"])
    typer.echo(f"labels arrived for {added.rows} of them (tuneloop feedback add)")


def _tick(launcher: object, cfg: Config, log: Path) -> None:
    _banner("tuneloop monitor --once")
    result = launcher.monitor(cfg, str(log))
    ticks = registry.tick_history(cfg.registry, cfg.monitor.experiment, datetime.now(timezone.utc) - timedelta(hours=1))
    outcome = ticks[-1]["outcome"] if ticks else ""
    typer.echo(f"decision: {result.action}" + (f": {outcome}" if outcome else ""))


def _wait_for_version(client: object, version: str) -> None:
    """Wait until the server has followed the alias to `version` (serve.poll_interval, then a load)."""
    deadline = time.monotonic() + 120
    while client.get("/readyz").json().get("model_version") != version:
        if time.monotonic() > deadline:
            raise TuneloopError(f"tuneloop serve did not switch to version {version} within 2 minutes; see serve.log")
        time.sleep(0.5)
    typer.echo(f"the server switched to version {version} on its own (it follows the champion alias)")


def _training_texts(cfg: Config) -> set[str]:
    raw, _ = data.read_at(cfg.data.repo, "HEAD", cfg.data.path)
    return set(tables.parse_table(raw, cfg.data.path, cfg.data.text_column, cfg.data.label_column)["text"])


def _worse_batch(cfg: Config, champion: str, seen: set[str]) -> list[tuple[str, str]]:
    """New labelled tickets on which `champion` errs where version 1 is right, with as many both get right.

    Picked by scoring both versions on tickets not `seen` before, once each (the monitor judges a
    champion on rows it was not trained on): how such a batch is found, not how traffic arrives.
    """
    pool, taken = [], set(seen)
    for text, label in synthetic.generate_tickets(2, POOL, seed=23):
        if text not in taken:
            taken.add(text)
            pool.append((text, label))
    texts = [text for text, _ in pool]
    device = modeling.pick_device(cfg.runtime.device)
    with tempfile.TemporaryDirectory() as scratch, _silenced():
        said = {}
        for version in ("1", champion):
            fetched = registry.fetch(cfg.registry, version, Path(scratch) / version)
            said[version] = evaluation.predict_scored(fetched.adapter_dir, texts, device, base=cfg.model.base)[0]
    lost = [row for row, old, new in zip(pool, said["1"], said[champion]) if old == row[1] != new]
    kept = [row for row, old, new in zip(pool, said["1"], said[champion]) if old == row[1] == new]
    if not lost:
        return []
    size = max(len(lost), cfg.monitor.min_labelled_rows - len(lost))
    return lost + kept[:size]


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Hold back the library chatter of loading a model in this process (the steps' own logs keep it)."""
    with warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")
        noisy = logging.getLogger("bitsandbytes")
        level, noisy.level = noisy.level, logging.ERROR
        try:
            yield
        finally:
            noisy.setLevel(level)
