"""Model outputs over a whole encoded split, and the per-task metrics table."""
from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm import tqdm

from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.eval.metrics import binary_metrics, regression_metrics
from multikpi.models.esmm import parse_cvr_output_key


def model_outputs(model: torch.nn.Module, data: EncodedData, batch_size: int,
                  precision: torch.dtype | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """task -> (N,) raw outputs: logits for binary tasks, standardized values for regression.

    Runs under inference_mode (and autocast to `precision` when given) in slices of `batch_size`
    rows on the model's device. With `progress`, a tqdm bar counts the rows (only on a terminal)."""
    bar = tqdm(total=data.num_rows, desc="evaluate", unit="row", leave=False,
               disable=not (progress and sys.stderr.isatty()))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode(), torch.autocast(device.type, dtype=precision, enabled=precision is not None):
        for start in range(0, data.num_rows, batch_size):
            stop = min(start + batch_size, data.num_rows)
            outputs = model.forward_features(data.categorical[start:stop].to(device),
                                             data.dense[start:stop].to(device))
            for task, values in outputs.items():
                chunks.setdefault(task, []).append(values.float().cpu())
            bar.update(stop - start)
    bar.close()
    model.train(was_training)
    return {task: torch.cat(parts).numpy() for task, parts in chunks.items()}


def estimates(outputs: dict[str, np.ndarray], encoder: FeatureEncoder) -> dict[str, np.ndarray]:
    """Raw outputs -> what a user reads: probabilities (binary) and values in label units (regression).
    A side output that is not a task (ESMM's pCVR logit, "<ctcvr>.given_<ctr>") becomes a probability."""
    out = {}
    for task, values in outputs.items():
        if task not in encoder.labels or encoder.labels[task].kind == "binary":
            out[task] = 1.0 / (1.0 + np.exp(-values.astype(np.float64)))
        else:
            out[task] = encoder.to_original_units(task, values.astype(np.float64))
    return out


def task_metrics(outputs: dict[str, np.ndarray], data: EncodedData,
                 encoder: FeatureEncoder) -> dict[str, dict[str, float]]:
    """task -> metric -> value, each task on its labelled rows only."""
    table = {}
    labels = data.labels.numpy()
    for column, task in enumerate(data.tasks):
        target = labels[:, column]
        labelled = ~np.isnan(target)
        if not labelled.any():
            continue
        stats = encoder.labels[task]
        values = outputs[task][labelled].astype(np.float64)
        if stats.kind == "binary":
            table[task] = binary_metrics(target[labelled], 1.0 / (1.0 + np.exp(-values)))
            continue
        transformed_pred = encoder.to_transformed(task, values)
        transformed_label = encoder.to_transformed(task, target[labelled].astype(np.float64))
        metrics = regression_metrics(_inverse(transformed_label, stats.transform),
                                     _inverse(transformed_pred, stats.transform))
        if stats.transform != "none":
            metrics.update(regression_metrics(transformed_label, transformed_pred, f"_{stats.transform}"))
        metrics["count"] = int(labelled.sum())
        table[task] = metrics
    _add_cvr_on_clicked(table, outputs, data)
    return table


def _add_cvr_on_clicked(table: dict, outputs: dict[str, np.ndarray], data: EncodedData) -> None:
    """ESMM: `cvr_auc_on_clicked` (and `cvr_logloss_on_clicked`) of the CVR tower's pCVR against the
    CTCVR label, on the rows whose CTR label is 1, added to the CTCVR task's metrics."""
    labels = data.labels.numpy()
    for key, values in outputs.items():
        pair = parse_cvr_output_key(key)
        if pair is None or pair[1] not in table:
            continue
        ctr, ctcvr = pair
        target = labels[:, data.tasks.index(ctcvr)]
        clicked = (labels[:, data.tasks.index(ctr)] == 1) & ~np.isnan(target)
        if clicked.any():
            metrics = binary_metrics(target[clicked], 1.0 / (1.0 + np.exp(-values[clicked].astype(np.float64))))
            table[ctcvr]["cvr_auc_on_clicked"] = metrics["auc"]
            table[ctcvr]["cvr_logloss_on_clicked"] = metrics["logloss"]


def _inverse(transformed: np.ndarray, transform: str) -> np.ndarray:
    return np.expm1(transformed) if transform == "log1p" else transformed
