"""Metrics of a split that is not held in memory: accumulated over its pieces as they are read, and
merged across processes. The accumulators are exact (eval/accumulators.py), so the merged metrics
are those of the whole split (AUC from the pooled per-score counts, RMSE from the pooled moments),
never an average of per-process values."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.eval.evaluate import RowsDone, SplitMetrics, output_batches


def accumulate(model: torch.nn.Module, pieces: Iterable[EncodedData], encoder: FeatureEncoder,
               tasks: tuple[str, ...], batch_size: int, precision: torch.dtype | None = None,
               on_rows: RowsDone | None = None) -> SplitMetrics:
    """SplitMetrics updated with the model's outputs on every piece (pieces are read one at a time)."""
    metrics = SplitMetrics(encoder, tasks)
    for piece in pieces:
        labels = piece.labels.numpy()
        weights = piece.weights.numpy().astype(np.float64) if piece.weights is not None else None
        for rows, outputs in output_batches(model, piece, batch_size, precision, on_rows):  # type: ignore[arg-type]
            metrics.update(outputs, labels[rows], weights[rows] if weights is not None else None)
    return metrics


def metrics_state(metrics: SplitMetrics) -> dict[str, Any]:
    """The accumulators of `metrics` (picklable; no encoder), to send to another process."""
    return {"binary": metrics.binary, "regression": metrics.regression, "deviance": metrics.deviance,
            "cvr_on_clicked": metrics.cvr_on_clicked}


def merge_states(encoder: FeatureEncoder, tasks: tuple[str, ...], states: list[dict[str, Any]]) -> SplitMetrics:
    """One SplitMetrics holding every state's rows, merged in the order given."""
    total = SplitMetrics(encoder, tasks)
    for state in states:
        part = SplitMetrics(encoder, tasks)
        part.binary, part.regression = state["binary"], state["regression"]
        part.deviance, part.cvr_on_clicked = state["deviance"], state["cvr_on_clicked"]
        total.merge(part)
    return total
