"""Distributed training on Kubeflow Trainer: the TrainJob the train step creates is a valid
kubeflow-trainer-api TrainJob with the image, node and GPU counts from config; the step drives it
through the real Kubernetes client against a local HTTP server standing in for the API server,
which runs the TrainJob's own command as its one pod would (torchrun, one node, one process)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from kubeflow_trainer_api import models
from werkzeug import Response

from tuneloop import cycle, data
from tuneloop.cluster import DistributedConfig, KubernetesConfig
from tuneloop.config import Config, ConfigError, RuntimeConfig, load_config, parse_config
from tuneloop.errors import TrainingError
from tuneloop.components import trainjob

PATH = f"/apis/{trainjob.GROUP}/{trainjob.VERSION}/namespaces/team-a/{trainjob.PLURAL}"
JOB = re.compile(rf"^{PATH}/tuneloop-train-[\w-]+$")
CLUSTER = {"runtime": {"mode": "kfp", "host": "http://kfp.example:8888", "image": "registry.example.com/tl:2.0-cuda",
                       "namespace": "team-a",
                       "kubernetes": {"workspace_pvc": "tuneloop-work", "gpu_type": "nvidia.com/gpu",
                                      "secrets": [{"secret": "dvc-s3", "env": {"AWS_ACCESS_KEY_ID": "id"}}],
                                      "node_selector": {"pool": "a100"},
                                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
           "registry": {"tracking_uri": "http://mlflow.example:5000"}, "data": {"repo": "https://git.example.com/d.git"},
           "train": {"distributed": {"backend": "kubeflow_trainer", "nodes": 3, "gpus_per_node": 4, "cpu": "8",
                                     "memory": "64Gi", "timeout": "12h"}}}


def test_the_trainjob_is_valid_for_the_trainer_api_with_the_configured_shape():
    cfg = parse_config(CLUSTER, Path("/etc/tuneloop"))
    body = trainjob.build(cfg, "tuneloop-train-1", "/workspace/shared/trainjobs/tuneloop-train-1").to_dict()
    job = models.TrainerV1alpha1TrainJob.from_dict(json.loads(json.dumps(body)))  # what the API server would parse
    assert (body["apiVersion"], body["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert (job.metadata.name, job.metadata.namespace) == ("tuneloop-train-1", "team-a")
    assert (job.spec.runtime_ref.name, job.spec.runtime_ref.kind) == ("torch-distributed", "ClusterTrainingRuntime")
    trainer = job.spec.trainer
    assert (trainer.image, trainer.num_nodes, trainer.num_proc_per_node) == ("registry.example.com/tl:2.0-cuda", 3, 4)
    assert body["spec"]["trainer"]["resourcesPerNode"] == {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"},
                                                           "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"}}
    assert trainer.command == ["torchrun", "-m", "tuneloop.cli", "train",
                               "--snapshot", "/workspace/shared/trainjobs/tuneloop-train-1/snapshot",
                               "--out", "/workspace/shared/trainjobs/tuneloop-train-1/trained",
                               "--config", "/workspace/shared/trainjobs/tuneloop-train-1/tuneloop.yaml"]
    assert body["spec"]["trainer"]["env"][2] == {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "dvc-s3", "key": "id"}}}
    assert job.spec.active_deadline_seconds == 12 * 3600
    (patch,) = body["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and pod["containers"] == [
        {"name": "node", "volumeMounts": [{"name": "workspace", "mountPath": "/workspace/shared"}]}]
    assert pod["volumes"] == [{"name": "workspace", "persistentVolumeClaim": {"claimName": "tuneloop-work"}}]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_a_cpu_trainjob_runs_one_process_per_node_and_asks_for_no_gpu():
    settings = yaml.safe_load(yaml.safe_dump(CLUSTER))
    settings["train"]["distributed"].update(gpus_per_node=0, nodes=2)
    body = trainjob.build(parse_config(settings, Path("/etc/tuneloop")), "j", "/w").to_dict()
    assert body["spec"]["trainer"]["numProcPerNode"] == 1 and body["spec"]["trainer"]["numNodes"] == 2
    assert body["spec"]["trainer"]["resourcesPerNode"]["limits"] == {"cpu": "8", "memory": "64Gi"}


@pytest.mark.parametrize("change,message", [
    ({"runtime": {"mode": "local"}}, "train.distributed.backend is kubeflow_trainer but runtime.mode is local"),
    ({"runtime": {"kubernetes": {"workspace_pvc": None}}},
     "train.distributed.backend is kubeflow_trainer but runtime.kubernetes.workspace_pvc is unset"),
    ({"train": {"distributed": {"nodes": 0}}}, "train.distributed.nodes = 0: input should be greater than or equal to 1"),
])
def test_a_trainjob_config_that_cannot_run_is_refused(tmp_path, change, message):
    settings = yaml.safe_load(yaml.safe_dump(CLUSTER))
    for section, values in change.items():
        for key, value in values.items():
            settings[section][key] = {**settings[section][key], **value} if isinstance(value, dict) else value
    path = tmp_path / "tuneloop.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert message in str(refused.value)


def test_where_training_runs_changes_neither_the_digest_nor_the_recorded_params():
    here = Config()
    there = Config.model_validate(CLUSTER)
    assert cycle.training_digest(here, "sha", {}) == cycle.training_digest(
        here.model_copy(update={"train": there.train}), "sha", {})
    assert not [key for key in cycle._params(there) if key.startswith("train.distributed")]


@pytest.fixture()
def staged(workspace, tickets_csv, tmp_path) -> tuple[Config, Path]:
    """A snapshot of the tickets, and a cluster config whose workspace claim is a local folder."""
    local = load_config(workspace)
    data.add_dataset(workspace.parent, tickets_csv, "tickets", local.data)
    snapshot = tmp_path / "snapshot"
    data.prepare(local.data, "HEAD", snapshot, None, rules=cycle.validation_rules(local))
    cfg = local.model_copy(update={
        "runtime": RuntimeConfig(mode="kfp", host="http://kfp.example:8888", namespace="team-a",
                                 kubernetes=KubernetesConfig(workspace_pvc="tuneloop-work", workspace_path=str(tmp_path / "claim"))),
        "train": local.train.model_copy(update={"distributed": DistributedConfig(backend="kubeflow_trainer", timeout=600)}),
    })
    return cfg, snapshot


def api_for(httpserver):
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = httpserver.url_for("").rstrip("/")
    return client.CustomObjectsApi(client.ApiClient(configuration))


def test_the_step_runs_the_trainjob_and_collects_the_adapter(staged, httpserver, tmp_path, monkeypatch):
    cfg, snapshot = staged
    monkeypatch.setattr(trainjob, "POLL_SECONDS", 0.05)
    created: dict = {}

    def create(request):  # the "cluster": run the pod's command, as torch's runtime would on one node
        created.update(json.loads(request.data))
        command = created["spec"]["trainer"]["command"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        created["ran"] = done.returncode, done.stderr[-2000:]
        return Response(json.dumps(created), status=201, content_type="application/json")

    states = iter([{}, {"conditions": [{"type": "Complete", "status": "True", "message": "done"}]}])

    def get(request):
        return Response(json.dumps({**created, "status": next(states)}), content_type="application/json")

    httpserver.expect_request(PATH, method="POST").respond_with_handler(create)
    httpserver.expect_request(JOB, method="GET").respond_with_handler(get)
    httpserver.expect_request(JOB, method="DELETE").respond_with_json({})
    out = tmp_path / "trained"
    result = trainjob.train_on_trainer(cfg, snapshot, out, api=api_for(httpserver))
    assert created["ran"][0] == 0, created["ran"][1]
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "train.json").is_file()
    assert result.processes == 1 and result.method == "lora"
    assert [(r.method, r.path.rsplit("/", 1)[-1].startswith("tuneloop-train-")) for r, _ in httpserver.log] == [
        ("POST", False), ("GET", True), ("GET", True), ("DELETE", True)]
    job_dir = Path(cfg.runtime.kubernetes.workspace_path) / "trainjobs" / created["metadata"]["name"]
    assert not job_dir.exists()  # staged files removed once collected


def test_a_failed_trainjob_is_one_training_error_and_stays_for_its_logs(staged, httpserver, monkeypatch):
    cfg, snapshot = staged
    monkeypatch.setattr(trainjob, "POLL_SECONDS", 0.05)
    httpserver.expect_request(PATH, method="POST").respond_with_json({}, status=201)
    httpserver.expect_request(JOB, method="GET").respond_with_json(
        {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "pod node-0 OOMKilled"}]}})
    with pytest.raises(TrainingError, match=r"^TrainJob tuneloop-train-\S+ failed: pod node-0 OOMKilled; see `kubectl -n "
                                            r"team-a logs -l trainer.kubeflow.org/trainjob-name=tuneloop-train-\S+`$"):
        trainjob.train_on_trainer(cfg, snapshot, snapshot.parent / "out", api=api_for(httpserver))
    assert [r.method for r, _ in httpserver.log] == ["POST", "GET"]  # not deleted: its pods hold the logs
    assert list((Path(cfg.runtime.kubernetes.workspace_path) / "trainjobs").iterdir()) == []


def test_a_refused_creation_names_the_missing_rights(staged, httpserver):
    cfg, snapshot = staged
    httpserver.expect_request(PATH, method="POST").respond_with_json({"reason": "Forbidden"}, status=403)
    with pytest.raises(TrainingError, match=r"^cannot create TrainJob tuneloop-train-\S+ in team-a: 403 FORBIDDEN; the "
                                            r"step's service account needs create/get/delete on trainjobs"):
        trainjob.train_on_trainer(cfg, snapshot, snapshot.parent / "out", api=api_for(httpserver))
    assert list((Path(cfg.runtime.kubernetes.workspace_path) / "trainjobs").iterdir()) == []
