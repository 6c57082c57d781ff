"""The warnings a run records in metrics.json (and logs), one line each."""
from __future__ import annotations

from typing import Any

from multikpi.artifacts.metrics import RunMetrics
from multikpi.config.schema import RunConfig
from multikpi.data.diagnostics import nearly_unique_columns, oov_warnings, unlabelled_tasks
from multikpi.data.encoders import EncodedData, FeatureEncoder

STILL = 0.05  # a learned log-variance (or GradNorm weight) that moved less than this did not learn


def run_warnings(config: RunConfig, encoder: FeatureEncoder, splits: dict[str, EncodedData], metrics: RunMetrics,
                 history: list[dict[str, Any]], train_rows: int | None = None) -> list[str]:
    """One-class binary tasks, nearly unique columns, splits far out of vocabulary or without a
    labelled row for a task, loss weights that did not move. `train_rows`: the training rows when
    `splits["train"]` is a sample."""
    warnings = [f"task {task!r} has one class in train (every label is {int(stats.mean)}): it cannot learn to rank"
                for task, stats in encoder.labels.items() if stats.kind == "binary" and stats.mean in (0.0, 1.0)]
    warnings += nearly_unique_columns(encoder, train_rows if train_rows is not None else splits["train"].num_rows)
    for name in ("valid", "test"):
        if name in splits:
            warnings += oov_warnings(encoder, splits[name], name)
            warnings += [f"{name} split: no metrics for task {task!r}: {reason}"
                         for task, reason in unlabelled_tasks(encoder, splits[name], f"the {name} split").items()]
    warnings += _still_weights(config, history)
    return warnings


def _still_weights(config: RunConfig, history: list[dict[str, Any]]) -> list[str]:
    """Learned loss weights that ended where they started (uncertainty: log_var; gradnorm: weight)."""
    key = {"uncertainty": "log_var", "gradnorm": "weight"}.get(config.loss.combine)
    closed_form = config.loss.combine == "uncertainty" and config.loss.uncertainty.update == "closed_form"
    if key is None or closed_form or len(history) < 2:
        return []
    first, last = history[0]["weights"], history[-1]["weights"]
    moved = {t: abs(last[t][key] - first[t][key]) for t in first if t in last}
    if moved and max(moved.values()) < STILL:
        return [f"the learned loss weights did not move ({key} changed by at most {max(moved.values()):.3f} over "
                f"{len(history)} steps): raise optim.groups.loss.lr"]
    return []
