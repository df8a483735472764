"""Merging an adapter into its base for serving: always onto the unquantized base, never a LoftQ adapter."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import save_tiny_bert, save_tiny_llama
from tests.test_registry import candidate, migrated_store  # noqa: F401 (fixture)
from tuneloop import methods, modeling, preflight, synthetic, tasks, tokenization
from tuneloop.config import parse_config
from tuneloop.errors import ConfigError

LABELS = sorted(synthetic.LABELS)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert-64"), hidden=64)


def trained(base, folder, name: str, bits: int = 0, task: str = "sequence_classification"):
    """A method attached as training attaches it, its weights moved off their start, saved to `folder`."""
    cfg = parse_config({"model": {"base": str(base), "task": task, "max_length": 32}, "generation": {"max_new_tokens": 8},
                        "method": {"name": name}, "quantization": {"bits": bits}, "runtime": {"device": "cpu"}})
    section = preflight.resolved_method(cfg, preflight.check_model(cfg, "cpu"))
    torch.manual_seed(0)
    labels = LABELS if task == "sequence_classification" else []
    model = modeling.attach_adapter(modeling.load_model(base, task, labels, cfg.quantization, "cpu"), section, task,
                                    cfg.quantization, {"total_steps": 10, "base_dir": str(base)})
    with torch.no_grad():  # LoRA's B starts at zero, which would make any merge look right
        for name_, param in model.named_parameters():
            if param.requires_grad and "lora_B" in name_:
                param.add_(0.05 * torch.randn_like(param))
    base_sha, tokenizer_sha = modeling.fingerprint(base)
    meta = modeling.AdapterMeta(labels=labels, base_model=str(base), base_sha256=base_sha, tokenizer_sha256=tokenizer_sha,
                                task=task, max_length=32, method=section.model_dump(mode="json"),
                                quantization=cfg.quantization.model_dump())
    modeling.save_adapter(model, folder, meta)
    return folder


def inputs(base) -> dict:
    rows = synthetic.generate_tickets(1, 8, seed=1)
    batch = next(tokenization.batches(modeling.load_tokenizer(base), [t for t, _ in rows], None, 8, 32))
    return dict(batch)


def logits(folder, batch) -> torch.Tensor:
    model, _, _ = modeling.load_adapter(folder, "cpu")
    with torch.no_grad():
        return model(**batch).logits


def test_a_merged_lora_model_answers_as_the_adapter_did(bert, tmp_path):
    adapter = trained(bert, tmp_path / "adapter", "lora")
    merged = modeling.merge_adapter(adapter, tmp_path / "merged", "cpu")
    batch = inputs(bert)
    assert torch.allclose(logits(merged, batch), logits(adapter, batch), atol=1e-5)
    meta = modeling.read_adapter_meta(merged)
    assert (meta.method, meta.quantization["bits"], meta.labels) == ({"name": "full", "merged": "lora"}, 0, LABELS)
    assert not any("lora" in key for key in modeling.load_adapter(merged, "cpu")[0].state_dict())


def test_a_qlora_adapter_is_merged_into_the_unquantized_base(bert, tmp_path):
    adapter = trained(bert, tmp_path / "adapter", "lora", bits=4)
    merged = modeling.merge_adapter(adapter, tmp_path / "merged", "cpu")
    model, _, _ = modeling.load_adapter(merged, "cpu")
    assert {type(m).__name__ for m in model.modules()} & {"Linear4bit", "Linear8bitLt"} == set()
    # the same adapter on the full-precision base, unmerged: what the merged weights hold
    from peft import PeftModel

    reference = PeftModel.from_pretrained(modeling.load_model(bert, "sequence_classification", LABELS,
                                                              modeling.QuantizationConfig(), "cpu"), str(adapter)).eval()
    batch = inputs(bert)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reference(**batch).logits, atol=1e-5)


def test_a_merged_causal_lm_writes_what_the_adapter_wrote(tmp_path):
    base = save_tiny_llama(tmp_path / "llama", hidden=64)
    adapter = trained(base, tmp_path / "adapter", "lora", task="causal_lm")
    merged = modeling.merge_adapter(adapter, tmp_path / "merged", "cpu")
    batch = tasks.collate(tasks.get("causal_lm"), modeling.load_tokenizer(base), ["hello there"], ["fine"], 32, 8)
    batch.pop("labels")
    assert torch.allclose(logits(merged, batch), logits(adapter, batch), atol=1e-5)


@pytest.mark.parametrize("name, bits, message", [
    ("loftq", 4, "method loftq cannot be merged: its LoRA pairs start from the 4-bit base's quantization error, so on "
                 "the full-precision weights they would correct an error that is not there; serve it as an adapter on "
                 "its 4-bit base"),
    ("prompt_tuning", 0, "method prompt_tuning cannot be merged: it adds virtual tokens, which no base weight can "
                         "absorb; serve it as an adapter"),
])
def test_what_cannot_be_merged_is_refused_and_nothing_is_written(bert, tmp_path, name, bits, message):
    adapter = trained(bert, tmp_path / "adapter", name, bits=bits)
    with pytest.raises(ConfigError) as caught:
        modeling.merge_adapter(adapter, tmp_path / "merged", "cpu")
    assert str(caught.value) == message and not (tmp_path / "merged").exists()


def test_merging_into_a_folder_that_holds_files_is_refused(bert, tmp_path):
    adapter = trained(bert, tmp_path / "adapter", "lora")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError) as caught:
        modeling.merge_adapter(adapter, tmp_path / "busy", "cpu")
    assert str(caught.value) == f"{tmp_path / 'busy'} is not empty; merge into a new folder"
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_every_method_says_whether_it_merges():
    assert sorted(name for name, m in methods.REGISTRY.items() if m.mergeable) == [
        "adalora", "dora", "full", "ia3", "loha", "lokr", "lora", "rslora"]


def test_registry_export_writes_a_version_merged_and_refuses_to_overwrite(bert, tmp_path, migrated_store):  # noqa: F811
    import shutil
    import subprocess

    from tuneloop import registry
    from tuneloop.config import load_config

    shutil.copyfile(migrated_store, tmp_path / "mlflow.db")
    path = tmp_path / "tuneloop.yaml"
    path.write_text(f"model:\n  base: {bert}\n  max_length: 32\nregistry:\n  tracking_uri: sqlite:///{tmp_path}/mlflow.db\n"
                    f"  artifact_root: {tmp_path}/art\n  model_name: merged-test\n")
    cfg = load_config(path).registry
    adapter = trained(bert, tmp_path / "adapter", "lora")
    registry.register(cfg, candidate(adapter), "run")
    registry.promote(cfg, "1", None, why="first", by="test")

    def export() -> subprocess.CompletedProcess:
        return subprocess.run([shutil.which("tuneloop"), "registry", "export", "champion", "--out", str(tmp_path / "merged"),
                               "--config", str(path)], capture_output=True, text=True, timeout=300)

    done = export()
    assert (done.returncode, done.stdout) == (0, f"version 1 merged into its base -> {tmp_path / 'merged'}\n"), done.stderr
    batch = inputs(bert)
    assert torch.allclose(logits(tmp_path / "merged", batch), logits(adapter, batch), atol=1e-5)
    again = export()
    assert (again.returncode, again.stderr.strip()) == (1, f"error: ConfigError: {tmp_path / 'merged'} is not empty; "
                                                           "merge into a new folder")
