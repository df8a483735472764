"""Kubernetes settings from `runtime.kubernetes` land on every task of both compiled pipelines.

Each check reads the compiled IR: the pipeline document (resources, accelerators, retry policy)
and the Kubernetes platform document kfp-kubernetes writes beside it (volumes, Secrets as env,
placement, pull settings, timeouts).
"""

from __future__ import annotations

import json

import pytest
import yaml

from tuneloop import cluster
from tuneloop.config import Config, ConfigError, load_config
from tuneloop.pipelines.launcher import build_pipeline, compile_pipeline

IMAGE = "registry.example.com/ml/tuneloop:2.0.1"
SETTINGS = {
    "image": IMAGE,
    "kubernetes": {
        "image_pull_policy": "Always",
        "image_pull_secrets": ["regcred"],
        "workspace_pvc": "tuneloop-work",
        "workspace_path": "/mnt/work",
        "secrets": [
            {"secret": "mlflow-auth", "env": {"MLFLOW_TRACKING_USERNAME": "username", "MLFLOW_TRACKING_PASSWORD": "password"}},
            {"secret": "object-store", "env": {"AWS_ACCESS_KEY_ID": "access-key", "AWS_SECRET_ACCESS_KEY": "secret-key"}},
        ],
        "node_selector": {"pool": "ml"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "gpu_type": "nvidia.com/gpu",
        "retry_backoff": "45s",
        "steps": {"train_adapter": {"gpus": 2, "timeout": "12h", "memory": "24Gi", "memory_limit": "32Gi"},
                  "evaluate_candidate": {"gpus": 1}},
    },
}
CT_STEPS = ["validate_data", "train_adapter", "evaluate_candidate", "gate_candidate", "promote_candidate", "reject_candidate"]
MONITOR_STEPS = CT_STEPS + ["measure_traffic", "decide_action", "prepare_retrain_data", "rollback_champion",
                            "note_retrain_outcome"]
SWEEP_STEPS = ["validate_data", "sweep_cell", "sweep_report"]
# Expected per step: (cpu request, memory request, memory limit, gpus, timeout seconds, retries)
EXPECTED = {
    "validate_data": ("500m", "2Gi", "8Gi", 0, 21600, 2),
    "train_adapter": ("2", "24Gi", "32Gi", 2, 43200, 1),
    "evaluate_candidate": ("2", "4Gi", "8Gi", 1, 21600, 2),
    "gate_candidate": ("500m", "2Gi", "8Gi", 0, 21600, 2),
    "promote_candidate": ("500m", "2Gi", "8Gi", 0, 21600, 0),
    "reject_candidate": ("500m", "2Gi", "8Gi", 0, 21600, 0),
    "measure_traffic": ("1", "4Gi", "8Gi", 0, 21600, 2),
    "decide_action": ("500m", "2Gi", "8Gi", 0, 21600, 0),
    "prepare_retrain_data": ("500m", "2Gi", "8Gi", 0, 21600, 0),
    "rollback_champion": ("500m", "2Gi", "8Gi", 0, 21600, 0),
    "note_retrain_outcome": ("500m", "2Gi", "8Gi", 0, 21600, 0),
    "sweep_cell": ("2", "8Gi", "16Gi", 0, 86400, 1),
    "sweep_report": ("500m", "2Gi", "8Gi", 0, 21600, 0),
}


def compiled(tmp_path_factory, name: str) -> tuple[dict, dict]:
    path = compile_pipeline(tmp_path_factory.mktemp("ir") / f"{name}.yaml", Config.model_validate({"runtime": SETTINGS}), name)
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module", params=["continuous-training", "monitor", "sweep"])
def ir(request, tmp_path_factory) -> tuple[list[str], dict, dict]:
    spec, platform = compiled(tmp_path_factory, request.param)
    steps = {"continuous-training": CT_STEPS, "monitor": MONITOR_STEPS, "sweep": SWEEP_STEPS}[request.param]
    return steps, spec, platform


def tasks_by_component(spec: dict) -> dict[str, dict]:
    """Every task in the pipeline, nested branches and sub-pipelines included, by its component's step name."""
    found = {}
    for dag in [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]:
        for task in dag["tasks"].values():
            name = task["componentRef"]["name"].removeprefix("comp-").replace("-", "_")
            if name in cluster.STEPS:
                found[name] = task
    return found


def test_the_config_names_exactly_the_steps_of_the_pipelines(tmp_path_factory):
    found = {name for pipeline in ("monitor", "sweep") for name in tasks_by_component(compiled(tmp_path_factory, pipeline)[0])}
    assert sorted(found) == sorted(cluster.STEPS) == sorted(set(MONITOR_STEPS + SWEEP_STEPS))


def test_every_step_gets_its_resources_and_accelerators(ir):
    steps, spec, _ = ir
    for step in steps:
        cpu, memory, memory_limit, gpus, _, _ = EXPECTED[step]
        resources = spec["deploymentSpec"]["executors"][f"exec-{step.replace('_', '-')}"]["container"]["resources"]
        expected = {"resourceCpuRequest": cpu, "resourceMemoryRequest": memory, "resourceMemoryLimit": memory_limit}
        assert {key: resources.get(key) for key in expected} == expected, step
        accelerator = resources.get("accelerator")
        assert accelerator == ({"resourceType": "nvidia.com/gpu", "resourceCount": str(gpus),
                                "type": "nvidia.com/gpu", "count": str(gpus)} if gpus else None), step


def test_only_the_steps_that_read_retry_and_they_back_off(ir):
    steps, spec, _ = ir
    tasks = tasks_by_component(spec)
    for step in steps:
        retries = EXPECTED[step][5]
        policy = tasks[step].get("retryPolicy")
        if retries:
            assert policy == {"maxRetryCount": retries, "backoffDuration": "45s", "backoffFactor": 2.0,
                              "backoffMaxDuration": "3600s"}, step
        else:
            assert policy is None, step
    writers = {"promote_candidate", "reject_candidate", "sweep_report"} & set(steps)
    assert writers and all("retryPolicy" not in tasks[step] for step in writers)


def test_every_pod_gets_the_volume_secrets_placement_pull_settings_and_timeout(ir):
    steps, _, platform = ir
    assert sorted(platform) == sorted(f"exec-{step.replace('_', '-')}" for step in steps)
    for step in steps:
        pod = platform[f"exec-{step.replace('_', '-')}"]
        assert pod["pvcMount"] == [{"constant": "tuneloop-work", "mountPath": "/mnt/work",
                                    "pvcNameParameter": {"runtimeValue": {"constant": "tuneloop-work"}}}]
        assert [(s["secretName"], [(k["envVar"], k["secretKey"]) for k in s["keyToEnv"]], s["optional"])
                for s in pod["secretAsEnv"]] == [
            ("mlflow-auth", [("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")], False),
            ("object-store", [("AWS_ACCESS_KEY_ID", "access-key"), ("AWS_SECRET_ACCESS_KEY", "secret-key")], False),
        ]
        assert pod["nodeSelector"] == {"labels": {"pool": "ml"}}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert pod["imagePullPolicy"] == "Always"
        assert [s["secretName"] for s in pod["imagePullSecret"]] == ["regcred"]
        assert pod["activeDeadlineSeconds"] == str(EXPECTED[step][4]), step


def test_no_secret_value_or_env_literal_is_compiled_in(ir):
    _, spec, _ = ir
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "env" not in executor["container"]
        assert executor["container"]["image"] == IMAGE


def test_the_local_runner_gets_bare_tasks():
    local = build_pipeline("continuous-training", Config.model_validate({"runtime": SETTINGS}), cluster=False)
    spec = local.pipeline_spec
    assert [task.retry_policy.max_retry_count for task in spec.root.dag.tasks.values()] == [0, 0, 0, 0, 0]
    assert sorted(spec.deployment_spec["executors"]["exec-train-adapter"]["container"].keys()) == ["args", "command", "image"]
    assert list(local.platform_spec.platforms) == []


@pytest.mark.parametrize("kubernetes,message", [
    ({"steps": {"promote_candidate": {"retries": 1}}},
     "runtime.kubernetes.steps.promote_candidate.retries = 1: promote_candidate writes to the registry or the data "
     "repo and must not run twice; set it to 0"),
    ({"defaults": {"retries": 2}}, "runtime.kubernetes.defaults.retries would retry the steps that write to the registry"),
    ({"steps": {"train": {"gpus": 1}}}, "runtime.kubernetes.steps.train"),
    ({"workspace_pvc": "Tuneloop_Work"}, "runtime.kubernetes.workspace_pvc = \"Tuneloop_Work\": must be a Kubernetes name"),
    ({"secrets": [{"secret": "s3", "env": {"AWS KEY": "k"}}]}, "must be an environment variable name"),
    ({"secrets": [{"secret": "a", "env": {"TOKEN": "t"}}, {"secret": "b", "env": {"TOKEN": "u"}}]},
     "runtime.kubernetes.secrets sets ['TOKEN'] from more than one Secret; keep one"),
    ({"steps": {"train_adapter": {"memory": "8GB"}}}, "must be a Kubernetes quantity such as 500m, 2, 512Mi or 8Gi"),
    ({"steps": {"train_adapter": {"timeout": "30s"}}}, "must be from 1m to 7d"),
    # a request over its limit, after the layers merge
    ({"steps": {"evaluate_candidate": {"memory": "16Gi"}}},
     "runtime.kubernetes: evaluate_candidate would request memory 16Gi over its limit 8Gi; "
     "raise runtime.kubernetes.steps.evaluate_candidate.memory_limit"),
    ({"steps": {"train_adapter": {"cpu": "2", "cpu_limit": "1500m"}}},
     "runtime.kubernetes: train_adapter would request cpu 2 over its limit 1500m"),
])
def test_bad_kubernetes_settings_are_refused_naming_the_key(tmp_path, kubernetes, message):
    path = tmp_path / "tuneloop.yaml"
    path.write_text(yaml.safe_dump({"runtime": {"kubernetes": kubernetes}}))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert message in str(refused.value)


@pytest.mark.parametrize("key,url", [
    ("data.repo", "https://oauth2:ghp_abc123@github.com/team/data.git"),
    ("data.repo", "https://ghp_abc123@github.com/team/data.git"),
    ("registry.tracking_uri", "http://admin:secret@mlflow.example:5000"),
])
def test_credentials_in_a_url_are_refused(tmp_path, key, url):
    section, name = key.split(".")
    path = tmp_path / "tuneloop.yaml"
    path.write_text(yaml.safe_dump({section: {name: url}}))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert f"{key} = {json.dumps(url)}: holds credentials in the URL; drop them" in str(refused.value)


@pytest.mark.parametrize("url", ["git@github.com:team/data.git", "ssh://git@github.com/team/data.git",
                                 "https://github.com/team/data.git"])
def test_a_git_url_without_a_secret_is_accepted(tmp_path, url):
    path = tmp_path / "tuneloop.yaml"
    path.write_text(yaml.safe_dump({"data": {"repo": url}}))
    assert load_config(path).data.repo == url
