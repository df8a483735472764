"""The method registry: every way tuneloop can fine-tune a base model, keyed by `method.name`.

An entry is the whole method: its config section (a small typed model with defaults from the
literature), which quantized bases it can train on (and which only on CUDA), its default learning
rate, the layers its targets may name, its peft config (none for full fine-tuning, which trains,
counts and saves the whole model), and any step after building (LoftQ's initialization). The
config's method union, preflight and `modeling`'s build, save and load read this table; nothing
else spells a method name. QLoRA is not an entry: it is any adapter method plus a `quantization`
block.

Defaults that depend on the base are left as None in the section and filled in by `resolve`
from the base itself: the rank (8 with alpha 16 for bases up to 1B parameters, 16 with alpha 32
beyond, as in the LoRA and QLoRA papers' tables) and the target modules (peft's per-architecture
table: query/value for BERT-style, q_proj/v_proj for LLaMA-style, q/v for T5-style models).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BeforeValidator, Field, model_validator

from tuneloop import tasks
from tuneloop.errors import ConfigError, TrainingError
from tuneloop.fields import Name, Names, Strict

BILLION = 10**9
ALL_LINEAR = "all-linear"



def _all_linear_as_list(value: Any) -> Any:
    # `target_modules: all-linear` is kept as the one-name list ["all-linear"], so the field has a
    # single type and a bad list gets the list's own error message, not a union's.
    return [value] if value == ALL_LINEAR else value


# Target modules: a list of names (a module's full name or its dotted suffix), `all-linear`, or
# None for peft's table for the base's architecture.
Targets = Annotated[Union[Annotated[Names, Field(min_length=1)], None], BeforeValidator(
    _all_linear_as_list, json_schema_input_type=Union[list[str], Literal["all-linear"], None]), Field(
    None, description="Layers to adapt: a list of module names, `all-linear`, or unset for the architecture's "
                      "default (BERT: query, value; LLaMA: q_proj, v_proj; T5: q, v).",
)]
Rank = Annotated[Union[int, None], Field(None, ge=1, le=1024, description="Rank; unset: 8 up to 1B base parameters, 16 beyond.")]
Alpha = Annotated[Union[int, None], Field(None, ge=1, le=8192, description="Update scale alpha / r; unset: 2 x r.")]
VirtualTokens = Annotated[int, Field(20, ge=1, le=1000, description="Learned virtual tokens prepended to every input.")]


class _LoraFields(Strict):
    r: Rank
    alpha: Alpha
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: Targets


class LoraMethod(_LoraFields):
    """LoRA: a low-rank update B·A added to each target layer, scaled by alpha / r."""

    name: Literal["lora"] = "lora"


class DoraMethod(_LoraFields):
    """DoRA: LoRA on the direction of each weight, with its magnitude learned apart."""

    name: Literal["dora"] = "dora"


class RsloraMethod(_LoraFields):
    """rsLoRA: LoRA scaled by alpha / sqrt(r), which keeps high ranks learning."""

    name: Literal["rslora"] = "rslora"


class LoftqMethod(_LoraFields):
    """LoRA initialized by LoftQ: A and B start as the low-rank part of the 4-bit base's quantization error."""

    name: Literal["loftq"] = "loftq"


class _LycorisFields(Strict):
    r: Rank
    alpha: Alpha
    rank_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the rank dimension while training.")
    module_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Chance of skipping the whole update while training.")
    target_modules: Targets


class LohaMethod(_LycorisFields):
    """LoHa: the update is the Hadamard product of two low-rank products."""

    name: Literal["loha"] = "loha"


class LokrMethod(_LycorisFields):
    """LoKr: the update is a Kronecker product of a small matrix and a low-rank one."""

    name: Literal["lokr"] = "lokr"


class AdaloraMethod(Strict):
    """AdaLoRA: LoRA whose rank budget is pruned from init_r to target_r during training, by importance."""

    name: Literal["adalora"] = "adalora"
    init_r: int = Field(12, ge=1, le=1024, description="Rank of every layer before pruning.")
    target_r: int = Field(8, ge=1, le=1024, description="Average rank left after pruning.")
    alpha: Alpha
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: Targets
    warmup: float = Field(0.1, ge=0.0, lt=1.0, description="Share of the run's optimizer steps before pruning starts.")
    final: float = Field(0.2, ge=0.0, lt=1.0, description="Share of steps at the end trained with the final ranks.")
    interval: int = Field(10, ge=1, le=10**6, description="Optimizer steps between two rank allocations.")

    @model_validator(mode="after")
    def _schedule(self) -> "AdaloraMethod":
        if self.target_r > self.init_r:
            raise ValueError(f"method.target_r {self.target_r} is above method.init_r {self.init_r}; AdaLoRA only "
                             "prunes ranks, so set target_r at most init_r")
        if self.warmup + self.final >= 1.0:
            raise ValueError(f"method.warmup {self.warmup} + method.final {self.final} leave no steps to prune in; "
                             "keep their sum below 1")
        return self


class IA3Method(Strict):
    """IA3: learned per-channel rescaling of keys, values and the feed-forward layer."""

    name: Literal["ia3"] = "ia3"
    target_modules: Targets
    feedforward_modules: Annotated[Union[Names, None], Field(
        None, description="Which targets are feed-forward layers (scaled at their input); unset: the architecture's.",
    )]

    @model_validator(mode="after")
    def _feedforward_are_targets(self) -> "IA3Method":
        # peft scales a feed-forward layer's input, any other target's output; a feed-forward name
        # that is not a target would silently adapt nothing.
        if self.target_modules not in (None, [ALL_LINEAR]) and self.feedforward_modules is not None:
            stray = [name for name in self.feedforward_modules if name not in self.target_modules]
            if stray:
                raise ValueError(
                    f"method.feedforward_modules {stray} are not in method.target_modules {self.target_modules}; "
                    "every feed-forward module must also be a target: add it to target_modules or remove it"
                )
        return self


class PromptTuningMethod(Strict):
    """Prompt tuning: only the embeddings of a few virtual tokens prepended to the input are learned."""

    name: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: VirtualTokens
    init: Literal["random", "text"] = Field("random", description="Start from random vectors or from init_text's tokens.")
    init_text: Union[Name, None] = Field(None, description="Text whose token embeddings start the prompt (init: text).")

    @model_validator(mode="after")
    def _text_for_text_init(self) -> "PromptTuningMethod":
        if (self.init == "text") != (self.init_text is not None):
            raise ValueError("method.init is text exactly when method.init_text is set; set both (init: text, "
                             "init_text: \"Classify the ticket:\") or neither")
        return self


class PrefixTuningMethod(Strict):
    """Prefix tuning: learned key/value vectors prepended at every attention layer."""

    name: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: VirtualTokens
    projection: bool = Field(False, description="Learn the prefix through a two-layer MLP (more stable, more parameters).")
    projection_size: int = Field(512, ge=1, le=65536, description="Hidden width of that MLP.")


class PtuningMethod(Strict):
    """P-tuning: virtual-token embeddings produced by a small trained encoder."""

    name: Literal["p_tuning"] = "p_tuning"
    num_virtual_tokens: VirtualTokens
    encoder: Literal["mlp", "lstm"] = "mlp"
    encoder_size: int = Field(128, ge=1, le=65536, description="Hidden width of the prompt encoder.")


class FullMethod(Strict):
    """Full fine-tuning: every weight of the base trains; the reference the adapter methods are measured against."""

    name: Literal["full"] = "full"


@dataclass(frozen=True)
class Method:
    """One registry entry.

    Attributes:
        section: the config section's pydantic model.
        learning_rate: the default for train.learning_rate (the seed tables' usual value).
        bits: quantization.bits values it can train on; `why_not` says why the others are refused.
        adaptable: layer classes its targets may name (empty: it takes no target modules).
        peft: builds the peft config from (resolved section, peft task type, run facts); None
            means no adapter at all (full fine-tuning).
        cuda_only_bits: storage it trains on with CUDA only; `why_cuda` says what fails on a CPU.
        needs_cache: whether the base's forward must take past_key_values (prefix tuning).
        after_build: what to run on the freshly built peft model (LoftQ's initialization).
        unmergeable: why its weights cannot be merged into the base for serving; empty when they can.
    """

    section: type[Strict]
    learning_rate: float
    bits: frozenset[int]
    why_not: str
    adaptable: frozenset[str]
    peft: Callable[[Any, str, dict], Any] | None
    cuda_only_bits: frozenset[int] = frozenset()
    why_cuda: str = ""
    needs_cache: bool = False
    after_build: Callable[[Any, Path], Any] | None = None
    unmergeable: str = ""

    @property
    def mergeable(self) -> bool:
        """Whether `modeling.merge_adapter` can fold the trained weights into the base's."""
        return not self.unmergeable

    @property
    def name(self) -> str:
        """The method's `method.name`."""
        return self.section.model_fields["name"].default

    @property
    def full(self) -> bool:
        """Whether the method trains and saves the whole model rather than an adapter."""
        return self.peft is None

    @property
    def weights_file(self) -> str:
        """The safetensors file a saved model of this method holds."""
        return "model.safetensors" if self.full else "adapter_model.safetensors"


def peft_targets(targets: list[str]) -> str | list[str]:
    """Target modules as peft takes them: the string `all-linear`, or the list of names."""
    return ALL_LINEAR if targets == [ALL_LINEAR] else list(targets)


def _loftq_init(model: Any, base_dir: Path) -> None:
    from tuneloop import quantization  # the bitsandbytes module; imported only when LoftQ runs

    quantization.loftq_init(model, base_dir)


def _lora(variant: dict) -> Callable[[Any, str, dict], Any]:
    def build(section: Any, task_type: str, run: dict) -> Any:
        from peft import LoraConfig

        return LoraConfig(task_type=task_type, r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                          target_modules=peft_targets(section.target_modules), **variant)
    return build


def _lycoris(kind: str) -> Callable[[Any, str, dict], Any]:
    def build(section: Any, task_type: str, run: dict) -> Any:
        import peft

        return getattr(peft, kind)(task_type=task_type, r=section.r, alpha=section.alpha,
                                   rank_dropout=section.rank_dropout, module_dropout=section.module_dropout,
                                   target_modules=peft_targets(section.target_modules))
    return build


def _adalora(section: AdaloraMethod, task_type: str, run: dict) -> Any:
    from peft import AdaLoraConfig

    # The pruning schedule is laid out over the run's real number of optimizer steps.
    steps = run["total_steps"]
    return AdaLoraConfig(
        task_type=task_type, init_r=section.init_r, target_r=section.target_r, lora_alpha=section.alpha,
        lora_dropout=section.dropout, target_modules=peft_targets(section.target_modules), total_step=steps,
        tinit=int(section.warmup * steps), tfinal=int(section.final * steps), deltaT=section.interval,
    )


def _ia3(section: IA3Method, task_type: str, run: dict) -> Any:
    from peft import IA3Config

    return IA3Config(task_type=task_type, target_modules=peft_targets(section.target_modules),
                     feedforward_modules=section.feedforward_modules)


def _prompt_tuning(section: PromptTuningMethod, task_type: str, run: dict) -> Any:
    from peft import PromptTuningConfig

    text = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": section.init_text,
            "tokenizer_name_or_path": run["base_dir"]} if section.init == "text" else {"prompt_tuning_init": "RANDOM"}
    return PromptTuningConfig(task_type=task_type, num_virtual_tokens=section.num_virtual_tokens, **text)


def _prefix_tuning(section: PrefixTuningMethod, task_type: str, run: dict) -> Any:
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=section.num_virtual_tokens,
                              prefix_projection=section.projection, encoder_hidden_size=section.projection_size)


def _p_tuning(section: PtuningMethod, task_type: str, run: dict) -> Any:
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=section.num_virtual_tokens,
                               encoder_reparameterization_type=section.encoder.upper(),
                               encoder_hidden_size=section.encoder_size)


ANY_BITS = frozenset({0, 4, 8})
LORA_LAYERS = frozenset({"Linear", "Conv1D", "Conv1d", "Conv2d", "Conv3d", "Embedding", "MultiheadAttention"})
LYCORIS_LAYERS = frozenset({"Linear", "Conv1d", "Conv2d"})
_VIRTUAL = "it adds virtual tokens, which no base weight can absorb; serve it as an adapter"
_LYCORIS_4BIT = "peft's LoHa/LoKr layers build their update from the base weight's shape, which 4-bit storage packs"
REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method(LoraMethod, 1e-3, ANY_BITS, "", LORA_LAYERS, _lora({})),
    Method(DoraMethod, 1e-3, ANY_BITS, "", LORA_LAYERS, _lora({"use_dora": True}), cuda_only_bits=frozenset({8}),
           why_cuda="bitsandbytes' CPU int8 layer loses its scales once DoRA reads the weight"),
    Method(RsloraMethod, 1e-3, ANY_BITS, "", LORA_LAYERS, _lora({"use_rslora": True})),
    Method(LoftqMethod, 1e-3, frozenset({4}),
           "LoftQ starts LoRA from the 4-bit base's quantization error, so it needs quantization.bits 4",
           LORA_LAYERS, _lora({}), after_build=_loftq_init,
           unmergeable="its LoRA pairs start from the 4-bit base's quantization error, so on the full-precision "
                       "weights they would correct an error that is not there; serve it as an adapter on its 4-bit base"),
    Method(LohaMethod, 1e-3, frozenset({0, 8}), _LYCORIS_4BIT, LYCORIS_LAYERS, _lycoris("LoHaConfig")),
    Method(LokrMethod, 1e-3, frozenset({0, 8}), _LYCORIS_4BIT, LYCORIS_LAYERS, _lycoris("LoKrConfig")),
    Method(AdaloraMethod, 1e-3, ANY_BITS, "", frozenset({"Linear", "Conv1D"}), _adalora),
    Method(IA3Method, 3e-3, ANY_BITS, "", frozenset({"Linear", "Conv1D", "Conv2d", "Conv3d"}), _ia3),
    Method(PromptTuningMethod, 3e-2, ANY_BITS, "", frozenset(), _prompt_tuning, unmergeable=_VIRTUAL),
    Method(PrefixTuningMethod, 1e-2, ANY_BITS, "", frozenset(), _prefix_tuning, needs_cache=True, unmergeable=_VIRTUAL),
    Method(PtuningMethod, 1e-3, ANY_BITS, "", frozenset(), _p_tuning, unmergeable=_VIRTUAL),
    Method(FullMethod, 2e-5, frozenset({0}),
           "full fine-tuning updates every base weight, and quantized weights take no gradients", frozenset(), None),
)}
NAMES = tuple(REGISTRY)
MethodConfig = Annotated[Union[tuple(m.section for m in REGISTRY.values())], Field(discriminator="name")]


def get(name: str) -> Method:
    """Return the registry entry of a method name.

    Raises:
        TrainingError: for a name the registry does not hold (e.g. metadata from a newer tuneloop).
    """
    if name not in REGISTRY:
        raise TrainingError(f"unknown method {name!r}; use one of: {', '.join(NAMES)}")
    return REGISTRY[name]


def quantization_problem(name: str, bits: int) -> str | None:
    """Why a method cannot train on a base stored in `bits` bits, as one line with the fix; None when it can."""
    method = REGISTRY[name]
    if bits in method.bits:
        return None
    others = sorted(m.name for m in REGISTRY.values() if bits in m.bits)
    allowed = " or ".join(str(b) for b in sorted(method.bits))
    return (f"method.name {name} cannot train on quantization.bits {bits}: {method.why_not}; set quantization.bits "
            f"{allowed}, or use a method that can ({', '.join(others)})")


def default_targets(name: str, model_type: str) -> tuple[list[str] | None, list[str] | None]:
    """peft's target modules (and IA3's feed-forward modules) for an architecture; (None, None) when it has none."""
    from peft.utils import constants

    table = {"loha": "LOHA", "lokr": "LOKR", "adalora": "ADALORA", "ia3": "IA3"}.get(name, "LORA")
    targets = getattr(constants, f"TRANSFORMERS_MODELS_TO_{table}_TARGET_MODULES_MAPPING").get(model_type)
    feedforward = constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type) if name == "ia3" else None
    return (list(targets) if targets else None), (list(feedforward) if feedforward else None)


def resolve(section: Any, model_type: str, parameters: int, base: str) -> Any:
    """Fill in the defaults that depend on the base: rank and alpha by its size, target modules by its architecture.

    Args:
        section: the method section as configured.
        model_type: the base's architecture name (config.json's model_type, e.g. "bert").
        parameters: the base's parameter count.
        base: model.base as written, for the message.

    Raises:
        TrainingError: when target modules are unset and the architecture has no default.
    """
    fields = section.model_fields
    updates: dict[str, Any] = {}
    rank = 8 if parameters <= BILLION else 16
    if "r" in fields and section.r is None:
        updates["r"] = rank
    if "alpha" in fields and section.alpha is None:
        updates["alpha"] = 2 * updates.get("r", getattr(section, "r", None) or getattr(section, "target_r", rank))
    if "target_modules" in fields and section.target_modules is None:
        targets, feedforward = default_targets(section.name, model_type)
        if targets is None:
            raise TrainingError(
                f"method.target_modules is unset and peft has no default for model.base {base!r} (a {model_type!r} "
                f"model); set method.target_modules to all-linear or to some of its layer names"
            )
        updates["target_modules"] = targets
        if "feedforward_modules" in fields and section.feedforward_modules is None:
            updates["feedforward_modules"] = [f for f in feedforward or [] if f in targets]
    elif "feedforward_modules" in fields and section.feedforward_modules is None:
        _, feedforward = default_targets(section.name, model_type)
        targets = section.target_modules
        updates["feedforward_modules"] = [f for f in feedforward or [] if targets == [ALL_LINEAR] or f in targets]
    resolved = section.model_copy(update=updates)
    feedforward = getattr(resolved, "feedforward_modules", None) or []
    stray = [f for f in feedforward if resolved.target_modules != [ALL_LINEAR] and f not in resolved.target_modules]
    if stray:  # the config checks this when both lists are written; here the targets came from the base
        raise ConfigError(
            f"method.feedforward_modules {stray} are not among the target modules {resolved.target_modules} "
            f"(model.base {base!r}'s default); add them to method.target_modules or remove them"
        )
    return resolved


# The classification head trains in full (peft's modules_to_save); peft refuses it as an adapter target.
HEADS = {"classifier", "score"}


def _matches(target: str, name: str) -> bool:
    """peft's rule for a list of target names: the module's full name or its dotted suffix."""
    return name == target or name.endswith("." + target)


def check_targets(section: Any, layers: dict[str, str], base: str) -> None:
    """Check that every target module of a resolved section names a layer the method can adapt.

    peft fails only when no target matches at all; one misspelled name among several would
    silently train fewer layers than configured, so each name is checked on its own. (IA3's
    feed-forward modules are a subset of its targets, which the config enforces.)

    Args:
        section: the method section, with its defaults resolved.
        layers: the base model's module names mapped to class names (`modeling.inspect_base`).
        base: model.base as written, for the message.

    Raises:
        TrainingError: naming the key, the module, and the layers that do exist.
    """
    kinds = REGISTRY[section.name].adaptable
    if not kinds:
        return
    adaptable = {name: kind for name, kind in layers.items() if kind in kinds and not set(name.split(".")) & HEADS}
    leaves = sorted({name.rsplit(".", 1)[-1] for name in adaptable})
    if section.target_modules == [ALL_LINEAR]:
        if not any(kind == "Linear" for kind in adaptable.values()):
            raise TrainingError(f"method.target_modules: all-linear finds no linear layer in model.base {base!r}; "
                                f"name some of its adaptable layers: {', '.join(leaves)}")
        return
    for target in section.target_modules:
        if any(_matches(target, name) for name in adaptable):
            continue
        matched = {name: kind for name, kind in layers.items() if _matches(target, name)}
        wrong = sorted(set(matched.values()))
        where = f"model.base {base!r}"
        if matched and all(set(name.split(".")) & HEADS for name in matched):
            why = f"names the classification head of {where}, which is trained in full, not adapted"
        elif wrong:
            why = f"names a {'/'.join(wrong)} layer of {where}, which {section.name} cannot adapt"
        else:
            why = f"matches no layer of {where}"
        raise TrainingError(f"method.target_modules: {target!r} {why}; use some of its adaptable layers: {', '.join(leaves)}")


def peft_config(section: Any, task: str, run: dict) -> Any:
    """Build the peft config of a resolved adapter section for a model task.

    Args:
        section: the method section, with its defaults resolved.
        task: model.task.
        run: facts of this run a method may need: total_steps (AdaLoRA's schedule), base_dir (a
            text-initialized prompt's tokenizer).
    """
    return REGISTRY[section.name].peft(section, tasks.get(task).peft_type, run)


def saved_weights(folder: Path, name: str) -> Path:
    """The weights file a saved model of method `name` must hold."""
    return folder / get(name).weights_file
