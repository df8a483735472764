"""Generative tasks at evaluation time: write outputs, and score them against the references.

ROUGE-1/2/L are the F-measures of the `rouge-score` package (its tokenizer lowercases and keeps
letters and digits; Porter stemming on), one figure per held-out row; a set's ROUGE is the mean
of its rows. Perplexity is teacher-forced on the reference responses: each row's summed negative
log-likelihood of its response tokens and their count, so a set's perplexity is per token.
"""

from __future__ import annotations

from typing import Any

from tuneloop import tasks

ROUGE = ("rouge1", "rouge2", "rougeL")


def _inputs(task: tasks.Task, tokenizer: Any, texts: list[str], max_length: int, max_new_tokens: int) -> dict:
    """Encoder inputs (seq2seq), or left-padded prompts that leave room for max_new_tokens (causal_lm)."""
    if task.name == "seq2seq":
        return tasks.encode(tokenizer, texts, max_length)
    if max_length - max_new_tokens < 1:
        from tuneloop.errors import ConfigError

        raise ConfigError(f"generation.max_new_tokens {max_new_tokens} leaves no room for a prompt in the "
                          f"{max_length} tokens this model was trained with; lower generation.max_new_tokens")
    rows = [ids for ids, _ in tasks.causal_rows(tokenizer, texts, None, max_length - max_new_tokens, max_new_tokens)]
    pad = tasks.pad_token(tokenizer)
    return {"input_ids": tasks.pad_rows(rows, pad, left=True), "attention_mask": tasks.pad_rows([[1] * len(r) for r in rows], 0, left=True)}


def generate(model: Any, tokenizer: Any, task_name: str, texts: list[str], max_length: int, settings: Any,
             device: str, batch_size: int) -> list[str]:
    """Write an output for each text (a summary, a response), decoded without special tokens.

    Args:
        model: the loaded model (an adapter on its base, or a fully fine-tuned model).
        tokenizer: its tokenizer.
        task_name: model.task (seq2seq or causal_lm).
        texts: sources or prompts.
        max_length: model.max_length the model was trained with.
        settings: the generation section (max_new_tokens, num_beams, no_repeat_ngram_size).
        device: torch device string.
        batch_size: texts per generate call.
    """
    import torch

    task = tasks.get(task_name)
    outputs: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = {k: v.to(device) for k, v in _inputs(task, tokenizer, texts[start:start + batch_size], max_length,
                                                         settings.max_new_tokens).items()}
            written = model.generate(
                **batch, max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams,
                no_repeat_ngram_size=settings.no_repeat_ngram_size, do_sample=False,
                eos_token_id=tasks.end_token(tokenizer), pad_token_id=tasks.pad_token(tokenizer),
            )
            if task.name == "causal_lm":
                width = batch["input_ids"].shape[1]
                # a decoder returns the prompt and then its continuation; given embeddings only (as peft
                # gives for prompt tuning), it returns the continuation alone
                if written.shape[1] > width and torch.equal(written[:, :width], batch["input_ids"]):
                    written = written[:, width:]
            outputs.extend(text.strip() for text in tokenizer.batch_decode(written, skip_special_tokens=True))
    return outputs


def rouge_rows(references: list[str], outputs: list[str]) -> dict[str, list[float]]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of each output against its reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)
    rows: dict[str, list[float]] = {name: [] for name in ROUGE}
    for reference, output in zip(references, outputs):
        scores = scorer.score(reference, output)
        for name in ROUGE:
            rows[name].append(float(scores[name].fmeasure))
    return rows


def teacher_forced_logits(model: Any, task_name: str, batch: dict) -> Any:
    """The logits of a training batch's target positions, computed without handing the model its labels.

    A model given labels computes its own loss, and peft's AdaLoRA adds a regularizer to it that
    only a model loaded for training can compute; so a seq2seq decoder is fed its inputs (the
    labels shifted right, as in training) and a decoder the whole sequence, labels left out.
    """
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    if tasks.get(task_name).name == "seq2seq":
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        inputs["decoder_input_ids"] = base.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    return model(**inputs).logits


def response_nll(model: Any, tokenizer: Any, task_name: str, texts: list[str], references: list[str],
                 max_length: int, max_new_tokens: int, device: str, batch_size: int) -> tuple[list[float], list[int]]:
    """Each row's summed negative log-likelihood of its reference tokens (teacher-forced) and their count."""
    import torch

    task = tasks.get(task_name)
    nll: list[float] = []
    counts: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tasks.collate(task, tokenizer, texts[start:start + batch_size], references[start:start + batch_size],
                                  max_length, max_new_tokens)
            batch = {k: v.to(device) for k, v in batch.items()}
            sums, n = tasks.token_nll(task, teacher_forced_logits(model, task_name, batch), batch["labels"])
            nll.extend(float(x) for x in sums.tolist())
            counts.extend(int(x) for x in n.tolist())
    return nll, counts
