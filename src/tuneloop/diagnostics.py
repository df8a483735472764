"""Training's failure-mode detectors: pure functions over what the loop records, each returning a finding.

A finding is one line saying what was seen and what to do, with its kind, the step it concerns and
the figures behind it. The loop records a loss and a pre-clip global gradient norm per optimizer
step, a (train loss, dev loss) pair per dev evaluation, and, at the end, the singular values of each
LoRA-family module's update; these functions judge them against the train section's thresholds:

- non-finite loss or gradient (`nonfinite`), and divergence: the loss of the last DIVERGENCE_WINDOW
  steps above `train.divergence_factor` times that of the first ones, or their median gradient norm
  above `train.grad_divergence_factor` times (`diverged`);
- gradient spikes: a norm over `train.grad_spike_factor` times the median of the norms before it
  (`grad_spikes`);
- overfitting: train loss falling while dev loss rises for `train.overfit_evaluations` evaluations
  in a row (`overfitting`);
- rank collapse: most modules of a rank >= 8 adapter left with <= 2 meaningful singular values
  (`rank_health`; a value is meaningful at >= `train.rank_tolerance` of its module's largest).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

DIVERGENCE_WINDOW = 10  # optimizer steps averaged at the start and at the end of the loss curve
SPIKE_HISTORY = 50  # earlier norms whose median a step's norm is compared with
SPIKE_MIN_HISTORY = 5  # no spike is called before this many norms are known
COLLAPSED_VALUES, COLLAPSE_MIN_RANK = 2, 8  # "collapsed": <= 2 meaningful values, judged for r >= 8

# Methods whose update is scale · B · A (AdaLoRA: B · (E ⊙ A)). DoRA rescales it by a learned magnitude
# and LoftQ starts B · A at the base's quantization error, so their B · A is not the update learned.
RANK_METHODS = ("lora", "rslora", "adalora")
# The finding kinds; the gate refuses a candidate whose training produced one in `gate.refuse_findings`.
KINDS = ("nonfinite", "divergence", "grad_spike", "overfitting", "rank_collapse")


@dataclass(frozen=True)
class Finding:
    """What a detector saw: its kind, one line with the remedy, the step, and the figures behind it."""

    kind: str
    message: str
    step: int | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return a JSON-serializable form."""
        return asdict(self)


def row_hash(text: str, label: Any) -> str:
    """A short content hash of one training row (input and target), to name a row without quoting it."""
    return hashlib.sha256(f"{text}\x1f{label}".encode()).hexdigest()[:16]


def nonfinite(step: int, loss: float, grad_norm: float | None, rows: list[str], of: int | None = None) -> Finding | None:
    """A finding when the step's loss or gradient norm is NaN or infinite; `rows` are the hashes of the
    rows to blame (those whose loss alone is not finite, else all the step's), out of `of` in the step."""
    bad = [name for name, value in (("loss", loss), ("gradient norm", grad_norm))
           if value is not None and not math.isfinite(value)]
    if not bad:
        return None
    shown = ", ".join(rows[:8]) + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")
    among = f" (of the step's {of})" if of is not None and of != len(rows) else ""
    return Finding("nonfinite", f"non-finite {' and '.join(bad)} at step {step} (loss {loss}, gradient norm {grad_norm}) "
                                f"on rows {shown}{among}; inspect or drop those rows, or lower train.learning_rate",
                   step, {"loss": loss, "grad_norm": grad_norm, "rows": rows})


def diverged(curve: list[float], norms: list[float], factor: float, grad_factor: float) -> Finding | None:
    """A finding when the run diverges: the mean loss of the last DIVERGENCE_WINDOW steps exceeds `factor`
    times that of the first DIVERGENCE_WINDOW, or the median gradient norm of the last ones exceeds
    `grad_factor` times that of the first ones (an exploding gradient; Adam and clipping can keep the
    loss itself from rising). 0 disables either; both need two windows of steps."""
    step = len(curve)
    if factor and step >= 2 * DIVERGENCE_WINDOW:
        first, last = (sum(part) / DIVERGENCE_WINDOW for part in (curve[:DIVERGENCE_WINDOW], curve[-DIVERGENCE_WINDOW:]))
        if last > factor * first:
            return Finding("divergence", f"training diverged by step {step}: the loss of the last {DIVERGENCE_WINDOW} "
                                         f"steps ({last:.4g}) is over {factor:g}x that of the first {DIVERGENCE_WINDOW} "
                                         f"({first:.4g}); lower train.learning_rate", step,
                           {"first_loss": first, "last_loss": last})
    norms = [n for n in norms if n is not None and math.isfinite(n)]  # fp16's scaler skips inf-gradient steps
    if grad_factor and len(norms) >= 2 * DIVERGENCE_WINDOW:
        first, last = statistics.median(norms[:DIVERGENCE_WINDOW]), statistics.median(norms[-DIVERGENCE_WINDOW:])
        if last > grad_factor * first:
            return Finding("divergence", f"training diverged by step {step}: the median gradient norm of the last "
                                         f"{DIVERGENCE_WINDOW} steps ({last:.4g}) is over {grad_factor:g}x that of the "
                                         f"first {DIVERGENCE_WINDOW} ({first:.4g}); lower train.learning_rate", step,
                           {"first_grad_norm": first, "last_grad_norm": last})
    return None


def grad_spikes(norms: list[float], factor: float) -> list[Finding]:
    """One finding per step whose gradient norm exceeds `factor` times the median of the SPIKE_HISTORY
    norms before it (0 disables). Steps count from 1."""
    if not factor:
        return []
    found = []
    for index in range(SPIKE_MIN_HISTORY, len(norms)):
        # an infinite norm is fp16's scaler skipping a step (a non-finite one otherwise stops the run first)
        history = [n for n in norms[max(0, index - SPIKE_HISTORY):index] if math.isfinite(n)]
        if len(history) < SPIKE_MIN_HISTORY or not math.isfinite(norms[index]):
            continue
        median = statistics.median(history)
        if median > 0 and norms[index] > factor * median:
            found.append(Finding(
                "grad_spike", f"gradient norm spike at step {index + 1}: {norms[index]:.4g}, {norms[index] / median:.1f}x "
                              f"the running median {median:.4g}; if the loss jumps with it, lower train.learning_rate or "
                              f"train.max_grad_norm, or look at that batch's rows", index + 1,
                {"grad_norm": norms[index], "median": median}))
    return found


def overfitting(evaluations: list[dict], count: int) -> Finding | None:
    """A finding when, over the last `count` evaluations, each one's train loss fell and its dev loss
    rose against the evaluation before (0 disables). An evaluation is {step, train_loss, dev_loss}."""
    if not count or len(evaluations) < count + 1:
        return None
    recent = evaluations[-(count + 1):]
    pairs = list(zip(recent, recent[1:]))
    if not all(b["train_loss"] < a["train_loss"] and b["dev_loss"] > a["dev_loss"] for a, b in pairs):
        return None
    start, end = recent[0], recent[-1]
    return Finding("overfitting", f"overfitting at step {end['step']}: over the last {count} evaluations train loss fell "
                                  f"{start['train_loss']:.4g} -> {end['train_loss']:.4g} while dev loss rose "
                                  f"{start['dev_loss']:.4g} -> {end['dev_loss']:.4g}; stopped on the best checkpoint. "
                                  f"Add rows, or train fewer parameters (fewer virtual tokens, a lower rank) or epochs",
                   end["step"], {"train_gap": end["dev_loss"] - end["train_loss"]})


def spectra(model: Any) -> dict[str, dict]:
    """The singular values of each LoRA-family module's update ΔW = scale · B · A, without forming ΔW.

    With B = Q_B R_B and Aᵀ = Q_A R_A (thin QR), ΔW = scale · Q_B (R_B R_Aᵀ) Q_Aᵀ, so its singular values
    are those of the r x r matrix scale · R_B R_Aᵀ. AdaLoRA's update is B · (E ⊙ A). Returns
    {module name: {rank, values}} for every adapted module (none for other methods).
    """
    import torch

    found = {}
    for name, module in model.named_modules():
        a_layers, b_layers = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not a_layers or not b_layers or not hasattr(a_layers, "keys"):
            continue
        for adapter in a_layers.keys():
            a = _weight(a_layers[adapter]).float()
            b = _weight(b_layers[adapter]).float()
            rank = int(a.shape[0])
            if getattr(module, "lora_E", None) and adapter in module.lora_E:  # AdaLoRA: B (E * A) / ranknum
                energy = module.lora_E[adapter].detach().float()
                a, rank = a * energy, int((energy != 0).sum())  # the rank its budget left, not the initial one
                scale = module.scaling[adapter] / (module.ranknum[adapter].item() + 1e-5)
            else:
                scale = module.scaling[adapter]
            if a.dim() != 2 or b.dim() != 2:  # a convolution's adapter: not a matrix product
                continue
            with torch.no_grad():
                _, r_b = torch.linalg.qr(b)
                _, r_a = torch.linalg.qr(a.T)
                values = torch.linalg.svdvals(scale * r_b @ r_a.T)
            found[name] = {"rank": rank, "values": [float(v) for v in values]}
    return found


def _weight(layer: Any) -> Any:
    """A LoRA factor's weight: an nn.Linear's, or the bare parameter AdaLoRA keeps."""
    return (layer.weight if hasattr(layer, "weight") else layer).detach()


def meaningful(values: Iterable[float], tolerance: float) -> int:
    """How many singular values reach `tolerance` times the largest (none when the update is zero)."""
    values = list(values)
    top = max(values, default=0.0)
    return sum(v >= tolerance * top for v in values) if top > 0 else 0


def effective_rank(values: Iterable[float]) -> float:
    """exp of the entropy of the normalized singular values (Roy and Vetterli): 1 for one direction,
    r for r equal ones, 0 for a zero update."""
    values = [v for v in values if v > 0]
    total = sum(values)
    if not total:
        return 0.0
    return math.exp(-sum(v / total * math.log(v / total) for v in values))


def rank_health(found: dict[str, dict], tolerance: float) -> tuple[dict[str, dict], Finding | None]:
    """Per module: its rank, meaningful values and effective rank; and a rank-collapse finding when more
    than half the modules of rank >= COLLAPSE_MIN_RANK keep <= COLLAPSED_VALUES meaningful values."""
    health = {name: {"rank": spec["rank"], "meaningful": meaningful(spec["values"], tolerance),
                     "effective_rank": round(effective_rank(spec["values"]), 3)} for name, spec in found.items()}
    judged = [name for name, h in health.items() if h["rank"] >= COLLAPSE_MIN_RANK]
    collapsed = [name for name in judged if health[name]["meaningful"] <= COLLAPSED_VALUES]
    if not judged or 2 * len(collapsed) <= len(judged):
        return health, None
    return health, Finding(
        "rank_collapse", f"rank collapse: {len(collapsed)} of {len(judged)} adapted modules keep <= {COLLAPSED_VALUES} "
                         f"singular values of at least {tolerance:g}x their largest (rank {health[judged[0]]['rank']}); "
                         f"lower train.weight_decay or method.r, or raise train.learning_rate",
        None, {"collapsed": len(collapsed), "modules": len(judged)})
