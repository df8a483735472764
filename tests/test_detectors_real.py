"""The divergence detector on the real MiniLM: LoRA at 100x its usual learning rate explodes its
gradients, is stopped, and trains through at a fifth of that rate; the gate then refuses it.

emotion (../shared/data/emotion), 1,500 rows of its train file after a seeded shuffle. LoRA's usual
rate is 1e-3; at 0.1 the median pre-clip gradient norm of steps 11-20 was 6.7 against 0.58 for
steps 1-10 (11.6x, over train.grad_divergence_factor 10), while at 0.02 it stayed within 1.2x of
the first steps' for the whole run.
"""

from __future__ import annotations

import random
from collections import Counter

import pandas as pd
import pytest

from tests.conftest import emotion_rows
from tuneloop import evaluation, gate, training
from tuneloop.config import parse_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_a_learning_rate_100x_too_high_diverges_then_the_retry_at_a_fifth_trains(tmp_path):
    counts = Counter(text for text, _ in emotion_rows("train"))
    rows = [row for row in emotion_rows("train") if counts[row[0]] == 1]
    random.Random(0).shuffle(rows)
    cfg = parse_config({"model": {"max_length": 64}, "method": {"name": "lora"},
                        "train": {"epochs": 3, "batch_size": 32, "learning_rate": 0.1, "log_every": 10}})
    result = training.train(pd.DataFrame(rows[:1500], columns=["text", "label"]), cfg, tmp_path / "run")

    divergence = result.findings[0]
    assert (divergence["kind"], divergence["step"]) == ("divergence", 20)
    assert divergence["message"].startswith("training diverged by step 20: the median gradient norm of the last 10 steps")
    assert divergence["message"].endswith("; retried from the start at learning rate 0.02, a fifth of 0.1")
    assert result.learning_rate == pytest.approx(0.02)
    assert result.steps == len(result.grad_norms) and result.epochs_run >= 2  # the retry trained on, epoch by epoch

    perfect = evaluation.score(["a", "b"] * 10, ["a", "b"] * 10, ["a", "b"])
    decision = gate.decide(perfect, None, cfg.gate, result.findings)  # the default gate refuses a diverged run
    assert (decision.passed, decision.reasons[0].split(":")[0]) == (False, "training finding (divergence, in gate.refuse_findings)")
