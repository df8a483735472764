"""Turning texts into model inputs: batches padded to their own longest text."""

from __future__ import annotations

from typing import Any, Iterator


def batches(tokenizer: Any, texts: list[str], label_ids: list[int] | None, size: int, max_length: int) -> Iterator[dict]:
    """Yield tokenized batches, padded to the longest text in each batch (not to max_length)."""
    import torch

    for start in range(0, len(texts), size):
        batch = tokenizer(texts[start:start + size], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        if label_ids is not None:
            batch["labels"] = torch.tensor(label_ids[start:start + size])
        yield batch
