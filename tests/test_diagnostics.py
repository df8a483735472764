"""The failure-mode detectors as pure functions, on hand-made curves, norms and adapter factors."""

from __future__ import annotations

import math

import pytest
import torch

from tuneloop import diagnostics


def test_row_hash_names_a_row_by_its_content():
    assert diagnostics.row_hash("my card was charged twice", "billing") == diagnostics.row_hash("my card was charged twice", "billing")
    assert diagnostics.row_hash("my card was charged twice", "billing") != diagnostics.row_hash("my card was charged twice", "bug")
    assert len(diagnostics.row_hash("x", "y")) == 16


def test_nonfinite_names_the_step_and_the_rows():
    assert diagnostics.nonfinite(3, 0.7, 1.2, ["a"]) is None
    found = diagnostics.nonfinite(7, math.nan, 2.0, ["aaaa", "bbbb"])
    assert found.kind == "nonfinite" and found.step == 7
    assert found.message == ("non-finite loss at step 7 (loss nan, gradient norm 2.0) on rows aaaa, bbbb; "
                             "inspect or drop those rows, or lower train.learning_rate")
    assert "on rows aaaa (of the step's 16);" in diagnostics.nonfinite(7, math.nan, 2.0, ["aaaa"], 16).message
    both = diagnostics.nonfinite(2, math.inf, math.nan, [f"r{i}" for i in range(10)])
    assert both.message.startswith("non-finite loss and gradient norm at step 2")
    assert "r7 and 2 more;" in both.message
    assert diagnostics.nonfinite(2, 0.5, None, ["a"]) is None  # no norm measured (fp16's scaler handles its own)


def test_divergence_on_a_rising_loss_or_an_exploding_gradient():
    flat = [1.0] * 20
    assert diagnostics.diverged(flat, [0.5] * 20, 3.0, 10.0) is None
    assert diagnostics.diverged([1.0] * 19, [0.5] * 19, 3.0, 10.0) is None  # two windows needed
    rising = [1.0] * 10 + [3.5] * 10
    found = diagnostics.diverged(rising, [0.5] * 20, 3.0, 10.0)
    assert found.kind == "divergence" and found.step == 20
    assert found.message == ("training diverged by step 20: the loss of the last 10 steps (3.5) is over 3x that of the "
                             "first 10 (1); lower train.learning_rate")
    exploding = [0.5] * 10 + [6.0] * 10
    found = diagnostics.diverged(flat, exploding, 3.0, 10.0)
    assert found.details == {"first_grad_norm": 0.5, "last_grad_norm": 6.0}
    assert "median gradient norm of the last 10 steps (6) is over 10x that of the first 10 (0.5)" in found.message
    assert diagnostics.diverged(rising, exploding, 0.0, 0.0) is None  # both disabled


def test_grad_spikes_against_the_running_median():
    norms = [1.0, 1.1, 0.9, 1.0, 1.0, 1.2, 25.0, 1.0, 0.8, math.inf]
    spikes = diagnostics.grad_spikes(norms, 10.0)
    assert [s.step for s in spikes] == [7]  # the inf of fp16's skipped step is not a spike
    assert spikes[0].details == {"grad_norm": 25.0, "median": 1.0}
    assert diagnostics.grad_spikes([9.0] * 4 + [100.0], 10.0) == []  # too few norms before it
    assert diagnostics.grad_spikes(norms, 0.0) == []


def evals(*pairs):
    return [{"step": 10 * (i + 1), "train_loss": t, "dev_loss": d} for i, (t, d) in enumerate(pairs)]


def test_overfitting_needs_train_falling_and_dev_rising_n_times_in_a_row():
    assert diagnostics.overfitting(evals((1.0, 1.0), (0.8, 1.1), (0.6, 1.2)), 3) is None  # only 2 in a row
    found = diagnostics.overfitting(evals((1.0, 1.0), (0.8, 1.1), (0.6, 1.2), (0.4, 1.3)), 3)
    assert found.kind == "overfitting" and found.step == 40
    assert found.message.startswith("overfitting at step 40: over the last 3 evaluations train loss fell 1 -> 0.4 while "
                                    "dev loss rose 1 -> 1.3; stopped on the best checkpoint")
    assert found.details == {"train_gap": pytest.approx(0.9)}
    # dev loss flat once: not overfitting
    assert diagnostics.overfitting(evals((1.0, 1.0), (0.8, 1.1), (0.6, 1.1), (0.4, 1.3)), 3) is None
    assert diagnostics.overfitting(evals((1.0, 1.0), (0.8, 1.1), (0.6, 1.2), (0.4, 1.3)), 0) is None


class _Lora(torch.nn.Module):
    """A module shaped like peft's LoRA layer: lora_A / lora_B per adapter name, and a scaling."""

    def __init__(self, b: torch.Tensor, a: torch.Tensor, scaling: float):
        super().__init__()
        self.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(a.shape[1], a.shape[0], bias=False)})
        self.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(b.shape[1], b.shape[0], bias=False)})
        self.lora_A["default"].weight.data, self.lora_B["default"].weight.data = a, b
        self.scaling = {"default": scaling}


def test_spectra_equal_the_singular_values_of_the_dense_update():
    torch.manual_seed(0)
    b, a = torch.randn(48, 8), torch.randn(8, 40)
    model = torch.nn.Sequential(_Lora(b, a, 2.0))
    found = diagnostics.spectra(model)
    dense = torch.linalg.svdvals(2.0 * b @ a)
    assert list(found) == ["0"] and found["0"]["rank"] == 8
    assert found["0"]["values"] == pytest.approx(dense[:8].tolist(), rel=1e-4)


def test_rank_health_flags_most_modules_collapsed_at_rank_8():
    torch.manual_seed(0)
    healthy = _Lora(torch.randn(32, 8), torch.randn(8, 32), 1.0)
    u, v = torch.randn(32, 1), torch.randn(1, 32)
    collapsed = [_Lora(u.repeat(1, 8) + 1e-4 * torch.randn(32, 8), torch.cat([v] * 8) + 1e-4 * torch.randn(8, 32), 1.0)
                 for _ in range(2)]
    health, finding = diagnostics.rank_health(diagnostics.spectra(torch.nn.Sequential(healthy, *collapsed)), 0.05)
    assert {name: h["meaningful"] for name, h in health.items()} == {"0": 8, "1": 1, "2": 1}
    assert health["1"]["effective_rank"] < 1.01
    assert finding.message == ("rank collapse: 2 of 3 adapted modules keep <= 2 singular values of at least 0.05x their "
                               "largest (rank 8); lower train.weight_decay or method.r, or raise train.learning_rate")
    _, none = diagnostics.rank_health(diagnostics.spectra(torch.nn.Sequential(healthy, collapsed[0])), 0.05)
    assert none is None  # one of two is not most


def test_rank_health_skips_low_ranks_and_counts_a_zero_update_as_none():
    low = _Lora(torch.randn(16, 4), torch.randn(4, 16), 1.0)
    zero = _Lora(torch.zeros(16, 8), torch.randn(8, 16), 1.0)
    health, finding = diagnostics.rank_health(diagnostics.spectra(torch.nn.Sequential(low, zero)), 0.05)
    assert health["1"] == {"rank": 8, "meaningful": 0, "effective_rank": 0.0}
    assert finding is not None and finding.details == {"collapsed": 1, "modules": 1}  # the rank-4 module is not judged
    assert diagnostics.effective_rank([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0)
