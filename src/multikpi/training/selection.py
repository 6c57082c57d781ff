"""Choosing the training length: evaluate on the valid split, keep the best weights, stop when they
stop improving (early stopping), and say which evaluation was kept.

The default monitor is scale-free, so that tasks of any kind and scale count alike: the mean over
tasks of `relative_loss`, each task's valid deviance over that of the constant predictor training
starts from (`eval.accumulators.DevianceAccumulator`). 1.0 means "no better than the base rate or
the mean"; lower is better. `train.monitor: valid.<task>.<metric>` monitors one metric instead,
in its own direction (higher AUC, lower RMSE, ...).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

MetricsTable = dict[str, dict[str, float]]  # task -> metric -> value


def monitor_value(metrics: MetricsTable, monitor: tuple[str, str, int] | None) -> float:
    """The monitored value, oriented so that higher is better (NaN when it cannot be computed)."""
    if monitor is None:
        values = [m["relative_loss"] for m in metrics.values() if math.isfinite(m.get("relative_loss", math.nan))]
        return -sum(values) / len(values) if values else math.nan
    task, metric, direction = monitor
    return direction * metrics.get(task, {}).get(metric, math.nan)


def monitor_name(monitor: tuple[str, str, int] | None) -> str:
    if monitor is None:
        return "mean over tasks of valid relative_loss (lower is better)"
    task, metric, direction = monitor
    return f"valid.{task}.{metric} ({'higher' if direction > 0 else 'lower'} is better)"


@dataclass
class Selection:
    """The best evaluation so far, its weights, and each task's own best evaluation.

    `best_state`: the model's and combiner's state dicts at the best evaluation (CPU copies)."""

    monitor: tuple[str, str, int] | None
    patience: int
    best_value: float = -math.inf
    best_epoch: int = 0
    best_step: int = 0
    evaluations: int = 0
    since_best: int = 0
    task_best: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> {value, epoch, step}
    best_state: dict[str, Any] | None = None

    def update(self, metrics: MetricsTable, epoch: int, step: int, modules: dict[str, torch.nn.Module]) -> bool:
        """Record one evaluation; keep a copy of `modules`' state when it is the best. Returns
        whether it improved on the best so far."""
        self.evaluations += 1
        for task, values in metrics.items():
            own = -values.get("relative_loss", math.nan)
            best = self.task_best.get(task)
            if math.isfinite(own) and (best is None or own > best["value"]):
                self.task_best[task] = {"value": own, "epoch": epoch, "step": step}
        value = monitor_value(metrics, self.monitor)
        improved = math.isfinite(value) and value > self.best_value
        if improved or self.best_state is None:
            self.best_value = value if math.isfinite(value) else self.best_value
            self.best_epoch, self.best_step = epoch, step
            self.best_state = {name: copy.deepcopy(m.state_dict()) for name, m in modules.items()}
        self.since_best = 0 if improved else self.since_best + 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.since_best >= self.patience

    def restore(self, modules: dict[str, torch.nn.Module]) -> None:
        """Load the best state back into `modules`."""
        if self.best_state is not None:
            for name, module in modules.items():
                module.load_state_dict(self.best_state[name])

    def summary(self) -> dict[str, Any]:
        """The `selection` section of metrics.json."""
        value = self.best_value if self.monitor is not None and self.monitor[2] > 0 else -self.best_value
        return {"monitor": monitor_name(self.monitor), "value": value, "epoch": self.best_epoch,
                "step": self.best_step, "evaluations": self.evaluations,
                "per_task_best_epoch": {t: int(b["epoch"]) for t, b in self.task_best.items()},
                "per_task_best_step": {t: int(b["step"]) for t, b in self.task_best.items()}}

    def state_dict(self) -> dict[str, Any]:
        """Everything but the monitor and patience, for a checkpoint."""
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "best_step": self.best_step,
                "evaluations": self.evaluations, "since_best": self.since_best, "task_best": self.task_best,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_epoch = float(state["best_value"]), int(state["best_epoch"])
        self.best_step, self.evaluations = int(state["best_step"]), int(state["evaluations"])
        self.since_best, self.task_best = int(state["since_best"]), dict(state["task_best"])
        self.best_state = state["best_state"]


def auto_batch_size(rows: int) -> int:
    """`train.batch_size: auto`: a power of two near rows / 100, within [256, 4096], so that small
    data gets enough optimizer steps per epoch and large data keeps the fast large batches."""
    target = max(rows / 100.0, 1.0)
    return int(min(4096, max(256, 2 ** round(math.log2(target)))))
