"""How a step body becomes a task of a pipeline: a component for `runtime.image`, then, for a cluster,
the pod settings of `runtime.kubernetes` through `kfp.kubernetes`.

The local runner gets the bare tasks: it runs every step in this environment, and would honour a
retry, which only a cluster's transient failures (a lost node, an evicted pod) call for.
"""

from __future__ import annotations

from typing import Callable

from kfp import dsl, kubernetes
from kfp.dsl.pipeline_task import PipelineTask

from tuneloop.config import RuntimeConfig

BACKOFF_FACTOR, BACKOFF_MAX = 2.0, "3600s"


class Steps:
    """`steps(body, **inputs)` adds `body` as a task, built and configured for `runtime`."""

    def __init__(self, runtime: RuntimeConfig, cluster: bool = True):
        self.runtime, self.cluster = runtime, cluster

    def __call__(self, body: Callable, **inputs) -> PipelineTask:
        task = dsl.component(body, base_image=self.runtime.image, install_kfp_package=False)(**inputs)
        task.set_caching_options(False)  # every step reads or writes the live registry, log or data repo
        if self.cluster:
            configure(task, body.__name__, self.runtime)
        return task


def configure(task: PipelineTask, step: str, runtime: RuntimeConfig) -> PipelineTask:
    """Apply the pod settings of `runtime.kubernetes` for `step` to `task`."""
    k8s = runtime.kubernetes
    settings = k8s.settings(step)
    for value, setter in ((settings.cpu, task.set_cpu_request), (settings.memory, task.set_memory_request),
                          (settings.cpu_limit, task.set_cpu_limit), (settings.memory_limit, task.set_memory_limit)):
        if value is not None:
            setter(value)
    if settings.gpus:
        task.set_accelerator_type(k8s.gpu_type).set_accelerator_limit(settings.gpus)
    if settings.retries:
        task.set_retry(settings.retries, backoff_duration=f"{k8s.retry_backoff}s", backoff_factor=BACKOFF_FACTOR,
                       backoff_max_duration=BACKOFF_MAX)
    if settings.timeout is not None:
        kubernetes.set_timeout(task, settings.timeout)
    kubernetes.set_image_pull_policy(task, k8s.image_pull_policy)
    if k8s.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(k8s.image_pull_secrets))
    if k8s.workspace_pvc is not None:
        kubernetes.mount_pvc(task, pvc_name=k8s.workspace_pvc, mount_path=k8s.workspace_path)
    for secret in k8s.secrets:
        kubernetes.use_secret_as_env(task, secret_name=secret.secret,
                                     secret_key_to_env={key: env for env, key in secret.env.items()})
    for label, value in k8s.node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for toleration in k8s.tolerations:
        kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator, value=toleration.value,
                                  effect=toleration.effect)
    return task
