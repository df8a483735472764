"""The Helm chart: every ci/ scenario renders (helm-python-sdk, the Helm v4 engine), lints, validates
against the Kubernetes schemas offline (kubernetes-validate, strict), passes checkov, and runs its
pods locked down. No cluster here: these are the checks a cluster would otherwise make at install.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tuneloop.config import chart_values_schema, parse_config

CHART = Path(__file__).resolve().parents[1] / "charts" / "tuneloop"
SCENARIOS = sorted(path.name.removesuffix("-values.yaml") for path in (CHART / "ci").glob("*-values.yaml"))
KUBERNETES = "1.31.0"  # the schemas the manifests are validated against
CHECKOV_VERSION = "3.3.30"
POD_KINDS = {"Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"), "Job": ("spec", "template"),
             "CronJob": ("spec", "jobTemplate", "spec", "template")}
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_KEY_ID|_URI$", re.I)


def scenario_values(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())


def render(values: dict) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name="tl", namespace="ml", is_install=True)


def documents(rendered: dict[str, str]) -> list[dict]:
    return [doc for path, text in rendered.items() if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module", params=SCENARIOS)
def scenario(request) -> tuple[str, list[dict]]:
    return request.param, documents(render(scenario_values(request.param)))


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    found = []
    for doc in docs:
        if doc["kind"] in POD_KINDS:
            template = doc
            for key in POD_KINDS[doc["kind"]]:
                template = template[key]
            found.append((f"{doc['kind']}/{doc['metadata']['name']}", template))
    return found


def test_the_scenarios_are_the_four_the_chart_promises():
    assert SCENARIOS == ["gpu-training", "minimal", "monitoring-off", "s3-external-postgres"]


def test_each_scenario_lints_clean(scenario):
    name, _ = scenario
    report = helm.lint(str(CHART), scenario_values(name), namespace="ml", strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []  # only "icon is recommended" (info) remains


def test_each_manifest_is_valid_for_kubernetes_strict(scenario):
    _, docs = scenario
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on an unknown or mistyped field


def test_every_pod_runs_locked_down(scenario):
    _, docs = scenario
    pods = pod_templates(docs)
    assert pods
    for where, template in pods:
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
                               "capabilities": {"drop": ["ALL"]}}, where
            assert set(container["resources"]) == {"requests", "limits"}, where
            assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}, where
            if where.startswith(("Deployment/", "StatefulSet/")):
                assert "readinessProbe" in container and "livenessProbe" in container, where


def test_no_secret_value_in_a_configmap_or_an_env_literal(scenario):
    _, docs = scenario
    for _, template in pod_templates(docs):
        for container in template["spec"]["containers"]:
            by_secret = {env["name"] for env in container.get("env", []) if "secretKeyRef" in env.get("valueFrom", {})}
            for env in container.get("env", []):
                if "value" in env and SECRET_NAMES.search(env["name"]):
                    # a literal may only compose values the pod reads from Secrets, as $(VARIABLE)
                    assert set(re.findall(r"\$\((\w+)\)", env["value"])) <= by_secret, env
                    assert not re.search(r"://[^/:@]+:[^/@]+@", re.sub(r"\$\(\w+\)", "", env["value"])), env
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            text = json.dumps(doc["data"])
            assert not re.search(r"(?i)password\s*[:=]\s*\S|://[^/\s:@]+:[^/\s@]+@", text), text


def test_the_configmap_holds_a_config_tuneloop_accepts(scenario):
    name, docs = scenario
    (configmap,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    cfg = parse_config(yaml.safe_load(configmap["data"]["tuneloop.yaml"]), Path("/etc/tuneloop"))
    assert cfg.runtime.mode == "kfp"
    assert cfg.runtime.kubernetes.workspace_pvc == "tl-tuneloop-workspace"
    assert cfg.serve.log == "/workspace/shared/traffic/traffic.jsonl"
    expected_uri = "https://mlflow.example.com" if name == "monitoring-off" else "http://tl-tuneloop-mlflow.ml.svc.cluster.local:5000"
    assert cfg.registry.tracking_uri == expected_uri  # fully qualified: the steps may run elsewhere
    assert cfg.runtime.namespace == "ml"  # the steps run where the workspace claim is


def test_every_pod_and_the_pipeline_use_the_image_named_in_config(scenario):
    name, docs = scenario
    image = (scenario_values(name)["config"].get("runtime") or {}).get("image", "ghcr.io/tuneloop/tuneloop:0.1.0")
    for where, template in pod_templates(docs):
        for container in template["spec"]["containers"]:
            expected = "postgres:16.4-bookworm" if where.startswith("StatefulSet/") else image
            assert container["image"] == expected, where


def test_the_gpu_scenario_trains_on_two_gpus_and_may_create_trainjobs():
    docs = documents(render(scenario_values("gpu-training")))
    (configmap,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    cfg = parse_config(yaml.safe_load(configmap["data"]["tuneloop.yaml"]), Path("/etc/tuneloop"))
    assert cfg.runtime.kubernetes.settings("train_adapter").gpus == 2
    (role,) = [doc for doc in docs if doc["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"],
                              "verbs": ["create", "get", "list", "watch", "delete"]}]


def test_the_release_registers_its_recurring_run_by_name_and_removes_it_on_uninstall():
    jobs = {doc["metadata"]["name"]: doc for doc in documents(render(scenario_values("minimal"))) if doc["kind"] == "Job"}
    assert sorted(jobs) == ["tl-tuneloop-schedule", "tl-tuneloop-unschedule"]
    schedule, unschedule = jobs["tl-tuneloop-schedule"], jobs["tl-tuneloop-unschedule"]
    assert schedule["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert schedule["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "tuneloop", "pipeline", "schedule", "--config", "/etc/tuneloop/tuneloop.yaml", "--name", "tl-tuneloop",
        "--cron", "0 0 2 * * *", "--max-concurrency", "1"]
    assert unschedule["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert "tuneloop pipeline schedule --delete --name tl-tuneloop " in unschedule["spec"]["template"]["spec"]["containers"][0]["command"][2]
    volumes = [v["name"] for v in schedule["spec"]["template"]["spec"]["volumes"]]
    assert volumes == ["config", "tmp", "kfp-token"]  # no workspace claim: an RWX volume could hold the hook up


def test_monitoring_off_renders_no_predictor_monitor_or_mlflow():
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in documents(render(scenario_values("monitoring-off")))}
    assert not {name for _, name in kinds if name.endswith(("-serve", "-monitor", "-mlflow", "-postgresql"))}
    assert ("Job", "tl-tuneloop-schedule") in kinds and ("Job", "tl-tuneloop-unschedule") in kinds


@pytest.mark.parametrize("change,message", [
    ({"postgresql": {"enabled": False}}, "mlflow.backendStore.existingSecret is required: name the Secret holding the "
                                         "PostgreSQL URI (key mlflow.backendStore.uriKey), or set postgresql.enabled=true"),
    ({"postgresql": {"existingSecret": ""}}, "postgresql.existingSecret is required when postgresql.enabled"),
    ({"mlflow": {"artifacts": {"type": "s3", "s3": {"destination": "s3://bucket/x"}}}},
     "mlflow.artifacts.s3.existingSecret is required for artifacts on S3"),
    ({"config": {"data": {"repo": ""}}}, "config.data.repo is required: the git URL of the data repository"),
    ({"postgresql": {"enabled": False}, "mlflow": {"replicas": 2, "backendStore": {"existingSecret": "db"}}},
     "mlflow.replicas > 1 needs mlflow.artifacts.type s3"),
])
def test_a_missing_required_name_fails_rendering_naming_the_key(change, message):
    values = scenario_values("minimal")
    for section, override in change.items():
        values[section] = _merge(values.get(section, {}), override)
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert message in str(refused.value)


@pytest.mark.parametrize("config,where", [
    ({"train": {"epochs": "ten"}}, "/config/train/epochs"),
    ({"train": {"epochz": 2}}, "/config/train"),
    ({"runtime": {"kubernetes": {"steps": {"train_adapter": {"gpus": -1}}}}}, "/config/runtime/kubernetes/steps/train_adapter/gpus"),
])
def test_an_invalid_platform_config_fails_rendering_naming_the_key(config, where):
    values = scenario_values("minimal")
    values["config"] = _merge(values["config"], config)
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert where in str(refused.value)


def test_the_values_schema_is_generated_from_the_config_model():
    current = json.loads((CHART / "values.schema.json").read_text())
    assert chart_values_schema(current) == current, "run: tuneloop config schema --chart charts/tuneloop"


def test_every_value_is_commented():
    """Every key holding a value (not a section that opens a block) has a comment above or beside it;
    the requests and limits under a commented `resources:` count as commented."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        key = re.match(r"^(\s*)([\w.-]+):(.*)$", line)
        if key is None or not key[3].split("#")[0].strip():  # a section header
            continue
        above = lines[number - 1].strip()
        under_resources = any(lines[k].strip() == "resources:" for k in range(max(0, number - 2), number))
        assert above.startswith("#") or " # " in line or under_resources, f"values.yaml line {number + 1}: {line.strip()}"


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) and value else value
    return merged


def _checkov() -> Path:
    """checkov in its own virtualenv (its pins clash with tuneloop's), installed from the package index once."""
    import fcntl

    tools = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tuneloop-tools"
    venv, binary = tools / f"checkov-{CHECKOV_VERSION}", tools / f"checkov-{CHECKOV_VERSION}" / "bin" / "checkov"
    tools.mkdir(parents=True, exist_ok=True)
    with open(tools / "install.lock", "w") as lock:  # one installer at a time; the others wait and reuse it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"checkov=={CHECKOV_VERSION}"],
                                  capture_output=True, text=True)
            assert done.returncode == 0, f"installing checkov failed: {done.stderr[-2000:]}"
    return binary


def test_checkov_finds_nothing_and_every_suppression_says_why(tmp_path):
    workloads = set()
    for name in SCENARIOS:
        folder = tmp_path / name
        folder.mkdir()
        for index, doc in enumerate(documents(render(scenario_values(name)))):
            (folder / f"{index:02d}-{doc['kind'].lower()}.yaml").write_text(yaml.safe_dump(doc))
            if doc["kind"] in POD_KINDS:
                workloads.add(f"{doc['kind']}.ml.{doc['metadata']['name']}")
            for key, reason in (doc["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, why = reason.partition("=")
                    assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(why.split()) >= 6, (doc["metadata"]["name"], reason)
    done = subprocess.run([str(_checkov()), "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--compact",
                           "--skip-download"], capture_output=True, text=True)
    assert done.returncode in (0, 1) and done.stdout.startswith(("{", "[")), done.stderr[-2000:]
    report = json.loads(done.stdout)
    results = (report if isinstance(report, dict) else report[0])["results"]
    assert [(c["check_id"], c["resource"]) for c in results["failed_checks"]] == []
    passed: dict[str, set[str]] = {}
    for check in results["passed_checks"]:
        passed.setdefault(check["resource"], set()).add(check["check_id"])
    # the pod checks really ran on every workload: no privilege escalation, read-only root, non-root, seccomp,
    # capabilities dropped, requests and limits
    core = {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_31", "CKV_K8S_37", "CKV_K8S_10", "CKV_K8S_11",
            "CKV_K8S_12", "CKV_K8S_13"}
    assert workloads == {"Deployment.ml.tl-tuneloop-mlflow", "Deployment.ml.tl-tuneloop-serve", "CronJob.ml.tl-tuneloop-monitor",
                         "Job.ml.tl-tuneloop-schedule", "Job.ml.tl-tuneloop-unschedule", "StatefulSet.ml.tl-tuneloop-postgresql"}
    assert {resource: core - passed.get(resource, set()) for resource in workloads} == {resource: set() for resource in workloads}


def test_a_five_field_cron_fails_rendering_naming_the_key():
    values = {**scenario_values("minimal"), "training": {"cron": "0 2 * * *"}}
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert "/training/cron" in str(refused.value)
