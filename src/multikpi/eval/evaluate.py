"""Model outputs over an encoded split, and the per-task metrics table, computed batch by batch
through the accumulators of `accumulators.py`."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from multikpi.data.encoders import EncodedData, FeatureEncoder, LabelStats
from multikpi.data.labels import to_label_units, to_transformed
from multikpi.errors import ArtifactError
from multikpi.eval.accumulators import BinaryAccumulator, DevianceAccumulator, RegressionAccumulator
from multikpi.models.esmm import parse_cvr_output_key
from multikpi.models.multitask import MultiTaskModel

RowsDone = Callable[[int], None]  # progress callback: called with the rows of each finished slice


def output_batches(model: MultiTaskModel, data: EncodedData, batch_size: int,
                   precision: torch.dtype | None = None, on_rows: RowsDone | None = None,
                   at_logged_position: bool = False) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """(row slice, task -> raw outputs of those rows) in slices of `batch_size` rows: logits for
    binary tasks, standardized values for regression. Runs under inference_mode (and autocast to
    `precision` when given) on the model's device. Position-free (what prediction gives), unless
    `at_logged_position` and the model has a position tower and `data` a position: then the binary
    logits include the tower's offsets at the logged positions (what the labels saw)."""
    logged = at_logged_position and data.position is not None and model.position_tower is not None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            for start in range(0, data.num_rows, batch_size):
                rows = slice(start, min(start + batch_size, data.num_rows))
                categorical, dense = data.categorical[rows].to(device), data.dense[rows].to(device)
                if logged:
                    assert data.position is not None
                    outputs = model.forward_logged(categorical, dense, data.position[rows].to(device))
                else:
                    outputs = model.forward_features(categorical, dense)
                arrays = {task: values.float().cpu().numpy() for task, values in outputs.items()}
                _check_finite(arrays, rows)
                yield rows, arrays
                if on_rows is not None:
                    on_rows(rows.stop - rows.start)
    finally:
        model.train(was_training)


def _check_finite(outputs: dict[str, np.ndarray], rows: slice) -> None:
    """A non-finite output is never passed on as an estimate: the run is corrupt (tampered weights
    or encoders) or the inputs are far outside anything the model was trained on."""
    for task, values in outputs.items():
        bad = ~np.isfinite(values)
        if bad.any():
            first = rows.start + int(np.flatnonzero(bad)[0])
            raise ArtifactError(f"the model produced non-finite outputs for task {task!r} on {int(bad.sum())} row(s) "
                                f"(first: row {first}): its weights or encoders may be corrupt, or the inputs far "
                                f"outside the training data")


def model_outputs(model: MultiTaskModel, data: EncodedData, batch_size: int,
                  precision: torch.dtype | None = None, on_rows: RowsDone | None = None,
                  at_logged_position: bool = False) -> dict[str, np.ndarray]:
    """task -> (N,) raw outputs of every row (see `output_batches`)."""
    chunks: dict[str, list[np.ndarray]] = {}
    for _, outputs in output_batches(model, data, batch_size, precision, on_rows, at_logged_position):
        for task, values in outputs.items():
            chunks.setdefault(task, []).append(values)
    return {task: np.concatenate(parts) for task, parts in chunks.items()}


def estimates(outputs: dict[str, np.ndarray], encoder: FeatureEncoder) -> dict[str, np.ndarray]:
    """Raw outputs -> what a user reads: probabilities (binary) and values in label units (regression).
    A side output that is not a task (ESMM's pCVR logit, "<ctcvr>.given_<ctr>") becomes a probability."""
    out = {}
    for task, values in outputs.items():
        if task not in encoder.labels or encoder.labels[task].kind == "binary":
            out[task] = _sigmoid(values)
        else:
            out[task] = encoder.to_original_units(task, values.astype(np.float64))
    return out


class SplitMetrics:
    """The per-task metrics of one split, accumulated batch by batch; each task on its labelled rows,
    weighted by the sample weights when there are any.

    binary: auc, logloss, calibration (mean prob / mean label), pos_rate, mean_pred, count;
    regression: rmse, mae, pearson and calibration (mean prediction / mean label) in label units, the
    first three again with the suffix `_<transform>` on the transformed scale, and count; every task:
    relative_loss (DevianceAccumulator). ESMM's CTCVR task also gets `cvr_auc_on_clicked` and
    `cvr_logloss_on_clicked` of the CVR tower."""

    def __init__(self, encoder: FeatureEncoder, tasks: tuple[str, ...]):
        self.encoder = encoder
        self.tasks = tasks
        self.binary: dict[str, BinaryAccumulator] = {}
        self.regression: dict[str, tuple[RegressionAccumulator, RegressionAccumulator]] = {}
        self.deviance: dict[str, DevianceAccumulator] = {}
        self.cvr_on_clicked: dict[str, BinaryAccumulator] = {}

    def update(self, outputs: dict[str, np.ndarray], labels: np.ndarray, weights: np.ndarray | None = None) -> None:
        """outputs: task -> (B,) raw outputs; labels: (B, T) encoded labels, NaN = none; weights: (B,) or None."""
        for column, task in enumerate(self.tasks):
            target = labels[:, column]
            labelled = ~np.isnan(target)
            if not labelled.any():
                continue
            w = weights[labelled] if weights is not None else None
            values, label = outputs[task][labelled].astype(np.float64), target[labelled].astype(np.float64)
            stats = self.encoder.labels[task]
            self._deviance(task, stats).update(label, _model_scale_mean(stats, values), w)
            if stats.kind == "binary":
                self.binary.setdefault(task, BinaryAccumulator()).update(label, _sigmoid(values), w)
                continue
            units, transformed = self.regression.setdefault(
                task, (RegressionAccumulator(), RegressionAccumulator(f"_{stats.transform}")))
            label_units = to_label_units(stats, _encoded_to_model_outputs(stats, label), smeared=False)
            units.update(label_units, to_label_units(stats, values), w)
            if stats.transform != "none":
                transformed.update(to_transformed(stats, _encoded_to_model_outputs(stats, label)),
                                   to_transformed(stats, values), w)
        self._update_cvr_on_clicked(outputs, labels)

    def _deviance(self, task: str, stats: LabelStats) -> DevianceAccumulator:
        if task not in self.deviance:
            kind = "binary" if stats.kind == "binary" else stats.loss if stats.log_link else "regression"
            constant = 0.0 if kind == "regression" else stats.mean
            self.deviance[task] = DevianceAccumulator(kind, constant, stats.tweedie_power)
        return self.deviance[task]

    def _update_cvr_on_clicked(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> None:
        for key, values in outputs.items():
            pair = parse_cvr_output_key(key)
            if pair is None:
                continue
            ctr, ctcvr = pair
            target = labels[:, self.tasks.index(ctcvr)]
            clicked = (labels[:, self.tasks.index(ctr)] == 1) & ~np.isnan(target)
            if clicked.any():
                self.cvr_on_clicked.setdefault(ctcvr, BinaryAccumulator()).update(
                    target[clicked], _sigmoid(values[clicked]))

    def merge(self, other: SplitMetrics) -> None:
        for task, acc in other.binary.items():
            self.binary.setdefault(task, BinaryAccumulator()).merge(acc)
        for task, (units, transformed) in other.regression.items():
            fresh = (RegressionAccumulator(), RegressionAccumulator(transformed.suffix))
            mine = self.regression.setdefault(task, fresh)
            mine[0].merge(units)
            mine[1].merge(transformed)
        for task, dev in other.deviance.items():
            self._deviance(task, self.encoder.labels[task]).merge(dev)
        for task, acc in other.cvr_on_clicked.items():
            self.cvr_on_clicked.setdefault(task, BinaryAccumulator()).merge(acc)

    def compute(self) -> dict[str, dict[str, float]]:
        """task -> metric -> value, tasks in config order; a task without a labelled row is absent."""
        table: dict[str, dict[str, float]] = {}
        for task in self.tasks:
            if task in self.binary:
                table[task] = self.binary[task].compute()
            elif task in self.regression:
                units, transformed = self.regression[task]
                table[task] = units.compute()
                table[task]["calibration"] = units.mean_pred / units.mean_label if units.mean_label else math.nan
                if transformed.rows:
                    table[task].update(transformed.compute())
                table[task]["count"] = units.rows
            if task in table:
                table[task]["relative_loss"] = self.deviance[task].relative_loss()
        for task, acc in self.cvr_on_clicked.items():
            if task in table:
                metrics = acc.compute()
                table[task].update({"cvr_auc_on_clicked": metrics["auc"], "cvr_logloss_on_clicked": metrics["logloss"]})
        return table


def _model_scale_mean(stats: LabelStats, outputs: np.ndarray) -> np.ndarray:
    """The model's estimate of E[encoded label]: a probability, a standardized value, or e^z."""
    if stats.kind == "binary":
        return _sigmoid(outputs)
    return np.exp(outputs) if stats.log_link else outputs


def _encoded_to_model_outputs(stats: LabelStats, encoded: np.ndarray) -> np.ndarray:
    """An encoded regression label as the model output that would predict it exactly."""
    return np.log(np.maximum(encoded, 1e-300)) if stats.log_link else encoded


def task_metrics(outputs: dict[str, np.ndarray], data: EncodedData,
                 encoder: FeatureEncoder) -> dict[str, dict[str, float]]:
    """task -> metric -> value of whole-split outputs (see SplitMetrics)."""
    metrics = SplitMetrics(encoder, data.tasks)
    metrics.update(outputs, data.labels.numpy(), _numpy(data.weights))
    return metrics.compute()


def evaluate_split(model: MultiTaskModel, data: EncodedData, encoder: FeatureEncoder, batch_size: int,
                   precision: torch.dtype | None = None,
                   on_rows: RowsDone | None = None) -> dict[str, dict[str, float]]:
    """The metrics of `model` on `data`, batch by batch (the split's outputs are never all held)."""
    metrics = SplitMetrics(encoder, data.tasks)
    labels, weights = data.labels.numpy(), _numpy(data.weights)
    for rows, outputs in output_batches(model, data, batch_size, precision, on_rows):
        metrics.update(outputs, labels[rows], weights[rows] if weights is not None else None)
    return metrics.compute()


def _numpy(weights: torch.Tensor | None) -> np.ndarray | None:
    return weights.numpy().astype(np.float64) if weights is not None else None


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values.astype(np.float64)))


