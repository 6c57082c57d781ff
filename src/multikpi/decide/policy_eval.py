"""What a new ranking would do, estimated from logged data (off-policy evaluation), per KPI, with
bootstrap confidence intervals: `multikpi evaluate-policy` and `tune-decision --estimator`.

The estimators and the estimand are in `estimators.py`. This module reads them their inputs from
the logs and the run:

- the examination curve theta_p from the logs' `examination` column (one value per position; the
  built-in feed logs the true one, real logs a curve measured on a position-randomised slice),
  scaled so that theta_1 = 1;
- e_mu(i) from `exam_propensity` (sum_p mu(i at p | x) theta_p, on the curve's scale); without
  it only the naive count and DM are available;
- the KPI of each task: the click task's label, and for every other task its label on clicked
  rows (label * click): a conversion, or dwell, after a click;
- r^_t, the model's position-free estimate of E[KPI_t | examined], from the calibrated estimates:
  p_click for the click task; for a binary task p_t (p_click * p_t when it is `train_on` the
  click task); for a regression task p_click * estimate (exact in expectation when the task is
  `train_on` the click task and has no transform; otherwise an approximation that DR corrects).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from multikpi.decide.estimators import (
    ESTIMATOR_NAMES,
    ESTIMATORS,
    NEEDS_PROPENSITY,
    Diagnostics,
    LoggedRows,
    bca_interval,
    diagnostics,
    jackknife_means,
    logged_statistics,
    means_of,
    request_statistics,
    resample_counts,
)
from multikpi.decide.score import Candidates
from multikpi.errors import ConfigError, DataError
from multikpi.serve.predictor import Predictor

logger = logging.getLogger("multikpi")

POOR_SUPPORT = 0.95   # warn when fewer of the target's top-k pairs are supported
LOW_ESS_SHARE = 0.05  # warn when the effective sample size is below this share of the pairs


@dataclass(frozen=True)
class LogColumns:
    """Names of the logging columns in the logs."""

    position: str = "position"
    examination: str = "examination"
    exam_propensity: str = "exam_propensity"


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class PolicyValue:
    """One ranking's estimates: estimator -> kpi (`click@10`) -> point estimate, and the same for
    the (B,) bootstrap draws and the (G,) jackknife (leave-one-request-out) values; the weights'
    diagnostics (None without propensities)."""

    point: dict[str, dict[str, float]]
    draws: dict[str, dict[str, np.ndarray]]
    jackknife: dict[str, dict[str, np.ndarray]]
    diagnostics: Diagnostics | None = None

    def interval(self, estimator: str, kpi: str, level: float) -> Interval:
        point = self.point[estimator][kpi]
        low, high = bca_interval(point, self.draws[estimator][kpi], self.jackknife[estimator][kpi], level)
        return Interval(point, low, high)


def logged_rows(table: pa.Table, codes: np.ndarray, labels: Mapping[str, np.ndarray], click_task: str,
                columns: LogColumns, source: str) -> LoggedRows:
    """The logs' rows for the estimators (see the module docstring). labels: task -> (N,) label
    values (NaN where null), the click task among them."""
    position = _position(table, columns.position, source)
    curve = _examination_curve(table, columns.examination, position, source)
    propensity = None
    if columns.exam_propensity in table.column_names:
        propensity = _numeric(table, columns.exam_propensity, source) / curve[0]
        if np.any(propensity < 0):
            raise DataError(f"column {columns.exam_propensity!r} of {source!r} must hold probabilities >= 0. "
                            f"Got {float(np.nanmin(propensity) * curve[0]):.4g}")
    click = np.nan_to_num(labels[click_task], nan=0.0)
    kpis = {task: click if task == click_task else np.nan_to_num(values, nan=0.0) * click
            for task, values in labels.items()}
    return LoggedRows(codes, position, curve / curve[0], propensity, kpis)


def _numeric(table: pa.Table, column: str, source: str) -> np.ndarray:
    values = table.column(column)
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise DataError(f"column {column!r} of {source!r} must be numeric. Got {values.type}")
    return np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _position(table: pa.Table, column: str, source: str) -> np.ndarray:
    if column not in table.column_names:
        raise DataError(f"{source!r} has no position column {column!r}; off-policy estimates need the position "
                        f"each row was shown at (--position names it); it has {table.column_names}")
    values = _numeric(table, column, source)
    bad = ~np.isfinite(values) | (values < 1) | (values != np.round(values))
    if bad.any():
        raise DataError(f"position column {column!r} of {source!r} must hold whole numbers >= 1. Got "
                        f"{sorted(set(values[bad].tolist()))[:3]} ({int(bad.sum())} row(s))")
    return values.astype(np.int64)


def _examination_curve(table: pa.Table, column: str, position: np.ndarray, source: str) -> np.ndarray:
    """(P,) theta_p for p = 1..max position: one value per position, every position present."""
    if column not in table.column_names:
        raise DataError(f"{source!r} has no examination column {column!r}: the estimators need the probability "
                        f"that each position is examined (a curve measured on a position-randomised slice; "
                        f"--examination names the column)")
    values = _numeric(table, column, source)
    top = int(position.max())
    low = np.full(top, np.inf)
    high = np.full(top, -np.inf)
    np.minimum.at(low, position - 1, values)
    np.maximum.at(high, position - 1, values)
    missing = np.flatnonzero(~np.isfinite(low))
    if missing.size:
        raise DataError(f"{source!r} has no row at position(s) {(missing + 1).tolist()[:5]}: the examination "
                        f"curve is unknown there")
    if np.any(high - low > 1e-9 * np.maximum(high, 1.0)) or np.any(low <= 0) or np.any(high > 1):
        raise DataError(f"examination column {column!r} of {source!r} must hold one probability in (0, 1] per "
                        f"position. Got values from {float(low.min()):.4g} to {float(high.max()):.4g}")
    return low


def position_free_rewards(estimates: Mapping[str, np.ndarray], kinds: Mapping[str, str],
                          train_on: Mapping[str, str | None], click_task: str) -> dict[str, np.ndarray]:
    """task -> (N,) r^_t, the model's estimate of E[KPI_t | examined] (module docstring)."""
    click = np.asarray(estimates[click_task], dtype=np.float64)
    rewards = {}
    for task, values in estimates.items():
        values = np.asarray(values, dtype=np.float64)
        if task == click_task:
            rewards[task] = click
        elif kinds[task] == "binary" and train_on.get(task) != click_task:
            rewards[task] = values  # an unconditional conversion estimate already holds the click
        else:
            rewards[task] = click * values
    return rewards


def click_task(kinds: Mapping[str, str], click: str | None, source: str) -> str:
    """The task whose label is the click: `click`, else the first binary task."""
    binary = [t for t, kind in kinds.items() if kind == "binary"]
    if click is None and binary:
        return binary[0]
    if click is None or click not in binary:
        what = f"--click must name a binary task among {binary}. Got {click!r}" if click is not None else \
            f"off-policy estimates need a binary click task; the run's tasks are {dict(kinds)}"
        raise ConfigError([what], source=source)
    return click


def estimator_inputs(predictor: Predictor, candidates: Candidates, click: str, columns: LogColumns,
                     source: str) -> tuple[LoggedRows, dict[str, np.ndarray]]:
    """The logs' rows and the model's position-free rewards r^ for `candidates` (read with the
    labels and the logging columns), with a warning when the model reads the position as a
    feature or the logs have no propensities."""
    assert candidates.labels is not None, "read the candidates with_labels"
    if columns.position in predictor.feature_columns():
        logger.warning("the model reads %r as a feature, so its estimates are those at the logged position: "
                       "DM, and DR unless its model part is position-free, carry the logger's position effect; "
                       "train with `data.position: %s` instead", columns.position, columns.position)
    rows = logged_rows(candidates.table, candidates.codes, candidates.labels, click, columns, source)
    if rows.exam_propensity is None:
        logger.warning("%r has no %r column: IPS, SNIPS and DR need the logging policy's propensities; only "
                       "the naive count and DM (the model alone) are available", source, columns.exam_propensity)
    kinds = {t: s.kind for t, s in predictor.config.tasks.items()}
    train_on = {t: s.train_on for t, s in predictor.config.tasks.items()}
    return rows, position_free_rewards(candidates.estimates, kinds, train_on, click)


@dataclass
class PolicyEvaluator:
    """Every estimator of any target ranking on one set of logs, sharing one set of bootstrap
    resamples of the requests (so that two rankings' estimates are paired)."""

    logs: LoggedRows
    rewards_hat: dict[str, np.ndarray]
    k: int
    resamples: int = 1000
    seed: int = 0
    counts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.counts = resample_counts(self.logs.num_groups, self.resamples, self.seed)

    @property
    def estimators(self) -> tuple[str, ...]:
        """The estimators these logs allow: IPS, SNIPS and DR need `exam_propensity`."""
        if self.logs.exam_propensity is None:
            return tuple(e for e in ESTIMATOR_NAMES if e not in NEEDS_PROPENSITY)
        return ESTIMATOR_NAMES

    def kpi(self, task: str) -> str:
        return f"{task}@{self.k}"

    def estimate(self, ranks: np.ndarray, estimators: tuple[str, ...] | None = None) -> PolicyValue:
        """The estimates of the ranking `ranks` ((N,) 1-based rank of each row in its request)."""
        statistics = request_statistics(self.logs, ranks, self.k, self.rewards_hat)
        return self._value(statistics, estimators or self.estimators, diagnostics(self.logs, ranks, self.k))

    def logged(self) -> PolicyValue:
        """The logging policy's own value (on-policy: the KPI over the logged top k), as 'logged'."""
        statistics = logged_statistics(self.logs, self.k)
        point, draws, jack = means_of(statistics, None), means_of(statistics, self.counts), jackknife_means(statistics)
        tasks = list(self.logs.kpis)
        return PolicyValue({"logged": {self.kpi(t): float(point[f"logged:{t}"]) for t in tasks}},
                           {"logged": {self.kpi(t): draws[f"logged:{t}"] for t in tasks}},
                           {"logged": {self.kpi(t): jack[f"logged:{t}"] for t in tasks}})

    def _value(self, statistics: dict[str, np.ndarray], estimators: tuple[str, ...],
               weights: Diagnostics | None) -> PolicyValue:
        point, draws, jack = means_of(statistics, None), means_of(statistics, self.counts), jackknife_means(statistics)
        tasks = list(self.logs.kpis)
        with np.errstate(invalid="ignore", divide="ignore"):
            points = {e: {self.kpi(t): float(ESTIMATORS[e](point, t)) for t in tasks} for e in estimators}
            samples = {e: {self.kpi(t): np.asarray(ESTIMATORS[e](draws, t)) for t in tasks} for e in estimators}
            jackknife = {e: {self.kpi(t): np.asarray(ESTIMATORS[e](jack, t)) for t in tasks} for e in estimators}
        return PolicyValue(points, samples, jackknife, weights)


def lift(target: PolicyValue, baseline: PolicyValue, estimator: str, kpi: str, level: float,
         baseline_estimator: str | None = None) -> Interval:
    """Relative change target / baseline - 1 of one KPI, with the paired BCa interval (the two
    values come from the same resamples, and the same jackknife, of the requests)."""
    other = baseline_estimator or estimator
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.float64(target.point[estimator][kpi]) / np.float64(baseline.point[other][kpi]) - 1.0
        draws = target.draws[estimator][kpi] / baseline.draws[other][kpi] - 1.0
        jack = target.jackknife[estimator][kpi] / baseline.jackknife[other][kpi] - 1.0
    low, high = bca_interval(float(value), draws, jack, level)
    return Interval(float(value), low, high)


def support_warnings(value: PolicyValue, what: str, k: int) -> list[str]:
    """Warnings about the target's weights: poor support, few effective samples."""
    weights = value.diagnostics
    if weights is None or weights.pairs == 0:
        return []
    problems = []
    if weights.support < POOR_SUPPORT:
        problems.append(f"poor support for {what}: only {weights.support:.0%} of its top-{k} (request, item) pairs "
                        f"could have been shown by the logger where they are examined; IPS and SNIPS miss the "
                        f"rest (biased low) and DR leans on the model there")
    if weights.ess < LOW_ESS_SHARE * weights.pairs:
        problems.append(f"few effective samples for {what}: ESS {weights.ess:,.0f} of {weights.pairs:,} top-{k} "
                        f"pairs (max weight {weights.max_weight:.1f}); its intervals are unreliable")
    return problems


def policy_report(evaluator: PolicyEvaluator, target: PolicyValue, baseline: PolicyValue,
                  estimator: str, level: float) -> dict:
    """The JSON-able report of `evaluate-policy`: per KPI the logging policy's own value, every
    estimator's estimate for the target and the baseline, and the lift target / baseline - 1 by
    each estimator (a baseline that is the logging policy is compared with its logged value)."""
    logged = evaluator.logged()
    kpis = {}
    for task in evaluator.logs.kpis:
        kpi = evaluator.kpi(task)
        entry: dict = {"logged": logged.interval("logged", kpi, level).to_json()}
        entry["target"] = {e: target.interval(e, kpi, level).to_json() for e in target.point}
        if "logged" in baseline.point:
            entry["lift"] = {e: lift(target, baseline, e, kpi, level, "logged").to_json() for e in target.point}
        else:
            entry["baseline"] = {e: baseline.interval(e, kpi, level).to_json() for e in baseline.point}
            entry["lift"] = {e: lift(target, baseline, e, kpi, level).to_json() for e in target.point}
        kpis[kpi] = entry
    weights = {name: vars(value.diagnostics) for name, value in (("target", target), ("baseline", baseline))
               if value.diagnostics is not None}
    return {"k": evaluator.k, "requests": evaluator.logs.num_groups, "rows": int(evaluator.logs.codes.size),
            "level": level, "resamples": evaluator.resamples, "seed": evaluator.seed, "estimator": estimator,
            "estimators": list(evaluator.estimators), "kpis": kpis, "weights": weights}


class PolicyMetrics:
    """tune-decision's metrics by one off-policy estimator, at any cut-off k: `<task>@k` (the
    estimate), `<task>@k.lcb` and `<task>@k.ucb` (the interval's bounds at `level`), and the
    weights' `support@k` and `ess@k`. Every k shares the same bootstrap resamples."""

    def __init__(self, *, logs: LoggedRows, rewards_hat: dict[str, np.ndarray], estimator: str,
                 level: float = 0.95, resamples: int = 1000, seed: int = 0):
        self.logs, self.rewards_hat, self.level = logs, rewards_hat, level
        self.resamples, self.seed = resamples, seed
        self._evaluators: dict[int, PolicyEvaluator] = {}
        self.estimator = estimator if estimator in self._evaluator(1).estimators else "dm"
        if self.estimator != estimator:
            logger.warning("--estimator %s needs the logging policy's propensities; using dm instead", estimator)

    def _evaluator(self, k: int) -> PolicyEvaluator:
        if k not in self._evaluators:
            self._evaluators[k] = PolicyEvaluator(logs=self.logs, rewards_hat=self.rewards_hat, k=k,
                                                  resamples=self.resamples, seed=self.seed)
        return self._evaluators[k]

    def metrics(self, ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
        """Every metric of the ranking `ranks` ((N,) 1-based rank in its request) at each k."""
        out: dict[str, float] = {}
        for k in ks:
            evaluator = self._evaluator(k)
            value = evaluator.estimate(ranks, (self.estimator,))
            for task in self.logs.kpis:
                interval = value.interval(self.estimator, evaluator.kpi(task), self.level)
                out.update({f"{task}@{k}": interval.value, f"{task}@{k}.lcb": interval.low,
                            f"{task}@{k}.ucb": interval.high})
            if value.diagnostics is not None:
                out.update({f"support@{k}": value.diagnostics.support, f"ess@{k}": value.diagnostics.ess})
        return out
