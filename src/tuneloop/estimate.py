"""Pre-flight estimates of a training run's peak memory and wall time, before it starts.

Memory comes from the model's shape, without loading a weight: the architecture and its adapter
are built on torch's meta device, which gives the parameter counts exactly; to those are added
what the base's storage costs (the quantized linear weights, the rest in 32 bits), the gradients
and AdamW's two moments of the trainable weights, and the activations the backward pass keeps for
the longest batch (batch x longest row, per layer: a term in the hidden width and one in the
attention matrix). On a CPU the peak is the process's resident set, so the baseline of a process
that has imported the training stack is measured once, and loading reads the weights file through
a memory map whose pages count too. The constants were fitted on this project's benchmark machine
(bench/README.md records predicted against measured).

Time comes from measurement: a few real optimizer steps on the run's own batches
(`training.warmup`), one dev batch and one checkpoint save, extrapolated to the run's epochs.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

import pandas as pd

from tuneloop import methods, modeling, tasks
from tuneloop.config import Config
from tuneloop.errors import ConfigError

log = logging.getLogger(__name__)

MB = 2**20
ADAM_BYTES = 4 + 8  # a gradient and AdamW's two moments per trainable weight, in fp32
# Bytes of resident memory the training step adds per (row x token x hidden unit) and per
# (row x head x token^2), per layer, in fp32: the activations autograd keeps, and what the allocator
# holds on to around them. Fitted on MiniLM cells of the emotion sweep on the benchmark machine
# (bench/README.md), where they came to about twice the saved tensors alone.
HIDDEN_BYTES = 140.0
ATTENTION_BYTES = 24.0
# bitsandbytes' CPU path dequantizes each layer's weights for every matmul and keeps its own copies
# of the inputs for the backward pass: a quantized base's activations cost this much more.
QUANTIZED_ACTIVATIONS = 1.3
# A generative model's loss holds its logits, their log-softmax and the gradient of the logits, each
# rows x written tokens x vocabulary in fp32 (a classifier's few labels make this negligible).
LOGIT_COPIES = 3
FILE_RESIDENT = 1.0  # share of the weights file's mapped pages still resident at the peak
BITS_PER_STORED = {0: 32, 4: 4.5, 8: 8}  # 4-bit with its block scales


@dataclass(frozen=True)
class Estimate:
    """A run's predicted peak memory (MB) and wall time (s, None without warm-up), and what they add up from."""

    peak_memory_mb: float
    seconds: float | None
    trainable_params: int
    total_params: int
    longest_tokens: int
    memory_parts: dict[str, float]
    timing: dict[str, float] | None = None

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)


@dataclass(frozen=True)
class Baseline:
    """A fresh training process before its first model: resident MB, and the seconds its run spends
    importing torch, transformers, peft and accelerate (a run's wall time includes them)."""

    memory_mb: float
    import_seconds: float


def baseline() -> Baseline:
    """Measure `Baseline` in a child process that imports what a training run imports."""
    code = ("import time, tuneloop.training, tuneloop.evaluation\n"
            "t = time.perf_counter()\n"
            "import torch, transformers, peft, accelerate, peft.tuners\n"
            "t = time.perf_counter() - t\n"
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')), t)")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
        kb, seconds = out.stdout.split()[-2:]
        return Baseline(int(kb) / 1024, float(seconds))
    except (subprocess.SubprocessError, ValueError, OSError) as exc:
        log.warning("could not measure a training process's baseline (%s); assuming 700 MB and 10 s of imports", exc)
        return Baseline(700.0, 10.0)


def _shape(config: Any) -> tuple[int, int, int]:
    """Hidden width, layers and attention heads of a transformers config (encoder + decoder for seq2seq)."""
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or getattr(config, "n_embd")
    if getattr(config, "is_encoder_decoder", False):  # num_hidden_layers maps to the encoder's alone there
        encoder = getattr(config, "num_layers", None) or getattr(config, "encoder_layers", 0)
        decoder = getattr(config, "num_decoder_layers", None) or getattr(config, "decoder_layers", None) or encoder
        layers = encoder + decoder
    else:
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "num_heads", None) or getattr(config, "n_head")
    return int(hidden), int(layers), int(heads)


def _meta_counts(cfg: Config, labels: list[str], steps: int) -> tuple[int, int, int]:
    """(trainable, total, linear-weight) parameter counts of the model as trained, built on the meta device."""
    import torch
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from tuneloop import preflight

    hf_logging.set_verbosity_error()
    folder = modeling.resolve_base(cfg.model.base)
    task = tasks.get(cfg.model.task)
    kwargs = {} if task.generative else {"num_labels": max(len(labels), 2)}
    config = AutoConfig.from_pretrained(folder, **kwargs)
    facts = modeling.inspect_base(cfg.model.base, cfg.model.task)
    method = preflight.resolved_method(cfg, facts)
    with torch.device("meta"):
        model = task.auto_class().from_config(config)
        total = sum(p.numel() for p in model.parameters())
        linear = sum(m.weight.numel() for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and not set(n.split(".")) & methods.HEADS and "lm_head" not in n)
        if methods.get(method.name).full:
            return total, total, linear
        from peft import get_peft_model

        adapted = get_peft_model(model, methods.peft_config(method, cfg.model.task, {"total_steps": steps,
                                                                                    "base_dir": str(folder)}))
        trainable, _ = adapted.get_nb_trainable_parameters()
    return int(trainable), int(total), int(linear)


def longest_tokens(cfg: Config, frame: pd.DataFrame) -> int:
    """The longest training row in tokens as batches are built (a batch pads to its longest row)."""
    task = tasks.get(cfg.model.task)
    tokenizer = modeling.load_tokenizer(modeling.resolve_base(cfg.model.base))
    targets = frame["label"].tolist()
    sizes = tasks.lengths(task, tokenizer, frame["text"].tolist(), targets, cfg.model.max_length,
                          cfg.generation.max_new_tokens)
    return max(sizes) + virtual_tokens(cfg)


def virtual_tokens(cfg: Config) -> int:
    """Tokens a prompt method prepends to every row's input (prefix tuning's go to the attention cache only)."""
    return 0 if methods.get(cfg.method.name).needs_cache else getattr(cfg.method, "num_virtual_tokens", 0)


def memory(cfg: Config, frame: pd.DataFrame, baseline: float, device: str = "cpu") -> tuple[float, dict[str, float], int, int, int]:
    """Predicted peak memory in MB; return it, its parts, the trainable and total counts and the longest row."""
    from transformers import AutoConfig

    labels = [] if tasks.get(cfg.model.task).generative else sorted(frame["label"].unique())
    per_epoch = math.ceil(len(frame) * (1 - cfg.train.dev_fraction) / cfg.train.batch_size)
    trainable, total, linear = _meta_counts(cfg, labels, per_epoch * cfg.train.epochs)
    shape = AutoConfig.from_pretrained(modeling.resolve_base(cfg.model.base))
    hidden, layers, heads = _shape(shape)
    seq = longest_tokens(cfg, frame)
    rows = cfg.train.batch_size
    stored_bits = BITS_PER_STORED[cfg.quantization.bits]
    weights = (linear * stored_bits / 8 + (total - linear) * 4) / MB
    if cfg.quantization.bits:  # bitsandbytes' CPU path loads the 32-bit weights before packing them
        weights += linear * 4 / MB * 0.5
    state = trainable * ADAM_BYTES / MB
    scale = 0.6 if cfg.train.precision != "fp32" else 1.0
    if cfg.quantization.bits and not device.startswith("cuda"):
        scale *= QUANTIZED_ACTIVATIONS
    activations = scale * layers * rows * seq * (hidden * HIDDEN_BYTES + heads * seq * ATTENTION_BYTES) / MB
    task = tasks.get(cfg.model.task)
    if task.generative:  # the vocabulary projection: logits, their log-softmax and its gradient, in fp32
        written = min(cfg.generation.max_new_tokens, seq) if task.name == "seq2seq" else seq
        activations += LOGIT_COPIES * rows * written * shape.vocab_size * 4 / MB
    folder = modeling.resolve_base(cfg.model.base)
    on_disk = sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors") / MB
    parts = {"weights": weights, "training_state": state, "activations": activations}
    if not device.startswith("cuda"):  # the resident set: the process itself and the mapped weights file
        parts = {"baseline": baseline, "weights_file": FILE_RESIDENT * on_disk, **parts}
    return sum(parts.values()), parts, trainable, total, seq


def memory_estimate(cfg: Config, frame: pd.DataFrame, start: Baseline) -> Estimate:
    """Predict a run's peak memory, loading no weight (no time yet: see `with_time`)."""
    device = modeling.pick_device(cfg.runtime.device)
    peak, parts, trainable, total, seq = memory(cfg, frame, start.memory_mb, device)
    return Estimate(peak, None, trainable, total, seq, parts)


def with_time(found: Estimate, cfg: Config, frame: pd.DataFrame, start: Baseline, warmup_steps: int) -> Estimate:
    """Add the time estimate: `warmup_steps` real optimizer steps timed, extrapolated to the run's
    epochs, with the imports a fresh training process pays, its model load, a dev pass and a
    checkpoint save per epoch."""
    from tuneloop import training

    timing = {**training.warmup(frame, cfg, warmup_steps), "import_seconds": start.import_seconds}
    epoch = (timing["epoch_tokens"] * timing["seconds_per_token"] + timing["dev_rows"] * timing["dev_seconds_per_row"]
             + timing["save_seconds"])
    seconds = start.import_seconds + timing["build_seconds"] + cfg.train.epochs * epoch + timing["save_seconds"]
    return replace(found, seconds=seconds, timing=timing)


def over_limit(named: dict[str, Estimate], limit_mb: float, where: str) -> None:
    """Refuse the runs predicted above `limit_mb`, all of them in one line.

    Raises:
        ConfigError: naming each run with its predicted peak, the limit and the fixes.
    """
    over = {name: found for name, found in named.items() if found.peak_memory_mb > limit_mb}
    if not over:
        return
    listed = "; ".join(f"{name} ~{found.peak_memory_mb:,.0f} MB" for name, found in over.items())
    reference = " (the full fine-tuning reference: sweep.reference: false)" if any("reference" in n for n in over) else ""
    raise ConfigError(
        f"{listed}: over the {limit_mb:,.0f} MB {where}; lower train.batch_size or model.max_length, quantize the base, "
        f"leave those cells out{reference}, or raise sweep.memory_limit_mb"
    )


def device_limit_mb(device: str) -> float:
    """The memory a run on `device` cannot exceed: the GPU's on CUDA, this machine's otherwise."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(torch.device(device)).total_memory / MB
    import psutil

    return psutil.virtual_memory().total / MB


def describe(estimate_: Estimate) -> str:
    """One line: predicted peak memory and time, and the trainable share."""
    time_part = f"~{estimate_.seconds:,.0f} s" if estimate_.seconds is not None else "time not estimated (no warm-up)"
    share = 100 * estimate_.trainable_params / max(estimate_.total_params, 1)
    return (f"~{estimate_.peak_memory_mb:,.0f} MB peak, {time_part}; {estimate_.trainable_params:,} of "
            f"{estimate_.total_params:,} parameters trainable ({share:.3g}%), longest batch {estimate_.longest_tokens} tokens")
