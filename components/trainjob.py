"""The train step's other way to train (not a component): hand the job to Kubeflow Trainer as a
TrainJob, wait for it, and collect what it wrote.

The TrainJob runs `torchrun -m tuneloop.cli train` on `nodes` pods of `gpus_per_node` processes
(torchrun reads the node count, rank and rendezvous from the PET_* variables the torch runtime
sets): the same entry point a laptop runs, under the same DDP loop. Its pods mount the workspace
claim, where the step puts the snapshot and the config and the job writes the adapter. It is built
with the kubeflow-trainer-api models and created, watched and deleted through the Kubernetes API.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from tuneloop.cluster import DistributedConfig
from tuneloop.config import Config
from tuneloop.errors import TrainingError
from tuneloop.training import TrainResult

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
POLL_SECONDS = 15.0
REPLICATED_JOB = CONTAINER = "node"  # the torch runtime's replicated job and trainer container


def job_name() -> str:
    """A fresh TrainJob name (a Kubernetes name: lowercase, digits, '-', at most 63)."""
    return f"tuneloop-train-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def build(cfg: Config, name: str, job_dir: str) -> Any:
    """The TrainJob for `cfg.train.distributed`, reading and writing under `job_dir` on the workspace claim."""
    from kubeflow_trainer_api import models as m

    dist, k8s = cfg.train.distributed, cfg.runtime.kubernetes
    amounts = {name: m.IoK8sApimachineryPkgApiResourceQuantity(value) for name, value in (
        ("cpu", dist.cpu), ("memory", dist.memory), *([(k8s.gpu_type, str(dist.gpus_per_node))] if dist.gpus_per_node else []))}
    env = [m.IoK8sApiCoreV1EnvVar(name="HOME", value="/tmp"), m.IoK8sApiCoreV1EnvVar(name="HF_HUB_OFFLINE", value="1")]
    env += [m.IoK8sApiCoreV1EnvVar(name=variable, value_from=m.IoK8sApiCoreV1EnvVarSource(
                secret_key_ref=m.IoK8sApiCoreV1SecretKeySelector(name=secret.secret, key=key)))
            for secret in k8s.secrets for variable, key in secret.env.items()]
    pod = m.TrainerV1alpha1PodSpecPatch(
        volumes=[m.IoK8sApiCoreV1Volume(name="workspace", persistent_volume_claim=m.IoK8sApiCoreV1PersistentVolumeClaimVolumeSource(
            claim_name=k8s.workspace_pvc))],
        containers=[m.TrainerV1alpha1ContainerPatch(name=CONTAINER, volume_mounts=[
            m.IoK8sApiCoreV1VolumeMount(name="workspace", mount_path=k8s.workspace_path)])],
        node_selector=dict(k8s.node_selector) or None,
        tolerations=[m.IoK8sApiCoreV1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
                     for t in k8s.tolerations] or None,
        image_pull_secrets=[m.IoK8sApiCoreV1LocalObjectReference(name=s) for s in k8s.image_pull_secrets] or None,
    )
    patch = m.TrainerV1alpha1RuntimePatch(manager="tuneloop", training_runtime_spec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(
        template=m.TrainerV1alpha1JobSetTemplatePatch(spec=m.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[
            m.TrainerV1alpha1ReplicatedJobPatch(name=REPLICATED_JOB, template=m.TrainerV1alpha1JobTemplatePatch(
                spec=m.TrainerV1alpha1JobSpecPatch(template=m.TrainerV1alpha1PodTemplatePatch(spec=pod))))]))))
    return m.TrainerV1alpha1TrainJob(
        api_version=f"{GROUP}/{VERSION}", kind="TrainJob",
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=name, namespace=cfg.runtime.namespace,
                                                            labels={"app.kubernetes.io/managed-by": "tuneloop"}),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtime_ref=m.TrainerV1alpha1RuntimeRef(name=dist.runtime, kind="ClusterTrainingRuntime", api_group=GROUP),
            active_deadline_seconds=dist.timeout,
            trainer=m.TrainerV1alpha1Trainer(
                image=cfg.runtime.image, num_nodes=dist.nodes, num_proc_per_node=dist.gpus_per_node or 1,
                command=["torchrun", "-m", "tuneloop.cli", "train", "--snapshot", f"{job_dir}/snapshot",
                         "--out", f"{job_dir}/trained", "--config", f"{job_dir}/tuneloop.yaml"],
                env=env, resources_per_node=m.IoK8sApiCoreV1ResourceRequirements(requests=amounts, limits=amounts)),
            runtime_patches=[patch],
        ),
    )


def outcome(job: dict) -> tuple[str, str] | None:
    """("Complete" or "Failed", message) once the TrainJob has finished, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], condition.get("message", "")
    return None


def train_on_trainer(cfg: Config, snapshot_dir: Path, out_dir: Path, api: Any = None) -> TrainResult:
    """Train as a TrainJob: stage the snapshot and config on the claim, run, wait, collect into `out_dir`.

    Raises:
        TrainingError: when the TrainJob cannot be created, fails, or outlives train.distributed.timeout.
    """
    from kubernetes.client.exceptions import ApiException

    name, namespace = job_name(), cfg.runtime.namespace
    job_dir = Path(cfg.runtime.kubernetes.workspace_path) / "trainjobs" / name
    shutil.copytree(snapshot_dir, job_dir / "snapshot")
    here = cfg.model_copy(update={"train": cfg.train.model_copy(update={"distributed": DistributedConfig()})})
    (job_dir / "tuneloop.yaml").write_text(here.to_json())  # JSON is YAML; the job's pods train where they are
    api = api or _custom_objects()
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, build(cfg, name, str(job_dir)).to_dict())
    except ApiException as exc:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise TrainingError(f"cannot create TrainJob {name} in {namespace}: {exc.status} {exc.reason}; the step's "
                            "service account needs create/get/delete on trainjobs.trainer.kubeflow.org") from None
    try:
        state, message = _wait(api, namespace, name, cfg.train.distributed.timeout)
    except BaseException:  # stopped (Ctrl-C, a deleted pod) or timed out: the job must not train on alone
        _delete(api, namespace, name)
        raise
    if state != "Complete":  # the job stays, so that its pods' logs can be read; its staged files go
        shutil.rmtree(job_dir, ignore_errors=True)
        raise TrainingError(f"TrainJob {name} failed: {message or 'no message'}; see `kubectl -n {namespace} logs "
                            f"-l trainer.kubeflow.org/trainjob-name={name}`")
    shutil.copytree(job_dir / "trained", out_dir, dirs_exist_ok=True)
    shutil.rmtree(job_dir, ignore_errors=True)
    _delete(api, namespace, name)
    return TrainResult.load(out_dir)


def _custom_objects() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def _wait(api: Any, namespace: str, name: str, timeout: int) -> tuple[str, str]:
    deadline = time.monotonic() + timeout + 300  # the job's own deadline, and time to report it
    while time.monotonic() < deadline:
        finished = outcome(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        if finished is not None:
            return finished
        time.sleep(POLL_SECONDS)
    raise TrainingError(f"TrainJob {name} did not finish within train.distributed.timeout; it was deleted")


def _delete(api: Any, namespace: str, name: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException:
        pass  # already gone, or not ours to delete: nothing more to do
