"""The task registry: what a model learns to do, keyed by `model.task`.

An entry is the whole task: its transformers model class and peft task type, the two data columns
a row holds (text/label, source/target, prompt/response), how rows become a training batch, and the
metrics a held-out set is scored on, each with its direction. The config, training, evaluation,
the gate and the registry read this table; nothing else spells a task name.

Generative rows are tokenized as the model will see them at prediction time:
- seq2seq: the source is the encoder's input (cut at model.max_length); the target, tokenized as
  the tokenizer builds targets (its own start and end tokens) and cut at
  generation.max_new_tokens, is the decoder's labels.
- causal_lm: prompt tokens, then response tokens and the end token in one sequence; the loss is
  masked to the response (prompt and padding positions are -100). The response keeps up to
  generation.max_new_tokens tokens and the prompt is cut from the left to fit model.max_length, so
  the text nearest the response stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

IGNORE = -100  # the label value transformers' losses skip


@dataclass(frozen=True)
class Metric:
    """One held-out score: its name, whether higher is better, and how a set of rows gives its value.

    `relative`: the gate reads a difference as a percent of the champion's value (through logs)
    rather than in points; used for perplexity, which has no fixed scale.
    `value(rows, draws)`: the metric over each row of `draws` (an array of row indices, one
    resample a row) from the report's per-row values (`EvalReport.row_values`).
    """

    name: str
    higher_is_better: bool
    relative: bool
    value: Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray] | None = None

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def delta_points(self, candidate: np.ndarray | float, champion: np.ndarray | float) -> np.ndarray | float:
        """Candidate against champion in points, positive when the candidate is better.

        Absolute metrics (0 to 1): 100 x the difference. Relative ones: 100 x the log ratio, about
        the percent by which the candidate is better (perplexity 10 against 11 is +9.5).
        """
        if self.relative:
            better = np.log(champion) - np.log(candidate) if not self.higher_is_better else np.log(candidate) - np.log(champion)
            return 100 * better
        return 100 * (candidate - champion) if self.higher_is_better else 100 * (champion - candidate)


def _mean_of(key: str) -> Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]:
    return lambda rows, draws: rows[key][draws].mean(axis=-1)


def _perplexity(rows: dict[str, np.ndarray], draws: np.ndarray) -> np.ndarray:
    """exp(summed negative log-likelihood / summed tokens) of the responses: per token, not per row."""
    return np.exp(rows["nll"][draws].sum(axis=-1) / np.maximum(rows["tokens"][draws].sum(axis=-1), 1))


@dataclass(frozen=True)
class Task:
    """One entry of the registry.

    Attributes:
        name: model.task.
        model_class: the transformers auto class that loads a base for it.
        peft_type: peft's task type.
        columns: the default names of the input and target columns in a data file.
        roles: what the input and target are called in messages.
        metrics: every held-out metric, in report order.
        gated: the metrics the gate checks by default (gate.metrics unset).
        headline: the metric reported with a decision by default (gate.metric unset).
        generative: the target is text the model writes (evaluated by generating it).
        archs: the architectures that have the model class, for the refusal message.
    """

    name: str
    model_class: str
    peft_type: str
    columns: tuple[str, str]
    roles: tuple[str, str]
    metrics: tuple[Metric, ...]
    gated: tuple[str, ...]
    headline: str
    generative: bool
    archs: str

    def metric(self, name: str) -> Metric:
        """The metric of that name.

        Raises:
            KeyError: naming the task's metrics.
        """
        found = [m for m in self.metrics if m.name == name]
        if not found:
            raise KeyError(f"{name!r} is not a metric of {self.name} ({', '.join(self.metric_names)})")
        return found[0]

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def auto_class(self) -> Any:
        import transformers

        return getattr(transformers, self.model_class)


REGISTRY: dict[str, Task] = {t.name: t for t in (
    Task("sequence_classification", "AutoModelForSequenceClassification", "SEQ_CLS", ("text", "label"),
         ("text", "label"), (Metric("macro_f1", True, False), Metric("accuracy", True, False)),
         ("accuracy", "macro_f1"), "macro_f1", False, "encoders (BERT, RoBERTa) and most decoders"),
    Task("seq2seq", "AutoModelForSeq2SeqLM", "SEQ_2_SEQ_LM", ("source", "target"), ("source", "target"),
         (Metric("rougeL", True, False, _mean_of("rougeL")), Metric("rouge1", True, False, _mean_of("rouge1")),
          Metric("rouge2", True, False, _mean_of("rouge2"))),
         ("rougeL",), "rougeL", True, "encoder-decoder models (T5, BART, Pegasus)"),
    Task("causal_lm", "AutoModelForCausalLM", "CAUSAL_LM", ("prompt", "response"), ("prompt", "response"),
         (Metric("perplexity", False, True, _perplexity), Metric("rougeL", True, False, _mean_of("rougeL"))),
         ("perplexity", "rougeL"), "perplexity", True, "decoders (LLaMA, GPT-2, Mistral)"),
)}
NAMES = tuple(REGISTRY)


def get(name: str) -> Task:
    """The registry entry of a task name (the config admits only NAMES).

    Raises:
        ConfigError: for a name this tuneloop does not know (metadata written by a newer one).
    """
    if name not in REGISTRY:
        from tuneloop.errors import ConfigError

        raise ConfigError(f"unknown task {name!r}; this tuneloop knows {', '.join(NAMES)}")
    return REGISTRY[name]


def require_labels(name: str, command: str) -> None:
    """Refuse a generative task where only labels are handled yet (serving, the traffic log, monitoring).

    Raises:
        ConfigError: naming the command, the task and what to use instead.
    """
    from tuneloop.errors import ConfigError

    if get(name).generative:
        raise ConfigError(
            f"{command} handles sequence_classification models (labels), and model.task is {name}: serving, logging "
            "and monitoring generated text are not built yet; try a version's outputs with `tuneloop predict`"
        )


def end_token(tokenizer: Any) -> int:
    """The id that ends a target: the tokenizer's end-of-sequence token, or its separator (BERT-style)."""
    found = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if found is None:
        raise ValueError("the tokenizer has neither an end-of-sequence nor a separator token to end a target with")
    return found


def pad_token(tokenizer: Any) -> int:
    """The padding id: the tokenizer's own, else its end token (decoders often have no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_token(tokenizer)


def target_ids(tokenizer: Any, texts: list[str], limit: int) -> list[list[int]]:
    """Token ids of each response: its own tokens (no special ones), then the end token, at most `limit`."""
    end = end_token(tokenizer)
    return [ids[:limit - 1] + [end] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def decoder_labels(tokenizer: Any, texts: list[str], limit: int) -> list[list[int]]:
    """Token ids of each seq2seq target as the tokenizer builds a target (BART's <s> ... </s>, T5's ... </s>),
    at most `limit`, always ending in the end token."""
    end = end_token(tokenizer)
    found = tokenizer(text_target=texts, truncation=True, max_length=limit)["input_ids"] if texts else []
    return [ids if ids and ids[-1] == end else ids[:limit - 1] + [end] for ids in found]


def target_lengths(task: Task, tokenizer: Any, texts: list[str]) -> list[int]:
    """Each target's length in label tokens, uncut (what generation.max_new_tokens must hold)."""
    if not texts:
        return []
    end = end_token(tokenizer)
    if task.name == "seq2seq":
        return [len(ids) + (ids[-1:] != [end]) for ids in tokenizer(text_target=texts)["input_ids"]]
    return [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def causal_rows(tokenizer: Any, prompts: list[str], responses: list[str] | None, max_length: int,
                max_new_tokens: int) -> list[tuple[list[int], int]]:
    """Each row's tokens (prompt, then the response when given) and its prompt's length.

    The response keeps at most max_new_tokens tokens (end token included) and the prompt the last
    max_length - that many, so every row fits max_length and its response is never cut away.
    """
    prompt_ids = tokenizer(prompts)["input_ids"]
    answers = target_ids(tokenizer, responses, max_new_tokens) if responses is not None else [[] for _ in prompts]
    rows = []
    for prompt, answer in zip(prompt_ids, answers):
        room = max_length - len(answer) if responses is not None else max_length
        prompt = prompt[-room:] if room > 0 else prompt[-1:]
        rows.append((prompt + answer, len(prompt)))
    return rows


def pad_rows(sequences: list[list[int]], value: int, left: bool = False) -> Any:
    import torch

    width = max(len(s) for s in sequences)
    padded = [([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in sequences]
    return torch.tensor(padded, dtype=torch.long)


def encode(tokenizer: Any, texts: list[str], max_length: int) -> dict:
    """An encoder's input ids and attention mask (a BERT-style tokenizer's token types are left out:
    a seq2seq model takes none)."""
    found = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": found["input_ids"], "attention_mask": found["attention_mask"]}


def collate(task: Task, tokenizer: Any, inputs: list[str], targets: list[Any], max_length: int,
            max_new_tokens: int) -> dict:
    """One training (or teacher-forced scoring) batch: inputs, attention mask and labels.

    Args:
        task: the task entry.
        tokenizer: the base's tokenizer.
        inputs: texts, sources or prompts.
        targets: label ids (classification), targets or responses.
        max_length: model.max_length.
        max_new_tokens: generation.max_new_tokens (the longest target a generative task learns).
    """
    import torch

    if task.name == "sequence_classification":
        batch = dict(tokenizer(inputs, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        batch["labels"] = torch.tensor(targets)
        return batch
    if task.name == "seq2seq":
        batch = encode(tokenizer, inputs, max_length)
        batch["labels"] = pad_rows(decoder_labels(tokenizer, targets, max_new_tokens), IGNORE)
        return batch
    rows = causal_rows(tokenizer, inputs, targets, max_length, max_new_tokens)
    ids = [row for row, _ in rows]
    labels = [[IGNORE] * prompt + row[prompt:] for row, prompt in rows]
    return {"input_ids": pad_rows(ids, pad_token(tokenizer)), "attention_mask": pad_rows([[1] * len(r) for r in ids], 0),
            "labels": pad_rows(labels, IGNORE)}


def lengths(task: Task, tokenizer: Any, inputs: list[str], targets: list[Any], max_length: int,
            max_new_tokens: int) -> list[int]:
    """Each row's tokens as `collate` builds it (input and target together for seq2seq), for length grouping."""
    if task.name == "causal_lm":
        return [len(row) for row, _ in causal_rows(tokenizer, inputs, targets, max_length, max_new_tokens)]
    sizes = [len(ids) for ids in tokenizer(inputs, truncation=True, max_length=max_length)["input_ids"]]
    if task.name == "seq2seq":
        sizes = [n + len(ids) for n, ids in zip(sizes, decoder_labels(tokenizer, targets, max_new_tokens))]
    return sizes


def target_logits(task: Task, logits: Any, labels: Any) -> tuple[Any, Any]:
    """Logits and labels aligned position by position over the target tokens (IGNORE elsewhere).

    A prompt-learning method prepends virtual tokens to a decoder's positions, so the last
    labels.shape[1] logits are the ones that belong to the labels; a decoder predicts the next
    token, so its logits are shifted by one.
    """
    logits = logits[:, -labels.shape[1]:]
    if task.name == "causal_lm":
        return logits[:, :-1], labels[:, 1:]
    return logits, labels


def token_nll(task: Task, logits: Any, labels: Any) -> tuple[Any, Any]:
    """Each row's summed negative log-likelihood of its target tokens, and their count."""
    import torch

    logits, labels = target_logits(task, logits.float(), labels)
    mask = labels != IGNORE
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.clamp(min=0).reshape(-1), reduction="none",
    ).reshape(labels.shape)
    return (losses * mask).sum(-1), mask.sum(-1)


def dev_correct(task: Task, logits: Any, labels: Any) -> tuple[int, int]:
    """Right predictions and their count on a dev batch: rows for a classifier, target tokens otherwise."""
    if not task.generative:
        return int((logits.argmax(-1) == labels).sum()), len(labels)
    logits, labels = target_logits(task, logits, labels)
    mask = labels != IGNORE
    return int(((logits.argmax(-1) == labels) & mask).sum()), int(mask.sum())


def perplexity(nll: float, tokens: int) -> float:
    """exp(nll / tokens), the per-token perplexity of a summed negative log-likelihood."""
    return math.exp(nll / max(tokens, 1))
