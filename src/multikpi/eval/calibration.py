"""Calibration of binary-task probabilities, fitted on the valid split at the end of training.

Two calibrators per binary task, both fitted on the rows of the valid split where the task has a
label (with `train_on`, those are the parent's positives, as in the metrics):

- isotonic: scikit-learn `IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)` of the label
  on the raw probability. Stored as its thresholds (`X_thresholds_`, `y_thresholds_`) and applied
  with linear interpolation between them, which is exactly what scikit-learn's `predict` does.
  It is a step function: many rows share one calibrated value, and values of exactly 0 or 1 occur.
- platt: unregularised logistic regression of the label on logit(p):
  p' = sigmoid(a * logit(p) + b). Strictly increasing when a > 0, so it keeps every order.

The run directory holds them as `calibration.json` (numbers only, no pickle):

    {"format": 1, "fitted_on": "valid",
     "tasks": {"click": {"rows": N, "positives": P, "isotonic": {"x": [...], "y": [...]},
                         "platt": {"a": 1.02, "b": 0.03}}},
     "skipped": {"convert": "the valid split has only one class"}}

Reliability and expected calibration error (ECE) use B = 10 equal-mass bins: the rows, sorted by
the prediction being assessed (stable sort), are cut into B consecutive chunks whose sizes differ by
at most one. ECE = sum_b (n_b / N) * |mean prediction_b - mean label_b|. Equal-mass rather than
equal-width bins because conversion probabilities sit almost all below 0.05: with equal-width bins
nearly every row would fall into the first bin.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.errors import ArtifactError
from multikpi.eval.evaluate import model_outputs
from multikpi.models.multitask import MultiTaskModel

logger = logging.getLogger("multikpi")

N_BINS = 10
METHODS = ("none", "isotonic", "platt")
_EPS = 1e-7


@dataclass(frozen=True, eq=False)
class TaskCalibrator:
    """Both calibrators of one binary task. `apply(probs, "isotonic" | "platt" | "none")`."""

    isotonic_x: np.ndarray
    isotonic_y: np.ndarray
    platt_a: float
    platt_b: float
    rows: int
    positives: int

    def apply(self, probs: np.ndarray, method: str) -> np.ndarray:
        """probs (N,) raw probabilities -> (N,) calibrated probabilities."""
        probs = np.asarray(probs, dtype=np.float64)
        if method == "isotonic":
            return np.interp(probs, self.isotonic_x, self.isotonic_y)
        if method == "platt":
            return _sigmoid(self.platt_a * _logit(probs) + self.platt_b)
        return probs

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "positives": self.positives,
                "isotonic": {"x": self.isotonic_x.tolist(), "y": self.isotonic_y.tolist()},
                "platt": {"a": self.platt_a, "b": self.platt_b}}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> TaskCalibrator:
        x = np.asarray(payload["isotonic"]["x"], dtype=np.float64)
        y = np.asarray(payload["isotonic"]["y"], dtype=np.float64)
        if x.shape != y.shape or x.size == 0 or np.any(np.diff(x) < 0):
            raise ValueError("isotonic thresholds must be two equally long, non-empty lists with x increasing")
        return cls(x, y, float(payload["platt"]["a"]), float(payload["platt"]["b"]),
                   int(payload["rows"]), int(payload["positives"]))


def fit_task_calibrator(labels: np.ndarray, probs: np.ndarray) -> TaskCalibrator:
    """labels (N,) in {0, 1} with both classes present; probs (N,) raw probabilities."""
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    # Imported here: scikit-learn (with SciPy) adds ~70 MB to a process that only predicts.
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    isotonic = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(probs, labels)
    platt = LogisticRegression(C=np.inf).fit(_logit(probs)[:, None], labels.astype(np.int64))
    return TaskCalibrator(np.asarray(isotonic.X_thresholds_, dtype=np.float64),
                          np.asarray(isotonic.y_thresholds_, dtype=np.float64),
                          float(platt.coef_[0, 0]), float(platt.intercept_[0]),
                          int(labels.size), int(labels.sum()))


def binary_labels_and_probs(outputs: dict[str, np.ndarray], data: EncodedData,
                            encoder: FeatureEncoder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Binary task -> (labels, probabilities) on the rows where the task has a label."""
    labels = data.labels.numpy()
    out = {}
    for column, task in enumerate(data.tasks):
        if encoder.labels[task].kind != "binary":
            continue
        target = labels[:, column]
        labelled = ~np.isnan(target)
        out[task] = (target[labelled].astype(np.float64), _sigmoid(outputs[task][labelled].astype(np.float64)))
    return out


def fit_calibrators(pairs: dict[str, tuple[np.ndarray, np.ndarray]]
                    ) -> tuple[dict[str, TaskCalibrator], dict[str, str]]:
    """task -> (labels, probs) -> (task -> calibrator, task -> why it was skipped)."""
    calibrators, skipped = {}, {}
    for task, (labels, probs) in pairs.items():
        positives = labels.sum()
        if labels.size == 0 or positives == 0 or positives == labels.size:
            skipped[task] = "the valid split has only one class" if labels.size else "the valid split has no label"
            logger.warning("calibration: %s skipped: %s", task, skipped[task])
            continue
        calibrators[task] = fit_task_calibrator(labels, probs)
    return calibrators, skipped


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = N_BINS) -> dict[str, list]:
    """Equal-mass reliability curve: per bin the mean prediction, the mean label and the row count
    (empty bins, possible only when N < bins, are left out)."""
    order = np.argsort(probs, kind="stable")
    chunks = [c for c in np.array_split(order, bins) if c.size]
    return {"bin_mean_pred": [float(probs[c].mean()) for c in chunks],
            "bin_mean_label": [float(labels[c].mean()) for c in chunks],
            "bin_count": [int(c.size) for c in chunks]}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = N_BINS) -> float:
    """sum_b (n_b / N) |mean pred_b - mean label_b| over equal-mass bins; NaN for no rows."""
    labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if labels.size == 0:
        return float("nan")
    curve = reliability(labels, probs, bins)
    gaps = np.abs(np.subtract(curve["bin_mean_pred"], curve["bin_mean_label"]))
    return float(np.dot(curve["bin_count"], gaps) / labels.size)


def calibration_report(pairs: dict[str, tuple[np.ndarray, np.ndarray]],
                       calibrators: dict[str, TaskCalibrator]) -> dict[str, dict]:
    """task -> {count, ece_raw, reliability, and ece_/reliability_ per fitted method}."""
    report = {}
    for task, (labels, probs) in pairs.items():
        if labels.size == 0:
            continue
        entry = {"count": int(labels.size), "ece_raw": expected_calibration_error(labels, probs),
                 "reliability": reliability(labels, probs)}
        if task in calibrators:
            for method in ("isotonic", "platt"):
                calibrated = calibrators[task].apply(probs, method)
                entry[f"ece_{method}"] = expected_calibration_error(labels, calibrated)
                entry[f"reliability_{method}"] = reliability(labels, calibrated)
        report[task] = entry
    return report


def calibrate_run(model: MultiTaskModel, splits: dict[str, EncodedData], encoder: FeatureEncoder,
                  batch_size: int, precision: torch.dtype | None) -> tuple[dict | None, dict | None]:
    """Fit the calibrators on `splits["valid"]` and assess them on valid and test.

    Returns (the calibration.json payload, the `metrics["calibration"]` block), or (None, None)
    when there is no valid split or no binary task."""
    if "valid" not in splits or not any(s.kind == "binary" for s in encoder.labels.values()):
        return None, None
    # With a position tower the labels saw the logged positions: the calibrators are fitted (and
    # assessed) on the probabilities there, and applied to the position-free ones at prediction.
    pairs = {name: binary_labels_and_probs(model_outputs(model, splits[name], batch_size, precision,
                                                         at_logged_position=True), splits[name], encoder)
             for name in ("valid", "test") if name in splits}
    calibrators, skipped = fit_calibrators(pairs["valid"])
    payload = {"format": 1, "fitted_on": "valid", "tasks": {t: c.to_json() for t, c in calibrators.items()},
               "skipped": skipped}
    report = {"bins": {"count": N_BINS, "kind": "equal-mass"}, "fitted_on": "valid"}
    report.update({name: calibration_report(p, calibrators) for name, p in pairs.items()})
    return payload, report


def calibrators_from_json(payload: dict[str, Any]) -> dict[str, TaskCalibrator]:
    """The calibration.json payload -> task -> calibrator. ArtifactError when it is malformed."""
    try:
        return {task: TaskCalibrator.from_json(entry) for task, entry in payload["tasks"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ArtifactError(f"the run's calibration.json is not a valid calibration file: {err}") from None


def resolve_method(setting: str, calibrators: dict[str, TaskCalibrator] | None) -> str:
    """`decide.calibration` -> the method to apply: `auto` is platt when the run has calibrators,
    else none. An explicit isotonic/platt on a run without calibrators is an ArtifactError."""
    if setting == "auto":
        return "platt" if calibrators else "none"
    if setting != "none" and not calibrators:
        raise ArtifactError(f"decide.calibration is {setting!r} but the run has no calibrators: they are "
                            f"fitted on data.valid at the end of training; retrain with data.valid set, "
                            f"or use decide.calibration: none")
    return setting


def apply_calibration(values: dict[str, np.ndarray], calibrators: dict[str, TaskCalibrator] | None,
                      method: str) -> dict[str, np.ndarray]:
    """task -> (N,) estimates, with the binary tasks that have a calibrator calibrated by `method`."""
    if method == "none" or not calibrators:
        return dict(values)
    return {task: calibrators[task].apply(v, method) if task in calibrators else v for task, v in values.items()}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)
