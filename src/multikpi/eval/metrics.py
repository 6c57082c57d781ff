"""Per-task metrics, computed on the rows where the task has a label.

binary:     auc, logloss, calibration (mean prediction / mean label), pos_rate, mean_pred, count
regression: rmse, mae, pearson in label units, and the same on the transformed target
            (suffix `_log1p`) when the task has a transform.

These are plain NumPy (the tests check them against scikit-learn): importing scikit-learn costs a
training process about 70 MB of resident memory for three one-line formulas.
"""
from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann–Whitney U) formula, ties given average ranks.

    labels (N,) in {0, 1} with both classes present; scores (N,) any monotone score."""
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(scores)]
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]  # average of the 1-based ranks start+1 .. end
    positives = float(labels.sum())
    negatives = len(labels) - positives
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy; probs clipped to [1e-7, 1 - 1e-7]."""
    probs = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(probs) + (1 - labels) * np.log1p(-probs)))


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """labels (N,) in {0, 1}; probs (N,) probabilities. AUC is NaN when only one class is present."""
    labels = labels.astype(np.float64)
    probs = probs.astype(np.float64)
    both_classes = 0 < labels.sum() < len(labels)
    pos_rate = float(labels.mean())
    return {
        "auc": roc_auc(labels, probs) if both_classes else float("nan"),
        "logloss": log_loss(labels, probs),
        "calibration": float(probs.mean() / pos_rate) if pos_rate > 0 else float("nan"),
        "pos_rate": pos_rate,
        "mean_pred": float(probs.mean()),
        "count": int(len(labels)),
    }


def regression_metrics(labels: np.ndarray, preds: np.ndarray, suffix: str = "") -> dict[str, float]:
    """labels, preds (N,) on one scale. Pearson is NaN when either side is constant."""
    labels = labels.astype(np.float64)
    preds = preds.astype(np.float64)
    constant = labels.std() == 0 or preds.std() == 0
    return {
        f"rmse{suffix}": float(np.sqrt(np.mean((labels - preds) ** 2))),
        f"mae{suffix}": float(np.mean(np.abs(labels - preds))),
        f"pearson{suffix}": float("nan") if constant else float(np.corrcoef(labels, preds)[0, 1]),
    }
