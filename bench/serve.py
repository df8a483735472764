"""Throughput of `tuneloop serve` under concurrent load against offline batch prediction, on the same model and texts.

The model: LoRA (r=8, query/value) on the packaged all-MiniLM-L6-v2, trained for one epoch on 500
rt-polarity rows (Pang & Lee 2005; speed does not depend on how well it learned), registered in
MLflow (sqlite) and promoted to champion, so both sides load it through the adapter contract.
The texts: `--texts` other rt-polarity rows, cut into `--rounds` chunks.

- **Offline:** `evaluation.predict_scored` at batch 64, in this process; its own timing (the loop
  over batches, not the model load).
- **Serve:** `tuneloop serve` in its own process; a second process sends every text as its own
  `POST /predict` (one text per request) from `--concurrency` keep-alive connections (asyncio, so the
  client takes little of the shared CPU); time from the first request sent to the last answer. The
  server logs every request, as in production. A warm-up of 1,024 other texts runs first (see WARM_UP).

Each round times both sides on the same chunk, alternating which goes first, with one server
running throughout (idle while the offline side runs). The machine is shared, and its load drifts
within a minute, so short alternating rounds compare like with like better than two long runs.
Prints each round, the total, and the ratio serve requests/s ÷ offline rows/s (goal: at least 0.8).

    python bench/serve.py [--texts 2000] [--rounds 4] [--concurrency 32] [--max-batch-size 32] [--max-wait-ms 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "rt-polarity"
TRAIN_ROWS = 500
# Requests before the measured rounds. The server's batches take every size from 1 to max_batch_size and
# every padded length, and torch's CPU kernels likely pay a first-call cost per input shape: in three trials
# here the first round after a 128-request warm-up was the slowest served one (ratio ~0.5 against ~1.0 later).
WARM_UP = 1024
CONFIG = """\
model: {{max_length: 64}}
train: {{epochs: 1, batch_size: 16, learning_rate: 0.001, patience: 0}}
registry: {{model_name: serve-bench}}
serve: {{log: traffic.jsonl, max_batch_size: {batch}, max_wait_ms: {wait}, drain_timeout: 60s}}
"""

CLIENT = r'''
"""POST each text of a JSON list as its own request from N keep-alive connections; print the timing as JSON."""
import asyncio, json, sys, time

port, concurrency, texts = int(sys.argv[1]), int(sys.argv[2]), json.load(open(sys.argv[3]))


async def connection(queue, failures):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while not queue.empty():
        body = json.dumps({"text": queue.get_nowait()}).encode()
        writer.write(b"POST /predict HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        failures += [head] if not head.startswith(b"HTTP/1.1 200") else []
    writer.close()


async def main():
    queue, failures = asyncio.Queue(), []
    for text in texts:
        queue.put_nowait(text)
    started = time.perf_counter()
    await asyncio.gather(*(connection(queue, failures) for _ in range(concurrency)))
    print(json.dumps({"requests": len(texts), "seconds": time.perf_counter() - started, "failed": len(failures)}))


asyncio.run(main())
'''


def rt_polarity() -> list[tuple[str, str]]:
    """Every rt-polarity row as (text, label), in a seeded shuffle."""
    files = {label: SHARED / f"rt-polarity.{label}" for label in ("pos", "neg")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        sys.exit(f"rt-polarity not found ({', '.join(missing)}); put the shared data folder beside the repository "
                 "(../shared/data/rt-polarity)")
    rows = [(line, label) for label, path in files.items() for line in path.read_text(encoding="utf-8").splitlines()]
    random.Random(0).shuffle(rows)
    return rows


def champion(root: Path, rows: list[tuple[str, str]], batch: int, wait: float) -> Path:
    """Train, register and promote the adapter in a fresh registry; return the config path."""
    import pandas as pd

    from tuneloop import modeling, registry, training
    from tuneloop.config import load_config

    config = root / "tuneloop.yaml"
    config.write_text(CONFIG.format(batch=batch, wait=wait))
    cfg = load_config(config)
    adapter = Path(training.train(pd.DataFrame(rows, columns=["text", "label"]), cfg, root / "train").adapter_dir)
    meta = modeling.read_adapter_meta(adapter)
    record = registry.VersionRecord(
        base_model=meta.base_model, base_sha256=meta.base_sha256, tokenizer_sha256=meta.tokenizer_sha256, task=meta.task,
        labels=meta.labels, method=meta.method["name"], method_config=meta.method, quantization=meta.quantization,
        libraries={}, data_repo="", data_rev="", data_path=str(SHARED), data_sha256={}, config_sha256="", pipeline_run="",
        metrics={}, gate="passed", gate_reasons=["benchmark"], champion_version=None,
    )
    candidate = registry.Candidate(adapter_dir=adapter, record=record, params={}, metrics={}, reports={})
    version = registry.register(cfg.registry, candidate, "serve-bench").version
    registry.promote(cfg.registry, version, None, "benchmark", by="bench/serve.py")
    return config


class Offline:
    """`evaluation.predict_scored` on the champion at batch 64, in this process."""

    def __init__(self, config: Path, scratch: Path) -> None:
        from tuneloop import modeling, registry
        from tuneloop.config import load_config

        self.cfg = load_config(config)
        self.adapter = registry.fetch(self.cfg.registry, "champion", scratch / "offline").adapter_dir
        self.device = modeling.pick_device(self.cfg.runtime.device)

    def seconds(self, texts: list[str]) -> float:
        """Seconds of scoring `texts`, as predict_scored times them (the loop over batches, not the model load)."""
        from tuneloop import evaluation

        _, _, ms_per_row = evaluation.predict_scored(self.adapter, texts, self.device, 64, base=self.cfg.model.base)
        return ms_per_row * len(texts) / 1000


class Served:
    """`tuneloop serve` on the champion in its own process, and a client process that loads it."""

    def __init__(self, config: Path, concurrency: int, scratch: Path) -> None:
        self.port, self.concurrency, self.scratch = free_port(), concurrency, scratch
        (scratch / "client.py").write_text(CLIENT)
        self.server = subprocess.Popen([shutil.which("tuneloop"), "serve", "--config", str(config), "--port", str(self.port)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not self._ready():
            if self.server.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"tuneloop serve did not become ready: {self.server.communicate()[1][-2000:]}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def seconds(self, texts: list[str]) -> float:
        """Seconds from the first request sent to the last answer, one text per request."""
        inputs = self.scratch / "texts.json"
        inputs.write_text(json.dumps(texts))
        run = subprocess.run([sys.executable, str(self.scratch / "client.py"), str(self.port), str(self.concurrency),
                              str(inputs)], capture_output=True, text=True, timeout=1800)
        if run.returncode != 0:
            self.stop()
            sys.exit(f"the client failed: {run.stderr[-2000:]}")
        measured = json.loads(run.stdout)
        if measured["failed"]:
            self.stop()
            sys.exit(f"{measured['failed']} of {measured['requests']} requests failed")
        return measured["seconds"]

    def batches(self) -> tuple[float, float]:
        """Forward passes and texts scored so far, from /metrics."""
        import httpx

        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("tuneloop_serve_batch_texts_"))
        return float(values["tuneloop_serve_batch_texts_count"]), float(values["tuneloop_serve_batch_texts_sum"])

    def stop(self) -> int:
        """SIGTERM the server (it drains); return its exit code."""
        if self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
        return self.server.wait(timeout=120)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000, help="texts in all; each round takes the next --texts/--rounds")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, each timing both sides on the same texts, "
                        "alternating which goes first (the machine is shared: its load drifts within a minute)")
    parser.add_argument("--concurrency", type=int, default=32, help="client connections, one request in flight each")
    parser.add_argument("--max-batch-size", type=int, default=32, help="serve.max_batch_size")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="serve.max_wait_ms")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = rt_polarity()
    texts = [text for text, _ in rows[TRAIN_ROWS:TRAIN_ROWS + args.texts]]
    size = len(texts) // args.rounds
    with tempfile.TemporaryDirectory(prefix="tuneloop-serve-bench-") as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        config = champion(root, rows[:TRAIN_ROWS], args.max_batch_size, args.max_wait_ms)
        print(f"champion trained and registered in {time.perf_counter() - started:.0f} s", flush=True)
        offline, served = Offline(config, root), Served(config, args.concurrency, root)
        warm_up = [text for text, _ in rows[-WARM_UP:]]  # texts outside the measured ones
        offline.seconds(warm_up[:128])
        served.seconds(warm_up)
        warm = served.batches()
        table = []
        for number in range(args.rounds):
            chunk = texts[number * size:(number + 1) * size]
            order = ("offline", "serve") if number % 2 == 0 else ("serve", "offline")
            took = {side: (offline if side == "offline" else served).seconds(chunk) for side in order}
            table.append((f"{number + 1} ({order[0]} first)", len(chunk), took["offline"], took["serve"]))
            print(f"round {number + 1}: offline {len(chunk) / took['offline']:.1f} rows/s, "
                  f"serve {len(chunk) / took['serve']:.1f} requests/s", flush=True)
        passes, scored = (after - before for after, before in zip(served.batches(), warm))
        code = served.stop()
        logged = sum(1 for _ in (root / "traffic.jsonl").open())
    report(args, table, passes, scored, code, logged)


def report(args: argparse.Namespace, table: list[tuple[str, int, float, float]], passes: float, scored: float,
           code: int, logged: int) -> None:
    """Print the markdown table of the rounds and their total, and the ratio."""
    print(f"\nconcurrency {args.concurrency}, serve.max_batch_size {args.max_batch_size}, serve.max_wait_ms "
          f"{args.max_wait_ms}: {scored:.0f} texts in {passes:.0f} forward passes while measured "
          f"(mean batch {scored / passes:.1f}); server exit {code} after SIGTERM, {logged} rows logged\n")
    print("| round | texts | offline (predict_scored, batch 64) | tuneloop serve (1 text/request) | ratio |")
    print("|---|---|---|---|---|")
    for name, count, off, on in table:
        print(f"| {name} | {count} | {count / off:.1f} rows/s | {count / on:.1f} requests/s | {off / on:.3f} |")
    count, off, on = (sum(row[i] for row in table) for i in (1, 2, 3))
    print(f"| **all** | **{count}** | **{count / off:.1f} rows/s** | **{count / on:.1f} requests/s** | **{off / on:.3f}** |")
    ratios = sorted(row[2] / row[3] for row in table)
    median = (ratios[(len(ratios) - 1) // 2] + ratios[len(ratios) // 2]) / 2
    print(f"\nratio {off / on:.3f} over all rounds, median of the rounds {median:.3f} (goal: at least 0.8)")


if __name__ == "__main__":
    main()
