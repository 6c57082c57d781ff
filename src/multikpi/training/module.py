"""The training module: the model, the per-task losses and the combiner in one nn.Module that
returns the loss (torchrec's `DLRMTrain` pattern). The recipe, the benchmarks and the tests build it
with `build_training`; a DistributedDataParallel wrapper wraps it whole, learned loss weights included."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from multikpi.config.schema import RunConfig, TaskSpec
from multikpi.data.batches import Batch
from multikpi.data.encoders import FeatureEncoder
from multikpi.losses.combine import LossCombiner, build_combiner
from multikpi.losses.task_losses import task_losses
from multikpi.models.build import build_model
from multikpi.models.multitask import MultiTaskModel


@dataclass(frozen=True)
class StepOutput:
    """One forward pass: `total` (scalar to back-propagate; None when no task had a labelled row),
    `losses` task -> scalar raw loss (labelled tasks only), `outputs` task -> (B,) logits or
    standardized values."""

    total: torch.Tensor | None
    losses: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


# (outputs, labels, loss kinds, weights, tweedie powers) -> task -> loss; see training/distributed.py
LossReduction = Callable[[dict[str, torch.Tensor], torch.Tensor, Mapping[str, str], torch.Tensor | None,
                          Mapping[str, float]], dict[str, torch.Tensor]]


class TrainingModule(Protocol):
    """What train_step drives: MultiTaskTraining, or its DistributedDataParallel wrapper."""

    @property
    def model(self) -> MultiTaskModel: ...

    def __call__(self, batch: Batch) -> StepOutput: ...


class MultiTaskTraining(nn.Module):
    """model: outputs per task; combiner: per-task losses -> one scalar; loss_kinds: task -> binary |
    regression | poisson | tweedie (`losses.task_losses.PER_ROW`); tweedie_power: task -> p.

    forward(batch) -> StepOutput. Parameters: `model.*` and `combiner.*`. `loss_reduction`, when set
    (by training/distributed.py under DDP), replaces the per-batch task means by means over the
    global batch of every process."""

    def __init__(self, *, model: MultiTaskModel, combiner: nn.Module, loss_kinds: dict[str, str],
                 tweedie_power: dict[str, float] | None = None):
        super().__init__()
        self.model = model
        self.combiner = combiner
        self.loss_kinds = dict(loss_kinds)
        self.tweedie_power = dict(tweedie_power or {})
        self.loss_reduction: LossReduction | None = None

    @property
    def loss_combiner(self) -> LossCombiner:
        combiner: LossCombiner = self.combiner  # type: ignore[assignment]
        return combiner

    def forward(self, batch: Batch) -> StepOutput:
        outputs = self.model(batch)  # logits and output units are float32 whatever the autocast dtype
        if self.loss_reduction is not None:
            losses = self.loss_reduction(outputs, batch.labels, self.loss_kinds, batch.weights, self.tweedie_power)
        else:
            losses = task_losses(outputs, batch.labels, self.loss_kinds, batch.weights, self.tweedie_power)
        total = self.loss_combiner(losses) if losses else None
        return StepOutput(total, losses, outputs)


def build_training(config: RunConfig, encoder: FeatureEncoder) -> MultiTaskTraining:
    """The model `config` describes, sized by `encoder`, with its losses and combiner."""
    model = build_model(config.model, config.tasks, encoder)
    shared_weight = model.shared.last_shared_layer().weight
    assert isinstance(shared_weight, nn.Parameter)
    combiner = build_combiner(config, shared_weight)
    return MultiTaskTraining(model=model, combiner=combiner, loss_kinds=loss_kinds(config.tasks),
                             tweedie_power={t: s.tweedie_power for t, s in config.tasks.items() if s.loss == "tweedie"})


def loss_kinds(tasks: Mapping[str, TaskSpec]) -> dict[str, str]:
    """task -> its per-row loss: binary, regression (mse), poisson or tweedie."""
    return {t: s.kind if s.kind == "binary" or s.loss == "mse" else s.loss for t, s in tasks.items()}
