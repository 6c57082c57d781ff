"""Per-task losses over the rows that carry a label.

A NaN label means "no label": the row adds nothing to that task's loss. A task's loss is the
(weighted) mean over its labelled rows in the batch; a task with no labelled row in the batch is
left out of the returned dict, so that neither its head nor its loss weight receives a gradient
from this batch.

Per-row losses, with z the model output (B,) and y the encoded label (B,):

    binary      BCE with logits                   log(1 + e^z) − y·z
    regression  squared error on the standardized target (z − y)²
    poisson     Poisson NLL, log link, μ = e^z     μ − y·z              (constant log y! dropped)
    tweedie     Tweedie NLL, log link, 1 < p < 2   −y·e^{z(1−p)}/(1−p) + e^{z(2−p)}/(2−p)
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F


def _bce(outputs: torch.Tensor, target: torch.Tensor, power: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs, target, reduction="none")


def _squared(outputs: torch.Tensor, target: torch.Tensor, power: float) -> torch.Tensor:
    return (outputs - target).square()


def _poisson(outputs: torch.Tensor, target: torch.Tensor, power: float) -> torch.Tensor:
    return torch.exp(outputs) - target * outputs


def _tweedie(outputs: torch.Tensor, target: torch.Tensor, power: float) -> torch.Tensor:
    return -target * torch.exp(outputs * (1 - power)) / (1 - power) + torch.exp(outputs * (2 - power)) / (2 - power)


# loss kind -> per-row loss (outputs, target, tweedie power) -> (B,)
PER_ROW: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "binary": _bce,
    "regression": _squared,
    "poisson": _poisson,
    "tweedie": _tweedie,
}


def task_losses(outputs: dict[str, torch.Tensor], labels: torch.Tensor, kinds: Mapping[str, str],
                weights: torch.Tensor | None = None,
                tweedie_power: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """outputs: task -> (B,) model outputs (logits; standardized values; log means).
    labels: (B, T) float32 with tasks in the order of `kinds`; NaN = no label.
    kinds: task -> a key of PER_ROW; weights: (B,) sample weights or None.

    Returns task -> scalar loss, the weighted mean over the labelled rows. Tasks without a labelled
    row (or whose labelled rows all weigh 0) are absent."""
    losses = {}
    for column, (task, kind) in enumerate(kinds.items()):
        target = labels[:, column]
        labelled = ~torch.isnan(target)
        if not bool(labelled.any()):
            continue
        weight = labelled.to(target.dtype) if weights is None else torch.where(labelled, weights, 0.0)
        total_weight = weight.sum()
        if float(total_weight) <= 0:
            continue
        target = torch.where(labelled, target, torch.zeros_like(target))
        power = (tweedie_power or {}).get(task, 1.5)
        per_row = PER_ROW[kind](outputs[task], target, power)
        losses[task] = (per_row * weight).sum() / total_weight
    return losses


def task_loss_sums(outputs: dict[str, torch.Tensor], labels: torch.Tensor, kinds: Mapping[str, str],
                   weights: torch.Tensor | None = None,
                   tweedie_power: Mapping[str, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The parts of `task_losses` before the division, for every task (also unlabelled ones):
    ((T,) Σ_i w_i·loss_i over the labelled rows, differentiable; (T,) Σ_i w_i over them). A batch
    of 0 rows gives zeros that are still connected to the outputs, so that every process of a
    distributed step back-propagates through the same parameters (training/distributed.py)."""
    sums, totals = [], []
    for column, (task, kind) in enumerate(kinds.items()):
        target = labels[:, column]
        labelled = ~torch.isnan(target)
        weight = labelled.to(target.dtype) if weights is None else torch.where(labelled, weights, 0.0)
        target = torch.where(labelled, target, torch.zeros_like(target))
        per_row = PER_ROW[kind](outputs[task], target, (tweedie_power or {}).get(task, 1.5))
        sums.append((per_row * weight).sum())
        totals.append(weight.sum())
    return torch.stack(sums), torch.stack(totals).detach()
