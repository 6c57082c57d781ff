"""Per-task losses over the rows that carry a label.

A NaN label means "no label": the row adds nothing to that task's loss. A task's loss is the mean
over its labelled rows in the batch; a task with no labelled row in the batch is left out of the
returned dict, so that neither its head nor its loss weight receives a gradient from this batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def task_losses(
    outputs: dict[str, torch.Tensor], labels: torch.Tensor, kinds: dict[str, str]
) -> dict[str, torch.Tensor]:
    """outputs: task -> (B,) logits (binary) or standardized values (regression).
    labels: (B, T) float32 with tasks in the order of `kinds`; NaN = no label.

    Returns task -> scalar loss: BCE-with-logits for binary tasks, MSE for regression tasks,
    each averaged over the labelled rows. Tasks without a labelled row are absent."""
    losses = {}
    for column, (task, kind) in enumerate(kinds.items()):
        target = labels[:, column]
        labelled = ~torch.isnan(target)
        count = int(labelled.sum())
        if count == 0:
            continue
        weight = labelled.to(target.dtype)
        target = torch.where(labelled, target, torch.zeros_like(target))
        if kind == "binary":
            per_row = F.binary_cross_entropy_with_logits(outputs[task], target, reduction="none")
        else:
            per_row = (outputs[task] - target).square()
        losses[task] = (per_row * weight).sum() / count
    return losses
