"""`tuneloop pipeline submit` and `schedule` through the real kfp.Client against a local HTTP server
that records every request (pytest-httpserver); no cluster here. Each test checks what reached the
endpoint: the uploaded package is the compiled IR, the run and the recurring run carry the right
fields, and every error status is one line."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
from pathlib import Path

import pytest
import yaml
from werkzeug import Response

from tests.conftest import mlflow_server
from tuneloop.cli.app import main

API = "/apis/v2beta1"
IMAGE = "registry.example.com/ml/tuneloop:3.1.4"
TOKEN = "test-token-123"


@pytest.fixture()
def workspace(tmp_path, httpserver, monkeypatch) -> Path:
    """A config for a cluster at the local server, and a bearer token in the environment."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the server's request lines are not the CLI's output
    monkeypatch.setenv("TUNELOOP_KFP_TOKEN", TOKEN)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # kfp.Client writes ~/.config/kfp/context.json
    config = tmp_path / "tuneloop.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"repo": "https://git.example.com/team/data.git"},
        "registry": {"tracking_uri": "http://mlflow.example:5000", "experiment": "tickets"},
        "runtime": {"mode": "kfp", "host": httpserver.url_for("").rstrip("/"), "image": IMAGE, "namespace": "team-a"},
    }))
    return config


def answer(httpserver, pipeline_exists: bool = False, recurring: list[dict] | None = None, start=None,
           version: str = "") -> None:
    """The endpoint's canned answers for one upload, experiment lookup and run or schedule (`start`: a
    handler for the run's creation; `version`: a version of that name exists already)."""
    httpserver.expect_request(f"{API}/healthz").respond_with_json({"multi_user": False})
    found = {"pipelines": [{"pipeline_id": "p-7", "display_name": "continuous-training"}]} if pipeline_exists else {}
    httpserver.expect_request(f"{API}/pipelines", method="GET").respond_with_json(found)
    httpserver.expect_request(f"{API}/pipelines/upload", method="POST").respond_with_json({"pipeline_id": "p-7"})
    httpserver.expect_request(f"{API}/pipelines/p-7/versions", method="GET").respond_with_json(
        {"pipeline_versions": [{"pipeline_version_id": "v-old", "display_name": version}]} if version else {})
    httpserver.expect_request(f"{API}/pipelines/upload_version", method="POST").respond_with_json(
        {"pipeline_id": "p-7", "pipeline_version_id": "v-9"})
    httpserver.expect_request(f"{API}/experiments", method="GET").respond_with_json(
        {"experiments": [{"experiment_id": "e-3", "display_name": "tickets"}]})
    runs = httpserver.expect_request(f"{API}/runs", method="POST")
    runs.respond_with_handler(start) if start else runs.respond_with_json({"run_id": "r-1", "state": "PENDING"})
    httpserver.expect_request(f"{API}/recurringruns", method="GET").respond_with_json(
        {"recurringRuns": recurring or [], "total_size": len(recurring or [])})
    httpserver.expect_request(f"{API}/recurringruns", method="POST").respond_with_json(
        {"recurring_run_id": "rr-1", "display_name": "continuous-training", "status": "ENABLED"})


@pytest.fixture()
def cli(capsys, monkeypatch):
    """Run the `tuneloop` entry point in this process (so the local server sees its requests): exit code, stdout, stderr."""

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["tuneloop", *args])
        previous = signal.getsignal(signal.SIGTERM)
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            signal.signal(signal.SIGTERM, previous)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def requests(httpserver) -> list[tuple[str, str]]:
    return [(request.method, request.path) for request, _ in httpserver.log]


def uploaded_ir(httpserver) -> dict:
    """The pipeline package of the last upload_version request, parsed."""
    (request,) = [r for r, _ in httpserver.log if r.path == f"{API}/pipelines/upload_version"]
    return next(yaml.safe_load_all(request.files["uploadfile"].read().decode()))


def test_submit_uploads_the_compiled_ir_as_a_named_version_and_starts_a_run(workspace, httpserver, cli):
    answer(httpserver)
    code, out, err = cli("pipeline", "submit", "--rev", "v1.2", "--config", str(workspace))
    assert (code, err) == (0, ""), err
    assert requests(httpserver) == [
        ("GET", f"{API}/healthz"), ("GET", f"{API}/pipelines"), ("POST", f"{API}/pipelines/upload"),
        ("GET", f"{API}/pipelines/p-7/versions"), ("POST", f"{API}/pipelines/upload_version"),
        ("GET", f"{API}/experiments"), ("POST", f"{API}/runs"),
    ]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r, _ in httpserver.log)
    upload = next(r for r, _ in httpserver.log if r.path.endswith("/upload"))
    assert upload.args["name"] == "continuous-training"
    version = next(r for r, _ in httpserver.log if r.path.endswith("/upload_version"))
    assert version.args["pipelineid"] == "p-7"
    assert re.fullmatch(r"continuous-training-[0-9a-f]{12}", version.args["name"])  # named by the IR's digest
    ir = uploaded_ir(httpserver)
    assert ir["pipelineInfo"]["name"] == "continuous-training"
    assert {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()} == {IMAGE}
    run = json.loads(next(r for r, _ in httpserver.log if r.path == f"{API}/runs").data)
    assert run["experiment_id"] == "e-3"
    assert run["pipeline_version_reference"] == {"pipeline_id": "p-7", "pipeline_version_id": "v-9"}
    parameters = run["runtime_config"]["parameters"]
    assert parameters["data_rev"] == "v1.2" and parameters["run_name"] == run["display_name"]
    assert json.loads(parameters["config"])["runtime"]["image"] == IMAGE
    assert out == f"submitted run r-1 as {run['display_name']}; follow it with --wait or in the Kubeflow UI\n"


def test_a_second_submit_adds_a_version_to_the_existing_pipeline(workspace, httpserver, cli):
    answer(httpserver, pipeline_exists=True)
    code, _, err = cli("pipeline", "submit", "--config", str(workspace))
    assert (code, err) == (0, ""), err
    assert ("POST", f"{API}/pipelines/upload") not in requests(httpserver)
    assert ("POST", f"{API}/pipelines/upload_version") in requests(httpserver)


def test_the_same_compiled_pipeline_is_one_version_however_often_sent(workspace, httpserver, cli):
    code, out, _ = cli("pipeline", "submit", "--dry-run", "--config", str(workspace))
    version = json.loads(out)["version"]
    answer(httpserver, pipeline_exists=True, version=version)
    code, _, err = cli("pipeline", "submit", "--config", str(workspace))
    assert (code, err) == (0, ""), err
    assert ("POST", f"{API}/pipelines/upload_version") not in requests(httpserver)
    run = json.loads(next(r for r, _ in httpserver.log if r.path == f"{API}/runs").data)
    assert run["pipeline_version_reference"] == {"pipeline_id": "p-7", "pipeline_version_id": "v-old"}


def test_dry_run_prints_what_would_be_sent_and_sends_nothing(workspace, httpserver, cli):
    code, out, err = cli("pipeline", "submit", "--rev", "main", "--dry-run", "--config", str(workspace))
    assert (code, err) == (0, ""), err
    plan = json.loads(out)
    assert plan["pipeline"] == "continuous-training" and plan["image"] == IMAGE and plan["experiment"] == "tickets"
    assert plan["parameters"]["data_rev"] == "main" and plan["endpoint"] == httpserver.url_for("").rstrip("/")
    assert len(plan["ir_sha256"]) == 64
    assert httpserver.log == []


def test_schedule_registers_a_cron_run_with_concurrency_and_no_catchup(workspace, httpserver, cli):
    answer(httpserver)
    code, out, err = cli("pipeline", "schedule", "--cron", "0 30 2 * * *", "--max-concurrency", "2",
                         "--config", str(workspace))
    assert (code, err) == (0, ""), err
    body = json.loads(next(r for r, _ in httpserver.log if r.path == f"{API}/recurringruns" and r.method == "POST").data)
    assert body["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * *"}}
    assert (body["max_concurrency"], body["no_catchup"], body["mode"]) == (2, True, "ENABLE")
    assert body["display_name"] == "continuous-training" and body["experiment_id"] == "e-3"
    assert body["pipeline_version_reference"] == {"pipeline_id": "p-7", "pipeline_version_id": "v-9"}
    assert set(body["runtime_config"]["parameters"]) == {"config"}
    assert out == "scheduled continuous-training (rr-1) on '0 30 2 * * *', at most 2 at once, no catch-up\n"


def test_rescheduling_replaces_the_recurring_run_of_that_name(workspace, httpserver, cli):
    answer(httpserver, pipeline_exists=True, recurring=[
        {"recurring_run_id": "rr-old", "display_name": "continuous-training", "status": "ENABLED"},
        {"recurring_run_id": "rr-other", "display_name": "weekly", "status": "ENABLED"}])
    httpserver.expect_request(f"{API}/recurringruns/rr-old", method="DELETE").respond_with_json({})
    code, _, err = cli("pipeline", "schedule", "--cron", "0 0 2 * * *", "--config", str(workspace))
    assert (code, err) == (0, ""), err
    sent = requests(httpserver)
    assert ("DELETE", f"{API}/recurringruns/rr-other") not in sent
    # the old one goes only once the new one exists
    assert sent.index(("POST", f"{API}/recurringruns")) < sent.index(("DELETE", f"{API}/recurringruns/rr-old"))


def test_list_pause_resume_and_delete_act_on_the_named_run(workspace, httpserver, cli):
    answer(httpserver, recurring=[{"recurring_run_id": "rr-5", "display_name": "nightly", "status": "ENABLED",
                                   "max_concurrency": "1", "trigger": {"cron_schedule": {"cron": "0 0 2 * * *"}}}])
    for path in ("rr-5:disable", "rr-5:enable"):
        httpserver.expect_request(f"{API}/recurringruns/{path}", method="POST").respond_with_json({})
    httpserver.expect_request(f"{API}/recurringruns/rr-5", method="DELETE").respond_with_json({})
    code, out, _ = cli("pipeline", "schedule", "--list", "--config", str(workspace))
    assert (code, out) == (0, "nightly  rr-5  ENABLED  cron '0 0 2 * * *'  max 1\n")
    for flag, request, said in (("--pause", ("POST", f"{API}/recurringruns/rr-5:disable"), "paused"),
                                ("--resume", ("POST", f"{API}/recurringruns/rr-5:enable"), "resumed"),
                                ("--delete", ("DELETE", f"{API}/recurringruns/rr-5"), "deleted")):
        code, out, err = cli("pipeline", "schedule", flag, "--name", "nightly", "--config", str(workspace))
        assert (code, out, err) == (0, f"{said} nightly (rr-5)\n", "")
        assert requests(httpserver)[-1] == request


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory) -> str:
    """A real MLflow server over sqlite: where --wait reads the version the run registered."""
    folder = tmp_path_factory.mktemp("mlflow")
    with mlflow_server(folder, f"sqlite:///{folder / 'mlflow.db'}") as url:
        yield url


def register_as(tracking_uri: str, run_name: str, gate: str, reasons: list[str]) -> str:
    """What the pipeline's register step leaves: an MLflow run named `run_name` and a version from it."""
    from mlflow import MlflowClient

    from tuneloop.registry import TAG

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # the "cluster" side's log lines are not the CLI's
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name("tickets") or client.get_experiment(client.create_experiment("tickets"))
    run = client.create_run(experiment.experiment_id, run_name=run_name)
    if not client.search_registered_models("name = 'tickets-model'"):
        client.create_registered_model("tickets-model")
    tags = {TAG + key: value for key, value in (("base_model", "tiny"), ("base_sha256", "0"), ("tokenizer_sha256", "0"),
                                                 ("task", "sequence_classification"), ("labels", '["a", "b"]'),
                                                 ("method", "lora"), ("gate", gate), ("gate_reasons", json.dumps(reasons)))}
    return client.create_model_version("tickets-model", source=f"{run.info.artifact_uri}/adapter", run_id=run.info.run_id,
                                       tags=tags).version


@pytest.mark.parametrize("gate,reasons,verdict", [
    ("passed", ["macro-F1 +4.1 points over the champion"], "passed"),
    ("rejected", ["macro-F1 -2.0 points, below the champion", "accuracy below 0.7"],
     "rejected: macro-F1 -2.0 points, below the champion; accuracy below 0.7"),
])
def test_wait_follows_the_run_and_ends_with_the_version_and_verdict_from_the_registry(
        workspace, httpserver, registry_server, monkeypatch, cli, gate, reasons, verdict):
    from tuneloop.pipelines import remote

    monkeypatch.setattr(remote, "POLL_SECONDS", 0.05)
    config = yaml.safe_load(workspace.read_text())
    config["registry"].update(tracking_uri=registry_server, model_name="tickets-model")
    workspace.write_text(yaml.safe_dump(config))
    started: dict[str, str] = {}

    def start(request):  # the "cluster" registers the candidate under the run's name, as the pipeline does
        started["name"] = json.loads(request.data)["display_name"]
        started["version"] = register_as(registry_server, started["name"], gate, reasons)
        return Response(json.dumps({"run_id": "r-8", "state": "PENDING"}), content_type="application/json")

    states = iter(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
    answer(httpserver, start=start)
    httpserver.expect_request(f"{API}/runs/r-8", method="GET").respond_with_handler(
        lambda request: Response(json.dumps({"run_id": "r-8", "state": next(states)}), content_type="application/json"))
    code, out, err = cli("pipeline", "submit", "--wait", "--config", str(workspace))
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    name = started["name"]
    assert [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines[:-1]] == [
        f"run {name}: PENDING", f"run {name}: RUNNING", f"run {name}: SUCCEEDED"]
    assert lines[-1] == f"run {name} SUCCEEDED: version {started['version']}, gate {verdict}"


def test_a_failed_run_ends_wait_in_one_line(workspace, httpserver, monkeypatch, cli):
    from tuneloop.pipelines import remote

    monkeypatch.setattr(remote, "POLL_SECONDS", 0.05)
    answer(httpserver)
    httpserver.expect_request(f"{API}/runs/r-1", method="GET").respond_with_json({"run_id": "r-1", "state": "CANCELED"})
    code, _, err = cli("pipeline", "submit", "--wait", "--config", str(workspace))
    assert code == 1 and re.fullmatch(r"error: PipelineError: run continuous-training-\S+ \(r-1\) ended CANCELED; see its "
                                      r"logs in the Kubeflow UI at http://\S+\n", err), err


@pytest.mark.parametrize("status,body,expect", [
    (401, '"Jwt is missing"', "answered 401 UNAUTHORIZED (Jwt is missing) to looking up pipeline 'continuous-training'; "
                              "the endpoint wants a token"),
    (403, '{"code": 7, "message": "no access to team-a"}', "answered 403 FORBIDDEN (no access to team-a) to looking up "
                                                           "pipeline 'continuous-training'; the token is not allowed there"),
    (404, '{"code": 5, "message": "Not Found"}', "answered 404 NOT FOUND (Not Found) to looking up pipeline "
                                                 "'continuous-training'; check runtime.host"),
    (503, '{"code": 14, "message": "database down"}', "answered 503 SERVICE UNAVAILABLE (database down) to looking up "
                                                      "pipeline 'continuous-training'; the KFP API server failed"),
])
def test_each_error_status_is_one_line(workspace, httpserver, status, body, expect, cli):
    httpserver.expect_request(f"{API}/healthz").respond_with_json({"multi_user": False})
    httpserver.expect_request(f"{API}/pipelines", method="GET").respond_with_data(body, status=status,
                                                                                  content_type="application/json")
    code, out, err = cli("pipeline", "submit", "--config", str(workspace))
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: PipelineError: KFP at http://") and expect in err, err


def test_a_refused_health_check_is_one_line_without_kfps_retries(workspace, httpserver, cli):
    httpserver.expect_request(f"{API}/healthz").respond_with_data('"Jwt is missing"', status=401)
    code, _, err = cli("pipeline", "schedule", "--cron", "0 0 2 * * *", "--config", str(workspace))
    assert code == 1 and "answered 401 UNAUTHORIZED (Jwt is missing) to the health check" in err, err
    assert requests(httpserver) == [("GET", f"{API}/healthz")]


def test_an_unreachable_endpoint_is_one_line(workspace, httpserver, cli):
    config = yaml.safe_load(workspace.read_text())
    config["runtime"]["host"] = "http://127.0.0.1:9"
    workspace.write_text(yaml.safe_dump(config))
    code, _, err = cli("pipeline", "submit", "--config", str(workspace))
    assert code == 1 and err.startswith("error: PipelineError: runtime.host 'http://127.0.0.1:9' does not answer"), err


@pytest.mark.parametrize("args,expect", [
    (("--cron", "0 2 * * *"), "--cron '0 2 * * *' has 5 fields; KFP reads 6, seconds first"),
    (("--list", "--pause"), "pass one of --cron CRON (register), --list, --pause, --resume or --delete"),
    ((), "pass one of --cron CRON (register), --list, --pause, --resume or --delete"),
])
def test_bad_schedule_arguments_are_refused_before_any_request(workspace, httpserver, args, expect, cli):
    code, _, err = cli("pipeline", "schedule", *args, "--config", str(workspace))
    assert code == 1 and expect in err, err
    assert httpserver.log == []
