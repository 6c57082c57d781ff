"""A finished training run, and the per-step records the recipe keeps."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from multikpi.artifacts.metrics import RunMetrics
from multikpi.config.schema import RunConfig
from multikpi.data.encoders import FeatureEncoder
from multikpi.losses.combine import LossCombiner
from multikpi.models.multitask import MultiTaskModel
from multikpi.optim.build import OptimizerSet


@dataclass
class Run:
    """A finished training run: where it was written and what it produced. Predict with it through
    `multikpi.Predictor.load(run.run_dir)`, or in memory with `multikpi.api.predictor_of(run)`."""

    run_dir: Path
    config: RunConfig
    encoder: FeatureEncoder
    model: MultiTaskModel
    combiner: nn.Module
    metrics: RunMetrics
    history: list[dict[str, Any]] = field(repr=False)
    version: str = ""  # the manifest's sha256
    calibration: dict[str, Any] | None = field(default=None, repr=False)  # the calibration.json payload


def step_record(step: int, epoch: int, losses: dict[str, torch.Tensor], total: torch.Tensor,
                combiner: LossCombiner, optimizers: OptimizerSet,
                gates: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """One line of history.jsonl: raw per-task losses, the combined loss, effective weights, lrs,
    and for mmoe/ple `gates`: task -> the batch-mean gate weight of each expert (`gate_usage()`)."""
    record: dict[str, Any] = {
        "step": step,
        "epoch": epoch,
        "losses": {t: float(v.detach()) for t, v in losses.items()},
        "total": float(total.detach()),
        "weights": combiner.weights(),
        "lr": optimizers.learning_rates(),
    }
    if gates:
        record["gates"] = gates
    return record


def mean_gate_usage(history: list[dict[str, Any]], last_steps: int) -> dict[str, list[float]]:
    """task -> mean over the last `last_steps` history records of the batch-mean gate weights
    ({} when the records have no gates: architectures without gates)."""
    records = [r["gates"] for r in history[-last_steps:] if "gates" in r]
    if not records:
        return {}
    return {task: np.mean([r[task] for r in records], axis=0).tolist() for task in records[-1]}
