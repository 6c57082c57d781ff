"""Off-policy estimators of a ranking's KPIs@k under the position-based model, with a bootstrap
over requests (docs/deciding.md, "Deciding honestly").

Setting. Request x has candidates i = 1..n_x, all logged, each shown by the logging policy mu at a
position p_i. Position-based model (PBM; Craswell et al. 2008, Chuklin et al. 2015): position p is
examined with probability theta_p, whatever the item; an examined item is clicked with its
attractiveness alpha(i, x); what follows a click (a conversion, dwell) does not depend on the
position. The curve is scaled so that theta_1 = 1. A KPI t of item i shown at p then has
expectation theta_p * r_t(i, x), with r_t = E[KPI_t | i examined]: r_click = alpha,
r_convert = alpha * P(convert | click), r_dwell = alpha * E[dwell | click].

Estimand. For a deterministic target ranking pi (rank pi(i) of every candidate), at cut-off k,

    V_t(pi) = E_x [ sum_{i: pi(i) <= k} theta_{pi(i)} * r_t(i, x) ]       (per request)

Per row, with e_pi(i) = theta_{pi(i)} 1{pi(i) <= k} (the target's examination of i),
e_mu(i) = sum_p mu(i at p | x) theta_p (the logger's, `exam_propensity`), w_i = e_pi(i) / e_mu(i),
y_i the logged KPI value and r^_t the model's position-free estimate of r_t, per request:

    naive  sum_{pi(i) <= k} y_i               labels re-sorted: biased toward the logger
    IPS    sum_i w_i y_i                      E[y_i] = e_mu(i) r_t(i): unbiased (Li et al. 2018, PBM)
    SNIPS  IPS * sum e_pi / sum w_i theta_p_i  over all requests: E[w_i theta_{p_i}] = e_pi(i), a
                                              control variate with a known mean (Swaminathan &
                                              Joachims 2015); consistent, small bias
    DM     sum_i e_pi(i) r^_t(i)              the model alone: biased when the model is
    DR     DM + sum_i w_i (y_i - theta_p_i r^_t(i))   unbiased when e_mu is right, whatever the
                                              model (Dudik et al. 2011; Kiyohara et al. 2022)

Every estimate is a mean over requests of per-request sums (SNIPS a ratio of such means), so the
bootstrap resamples requests: each of B resamples is a vector of G multiplicities, and every
estimate of every resample is one (B, G) @ (G, S) product. Intervals are bias-corrected and
accelerated (BCa; Efron 1987): conversions are rare, so the per-request sums are skewed and
plain percentile intervals cover less than they claim. The acceleration comes from the
jackknife, in closed form: leaving request g out turns each mean m into (G m - s_g) / (G - 1).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

ESTIMATOR_NAMES = ("naive", "ips", "snips", "dm", "dr")
NEEDS_PROPENSITY = ("ips", "snips", "dr")


@dataclass(frozen=True)
class LoggedRows:
    """The logs, per row (N rows of G requests).

    codes:           (N,) request index 0..G-1
    position:        (N,) 1-based logged position
    curve:           (P,) examination probability of positions 1..P, curve[0] = 1
    exam_propensity: (N,) e_mu(i) on the scale of `curve`, NaN or 0 where the logger could not have
                     shown the item at an examined position; None when the logs have none
    kpis:            task -> (N,) the logged KPI value (0 where null)
    """

    codes: np.ndarray
    position: np.ndarray
    curve: np.ndarray
    exam_propensity: np.ndarray | None
    kpis: dict[str, np.ndarray]

    @property
    def num_groups(self) -> int:
        return int(self.codes.max()) + 1 if self.codes.size else 0

    def examination_at(self, ranks: np.ndarray, k: int) -> np.ndarray:
        """(N,) theta_rank for ranks <= k (and within the curve), else 0."""
        inside = (ranks <= min(k, self.curve.size)) & (ranks >= 1)
        return np.where(inside, self.curve[np.clip(ranks, 1, self.curve.size) - 1], 0.0)


@dataclass(frozen=True)
class Diagnostics:
    """Of the importance weights w_i = e_pi(i) / e_mu(i) of one target ranking.

    pairs: target top-k (request, item) pairs; support: share of them with e_mu > 0 (the logger
    could have shown the item where it is examined); ess: (sum w)^2 / sum w^2 (Kong 1992);
    max_weight, mean_weight: over the supported pairs."""

    pairs: int
    support: float
    ess: float
    max_weight: float
    mean_weight: float


def resample_counts(num_groups: int, resamples: int, seed: int) -> np.ndarray:
    """(B, G) multiplicities of the G requests in B bootstrap resamples (each row sums to G)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_groups, size=(resamples, num_groups))
    offsets = np.arange(resamples)[:, None] * num_groups
    counts = np.bincount((draws + offsets).ravel(), minlength=resamples * num_groups)
    return counts.reshape(resamples, num_groups).astype(np.float64)


def importance_weights(logs: LoggedRows, target_exam: np.ndarray) -> np.ndarray:
    """(N,) w_i = e_pi(i) / e_mu(i); 0 where e_pi is 0 or e_mu is not positive (unsupported)."""
    assert logs.exam_propensity is not None
    e_mu = logs.exam_propensity
    supported = np.isfinite(e_mu) & (e_mu > 0)
    return np.where(supported & (target_exam > 0), target_exam / np.where(supported, e_mu, 1.0), 0.0)


def request_statistics(logs: LoggedRows, ranks: np.ndarray, k: int,
                       rewards_hat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-request sums (G,) of everything the estimators need, for the target ranking `ranks`
    (N,): `naive:<task>`, `dm:<task>`, and with propensities `ips:<task>`, `dr:<task>`,
    `exam` (sum e_pi) and `control` (sum w theta_p). rewards_hat: task -> (N,) r^_t."""
    target_exam = logs.examination_at(ranks, k)
    logged_exam = logs.curve[np.clip(logs.position, 1, logs.curve.size) - 1]
    rows: dict[str, np.ndarray] = {"exam": target_exam}
    weights = importance_weights(logs, target_exam) if logs.exam_propensity is not None else None
    if weights is not None:
        rows["control"] = weights * logged_exam
    for task, y in logs.kpis.items():
        rows[f"naive:{task}"] = np.where((ranks <= k) & (ranks >= 1), y, 0.0)
        rows[f"dm:{task}"] = target_exam * rewards_hat[task]
        if weights is not None:
            rows[f"ips:{task}"] = weights * y
            rows[f"dr:{task}"] = rows[f"dm:{task}"] + weights * (y - logged_exam * rewards_hat[task])
    groups = logs.num_groups
    return {name: np.bincount(logs.codes, weights=values, minlength=groups) for name, values in rows.items()}


def logged_statistics(logs: LoggedRows, k: int) -> dict[str, np.ndarray]:
    """Per-request sums (G,) `logged:<task>` of the KPI over the logged top k: the on-policy value
    of the logging policy."""
    top = logs.position <= k
    return {f"logged:{task}": np.bincount(logs.codes, weights=np.where(top, y, 0.0), minlength=logs.num_groups)
            for task, y in logs.kpis.items()}


Means = Mapping[str, np.ndarray]  # statistic -> mean over requests: () for the point, (B,) per resample


def _snips(means: Means, task: str) -> np.ndarray:
    return means[f"ips:{task}"] * means["exam"] / np.where(means["control"] > 0, means["control"], np.nan)


# estimator -> (means of the per-request statistics, task) -> estimate
ESTIMATORS: dict[str, Callable[[Means, str], np.ndarray]] = {
    "naive": lambda means, task: means[f"naive:{task}"],
    "ips": lambda means, task: means[f"ips:{task}"],
    "snips": _snips,
    "dm": lambda means, task: means[f"dm:{task}"],
    "dr": lambda means, task: means[f"dr:{task}"],
}


def means_of(statistics: Mapping[str, np.ndarray], counts: np.ndarray | None) -> dict[str, np.ndarray]:
    """Means over requests of (G,) statistics: a 0-d array each (counts None), or (B,) per
    bootstrap resample with counts (B, G)."""
    names = list(statistics)
    matrix = np.stack([statistics[n] for n in names], axis=1)  # (G, S)
    groups = matrix.shape[0]
    values = matrix.mean(axis=0) if counts is None else counts @ matrix / groups
    return {n: values[..., i] for i, n in enumerate(names)}


def jackknife_means(statistics: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(G,) leave-one-request-out means of each (G,) statistic: (sum - s_g) / (G - 1)."""
    out = {}
    for name, values in statistics.items():
        groups = values.size
        out[name] = (values.sum() - values) / max(groups - 1, 1)
    return out


def diagnostics(logs: LoggedRows, ranks: np.ndarray, k: int) -> Diagnostics | None:
    """The weights' diagnostics of the target ranking `ranks`; None without propensities."""
    if logs.exam_propensity is None:
        return None
    target_exam = logs.examination_at(ranks, k)
    pairs = target_exam > 0
    weights = importance_weights(logs, target_exam)
    supported = pairs & (weights > 0)
    total, squares = weights.sum(), np.square(weights).sum()
    return Diagnostics(pairs=int(pairs.sum()), support=float(supported.sum() / max(pairs.sum(), 1)),
                       ess=float(total**2 / squares) if squares > 0 else 0.0,
                       max_weight=float(weights.max()) if supported.any() else 0.0,
                       mean_weight=float(weights[supported].mean()) if supported.any() else 0.0)


def bca_interval(point: float, draws: np.ndarray, jackknife: np.ndarray, level: float) -> tuple[float, float]:
    """BCa interval (Efron 1987) from (B,) bootstrap draws and (G,) jackknife values:
    z0 = Phi^-1(share of draws below the point), a = sum d^3 / (6 (sum d^2)^1.5) with d the
    jackknife values' deviations from their mean, and the quantiles
    Phi(z0 + (z0 + z) / (1 - a (z0 + z))) for z = Phi^-1((1 -+ level) / 2). Percentile interval
    when the draws are degenerate; (NaN, NaN) without any finite draw."""
    finite = draws[np.isfinite(draws)]
    if finite.size == 0 or not np.isfinite(point):
        return float("nan"), float("nan")
    normal = NormalDist()
    below = (np.sum(finite < point) + 0.5 * np.sum(finite == point)) / finite.size
    jack = jackknife[np.isfinite(jackknife)]
    deviations = jack.mean() - jack if jack.size else np.zeros(1)
    spread = float(np.sum(deviations**2))
    if not 0 < below < 1 or spread == 0:
        quantiles = [(1 - level) / 2, (1 + level) / 2]
    else:
        z0 = normal.inv_cdf(float(below))
        acceleration = float(np.sum(deviations**3)) / (6.0 * spread**1.5)
        quantiles = []
        for z in (normal.inv_cdf((1 - level) / 2), normal.inv_cdf((1 + level) / 2)):
            shifted = z0 + z
            quantiles.append(normal.cdf(z0 + shifted / (1.0 - acceleration * shifted)))
    low, high = np.quantile(finite, quantiles)
    return float(low), float(high)
