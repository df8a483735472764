"""The PEFT method registry: one small builder per method, keyed by the config's `method.name`.

Train, evaluate and save never branch on the method; they ask this registry for a peft config.
QLoRA is not a method here: it is LoRA plus a `quantization` block.
"""

from __future__ import annotations

from typing import Any, Callable

from tuneloop.config import IA3Method, LoraMethod
from tuneloop.errors import TrainingError

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

# Layer classes each method can wrap (peft's tuners; Conv1D is GPT-2's linear layer).
ADAPTABLE = {
    "lora": {"Linear", "Conv1D", "Conv1d", "Conv2d", "Conv3d", "Embedding", "MultiheadAttention"},
    "ia3": {"Linear", "Conv1D", "Conv2d", "Conv3d"},
}


# The classification head trains in full (peft's modules_to_save); peft refuses it as an adapter target.
HEADS = {"classifier", "score"}


def _matches(target: str, name: str) -> bool:
    """peft's rule for a list of target names: the module's full name or its dotted suffix."""
    return name == target or name.endswith("." + target)


def check_targets(method: LoraMethod | IA3Method, layers: dict[str, str], base: str) -> None:
    """Check that every target module names a layer the method can adapt.

    peft fails only when no target matches at all; one misspelled name among several would
    silently train fewer layers than configured, so each name is checked on its own. (IA3's
    feed-forward modules are a subset of its targets, which the config enforces.)

    Args:
        method: the method section.
        layers: the base model's module names mapped to class names (`modeling.inspect_base`).
        base: model.base as written, for the message.

    Raises:
        TrainingError: naming the key, the module, and the layers that do exist.
    """
    adaptable = {name: kind for name, kind in layers.items()
                 if kind in ADAPTABLE[method.name] and not set(name.split(".")) & HEADS}
    for target in method.target_modules:
        if any(_matches(target, name) for name in adaptable):
            continue
        matched = {name: kind for name, kind in layers.items() if _matches(target, name)}
        wrong = sorted(set(matched.values()))
        where = f"model.base {base!r}"
        if matched and all(set(name.split(".")) & HEADS for name in matched):
            why = f"names the classification head of {where}, which is trained in full, not adapted"
        elif wrong:
            why = f"names a {'/'.join(wrong)} layer of {where}, which {method.name} cannot adapt"
        else:
            why = f"matches no layer of {where}"
        leaves = sorted({name.rsplit(".", 1)[-1] for name in adaptable})
        raise TrainingError(f"method.target_modules: {target!r} {why}; use some of its adaptable layers: {', '.join(leaves)}")


def peft_config(method: LoraMethod | IA3Method, task: str) -> Any:
    """Build the peft config object for a method section and a model task."""
    return BUILDERS[method.name](method, TASK_TYPES[task])
