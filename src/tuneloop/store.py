"""The tracking store's health, checked without MLflow: bounded reads that write nothing.

`check_store` answers "could a run be registered here?" before any work starts: a tracking
server must answer within a timeout (MLflow's own client retries for minutes), a sqlite file
must be an MLflow database of the installed schema (read-only connection), and the folder new
artifacts would land in must take a file. `registry.py` passes in the schema revision it needs,
so MLflow stays imported by that module alone. `server_clock_offset_ms` reads the server's clock,
which stamps the alias ledger's claims.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import email.utils
import http.client
import json
import logging
import os
import re
import sqlite3
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from importlib import metadata
from pathlib import Path

from tuneloop.config import RegistryConfig
from tuneloop.errors import RegistryError
from tuneloop.preflight import writable_folder

log = logging.getLogger(__name__)

_SQLITE_HEADER = b"SQLite format 3\x00"
_MLFLOW_TABLES = {"alembic_version", "experiments", "runs", "registered_models", "model_versions"}
SKEW_WARNING_MS = 10_000  # a clock this far off is worth a warning: leases are 120 s
CORRUPT = ("file is not a database", "database disk image is malformed")  # sqlite's words for a damaged file


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The first telling line of an error's text, without SQLAlchemy's notes and "(sqlite3.X) " prefix."""
    text = str(getattr(exc, "message", None) or getattr(exc, "orig", None) or exc)
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("(raised as a result of")]
    line = re.sub(r"^\([\w.]+\) ", "", " ".join(lines[0].split())) if lines else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def unreadable(cfg: RegistryConfig, why: str) -> RegistryError:
    return RegistryError(
        f"registry.tracking_uri: {cfg.tracking_uri} is not a readable MLflow database ({why}); "
        "restore it from a backup or point registry.tracking_uri at a new file"
    )


def sqlite_path(cfg: RegistryConfig) -> Path | None:
    prefix = "sqlite:///"
    if not cfg.tracking_uri.startswith(prefix):
        return None
    return Path(cfg.tracking_uri[len(prefix):].split("?", 1)[0])


def is_empty_sqlite(cfg: RegistryConfig) -> bool:
    path = sqlite_path(cfg)
    return path is not None and not path.exists()


def _is_server(cfg: RegistryConfig) -> bool:
    return cfg.tracking_uri.startswith(("http://", "https://"))


def server_places_artifacts(cfg: RegistryConfig) -> bool:
    """True when the tracking store, not `registry.artifact_root`, decides where a new experiment's artifacts go."""
    return not cfg.tracking_uri.startswith(("sqlite:", "file:")) and "://" in cfg.tracking_uri


def local_path(location: str) -> Path | None:
    """The local folder behind an artifact location, or None for remote ones (s3://, mlflow-artifacts:, …)."""
    if location.startswith("file:"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(location).path))
    return None if "://" in location or location.startswith("mlflow-artifacts:") else Path(location)


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _read_sqlite(cfg: RegistryConfig, path: Path, timeout: float, write: bool, schema_head: str) -> tuple[str, str] | None:
    """Check an MLflow sqlite file read-only; return the experiment's (artifact_location, lifecycle_stage)."""
    key = f"registry.tracking_uri: {cfg.tracking_uri}"
    if not path.exists():
        if not path.parent.is_dir():
            raise RegistryError(f"{key} is in a folder that does not exist ({path.parent}); create the folder or fix the path")
        if write:
            writable_folder(path.parent, "registry.tracking_uri", cfg.tracking_uri, error=RegistryError)
        return None  # a fresh workspace: MLflow creates the file on the first write
    if path.is_dir():
        raise unreadable(cfg, "it is a folder")
    try:
        with path.open("r+b" if write else "rb") as file:  # opening for update tests permission, writes nothing
            header = file.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise RegistryError(f"{key} cannot be opened ({exc.strerror}); fix the file's permissions") from exc
    if header != _SQLITE_HEADER:
        raise unreadable(cfg, "file is not a database" if header else "file is empty")
    if write:  # sqlite writes its journal next to the file
        writable_folder(path.parent, "registry.tracking_uri", cfg.tracking_uri, "make the folder writable", RegistryError)
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)) as db:
            integrity = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if integrity != "ok":  # sqlite's first finding, e.g. "Page 5: btreeInitPage() returns error code 11"
                log.debug("quick_check of %s: %s", path, integrity)
                raise unreadable(cfg, "database disk image is malformed")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not _MLFLOW_TABLES <= tables:
                raise unreadable(cfg, "it holds no MLflow tables")
            revision = (db.execute("SELECT version_num FROM alembic_version").fetchone() or ["none"])[0]
            experiment = db.execute(
                "SELECT artifact_location, lifecycle_stage FROM experiments WHERE name = ? ORDER BY workspace = 'default' DESC",
                (cfg.experiment,),
            ).fetchone()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise RegistryError(f"{key} is locked by another process ({exc}); wait for it to finish and retry") from exc
        raise unreadable(cfg, one_line(exc)) from exc
    except sqlite3.Error as exc:
        raise unreadable(cfg, one_line(exc)) from exc
    if revision != schema_head:
        raise RegistryError(
            f"{key} has MLflow schema {revision}, but MLflow {metadata.version('mlflow')} needs {schema_head}; "
            f"back the file up, then run 'mlflow db upgrade {cfg.tracking_uri}' (or use the MLflow version that wrote it)"
        )
    return (experiment[0] or "", experiment[1]) if experiment else None


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's own client would send (same variables, same precedence)."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _read_server(cfg: RegistryConfig, timeout: float) -> tuple[str, str] | None:
    """Ask a tracking server for the experiment within `timeout` s; return (artifact_location, lifecycle_stage)."""
    key = f"registry.tracking_uri: {cfg.tracking_uri}"
    endpoint = "/api/2.0/mlflow/experiments/get-by-name"
    url = f"{cfg.tracking_uri.rstrip('/')}{endpoint}?{urllib.parse.urlencode({'experiment_name': cfg.experiment})}"
    request = urllib.request.Request(url, headers={"Accept": "application/json", **_auth_headers()})
    not_mlflow = f"{key} is not an MLflow tracking server (%s for {endpoint}); point registry.tracking_uri at the server's base URL"
    try:
        context = _tls_context() if url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            body = response.read(1_000_000)
    except urllib.error.HTTPError as exc:
        status = f"HTTP {exc.code} {exc.reason}".strip()
        if exc.code in (401, 403):
            raise RegistryError(
                f"{key} refused access ({status}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "(or MLFLOW_TRACKING_TOKEN) to an account that may read and write experiments"
            ) from exc
        if exc.code >= 500:
            raise RegistryError(f"{key} answered {status}; check the tracking server's log and retry once it is healthy") from exc
        with contextlib.suppress(OSError, ValueError):  # an unreadable error body just means "not MLflow"
            if exc.code == 404 and json.loads(exc.read(100_000)).get("error_code") == "RESOURCE_DOES_NOT_EXIST":
                return None  # no such experiment yet: the first run creates it
        raise RegistryError(not_mlflow % status) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise _unreachable(cfg, exc, timeout) from exc
    try:
        experiment = json.loads(body)["experiment"]
        return experiment.get("artifact_location", ""), experiment.get("lifecycle_stage", "active")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryError(not_mlflow % "an answer that is not MLflow's JSON") from exc


def _unreachable(cfg: RegistryConfig, exc: BaseException, timeout: float) -> RegistryError:
    reason = getattr(exc, "reason", exc)
    why = f"no answer within {timeout:g} s" if isinstance(reason, TimeoutError) else getattr(reason, "strerror", None) or str(reason)
    return RegistryError(f"registry.tracking_uri: {cfg.tracking_uri} does not answer ({why}); "
                         "start the tracking server or fix registry.tracking_uri")


def server_clock_offset_ms(cfg: RegistryConfig, timeout: float = 5.0) -> int:
    """Return how far the tracking server's clock runs ahead of this machine's, in milliseconds.

    A tracking server stamps model versions (the alias ledger's claims) with its own clock; a
    claimant ages its rivals by the stamp on its own claim (`tuneloop.ledger`), but settling orphans
    before a move and `repair` have no such stamp. Read from the `Date` header (whole seconds, UTC)
    of up to three bounded requests, keeping the fastest: the estimate is off by at most half its
    round trip plus half a second, against a lease of 120 s. Stores reached without a server
    (sqlite, a database URI) are stamped by the writing client: 0.

    Raises:
        RegistryError: when the server does not answer within `timeout`.
    """
    if not _is_server(cfg):
        return 0
    best = None  # (round trip in s, offset in ms)
    for _ in range(3):
        stamp, sent, received = _server_date(cfg, timeout)
        if stamp is None:
            log.warning("the tracking server sent no readable Date header; ageing ledger claims by this machine's clock")
            return 0
        # the header truncates the server's time to the second, read at some moment between sent and received
        offset = round((stamp.timestamp() + 0.5 - (sent + received) / 2) * 1000)
        best = min(best or (received - sent, offset), (received - sent, offset))
        if best[0] < 0.5:
            break
    if abs(best[1]) > SKEW_WARNING_MS:
        log.warning("the tracking server's clock is %+.1f s off this machine's (by its Date header, which a proxy may "
                    "set); fix the clocks (NTP): settling orphaned ledger claims relies on it", best[1] / 1000)
    return best[1]


def _server_date(cfg: RegistryConfig, timeout: float) -> tuple[datetime.datetime | None, float, float]:
    """One request's `Date` header (None when absent or unreadable), and when it was sent and answered."""
    request = urllib.request.Request(f"{cfg.tracking_uri.rstrip('/')}/health", headers=_auth_headers())
    sent = time.time()
    try:
        context = _tls_context() if request.full_url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            header = response.headers.get("Date")
    except urllib.error.HTTPError as exc:  # any answer carries the server's Date
        header = exc.headers.get("Date")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise _unreachable(cfg, exc, timeout) from exc
    received = time.time()
    try:
        stamp = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None, sent, received
    # HTTP dates are UTC; the asctime form and a "-0000" zone parse without one
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.timezone.utc)), sent, received


def check_tracking(cfg: RegistryConfig, timeout: float, write: bool, schema_head: str) -> tuple[str, str] | None:
    """Check the tracking store without writing; return the experiment's (artifact_location, lifecycle_stage)."""
    path = sqlite_path(cfg)
    if path is not None:
        return _read_sqlite(cfg, path, timeout, write, schema_head)
    if _is_server(cfg):
        return _read_server(cfg, timeout)
    return None  # other stores (postgresql://, databricks, …) are reached through MLflow only


def check_store(cfg: RegistryConfig, schema_head: str, timeout: float = 5.0) -> None:
    """Check that a run could be registered: the store answers and the artifact location is writable.

    Writes nothing: no experiment, no run, no sqlite file, no schema migration.

    Args:
        cfg: The registry settings to check.
        schema_head: the database schema revision the installed MLflow needs.
        timeout: Seconds to wait for a tracking server, or for a sqlite file another process has locked.

    Raises:
        RegistryError: naming registry.tracking_uri, registry.experiment or registry.artifact_root, the
            bad value and the fix.
    """
    experiment = check_tracking(cfg, timeout, True, schema_head)
    if experiment is not None and experiment[1] == "deleted":
        raise RegistryError(
            f"registry.experiment: {cfg.experiment} is deleted in {cfg.tracking_uri}; restore it "
            "('mlflow experiments restore') or set registry.experiment to a new name"
        )
    if experiment is not None:
        location, shown = experiment[0], f"{experiment[0]} (where experiment {cfg.experiment} stores artifacts)"
        fix = "make it writable or set registry.experiment to a new name"
    elif server_places_artifacts(cfg):
        return  # a new experiment's artifacts go where the server decides
    else:
        location, shown, fix = cfg.artifact_root, cfg.artifact_root, "point registry.artifact_root at a writable folder"
    folder = local_path(location)
    if folder is not None:
        writable_folder(folder, "registry.artifact_root", shown, fix, RegistryError)
