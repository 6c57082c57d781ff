"""Metrics as accumulators: `update` with a batch, `merge` another accumulator (another batch
range, another rank), `compute` the metrics. Evaluation need not hold every output of a split.

Exact, not approximate: regression metrics keep sums and co-moments (Chan, Golub & LeVeque 1979
for merging); the AUC keeps, per distinct score, the number of positive and negative rows, and
compacts to that form as rows arrive, so its memory is the number of distinct scores. From it

    AUC = Σ_s pos_s · (neg_below_s + ½ neg_s) / (P · N)

which is the Mann–Whitney statistic with ties counted one half (the rank-sum formula with average
ranks), exactly.
"""
from __future__ import annotations

import math

import numpy as np

_COMPACT_ROWS = 1 << 20
_EPS = 1e-7


class BinaryAccumulator:
    """labels (N,) in {0, 1} and probs (N,) probabilities of one binary task."""

    def __init__(self) -> None:
        self._scores: list[np.ndarray] = []
        self._positives: list[np.ndarray] = []
        self._negatives: list[np.ndarray] = []
        self._pending = 0
        self.count = 0
        self.label_sum = 0.0
        self.prob_sum = 0.0
        self.logloss_sum = 0.0

    def update(self, labels: np.ndarray, probs: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.float64)
        probs = np.asarray(probs, dtype=np.float64)
        self.count += labels.size
        self.label_sum += float(labels.sum())
        self.prob_sum += float(probs.sum())
        clipped = np.clip(probs, _EPS, 1 - _EPS)
        self.logloss_sum -= float(np.sum(labels * np.log(clipped) + (1 - labels) * np.log1p(-clipped)))
        self._scores.append(probs)
        self._positives.append(labels)
        self._negatives.append(1.0 - labels)
        self._pending += labels.size
        if self._pending > _COMPACT_ROWS:
            self._compact()

    def merge(self, other: BinaryAccumulator) -> None:
        self.count += other.count
        self.label_sum += other.label_sum
        self.prob_sum += other.prob_sum
        self.logloss_sum += other.logloss_sum
        self._scores += other._scores
        self._positives += other._positives
        self._negatives += other._negatives
        self._pending += other._pending
        self._compact()

    def _compact(self) -> None:
        """Collapse the rows seen so far to (distinct score, positives, negatives)."""
        if not self._scores:
            return
        scores, inverse = np.unique(np.concatenate(self._scores), return_inverse=True)
        self._scores = [scores]
        self._positives = [np.bincount(inverse, weights=np.concatenate(self._positives), minlength=scores.size)]
        self._negatives = [np.bincount(inverse, weights=np.concatenate(self._negatives), minlength=scores.size)]
        self._pending = 0

    def auc(self) -> float:
        self._compact()
        positives, negatives = self.label_sum, self.count - self.label_sum
        if not self._scores or positives == 0 or negatives == 0:
            return math.nan
        pos, neg = self._positives[0], self._negatives[0]
        below = np.cumsum(neg) - neg
        return float(np.sum(pos * (below + 0.5 * neg)) / (positives * negatives))

    def compute(self) -> dict[str, float]:
        """auc (NaN with one class), logloss, calibration (mean prob / mean label), pos_rate, mean_pred, count."""
        n = max(self.count, 1)
        pos_rate, mean_pred = self.label_sum / n, self.prob_sum / n
        return {"auc": self.auc(), "logloss": self.logloss_sum / n,
                "calibration": mean_pred / pos_rate if pos_rate > 0 else math.nan,
                "pos_rate": pos_rate, "mean_pred": mean_pred, "count": int(self.count)}


class RegressionAccumulator:
    """labels (N,) and preds (N,) on one scale: rmse, mae, pearson (suffixed, e.g. `_log1p`)."""

    def __init__(self, suffix: str = "") -> None:
        self.suffix = suffix
        self.count = 0
        self.squared_error = 0.0
        self.absolute_error = 0.0
        self.mean_label = 0.0
        self.mean_pred = 0.0
        self.m2_label = 0.0  # Σ (label - mean)²
        self.m2_pred = 0.0
        self.co_moment = 0.0  # Σ (label - mean)(pred - mean)

    def update(self, labels: np.ndarray, preds: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.float64)
        preds = np.asarray(preds, dtype=np.float64)
        if labels.size == 0:
            return
        batch = RegressionAccumulator(self.suffix)
        batch.count = labels.size
        batch.squared_error = float(np.sum((labels - preds) ** 2))
        batch.absolute_error = float(np.sum(np.abs(labels - preds)))
        batch.mean_label, batch.mean_pred = float(labels.mean()), float(preds.mean())
        dl, dp = labels - batch.mean_label, preds - batch.mean_pred
        batch.m2_label, batch.m2_pred, batch.co_moment = float(dl @ dl), float(dp @ dp), float(dl @ dp)
        self.merge(batch)

    def merge(self, other: RegressionAccumulator) -> None:
        n, m = self.count, other.count
        if m == 0:
            return
        total = n + m
        dl, dp = other.mean_label - self.mean_label, other.mean_pred - self.mean_pred
        self.m2_label += other.m2_label + dl * dl * n * m / total
        self.m2_pred += other.m2_pred + dp * dp * n * m / total
        self.co_moment += other.co_moment + dl * dp * n * m / total
        self.mean_label += dl * m / total
        self.mean_pred += dp * m / total
        self.squared_error += other.squared_error
        self.absolute_error += other.absolute_error
        self.count = total

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        constant = self.m2_label <= 0 or self.m2_pred <= 0
        pearson = math.nan if constant else self.co_moment / math.sqrt(self.m2_label * self.m2_pred)
        return {f"rmse{self.suffix}": math.sqrt(self.squared_error / n), f"mae{self.suffix}": self.absolute_error / n,
                f"pearson{self.suffix}": pearson}
