"""Unit tests for the preflight checks: the base model read without weights, targets, folders, 4-bit widths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tuneloop import methods, modeling, preflight, quantization
from tuneloop.config import QuantizationConfig, parse_config
from tuneloop.methods import IA3Method, LoraMethod
from tuneloop.errors import ConfigError, TrainingError


def test_inspect_base_reads_the_architecture_without_weights(tiny_model):
    facts = modeling.inspect_base(str(tiny_model))
    assert (facts.model_type, facts.max_positions) == ("bert", 128)
    assert facts.layers["bert.encoder.layer.1.attention.self.query"] == "Linear"
    assert facts.layers["bert.encoder.layer.0.attention.output.LayerNorm"] == "LayerNorm"
    assert facts.in_features["bert.encoder.layer.0.output.dense"] == 64  # intermediate size
    assert facts.in_features["classifier"] == 32


def test_a_tokenizer_larger_than_the_embeddings_is_refused(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny_model, tmp_path / "small-vocab")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.add_tokens(["<ticket>", "<order>"])
    tokenizer.save_pretrained(str(folder))
    with pytest.raises(TrainingError, match=r"its tokenizer has 30524 tokens but the model only 30522 embeddings"):
        modeling.inspect_base(str(folder))


def test_a_base_without_a_classification_head_is_refused(tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model, tmp_path / "vision")
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1,
                                                    "num_attention_heads": 2, "intermediate_size": 64}))
    with pytest.raises(ConfigError) as caught:
        modeling.inspect_base(str(folder))
    assert str(caught.value) == (
        f"model.task sequence_classification needs encoders (BERT, RoBERTa) and most decoders, and model.base "
        f"{str(folder)!r} is a 'vit' model, which transformers has no SequenceClassification model for; pick a base "
        "of that kind, or the task its architecture fits")


LAYERS = {"enc.0.attn.query": "Linear", "enc.0.attn.value": "Linear", "enc.0.out.dense": "Linear",
          "enc.0.out.LayerNorm": "LayerNorm", "emb.word_embeddings": "Embedding", "head": "Linear"}


@pytest.mark.parametrize("method, message", [
    (LoraMethod(target_modules=["query", "valu"]),
     "method.target_modules: 'valu' matches no layer of model.base 'b'; use some of its adaptable layers: "
     "dense, head, query, value, word_embeddings"),
    (IA3Method(target_modules=["LayerNorm"], feedforward_modules=[]),
     "method.target_modules: 'LayerNorm' names a LayerNorm layer of model.base 'b', which ia3 cannot adapt; "
     "use some of its adaptable layers: dense, head, query, value"),
    (IA3Method(target_modules=["word_embeddings"], feedforward_modules=[]),
     "names a Embedding layer of model.base 'b', which ia3 cannot adapt"),
])
def test_every_target_must_name_an_adaptable_layer(method, message):
    with pytest.raises(TrainingError) as caught:
        methods.check_targets(method, LAYERS, "b")
    assert message in str(caught.value)


@pytest.mark.parametrize("targets", [["query"], ["attn.query", "out.dense"], ["enc.0.attn.value"], ["word_embeddings"]])
def test_targets_match_by_full_name_or_dotted_suffix(targets):
    methods.check_targets(LoraMethod(target_modules=targets), LAYERS, "b")  # raises nothing


def test_a_partial_name_is_not_a_match():
    with pytest.raises(TrainingError, match="'uery' matches no layer"):
        methods.check_targets(LoraMethod(target_modules=["uery"]), LAYERS, "b")


def test_writable_folder_accepts_a_folder_that_does_not_exist_yet(tmp_path):
    preflight.writable_folder(tmp_path / "a" / "b", "runtime.pipeline_root")
    assert not (tmp_path / "a").exists()  # the check creates nothing
    assert list(tmp_path.iterdir()) == []


def test_writable_folder_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=rf"^runtime.pipeline_root: {tmp_path}/file/runs is not writable "
                                          rf"\({tmp_path}/file is not a folder\); point runtime.pipeline_root at a writable folder$"):
        preflight.writable_folder(tmp_path / "file" / "runs", "runtime.pipeline_root")


def test_four_bit_on_cpu_needs_widths_of_64():
    with pytest.raises(TrainingError, match=r"but enc.0.attn.query has 32; use quantization.bits 8 or 0"):
        quantization.check_layers(QuantizationConfig(bits=4), {"enc.0.attn.query": 32, "classifier": 32}, "cpu")
    quantization.check_layers(QuantizationConfig(bits=4), {"enc.0.attn.query": 64, "classifier": 32}, "cpu")
    quantization.check_layers(QuantizationConfig(bits=4), {"enc.0.attn.query": 32}, "cuda")
    quantization.check_layers(QuantizationConfig(bits=8), {"enc.0.attn.query": 32}, "cpu")


def test_check_model_refuses_max_length_beyond_the_positions(tiny_model):
    cfg = parse_config({"model": {"base": str(tiny_model), "max_length": 129}})
    with pytest.raises(ConfigError, match=r"^model.max_length 129 exceeds the 128 positions of model.base .*; "
                                          r"set model.max_length to at most 128$"):
        preflight.check_model(cfg, "cpu")
    assert preflight.check_model(parse_config({"model": {"base": str(tiny_model), "max_length": 128}}), "cpu").max_positions == 128


def test_the_packaged_minilm_passes(tmp_path):
    facts = preflight.check_model(parse_config({}), "cpu")
    assert (facts.model_type, facts.max_positions, facts.folder.name) == ("bert", 512, "model")
    assert Path(facts.folder / "model.safetensors").is_file()
