"""`tuneloop serve`: the HTTP predictor, its batching, its traffic log, its alias following and its drain.

Every registry here is MLflow on a sqlite file holding real adapters trained on the tiny model:
version 1 (champion), 2 (trained on other tickets with another seed) and 3 (version 1's adapter with
its safetensors cut short, which the adapter contract refuses). In-process tests drive the real
FastAPI app through httpx's ASGI transport; the load and drain test runs `tuneloop serve` and a
client as two real processes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import tiny_config_text
from tests.test_predict import record_for
from tuneloop import evaluation, modeling, registry, serving, synthetic, traffic, training
from tuneloop.config import Config, load_config
from tuneloop.errors import ConfigError, DataError, RegistryError

TUNELOOP = shutil.which("tuneloop")
pytestmark = pytest.mark.skipif(TUNELOOP is None, reason="the tuneloop console script is not installed")

TEXTS = [text for text, _ in synthetic.generate_tickets(2, 6, seed=5)]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """Two real trained adapters and a broken copy of the first, keyed by the version they become."""
    root = tmp_path_factory.mktemp("serve-adapters")
    config = root / "tuneloop.yaml"
    config.write_text(tiny_config_text(tiny_model))
    cfg = load_config(config)
    first = pd.DataFrame(synthetic.generate_tickets(1, 80, seed=0), columns=["text", "label"])
    second = pd.DataFrame(synthetic.generate_tickets(2, 80, seed=1), columns=["text", "label"])
    other_seed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": 7})})
    good = Path(training.train(first, cfg, root / "one").adapter_dir)
    other = Path(training.train(second, other_seed, root / "two").adapter_dir)
    broken = shutil.copytree(good, root / "broken")
    weights = broken / modeling.ADAPTER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 100])
    return {"1": good, "2": other, "3": broken}


def make_registry(root: Path, tiny_model: Path, adapters: dict[str, Path], serve: str = "", champion: str = "1") -> Path:
    """A config whose registry holds versions 1-3 with `champion` promoted; return the config path."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "tuneloop.yaml"
    config.write_text(tiny_config_text(tiny_model, serve=f"serve:\n  log: traffic.jsonl\n{serve}"))
    cfg = load_config(config)
    for version, adapter in adapters.items():
        candidate = registry.Candidate(adapter_dir=adapter, record=record_for(adapter), params={}, metrics={}, reports={})
        assert registry.register(cfg.registry, candidate, f"test-{version}").version == version
    registry.promote(cfg.registry, champion, None, "test champion", by="test")
    return config


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model, adapters) -> Path:
    """A registry whose champion is version 1; nothing in it moves (tests that move aliases make their own)."""
    return make_registry(tmp_path_factory.mktemp("serve-registry"), tiny_model, adapters)


def service_for(cfg: Config, **serve: object) -> serving.Service:
    settings = cfg.serve.model_copy(update=serve)
    return serving.Service(settings, cfg.registry, cfg.model.base, "cpu")


async def send(app, requests: list[tuple[str, str, object]]) -> list[httpx.Response]:
    """Send (method, path, json) requests to the app all at once, as concurrent clients would."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
        return await asyncio.gather(*(client.request(method, path, json=body) for method, path, body in requests))


def call(app, method: str, path: str, body: object = None) -> httpx.Response:
    return asyncio.run(send(app, [(method, path, body)]))[0]


def samples(app) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    text = call(app, "GET", "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# --- the endpoints, in process ---------------------------------------------------------------------

BAD_BODIES = [
    pytest.param(b"{not json", 400, 'the body is not JSON; send {"texts": ["..."]}', id="not-json"),
    pytest.param([], 422, 'send an object with "texts" (a list of strings) or "text" (one string), not both', id="a-list"),
    pytest.param({"text": "a", "texts": ["b"]}, 422,
                 'send an object with "texts" (a list of strings) or "text" (one string), not both', id="both"),
    pytest.param({"texts": []}, 422, '"texts" is empty; send at least one text', id="empty-list"),
    pytest.param({"texts": ["fine", "  \n"]}, 422, "text 2 is blank; send non-blank text of at most 100,000 characters",
                 id="blank-text"),
    pytest.param({"texts": ["x" * 100_001]}, 422, "text 1 is 100,001 characters, over the limit of 100,000; send non-blank "
                 "text of at most 100,000 characters", id="too-long"),
    pytest.param(b'{"text": "caf\\ud800"}', 422, "text 1 holds a lone surrogate, which is not valid Unicode; send non-blank "
                 "text of at most 100,000 characters", id="lone-surrogate"),
    pytest.param({"texts": ["a"] * 5}, 422, "5 texts, over serve.max_texts=4; split the request", id="over-max-texts"),
    pytest.param({"texts": ["a", 3]}, 422, '"texts" must be a list of strings and "text" a string', id="not-strings"),
    pytest.param({"texts": ["a", "b"], "request_ids": ["one"]}, 422, '"request_ids" must be a list of 2 string(s), one per text',
                 id="ids-length"),
    pytest.param({"texts": ["a", "b"], "request_ids": ["x", "x"]}, 422, '"request_ids" repeats an id; send a distinct id '
                 "per text", id="ids-repeat"),
    pytest.param({"text": "a", "request_ids": ["has space"]}, 422, "request id 1 'has space' is not 1 to 128 characters "
                 "without whitespace; send such ids, or none", id="id-space"),
    pytest.param({"text": "a", "label": "billing"}, 422, "unknown field(s) 'label'; send texts, text and request_ids only",
                 id="unknown-field"),
]


def test_endpoints_answer_score_log_and_count(served, adapters, tmp_path):
    cfg = load_config(served)
    log = tmp_path / "traffic.jsonl"
    service = service_for(cfg, log=str(log), max_texts=4, max_wait_ms=0.0)
    app = serving.create_app(service)
    try:
        assert call(app, "GET", "/healthz").json() == {"status": "ok"}
        loading = call(app, "GET", "/readyz")
        assert (loading.status_code, loading.json()) == (503, {"status": "loading", "alias": "champion"})
        early = call(app, "POST", "/predict", {"text": TEXTS[0]})
        assert early.status_code == 503 and early.json()["detail"].startswith("not ready: loading the champion version")

        assert service.load() == "1"
        ready = call(app, "GET", "/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready", "model": "test-model", "model_version": "1"})

        many = call(app, "POST", "/predict", {"texts": TEXTS[:3]})
        one = call(app, "POST", "/predict", {"text": TEXTS[3], "request_ids": ["client-id-7"]})
        bad = [asyncio.run(_raw_post(app, body)) for body, _, _ in (p.values for p in BAD_BODIES)]
    finally:
        assert service.close(10) == 0

    labels, scores, _ = evaluation.predict_scored(adapters["1"], TEXTS[:4], "cpu", base=cfg.model.base)
    assert many.status_code == 200 and one.status_code == 200
    assert set(many.json()) == {"model", "model_version", "predictions"}
    assert (many.json()["model"], many.json()["model_version"], one.json()["model_version"]) == ("test-model", "1", "1")
    predictions = many.json()["predictions"] + one.json()["predictions"]
    assert [set(p) for p in predictions] == [{"request_id", "label", "score"}] * 4
    assert [p["label"] for p in predictions] == labels
    assert [p["score"] for p in predictions] == pytest.approx(scores, abs=1e-5)
    assert predictions[3]["request_id"] == "client-id-7"
    assert len({p["request_id"] for p in predictions}) == 4

    assert [(r.status_code, r.json()) for r in bad] == [(status, {"detail": message}) for _, status, message in
                                                       (p.values for p in BAD_BODIES)]
    rows = traffic.read_window(log).rows  # only the four texts served: refused bodies are never logged
    assert [(r.request_id, r.model, r.model_version, r.text, r.prediction) for r in rows] == [
        (p["request_id"], "test-model", "1", text, p["label"]) for p, text in zip(predictions, TEXTS[:4])]
    assert [r.score for r in rows] == [p["score"] for p in predictions]
    assert all(r.latency_ms > 0 for r in rows)

    metrics = samples(app)
    assert metrics[("tuneloop_serve_requests_total", (("status", "200"),))] == 2
    assert metrics[("tuneloop_serve_requests_total", (("status", "503"),))] == 1
    assert metrics[("tuneloop_serve_requests_total", (("status", "400"),))] == 1
    assert metrics[("tuneloop_serve_requests_total", (("status", "422"),))] == len(BAD_BODIES) - 1
    assert metrics[("tuneloop_serve_request_seconds_count", ())] == 3 + len(BAD_BODIES)
    assert metrics[("tuneloop_serve_batch_texts_count", ())] == 2  # max_wait_ms 0 and one request at a time
    assert metrics[("tuneloop_serve_batch_texts_sum", ())] == 4
    assert metrics[("tuneloop_serve_model_info", (("alias", "champion"), ("model", "test-model"), ("version", "1")))] == 1
    assert metrics[("tuneloop_serve_log_rows_total", ())] == 4


async def _raw_post(app, body: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await client.post("/predict", content=content, headers={"content-type": "application/json"})


def test_two_apps_keep_their_own_metrics(served, tmp_path):
    cfg = load_config(served)
    first, second = (service_for(cfg, log=str(tmp_path / f"{n}.jsonl")) for n in (1, 2))
    try:
        first.load()
        call(serving.create_app(first), "POST", "/predict", {"text": TEXTS[0]})
        assert ("tuneloop_serve_requests_total", (("status", "200"),)) not in samples(serving.create_app(second))
    finally:
        first.close(10), second.close(10)


# --- batching ----------------------------------------------------------------------------------------


def test_concurrent_requests_share_forward_passes(served, tmp_path):
    """A batch closes when it holds max_batch_size texts; with max_wait_ms at its 10 s ceiling, 16 requests sent
    at once can only be scored as two passes of 8, and a request of 20 texts alone as passes of 8, 8 and 4."""
    cfg = load_config(served)
    log = tmp_path / "traffic.jsonl"
    service = service_for(cfg, log=str(log), max_batch_size=8, max_wait_ms=10_000.0)
    app = serving.create_app(service)
    try:
        service.load()
        texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(16)]
        answers = asyncio.run(send(app, [("POST", "/predict", {"text": text}) for text in texts]))
        big = call(app, "POST", "/predict", {"texts": texts + texts[:4]})
    finally:
        assert service.close(30) == 0
    assert [a.status_code for a in answers] == [200] * 16 and big.status_code == 200
    metrics = samples(app)
    buckets = {dict(labels)["le"]: value for (name, labels), value in metrics.items() if name == "tuneloop_serve_batch_texts_bucket"}
    assert buckets == {"1.0": 0, "2.0": 0, "4.0": 1, "8.0": 5, "+Inf": 5}
    assert metrics[("tuneloop_serve_batch_texts_count", ())] == 5  # forward passes, for 36 texts
    assert metrics[("tuneloop_serve_batch_texts_sum", ())] == 36
    rows = traffic.read_window(log).rows
    assert len(rows) == 36 and {r.request_id for r in rows} == {
        p["request_id"] for a in [*answers, big] for p in a.json()["predictions"]}


def test_batcher_keeps_a_request_whole_and_scores_what_is_queued_on_stop():
    seen: list[list[str]] = []
    release = threading.Event()

    def score(texts):
        release.wait(10)
        seen.append(texts)
        return "1", [t.upper() for t in texts], [1.0] * len(texts)

    batcher = serving.Batcher(score, max_texts=4, max_wait=0.0)
    batcher.start()
    futures = [batcher.submit(texts) for texts in (["a"], ["b", "c", "d"], ["e", "f"], ["g"])]
    release.set()
    batcher.stop(10)
    assert [f.result(0) for f in futures] == [("1", ["A"], [1.0]), ("1", ["B", "C", "D"], [1.0] * 3),
                                              ("1", ["E", "F"], [1.0] * 2), ("1", ["G"], [1.0])]
    assert sum(map(len, seen)) == 7 and all(len(batch) <= 4 for batch in seen)
    assert ["b", "c", "d"] in [batch[i:i + 3] for batch in seen for i in range(len(batch))]  # never split


def test_a_request_given_up_before_its_batch_is_skipped_and_the_worker_lives_on():
    release, seen = threading.Event(), []

    def score(texts):
        release.wait(10)
        seen.append(texts)
        return "1", texts, [1.0] * len(texts)

    batcher = serving.Batcher(score, max_texts=1, max_wait=0.0)
    batcher.start()
    running, given_up, later = (batcher.submit([text]) for text in ("a", "b", "c"))
    assert given_up.cancel()  # what asyncio does to the future of a cancelled request
    release.set()
    batcher.stop(10)
    assert (running.result(0), later.result(0)) == (("1", ["a"], [1.0]), ("1", ["c"], [1.0]))
    assert seen == [["a"], ["c"]]


# --- following the alias, in process ---------------------------------------------------------------


def test_a_moved_alias_is_loaded_beside_then_swapped_and_a_broken_version_keeps_the_old(tmp_path, tiny_model, adapters, caplog):
    config = make_registry(tmp_path / "ws", tiny_model, adapters)
    cfg = load_config(config)
    announced: list[str] = []
    service = serving.Service(cfg.serve.model_copy(update={"log": str(tmp_path / "t.jsonl")}), cfg.registry,
                              cfg.model.base, "cpu", announce=announced.append)
    app = serving.create_app(service)
    try:
        service.load()
        first_scratch = Path(service.current.scratch.name)
        assert service.refresh() is None  # the alias has not moved
        registry.promote(cfg.registry, "3", expected_champion="1", why="test: a broken version", by="test")
        assert service.refresh() is None
        assert service.current.version == "1" and first_scratch.exists()
        assert "test-model champion could not be followed, still serving version 1: version 3 of test-model: adapter file" \
            in caplog.text
        still = call(app, "POST", "/predict", {"text": TEXTS[0]})
        registry.promote(cfg.registry, "2", expected_champion="3", why="test: a good version", by="test")
        assert service.refresh() == "2"
        after = call(app, "POST", "/predict", {"text": TEXTS[0]})
        assert service.refresh() is None
    finally:
        service.close(10)
    assert (still.status_code, still.json()["model_version"]) == (200, "1")
    assert (after.status_code, after.json()["model_version"]) == (200, "2")
    assert not first_scratch.exists()  # the old version's files went with it
    assert announced == ["switched to version 2 of test-model (alias champion moved from 1)"]
    metrics = samples(app)
    assert metrics[("tuneloop_serve_reloads_total", (("outcome", "failed"),))] == 1
    assert metrics[("tuneloop_serve_reloads_total", (("outcome", "switched"),))] == 1
    assert metrics[("tuneloop_serve_model_info", (("alias", "champion"), ("model", "test-model"), ("version", "2")))] == 1
    assert [row.model_version for row in traffic.read_window(tmp_path / "t.jsonl").rows] == ["1", "2"]


# --- startup errors -------------------------------------------------------------------------------


def test_startup_problems_are_one_typed_error_each(served, tmp_path, tiny_model):
    cfg = load_config(served)
    empty = tmp_path / "empty" / "tuneloop.yaml"
    empty.parent.mkdir()
    empty.write_text(tiny_config_text(tiny_model))
    nothing = load_config(empty)
    service = serving.Service(nothing.serve.model_copy(update={"log": str(tmp_path / "t.jsonl")}), nothing.registry,
                              nothing.model.base, "cpu")
    try:
        with pytest.raises(RegistryError, match=r"^test-model has no champion in the registry at sqlite:///\S+/empty/"
                                                r"mlflow\.db; run `tuneloop run` first, or serve another alias$"):
            service.load()
    finally:
        service.close(5)
    away = serving.Service(cfg.serve.model_copy(update={"log": str(tmp_path / "t.jsonl")}),
                           cfg.registry.model_copy(update={"tracking_uri": "http://127.0.0.1:9"}), cfg.model.base, "cpu")
    try:
        with pytest.raises(RegistryError, match=r"^registry\.tracking_uri: http://127\.0\.0\.1:9 does not answer "
                                                r"\(Connection refused\); start the tracking server or fix registry\.tracking_uri$"):
            away.alias_version()
    finally:
        away.close(5)
    with pytest.raises(DataError, match=r"traffic log '\S+/t\.csv' is not a \.jsonl file; name it e\.g\. traffic\.jsonl"):
        service_for(cfg, log=str(tmp_path / "t.csv"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"^cannot listen on 127\.0\.0\.1:{port} \(Address already in use\); stop what "
                                          r"uses it, or pass another --port / serve\.port$"):
        serving.bind("127.0.0.1", port)
    taken.close()


def one_error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, run.stderr
    return lines[0]


@pytest.mark.slow
def test_the_cli_refuses_to_start_in_one_line(tmp_path, tiny_model, adapters, served):
    """Through the real entry point: a champion whose adapter is refused, and a taken port."""
    broken = make_registry(tmp_path / "broken", tiny_model, adapters, champion="3")
    run = subprocess.run([TUNELOOP, "serve", "--config", str(broken), "--port", str(free_port())],
                         capture_output=True, text=True, timeout=300)
    assert one_error_line(run).startswith("error: RegistryError: version 3 of test-model: adapter file ")
    assert "is not a valid safetensors file" in run.stderr and run.stdout == ""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    run = subprocess.run([TUNELOOP, "serve", "--config", str(served), "--port", str(port)],
                         capture_output=True, text=True, timeout=300)
    taken.close()
    assert one_error_line(run) == (f"error: ConfigError: cannot listen on 127.0.0.1:{port} (Address already in use); "
                                   "stop what uses it, or pass another --port / serve.port")


# --- under load, as real processes ------------------------------------------------------------------

CLIENT = r'''
"""Send POST /predict requests from threads over keep-alive connections; write what came back as JSON.

argv: port, requests (0 = until the server goes away), concurrency, output file, hold (an index at which new
requests wait until /readyz reports version 2; 0 = never).
"""
import http.client, json, sys, threading, time

port, total, concurrency, out, hold = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
lock, results, state, switched = threading.Lock(), [], {"next": 0, "done": 0}, threading.Event()


def version_two():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while True:
        conn.request("GET", "/readyz")
        if json.loads(conn.getresponse().read()).get("model_version") == "2":
            return
        time.sleep(0.05)


def worker():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while True:
        with lock:
            index = state["next"]
            if total and index >= total:
                return
            state["next"] += 1
        if hold and index == hold:
            version_two()
            switched.set()
        elif hold and index > hold:
            switched.wait()
        body = json.dumps({"text": f"my card was declined, request {index}"})
        sent = time.monotonic()
        try:
            conn.request("POST", "/predict", body, {"content-type": "application/json"})
            response = conn.getresponse()
            status, answer = response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException) as exc:
            with lock:
                results.append({"index": index, "status": None, "error": repr(exc)})
            return
        with lock:
            results.append({"index": index, "status": status, "sent": sent, "received": time.monotonic(),
                            "version": answer.get("model_version"),
                            "id": answer["predictions"][0]["request_id"] if status == 200 else None})
            state["done"] += 1
            if state["done"] % 100 == 0:
                print("done", state["done"], flush=True)


threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(out, "w") as handle:
    json.dump(results, handle)
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(port: int, server: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


def start_client(tmp_path: Path, port: int, total: int, out: Path, hold: int = 0) -> subprocess.Popen:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    return subprocess.Popen([sys.executable, str(script), str(port), str(total), "8", str(out), str(hold)],
                            stdout=subprocess.PIPE, text=True)


def wait_for_line(process: subprocess.Popen, line: str) -> None:
    for got in process.stdout:
        if got.strip() == line:
            return
    raise AssertionError(f"{line!r} never came; exit {process.wait()}")


@pytest.mark.slow
def test_load_with_a_switch_midway_then_sigterm_drains(tmp_path, tiny_model, adapters):
    """2,000 requests, 8 at a time, from a second process; the champion moves from 1 to 2 after 300 answers.

    The client holds new requests from index 1,000 until /readyz says version 2 (only if the switch has
    not happened by then), so both versions serve whatever the machine's speed. Then a second client
    keeps sending while SIGTERM arrives: every answer it got must be in the log, and the exit is 0.
    """
    config = make_registry(tmp_path / "ws", tiny_model, adapters, serve="  poll_interval: 1s\n  drain_timeout: 60s\n")
    cfg = load_config(config)
    log = Path(cfg.serve.log)
    port = free_port()
    server = subprocess.Popen([TUNELOOP, "serve", "--config", str(config), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(port, server)
        client = start_client(tmp_path, port, 2000, tmp_path / "load.json", hold=1000)
        wait_for_line(client, "done 300")
        registry.promote(cfg.registry, "2", expected_champion="1", why="test: a switch under load", by="test")
        for _ in client.stdout:
            pass
        assert client.wait(timeout=600) == 0
        drain = start_client(tmp_path, port, 0, tmp_path / "drain.json")
        wait_for_line(drain, "done 200")
        server.send_signal(signal.SIGTERM)
        for _ in drain.stdout:
            pass
        assert drain.wait(timeout=120) == 0
        out, err = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == f"serving version 1 of test-model at http://127.0.0.1:{port} (alias champion), log: {log}"
    assert lines[1:] == ["switched to version 2 of test-model (alias champion moved from 1)",
                         f"stopped: every request answered and logged to {log}"]

    loaded = json.loads((tmp_path / "load.json").read_text())
    assert len(loaded) == 2000 and [r["status"] for r in loaded] == [200] * 2000  # zero failed requests
    window = traffic.read_window(log)
    assert window.skipped.total == 0
    first_rows = window.rows[:2000]
    assert {r.request_id for r in first_rows} == {r["id"] for r in loaded} and len({r["id"] for r in loaded}) == 2000
    by_id = {r.request_id: r for r in window.rows}
    assert all(by_id[r["id"]].model_version == r["version"] for r in loaded)  # the version that scored it
    assert {r["version"] for r in loaded} == {"1", "2"}
    switched = min(r["received"] for r in loaded if r["version"] == "2")
    assert {r["version"] for r in loaded if r["sent"] > switched} == {"2"}

    drained = json.loads((tmp_path / "drain.json").read_text())
    answered = [r for r in drained if r["status"] == 200]
    assert len(answered) >= 200 and {r["status"] for r in drained} <= {200, None}
    assert len(window.rows) == 2000 + len(answered)  # every answer has its row, nothing else was logged
    assert {r.request_id for r in window.rows[2000:]} == {r["id"] for r in answered}
