"""The HTTP predictor behind `tuneloop serve`: a registry alias served, batched, logged, followed and drained.

One `Service` owns what a serving process holds:

- the loaded version: fetched from the registry and loaded through the adapter contract
  (`registry.fetch`, then `modeling.load_adapter(..., base=model.base)`);
- a `Batcher`: requests are queued and one worker thread scores them together, up to
  `serve.max_batch_size` texts per forward pass, waiting at most `serve.max_wait_ms` for company.
  The event loop only queues and awaits, so it keeps accepting while the model runs;
- the traffic log: rows go into a queue that one writer thread appends (`traffic.TrafficWriter`),
  so a response never waits on the disk;
- the alias follower: a thread asks the registry every `serve.poll_interval` where the alias points;
  a new version is loaded beside the old one, which keeps serving, then swapped in with one reference
  assignment that the worker reads once per batch. A failed load leaves the old version serving.

`create_app` puts it behind FastAPI (`/predict`, `/healthz`, `/readyz`, `/metrics`) and `run` serves it
with uvicorn until SIGTERM or Ctrl-C, then drains: no new connections, in-flight requests answered,
every queued log row written, all within `serve.drain_timeout`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import math
import queue
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuneloop import evaluation, modeling, registry, tasks, traffic
from tuneloop.config import RegistryConfig, ServeConfig
from tuneloop.errors import ConfigError, DataError, RegistryError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds, a request's time here


@dataclass
class Loaded:
    """A registry version in memory: the base model with its adapter, its tokenizer and metadata."""

    version: str
    model: Any
    tokenizer: Any
    meta: modeling.AdapterMeta
    scratch: tempfile.TemporaryDirectory  # the downloaded adapter files, removed when the version is dropped


def load_version(cfg: RegistryConfig, version: str, base: str, device: str) -> Loaded:
    """Fetch a version's adapter and load it onto `base` (model.base) through the adapter contract.

    Raises:
        RegistryError: when the version is missing, its files are refused (pickles, broken safetensors),
            its labels disagree with its registry tags, or it does not fit `base`.
        TrainingError: when the base model is not on this machine.
    """
    scratch = tempfile.TemporaryDirectory(prefix="tuneloop-serve-")
    try:
        fetched = registry.fetch(cfg, version, Path(scratch.name) / "version")
        try:
            meta = modeling.read_adapter_meta(fetched.adapter_dir)
            tasks.require_labels(meta.task, "tuneloop serve")
            if meta.labels != fetched.labels:
                raise RegistryError(f"the adapter's labels {meta.labels} differ from the version's labels tag "
                                    f"{fetched.labels}; re-register the adapter")
            model, tokenizer, meta = modeling.load_adapter(fetched.adapter_dir, device, base=base)
        except RegistryError as exc:
            raise RegistryError(f"version {fetched.version} of {cfg.model_name}: {exc}") from exc
    except BaseException:
        scratch.cleanup()
        raise
    return Loaded(fetched.version, model, tokenizer, meta, scratch)


def score_texts(loaded: Loaded, texts: list[str], device: str) -> tuple[list[str], list[float]]:
    """Label every text in one forward pass: the predicted label and its softmax probability (0 to 1)."""
    return evaluation.score_loaded(loaded.model, loaded.tokenizer, loaded.meta, texts, device, max(len(texts), 1))


class Metrics:
    """The Prometheus series of one app, in a registry of its own (two apps in a process never mix)."""

    def __init__(self, max_batch_size: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, Info

        self.registry = CollectorRegistry()
        self.requests = Counter("tuneloop_serve_requests", "POST /predict requests answered, by HTTP status.",
                                ["status"], registry=self.registry)
        self.latency = Histogram("tuneloop_serve_request_seconds", "Seconds from a request's arrival to its answer.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        sizes = sorted({2 ** i for i in range(int(math.log2(max_batch_size)) + 1)} | {max_batch_size})
        self.batch = Histogram("tuneloop_serve_batch_texts", "Texts scored per forward pass.",
                               buckets=sizes, registry=self.registry)
        self.model = Info("tuneloop_serve_model", "The registry version being served.", registry=self.registry)
        self.reloads = Counter("tuneloop_serve_reloads", "Alias moves followed, by outcome (switched, failed).",
                               ["outcome"], registry=self.registry)
        self.logged = Counter("tuneloop_serve_log_rows", "Rows appended to the traffic log.", registry=self.registry)

    def text(self) -> tuple[bytes, str]:
        """The exposition: its bytes and content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


@dataclass
class _Job:
    """One request's texts waiting to be scored, and where its answer goes."""

    texts: list[str]
    future: concurrent.futures.Future


class Batcher:
    """Score queued requests together on one worker thread.

    A batch starts with the oldest request, takes every request already queued, then waits up to
    `max_wait` seconds for more, and closes when it holds `max_texts` texts (a request never splits
    across batches, so it is scored by one version; one larger than `max_texts` is scored alone, in
    chunks). `score(texts)` returns (version, labels, scores) for all of a batch's texts.
    """

    def __init__(self, score: Callable[[list[str]], tuple[str, list[str], list[float]]], max_texts: int, max_wait: float) -> None:
        self._score, self.max_texts, self.max_wait = score, max_texts, max_wait
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._carry: _Job | None = None  # a request that did not fit the last batch: it opens the next one
        self._stopped = False  # the stop sentinel was met: score what is held, then end
        self._thread = threading.Thread(target=self._work, name="tuneloop-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, texts: list[str]) -> concurrent.futures.Future:
        """Queue a request's texts; the future gives (version, labels, scores)."""
        job = _Job(texts, concurrent.futures.Future())
        self._queue.put(job)
        return job.future

    def stop(self, timeout: float) -> None:
        """Score what is queued, then end the worker (waiting at most `timeout` seconds)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            first = self._carry if self._carry is not None else self._queue.get()
            self._carry = None
            if first is None:
                return
            group = [job for job in self._gather(first) if job.future.set_running_or_notify_cancel()]
            if group:  # a request given up (its client gone, or the drain timed out) is not scored
                self._run(group)
            if self._stopped and self._carry is None:
                return

    def _gather(self, first: _Job) -> list[_Job]:
        """The jobs of one batch, oldest first."""
        group, size = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_texts and not self._stopped:
            left = deadline - time.monotonic()
            try:  # jobs already queued are taken whatever the time; then wait out the rest of max_wait
                job = self._queue.get_nowait() if self._queue.qsize() or left <= 0 else self._queue.get(timeout=left)
            except queue.Empty:
                break
            if job is None:
                self._stopped = True
                break
            if size + len(job.texts) > self.max_texts:
                self._carry = job
                break
            group.append(job)
            size += len(job.texts)
        return group

    def _run(self, group: list[_Job]) -> None:
        texts = [text for job in group for text in job.texts]
        try:
            version, labels, scores = self._score(texts)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error (a 500), the worker lives on
            log.error("scoring a batch of %d texts failed: %s", len(texts), exc)
            for job in group:
                job.future.set_exception(exc)
            return
        start = 0
        for job in group:
            end = start + len(job.texts)
            job.future.set_result((version, labels[start:end], scores[start:end]))
            start = end


class LogWriter:
    """Append traffic rows from a queue on one thread, so that a response never waits for the disk."""

    def __init__(self, path: Path, written: Callable[[int], None]) -> None:
        """Open the log now, so that a log that cannot be written fails the start, not the first request.

        Raises:
            DataError: when the log cannot hold rows (see `traffic.check_log`) or cannot be opened.
        """
        try:
            self._writer = traffic.TrafficWriter(path)
        except OSError as exc:
            raise DataError(f"traffic log {str(path)!r} cannot be opened for appending ({exc.strerror}); "
                            "choose a writable path with serve.log or --log") from None
        self._queue: queue.Queue[list[traffic.TrafficRow] | None] = queue.Queue()  # one list per request
        self._written = written
        self._thread = threading.Thread(target=self._work, name="tuneloop-log-writer", daemon=True)
        self._thread.start()

    def put(self, rows: list[traffic.TrafficRow]) -> None:
        self._queue.put(rows)

    def close(self, timeout: float) -> int:
        """Write every queued row, fsync and close; return the rows still unwritten after `timeout` seconds."""
        self._queue.put(None)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return 0
        return sum(len(rows) for rows in list(self._queue.queue) if rows is not None)

    def _work(self) -> None:
        done = False
        while not done:
            queued = [self._queue.get()]
            while not self._queue.empty():  # everything queued meanwhile goes in the same write
                queued.append(self._queue.get_nowait())
            done = queued[-1] is None
            rows = [row for rows in queued if rows is not None for row in rows]
            try:
                self._written(self._writer.append(rows))
            except (DataError, OSError) as exc:  # a full disk must not stop the serving; say what was lost
                log.error("%d traffic row(s) could not be written to %s: %s", len(rows), self._writer.path, exc)
        self._writer.close()


class Service:
    """The served alias: its loaded version, the batcher, the log writer and the alias follower."""

    def __init__(self, serve: ServeConfig, registry_cfg: RegistryConfig, base: str, device: str,
                 announce: Callable[[str], None] = log.info) -> None:
        """Open the traffic log and start the batcher; nothing is loaded yet (see `load`).

        Args:
            serve: the serve section, with the alias and log already overridden by the caller.
            registry_cfg: the registry the alias lives in.
            base: model.base, the base model every version is loaded onto.
            device: torch device string (`modeling.pick_device`).
            announce: told a line on each switch of version (the CLI prints it).

        Raises:
            DataError: when the traffic log cannot be written.
        """
        self.serve, self.registry_cfg, self.base, self.device, self.announce = serve, registry_cfg, base, device, announce
        self.metrics = Metrics(serve.max_batch_size)
        self.current: Loaded | None = None
        self._log = LogWriter(Path(serve.log), self.metrics.logged.inc)
        self._batcher = Batcher(self._score, serve.max_batch_size, serve.max_wait_ms / 1000)
        self._batcher.start()
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    @property
    def model_name(self) -> str:
        return self.registry_cfg.model_name

    def alias_version(self) -> str:
        """The version the alias points at now.

        Raises:
            RegistryError: when the store is unreachable or the alias is not set.
        """
        version = registry.alias_of(self.registry_cfg, self.serve.alias)
        if version is None:
            raise RegistryError(f"{self.model_name} has no {self.serve.alias} in the registry at "
                                f"{self.registry_cfg.tracking_uri}; run `tuneloop run` first, or serve another alias")
        return version

    def load(self) -> str:
        """Load the version the alias points at and serve it; return its number (readiness starts here).

        Raises:
            RegistryError, TrainingError: see `alias_version` and `load_version`.
        """
        self._install(load_version(self.registry_cfg, self.alias_version(), self.base, self.device))
        return self.current.version

    def refresh(self) -> str | None:
        """Follow the alias once: load a version it moved to beside the served one, then swap; return it.

        Returns None when the alias has not moved, or the move could not be followed: then the served
        version stays, a warning names the problem, and the next call tries again.
        """
        try:
            version = self.alias_version()
            if self.current is not None and version == self.current.version:
                return None
            loaded = load_version(self.registry_cfg, version, self.base, self.device)
        except Exception as exc:  # noqa: BLE001 - any failure to load keeps the served version serving
            self.metrics.reloads.labels("failed").inc()
            log.warning("%s %s could not be followed, still serving version %s: %s", self.model_name, self.serve.alias,
                        self.current.version if self.current else "none", exc)
            return None
        old = self._install(loaded)
        self.metrics.reloads.labels("switched").inc()
        self.announce(f"switched to version {loaded.version} of {self.model_name} "
                      f"(alias {self.serve.alias} moved from {old.version if old else 'none'})")
        del old
        gc.collect()  # module graphs may hold reference cycles: free the old weights now, before another load
        return loaded.version

    def follow(self) -> None:
        """Start the thread that calls `refresh` every `serve.poll_interval` seconds until `close`."""
        def poll() -> None:
            while not self._stop.wait(self.serve.poll_interval):
                self.refresh()

        self._follower = threading.Thread(target=poll, name="tuneloop-alias-follower", daemon=True)
        self._follower.start()

    def _install(self, loaded: Loaded) -> Loaded | None:
        """Serve `loaded` from the next batch on (one reference assignment) and drop the old version."""
        old, self.current = self.current, loaded
        self.metrics.model.info({"model": self.model_name, "version": loaded.version, "alias": self.serve.alias})
        if old is not None:
            old.scratch.cleanup()  # the batch in progress holds its own reference; memory goes with it
        return old

    def _score(self, texts: list[str]) -> tuple[str, list[str], list[float]]:
        """Score a batch with the version served when it starts, in forward passes of max_batch_size."""
        loaded = self.current  # read once: a switch lands between batches, never inside one
        labels: list[str] = []
        scores: list[float] = []
        for start in range(0, len(texts), self.serve.max_batch_size):
            chunk = texts[start:start + self.serve.max_batch_size]
            chunk_labels, chunk_scores = score_texts(loaded, chunk, self.device)
            self.metrics.batch.observe(len(chunk))
            labels.extend(chunk_labels)
            scores.extend(chunk_scores)
        return loaded.version, labels, scores

    async def predict(self, texts: list[str], request_ids: list[str], started: float) -> tuple[str, list[dict]]:
        """Score a request's texts in the next batch, queue its log rows, and return (version, predictions).

        Args:
            texts: the request's texts, already checked (`parse_body`).
            request_ids: one id per text.
            started: `time.perf_counter()` when the request arrived: latency_ms counts from there.
        """
        version, labels, scores = await asyncio.wrap_future(self._batcher.submit(texts))
        latency_ms = 1000 * (time.perf_counter() - started)
        served = datetime.now(timezone.utc)
        self._log.put([traffic.TrafficRow(rid, served, self.model_name, version, text, label, score, latency_ms)
                       for rid, text, label, score in zip(request_ids, texts, labels, scores)])
        return version, [{"request_id": rid, "label": label, "score": score}
                         for rid, label, score in zip(request_ids, labels, scores)]

    def close(self, timeout: float) -> int:
        """Stop following, score what is queued, write every log row; return rows lost to the `timeout` (seconds)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._batcher.stop(max(0.0, deadline - time.monotonic()))
        lost = self._log.close(max(0.0, deadline - time.monotonic()))
        if lost:
            log.error("%d traffic row(s) were not written within serve.drain_timeout=%ss", lost, self.serve.drain_timeout)
        return lost


class BadRequest(Exception):
    """A request body the predictor refuses: an HTTP status and one line saying what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_body(raw: bytes, max_texts: int) -> tuple[list[str], list[str]]:
    """Check a /predict body and return its texts and request ids (fresh ones where the client sent none).

    The body is `{"texts": [...]}` or `{"text": "..."}`, optionally with `"request_ids"`, one per text.

    Raises:
        BadRequest: 400 for a body that is not JSON; 422 for any other problem, naming the first one.
    """
    import json

    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise BadRequest(400, 'the body is not JSON; send {"texts": ["..."]}') from None
    if not isinstance(body, dict) or ("text" in body) == ("texts" in body):
        raise BadRequest(422, 'send an object with "texts" (a list of strings) or "text" (one string), not both')
    unknown = sorted(set(body) - {"text", "texts", "request_ids"})
    if unknown:
        raise BadRequest(422, f"unknown field(s) {', '.join(map(repr, unknown))}; send texts, text and request_ids only")
    texts = [body["text"]] if "text" in body else body["texts"]
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise BadRequest(422, '"texts" must be a list of strings and "text" a string')
    if not texts:
        raise BadRequest(422, '"texts" is empty; send at least one text')
    if len(texts) > max_texts:
        raise BadRequest(422, f"{len(texts):,} texts, over serve.max_texts={max_texts:,}; split the request")
    for number, text in enumerate(texts, start=1):
        problem = traffic.text_problem(text)
        if problem:
            raise BadRequest(422, f"text {number} {problem}; send non-blank text of at most 100,000 characters")
    return texts, _request_ids(body.get("request_ids"), len(texts))


def _request_ids(given: object, count: int) -> list[str]:
    """The client's request ids, checked as the traffic log will hold them, or fresh ones."""
    if given is None:
        return [traffic.new_request_id() for _ in range(count)]
    if not isinstance(given, list) or len(given) != count or not all(isinstance(rid, str) for rid in given):
        raise BadRequest(422, f'"request_ids" must be a list of {count} string(s), one per text')
    for number, rid in enumerate(given, start=1):
        if traffic.id_problem(rid):
            raise BadRequest(422, f"request id {number} {rid[:40]!r} {traffic.id_problem(rid)}; send such ids, or none")
    if len(set(given)) < count:
        raise BadRequest(422, '"request_ids" repeats an id; send a distinct id per text')
    return list(given)


def create_app(service: Service) -> Any:
    """The FastAPI app over `service`: /predict, /healthz, /readyz and /metrics.

    Plain routes that take the request as it is: the body is checked by `parse_body`, which names the
    problem in one line, rather than by FastAPI's validation (a list of error objects), and each
    request skips the dependency machinery it would not use.
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    app = FastAPI(title="tuneloop serve", docs_url=None, redoc_url=None, openapi_url=None)

    async def healthz(request: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Any) -> JSONResponse:
        if service.current is None:
            return JSONResponse({"status": "loading", "alias": service.serve.alias}, status_code=503)
        return JSONResponse({"status": "ready", "model": service.model_name, "model_version": service.current.version})

    async def metrics(request: Any) -> Response:
        body, content_type = service.metrics.text()
        return Response(body, media_type=content_type)

    async def predict(request: Any) -> JSONResponse:
        started = time.perf_counter()
        status, body = await _answer(service, await request.body(), started)
        service.metrics.requests.labels(str(status)).inc()
        service.metrics.latency.observe(time.perf_counter() - started)
        return JSONResponse(body, status_code=status)

    for path, endpoint, method in (("/healthz", healthz, "GET"), ("/readyz", readyz, "GET"),
                                   ("/metrics", metrics, "GET"), ("/predict", predict, "POST")):
        app.router.add_route(path, endpoint, methods=[method])
    return app


async def _answer(service: Service, raw: bytes, started: float) -> tuple[int, dict]:
    """The status and JSON body of one /predict request."""
    try:
        texts, request_ids = parse_body(raw, service.serve.max_texts)
    except BadRequest as bad:
        return bad.status, {"detail": str(bad)}
    if service.current is None:
        return 503, {"detail": f"not ready: loading the {service.serve.alias} version; retry when /readyz says ready"}
    try:
        version, predictions = await service.predict(texts, request_ids, started)
    except Exception as exc:  # noqa: BLE001 - the batcher logged it; the client gets one line, not a traceback
        return 500, {"detail": f"scoring failed: {type(exc).__name__}: {exc}"}
    return 200, {"model": service.model_name, "model_version": version, "predictions": predictions}


def bind(host: str, port: int) -> socket.socket:
    """Open the listening socket before anything loads, so a taken port fails the start in one line.

    Raises:
        ConfigError: when the address cannot be bound (in use, not an address of this machine).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"serve.host {host!r} cannot be resolved ({exc}); use an address such as 127.0.0.1 or 0.0.0.0") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop (TIME_WAIT)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); stop what uses it, or pass another "
                          "--port / serve.port") from None
    sock.set_inheritable(True)
    return sock


def run(service: Service, sock: socket.socket, started: Callable[[str], None]) -> int:
    """Serve until SIGTERM or SIGINT, then drain; return the log rows lost (0 unless drain_timeout ran out).

    The socket listens at once: /healthz answers and /readyz says 503 while the version loads.

    Args:
        service: the service, nothing loaded yet.
        sock: the listening socket (`bind`).
        started: told the version number once it serves.

    Raises:
        RegistryError, TrainingError: when the first version cannot be loaded (the server stops first).
    """
    import uvicorn

    config = uvicorn.Config(create_app(service), lifespan="off", log_config=None, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=service.serve.drain_timeout)
    server = _draining_server()(config)
    try:
        asyncio.run(_serve(service, server, sock, started))
    finally:
        lost = service.close(service.serve.drain_timeout)
    return lost


async def _serve(service: Service, server: Any, sock: socket.socket, started: Callable[[str], None]) -> None:
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        version = await asyncio.to_thread(service.load)
    except BaseException:
        server.should_exit = True
        await serving
        raise
    if not server.should_exit:
        service.follow()
        started(version)
    await serving


def _draining_server() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, whose SIGTERM and SIGINT stop it gracefully and stay handled.

        uvicorn puts the handlers it replaced back after its shutdown and raises the signal again;
        under `tuneloop.cli.app.main` that handler turns SIGTERM into KeyboardInterrupt, which would
        skip the log flush and exit 130. Here the signal only asks for the drain.
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            replaced = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in replaced.items():
                    signal.signal(sig, handler)

    return DrainingServer
