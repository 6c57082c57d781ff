"""Metrics as accumulators: `update` with a batch, `merge` another accumulator (another batch
range, another rank), `compute` the metrics. Evaluation need not hold every output of a split.

Exact, not approximate: regression metrics keep sums and co-moments (Chan, Golub & LeVeque 1979
for merging); the AUC keeps, per distinct score, the number of positive and negative rows, and
compacts to that form as rows arrive, so its memory is the number of distinct scores. From it

    AUC = Σ_s pos_s · (neg_below_s + ½ neg_s) / (P · N)

which is the Mann–Whitney statistic with ties counted one half (the rank-sum formula with average
ranks), exactly. With sample weights every sum is weighted (pos_s and neg_s are weights); `count`
stays the number of rows.

`DevianceAccumulator` gives `relative_loss`: the task's mean deviance over that of the constant
predictor that training starts from (the train base rate or mean), a scale-free loss < 1 when the
model beats the constant. Unit deviances d(y, μ) (McCullagh & Nelder):

    binary    −2[y log μ + (1−y) log(1−μ)]     (twice the log loss)
    mse       (y − μ)²                        on the standardized target
    poisson   2[y log(y/μ) − (y − μ)]
    tweedie   2[y^{2−p}/((1−p)(2−p)) − y μ^{1−p}/(1−p) + μ^{2−p}/(2−p)]
"""
from __future__ import annotations

import math

import numpy as np

_COMPACT_ROWS = 1 << 20
_EPS = 1e-7


def _weights(weights: np.ndarray | None, size: int) -> np.ndarray:
    return np.ones(size) if weights is None else np.asarray(weights, dtype=np.float64)


class BinaryAccumulator:
    """labels (N,) in {0, 1} and probs (N,) probabilities of one binary task, optional weights (N,)."""

    def __init__(self) -> None:
        self._scores: list[np.ndarray] = []
        self._positives: list[np.ndarray] = []
        self._negatives: list[np.ndarray] = []
        self._pending = 0
        self.count = 0
        self.weight_sum = 0.0
        self.label_sum = 0.0
        self.prob_sum = 0.0
        self.logloss_sum = 0.0

    def update(self, labels: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> None:
        labels = np.asarray(labels, dtype=np.float64)
        probs = np.asarray(probs, dtype=np.float64)
        w = _weights(weights, labels.size)
        self.count += labels.size
        self.weight_sum += float(w.sum())
        self.label_sum += float(w @ labels)
        self.prob_sum += float(w @ probs)
        clipped = np.clip(probs, _EPS, 1 - _EPS)
        self.logloss_sum -= float(w @ (labels * np.log(clipped) + (1 - labels) * np.log1p(-clipped)))
        self._scores.append(probs)
        self._positives.append(w * labels)
        self._negatives.append(w * (1.0 - labels))
        self._pending += labels.size
        if self._pending > _COMPACT_ROWS:
            self._compact()

    def merge(self, other: BinaryAccumulator) -> None:
        self.count += other.count
        self.weight_sum += other.weight_sum
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
        positives, negatives = self.label_sum, self.weight_sum - self.label_sum
        if not self._scores or positives <= 0 or negatives <= 0:
            return math.nan
        pos, neg = self._positives[0], self._negatives[0]
        below = np.cumsum(neg) - neg
        return float(np.sum(pos * (below + 0.5 * neg)) / (positives * negatives))

    def compute(self) -> dict[str, float]:
        """auc (NaN with one class), logloss, calibration (mean prob / mean label), pos_rate, mean_pred, count."""
        n = self.weight_sum if self.weight_sum > 0 else 1.0
        pos_rate, mean_pred = self.label_sum / n, self.prob_sum / n
        return {"auc": self.auc(), "logloss": self.logloss_sum / n,
                "calibration": mean_pred / pos_rate if pos_rate > 0 else math.nan,
                "pos_rate": pos_rate, "mean_pred": mean_pred, "count": int(self.count)}


class RegressionAccumulator:
    """labels (N,) and preds (N,) on one scale, optional weights (N,): rmse, mae, pearson (suffixed,
    e.g. `_log1p`), and the means of both (`mean_label`, `mean_pred`)."""

    def __init__(self, suffix: str = "") -> None:
        self.suffix = suffix
        self.rows = 0
        self.count = 0.0  # the sum of the weights
        self.squared_error = 0.0
        self.absolute_error = 0.0
        self.mean_label = 0.0
        self.mean_pred = 0.0
        self.m2_label = 0.0  # Σ (label - mean)²
        self.m2_pred = 0.0
        self.co_moment = 0.0  # Σ (label - mean)(pred - mean)

    def update(self, labels: np.ndarray, preds: np.ndarray, weights: np.ndarray | None = None) -> None:
        labels = np.asarray(labels, dtype=np.float64)
        preds = np.asarray(preds, dtype=np.float64)
        w = _weights(weights, labels.size)
        if labels.size == 0 or w.sum() <= 0:
            return
        batch = RegressionAccumulator(self.suffix)
        batch.rows, batch.count = labels.size, float(w.sum())
        batch.squared_error = float(w @ (labels - preds) ** 2)
        batch.absolute_error = float(w @ np.abs(labels - preds))
        batch.mean_label, batch.mean_pred = float(w @ labels) / batch.count, float(w @ preds) / batch.count
        dl, dp = labels - batch.mean_label, preds - batch.mean_pred
        batch.m2_label, batch.m2_pred = float(w @ (dl * dl)), float(w @ (dp * dp))
        batch.co_moment = float(w @ (dl * dp))
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
        self.rows += other.rows

    def compute(self) -> dict[str, float]:
        n = self.count if self.count > 0 else 1.0
        constant = self.m2_label <= 0 or self.m2_pred <= 0
        pearson = math.nan
        if not constant:
            pearson = max(-1.0, min(1.0, self.co_moment / math.sqrt(self.m2_label * self.m2_pred)))
        return {f"rmse{self.suffix}": math.sqrt(self.squared_error / n), f"mae{self.suffix}": self.absolute_error / n,
                f"pearson{self.suffix}": pearson}


def unit_deviance(kind: str, labels: np.ndarray, means: np.ndarray, power: float = 1.5) -> np.ndarray:
    """(N,) unit deviance d(y, μ) of the module docstring; `kind` as in losses.task_losses.PER_ROW."""
    if kind == "binary":
        mu = np.clip(means, _EPS, 1 - _EPS)
        return -2.0 * (labels * np.log(mu) + (1 - labels) * np.log1p(-mu))
    if kind == "regression":
        return (labels - means) ** 2
    mu = np.maximum(means, 1e-12)
    if kind == "poisson":
        ratio = np.where(labels > 0, labels / mu, 1.0)
        return 2.0 * (labels * np.log(ratio) - (labels - mu))
    y = np.maximum(labels, 0.0)
    return 2.0 * (y ** (2 - power) / ((1 - power) * (2 - power)) - y * mu ** (1 - power) / (1 - power)
                  + mu ** (2 - power) / (2 - power))


class DevianceAccumulator:
    """The model's and the constant predictor's summed deviance: `relative_loss` = their ratio.

    kind: binary | regression | poisson | tweedie; constant: the constant predictor's mean (the train
    base rate; 0 on a standardized mse target; the train mean label for log-link losses)."""

    def __init__(self, kind: str, constant: float, power: float = 1.5) -> None:
        self.kind, self.constant, self.power = kind, constant, power
        self.model = 0.0
        self.baseline = 0.0

    def update(self, labels: np.ndarray, means: np.ndarray, weights: np.ndarray | None = None) -> None:
        """labels (N,) on the model's target scale; means (N,) the model's estimate of E[label] there."""
        w = _weights(weights, np.size(labels))
        self.model += float(w @ unit_deviance(self.kind, labels, means, self.power))
        constant = np.full(np.shape(labels), self.constant)
        self.baseline += float(w @ unit_deviance(self.kind, labels, constant, self.power))

    def merge(self, other: DevianceAccumulator) -> None:
        self.model += other.model
        self.baseline += other.baseline

    def relative_loss(self) -> float:
        return self.model / self.baseline if self.baseline > 0 else math.nan
