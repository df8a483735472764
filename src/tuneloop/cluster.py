"""The Kubernetes settings a compiled pipeline carries (`runtime.kubernetes`), as config sections.

Names only: a Secret is named with the keys to read from it, never with a value. `pipelines/steps.py`
applies these to every task through `kfp.kubernetes`; the local runner ignores them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from tuneloop.fields import Name, Strict, duration

# The steps of both pipelines, by component name (tests check this against the components).
STEPS = ("validate_data", "train_adapter", "evaluate_candidate", "gate_candidate", "promote_candidate",
         "reject_candidate", "measure_traffic", "decide_action", "prepare_retrain_data", "rollback_champion",
         "note_retrain_outcome", "sweep_cell", "sweep_report")
# Steps that read and compute only; every other step writes to the registry or the data repo, and
# running it twice could register a version twice, commit data twice or move an alias twice.
RETRYABLE = ("validate_data", "train_adapter", "evaluate_candidate", "gate_candidate", "measure_traffic", "sweep_cell")
Step = Literal[STEPS]  # type: ignore[valid-type]


def _kubernetes_name(value: str) -> str:
    if len(value) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value):
        raise PydanticCustomError("k8s_name", "must be a Kubernetes name: lowercase letters, digits and '-', at most 63")
    return value


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise PydanticCustomError("env_name", "must be an environment variable name (letters, digits, _)")
    return value


def _quantity(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"\d+(\.\d+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?", value):
        raise PydanticCustomError("quantity", "must be a Kubernetes quantity such as 500m, 2, 512Mi or 8Gi")
    return value


_SUFFIXES = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def amount(quantity: str) -> float:
    """A Kubernetes quantity as a number (500m is 0.5, 8Gi is 8 x 2**30)."""
    number, suffix = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", quantity).groups()
    return float(number) * _SUFFIXES[suffix]


KubernetesName = Annotated[str, AfterValidator(_kubernetes_name)]
EnvName = Annotated[str, AfterValidator(_env_name)]
Quantity = Annotated[str | None, AfterValidator(_quantity)]


class SecretEnv(Strict):
    """Environment variables read from one Secret: `env` maps each variable to the Secret's key."""

    secret: KubernetesName
    env: dict[EnvName, Name] = Field(min_length=1, description="Variable name -> key in the Secret.")


class Toleration(Strict):
    """A pod toleration, as Kubernetes spells it."""

    key: Name
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class StepSettings(Strict):
    """Resources, time and retries for one step; unset fields come from `runtime.kubernetes.defaults`."""

    cpu: Quantity = Field(None, description="CPU request, e.g. 500m or 2.")
    memory: Quantity = Field(None, description="Memory request, e.g. 2Gi.")
    cpu_limit: Quantity = None
    memory_limit: Quantity = None
    gpus: int = Field(0, ge=0, le=16, description="GPUs (of runtime.kubernetes.gpu_type) the step gets.")
    timeout: Annotated[int | None, duration("1m", "7d")] = Field(None, description="How long the step may run, e.g. 6h.")
    retries: int = Field(0, ge=0, le=10, description="Retries after a failure, with exponential backoff.")


# Each step's own defaults over `defaults`; a config's `steps` entry goes over these, key by key.
DEFAULT_STEPS = {
    "validate_data": StepSettings(retries=2),
    "train_adapter": StepSettings(cpu="2", memory="8Gi", memory_limit="16Gi", timeout="24h", retries=1),
    "evaluate_candidate": StepSettings(cpu="2", memory="4Gi", retries=2),
    "gate_candidate": StepSettings(retries=2),
    "measure_traffic": StepSettings(cpu="1", memory="4Gi", retries=2),
    "sweep_cell": StepSettings(cpu="2", memory="8Gi", memory_limit="16Gi", timeout="24h", retries=1),
}


class KubernetesConfig(Strict):
    """What every pod of a compiled pipeline gets: pull settings, the workspace volume, Secrets as
    environment variables, placement, and per-step resources, timeouts and retries."""

    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[KubernetesName] = Field(default_factory=list)
    workspace_pvc: KubernetesName | None = Field(
        None, description="PersistentVolumeClaim mounted in every step at workspace_path (unset: an object store)."
    )
    workspace_path: Name = Field("/workspace/shared", pattern=r"^/", description="Where the claim is mounted.")
    secrets: list[SecretEnv] = Field(default_factory=list, description="MLflow, S3 and DVC credentials, by Secret name.")
    node_selector: dict[Name, Name] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    gpu_type: Name = Field("nvidia.com/gpu", description="Accelerator resource a step with gpus > 0 requests.")
    retry_backoff: Annotated[int, duration("1s", "1h")] = Field("30s", description="Wait before the first retry; doubles each time.")
    defaults: StepSettings = Field(
        default_factory=lambda: StepSettings(cpu="500m", memory="2Gi", memory_limit="8Gi", timeout="6h"),
        description="Settings neither the step's entry in `steps` nor its built-in defaults set.",
    )
    steps: dict[Step, StepSettings] = Field(
        default_factory=dict, description="Per step (by component name), over its built-in defaults, e.g. train_adapter: {gpus: 1}.",
    )

    @model_validator(mode="after")
    def _no_retry_on_writes(self) -> "KubernetesConfig":
        for step, settings in self.steps.items():
            if settings.retries and step not in RETRYABLE:
                raise ValueError(f"runtime.kubernetes.steps.{step}.retries = {settings.retries}: {step} writes to the "
                                 "registry or the data repo and must not run twice; set it to 0")
        if self.defaults.retries:
            raise ValueError("runtime.kubernetes.defaults.retries would retry the steps that write to the registry; "
                             "set retries per step under runtime.kubernetes.steps")
        for step in STEPS:
            settings = self.settings(step)
            for request, limit in (("cpu", "cpu_limit"), ("memory", "memory_limit")):
                low, high = getattr(settings, request), getattr(settings, limit)
                if low is not None and high is not None and amount(low) > amount(high):
                    raise ValueError(f"runtime.kubernetes: {step} would request {request} {low} over its limit {high}; "
                                     f"raise runtime.kubernetes.steps.{step}.{limit}")
        env = [name for secret in self.secrets for name in secret.env]
        if repeated := sorted({name for name in env if env.count(name) > 1}):
            raise ValueError(f"runtime.kubernetes.secrets sets {repeated} from more than one Secret; keep one")
        return self

    def settings(self, step: str) -> StepSettings:
        """The step's settings: its `steps` entry over its built-in defaults over `defaults`."""
        merged = self.defaults
        for layer in (DEFAULT_STEPS.get(step), self.steps.get(step)):
            if layer is not None:
                merged = merged.model_copy(update={key: getattr(layer, key) for key in layer.model_fields_set})
        return merged


class DistributedConfig(Strict):
    """Where a cluster's train step trains: in its own pod (`local`), or as a Kubeflow Trainer TrainJob of
    `nodes` pods with `gpus_per_node` GPUs each, running the same `tuneloop train` under torchrun.

    The TrainJob's pods read the snapshot and write the adapter on the workspace claim
    (`runtime.kubernetes.workspace_pvc`), which the train step copies in and out. Off a cluster,
    training is always local (`accelerate launch` or `torchrun` spread it over local processes).
    """

    backend: Literal["local", "kubeflow_trainer"] = Field("local", description="local, or kubeflow_trainer (a TrainJob).")
    nodes: int = Field(1, ge=1, le=64, description="Training pods (torchrun nodes).")
    gpus_per_node: int = Field(0, ge=0, le=16, description="GPUs per pod, one process each; 0: one CPU process per pod.")
    cpu: Quantity = Field("4", description="CPU per pod.")
    memory: Quantity = Field("16Gi", description="Memory per pod.")
    runtime: KubernetesName = Field("torch-distributed", description="The ClusterTrainingRuntime the TrainJob refers to.")
    timeout: Annotated[int, duration("10m", "7d")] = Field("24h", description="How long the TrainJob may run.")
