"""One optimizer step: forward through the training module, check the loss, backward, clip, step."""
from __future__ import annotations

import torch

from multikpi.data.batches import Batch
from multikpi.errors import TrainingError
from multikpi.optim.build import OptimizerSet
from multikpi.optim.sparse import clip_grad_norm
from multikpi.training.module import StepOutput, TrainingModule


def train_step(training: TrainingModule, optimizers: OptimizerSet, batch: Batch,
               precision: torch.dtype | None = None, grad_clip: float | None = None,
               step: int = 0) -> StepOutput | None:
    """Train on one batch (already on the module's device). Returns the step's losses, or None when
    no task has a labelled row in the batch: there is nothing to learn from it, so no step is taken.

    Raises TrainingError on a non-finite loss, before it can corrupt the weights (`step` is the
    number of steps taken so far, for the message)."""
    device_type = batch.labels.device.type
    with torch.autocast(device_type, dtype=precision, enabled=precision is not None):
        result = training(batch)
    if result.total is None:
        return None
    check_finite(result.losses, result.total, step)
    optimizers.zero_grad()
    result.total.backward()
    if grad_clip is not None:  # the global norm includes a row-sparse table's gradient rows
        clip_grad_norm(training.model.parameters(), training.model.embeddings, grad_clip)
    optimizers.step()
    return result


def check_finite(losses: dict[str, torch.Tensor], total: torch.Tensor, step: int) -> None:
    """Stop on a NaN or Inf loss, naming the task and the step."""
    if torch.isfinite(total):
        return
    bad = [task for task, loss in losses.items() if not torch.isfinite(loss)] or ["the combined loss"]
    raise TrainingError(f"non-finite loss at step {step + 1} in task(s) {bad}; "
                        f"lower the learning rate or check the labels of {bad}")
