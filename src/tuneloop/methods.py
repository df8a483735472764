"""The PEFT method registry: one small builder per method, keyed by the config's `method.name`.

Train, evaluate and save never branch on the method; they ask this registry for a peft config.
QLoRA is not a method here: it is LoRA plus a `quantization` block.
"""

from __future__ import annotations

from typing import Any, Callable

from tuneloop.config import IA3Method, LoraMethod

TASK_TYPES = {"sequence_classification": "SEQ_CLS"}


def _lora(method: LoraMethod, task_type: str) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type, r=method.r, lora_alpha=method.alpha,
        lora_dropout=method.dropout, target_modules=list(method.target_modules),
    )


def _ia3(method: IA3Method, task_type: str) -> Any:
    from peft import IA3Config

    return IA3Config(
        task_type=task_type, target_modules=list(method.target_modules),
        feedforward_modules=list(method.feedforward_modules),
    )


BUILDERS: dict[str, Callable[[Any, str], Any]] = {"lora": _lora, "ia3": _ia3}


def peft_config(method: LoraMethod | IA3Method, task: str) -> Any:
    """Build the peft config object for a method section and a model task."""
    return BUILDERS[method.name](method, TASK_TYPES[task])
