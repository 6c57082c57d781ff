"""Per-task metrics, computed on the rows where the task has a label.

binary:     auc, logloss, calibration (mean prediction / mean label), pos_rate, mean_pred, count
regression: rmse, mae, pearson in label units, and the same on the transformed target
            (suffix `_log1p`) when the task has a transform.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, mean_absolute_error, roc_auc_score


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """labels (N,) in {0, 1}; probs (N,) probabilities. AUC is NaN when only one class is present."""
    labels = labels.astype(np.float64)
    probs = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    both_classes = 0 < labels.sum() < len(labels)
    pos_rate = float(labels.mean())
    return {
        "auc": float(roc_auc_score(labels, probs)) if both_classes else float("nan"),
        "logloss": float(log_loss(labels, probs, labels=[0, 1])),
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
        f"mae{suffix}": float(mean_absolute_error(labels, preds)),
        f"pearson{suffix}": float("nan") if constant else float(np.corrcoef(labels, preds)[0, 1]),
    }
