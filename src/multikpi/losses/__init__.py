"""Losses: masked per-task losses and the combiners that turn them into one scalar."""
from multikpi.losses.combine import (
    COMBINERS,
    DynamicWeightAverage,
    GradNorm,
    SumLoss,
    UncertaintyWeighting,
    WeightedLoss,
    build_combiner,
)
from multikpi.losses.task_losses import task_losses

__all__ = ["COMBINERS", "DynamicWeightAverage", "GradNorm", "SumLoss", "UncertaintyWeighting", "WeightedLoss",
           "build_combiner", "task_losses"]
