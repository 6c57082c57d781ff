"""TensorBoard scalars of a run (`train.tensorboard: true`): the numbers of history.jsonl and
train_log.jsonl, written to event files in RUN_DIR/tensorboard with torch.utils.tensorboard's
SummaryWriter. View them with `tensorboard --logdir RUN_DIR/tensorboard`.

Tags, all on the global step (an epoch's scalars on the step that ended it):

    per step   loss/<task>               raw per-task loss (BCE-with-logits, or MSE on the standardized target)
               weighted_loss/<task>      the effective weight times the raw loss
               loss/total                the combined loss that was back-propagated
               weight/<task>             the combiner's effective weight of the task
               weight/<task>/<name>      its other quantities (uncertainty: sigma, log_var, exp_neg_s)
               lr/<group>                learning rate of each optimizer group
    per epoch  epoch/train_loss/<task>   mean raw loss over the epoch
               epoch/examples_per_second, epoch/seconds
               valid/<task>/<metric>     the valid metrics (auc, logloss, rmse, pearson, ...)

Disabled, every method does nothing. The writer is opened at the first logged step with
`purge_step` = that step, so a resumed run hides the steps it repeats from the interrupted one;
a fresh run first removes the event files an earlier run left in the same directory.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from multikpi.extras import import_extra

TENSORBOARD_DIR = "tensorboard"


class ScalarLog:
    """`log_step(record)` once per step (a history.jsonl record), `log_epoch(summary, step)` once per
    epoch (a train_log.jsonl record), `close()` at the end."""

    def __init__(self, log_dir: Path, enabled: bool, fresh: bool = True):
        self.log_dir = log_dir
        self.enabled = enabled
        self.fresh = fresh
        self._writer: Any = None
        if enabled:  # fail before training starts when the extra is missing
            import_extra("tensorboard", "train.tensorboard")

    def _open(self, first_step: int) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            if self.fresh:
                shutil.rmtree(self.log_dir, ignore_errors=True)
            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=first_step)
        return self._writer

    def log_step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        step = record["step"]
        writer = self._open(step)
        for task, loss in record["losses"].items():
            writer.add_scalar(f"loss/{task}", loss, step)
            weights = record["weights"].get(task, {})
            if "weight" in weights:
                writer.add_scalar(f"weighted_loss/{task}", weights["weight"] * loss, step)
        writer.add_scalar("loss/total", record["total"], step)
        for task, values in record["weights"].items():
            for name, value in values.items():
                writer.add_scalar(f"weight/{task}" if name == "weight" else f"weight/{task}/{name}", value, step)
        for group, lr in record["lr"].items():
            writer.add_scalar(f"lr/{group}", lr, step)

    def log_epoch(self, summary: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        writer = self._open(step)
        for task, loss in summary["train_loss"].items():
            writer.add_scalar(f"epoch/train_loss/{task}", loss, step)
        writer.add_scalar("epoch/examples_per_second", summary["examples_per_second"], step)
        writer.add_scalar("epoch/seconds", summary["seconds"], step)
        for task, metrics in summary.get("valid", {}).items():
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(f"valid/{task}/{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
