"""Quantized base weights (QLoRA): the only module that imports `bitsandbytes`.

The adapter always trains in full precision; only the frozen base is stored in 4 or 8 bits. The
classification head stays in full precision because it trains (peft's modules_to_save) and
quantized weights cannot take gradients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.config import QuantizationConfig
from tuneloop.errors import TrainingError

# Trainable or tiny layers that must stay full precision: a classifier's head trains, the pooler is
# one hidden x hidden matrix (0.6% of MiniLM) whose quantization saves nothing worth its error, and
# a language model's output head is the one layer QLoRA keeps in full precision (it is often tied to
# the input embeddings, which are never quantized: T5's would break).
FULL_PRECISION_MODULES = ["classifier", "pooler", "score", "lm_head"]


def bnb_config(cfg: QuantizationConfig) -> Any | None:
    """Return the transformers BitsAndBytesConfig for a quantization section, or None for bits=0.

    Raises:
        TrainingError: when bitsandbytes is not installed (no silent fall back to full precision).
    """
    if cfg.bits == 0:
        return None
    try:
        import bitsandbytes  # noqa: F401  (fail here, with a fix, rather than deep in transformers)
    except ImportError as exc:
        raise TrainingError(
            f"quantization.bits={cfg.bits} needs bitsandbytes; `pip install bitsandbytes==0.50.2` or set quantization.bits: 0"
        ) from exc
    import torch
    from transformers import BitsAndBytesConfig

    if cfg.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=FULL_PRECISION_MODULES)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, cfg.compute_dtype),
        llm_int8_skip_modules=FULL_PRECISION_MODULES,
    )


def check_layers(cfg: QuantizationConfig, in_features: dict[str, int], device: str) -> None:
    """Check that the base's linear layers can be stored in 4 bits on this device.

    bitsandbytes' CPU 4-bit inference kernel packs weights in blocks of 64 input features; a
    narrower layer trains, then fails with a raw RuntimeError at the first evaluation.

    Raises:
        TrainingError: naming the first layer that cannot be quantized and the fix.
    """
    if cfg.bits != 4 or not device.startswith("cpu"):
        return
    for name, width in in_features.items():
        if width % 64 and not set(name.split(".")) & set(FULL_PRECISION_MODULES):
            raise TrainingError(
                f"quantization.bits 4 on CPU needs linear layers whose input width is a multiple of 64, but {name} "
                f"has {width}; use quantization.bits 8 or 0, or runtime.device cuda"
            )


def prepare_for_training(model: Any, cfg: QuantizationConfig) -> Any:
    """Make a quantized base trainable through an adapter (layer norms in fp32, input grads on)."""
    if cfg.bits == 0:
        return model
    from peft import prepare_model_for_kbit_training

    # Gradient checkpointing trades ~30% more compute for activation memory; the small models this
    # runs on CPU do not need it, and users on GPU who do can add it without changing the adapter.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def library_version() -> str | None:
    """Return the installed bitsandbytes version, or None."""
    try:
        import bitsandbytes
    except ImportError:
        return None
    return bitsandbytes.__version__


def _original_weights(base_dir: Path) -> dict[str, tuple[Path, str]]:
    """Every `.weight` tensor in the base's safetensors files: its key (and the key without its
    first dotted part, as files saved from a bare encoder lack the `bert.` prefix) -> (file, key)."""
    from safetensors import safe_open

    found: dict[str, tuple[Path, str]] = {}
    for file in sorted(base_dir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                found.setdefault(key, (file, key))
                found.setdefault(key.split(".", 1)[-1], (file, key))
    return found


def loftq_init(model: Any, base_dir: Path) -> int:
    """Start each LoRA pair on a 4-bit layer from that layer's quantization error (LoftQ, one iteration).

    With W the base's original weight and Q its 4-bit storage, B·A is set to the rank-r truncated
    SVD of W - Q (divided by the LoRA scale), so Q + scale·B·A is the closest rank-r correction of
    the quantized layer back to W, instead of starting from B = 0. peft's own LoftQ code computes on
    CUDA only; this runs wherever the 4-bit weights are. Returns the number of layers initialized.

    Raises:
        TrainingError: when a layer's original weight is not in the base's safetensors files.
    """
    import bitsandbytes as bnb
    import torch
    from safetensors import safe_open

    originals = _original_weights(base_dir)
    done = 0
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if not isinstance(base, bnb.nn.Linear4bit) or "default" not in getattr(module, "lora_A", {}):
            continue
        path = name.removeprefix("base_model.model.") + ".weight"
        source = originals.get(path) or originals.get(path.split(".", 1)[-1])
        if source is None:
            raise TrainingError(f"method.name loftq: the original weight of {path} is not in the base's safetensors "
                                "files; save the base with save_pretrained (safetensors) and retry")
        with safe_open(str(source[0]), "pt") as handle:
            original = handle.get_tensor(source[1]).float()
        with torch.no_grad():
            quantized = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state).float()
            left, values, right = torch.linalg.svd(original.to(quantized.device) - quantized, full_matrices=False)
            rank = module.r["default"]
            root = values[:rank].sqrt()
            lora_a, lora_b = module.lora_A["default"].weight, module.lora_B["default"].weight
            lora_a.copy_((root[:, None] * right[:rank]).to(lora_a.dtype))
            lora_b.copy_((left[:, :rank] * root / module.scaling["default"]).to(lora_b.dtype))
        done += 1
    return done
