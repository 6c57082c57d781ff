"""Deterministic synthetic personalised-feed logs with a known ground truth.

A hidden *world* (user / item / category tables, latent factors and effect
tables, plus the label intercepts) depends only on ``world_seed``.  The rows of
a file are drawn from a random stream derived from ``seed`` (and
``world_seed``), so files made with different seeds share one world but hold
different rows, and the same arguments always give the same table.

Rows are grouped in requests (page views): each request has 10-50 candidate
rows (uniform size; the last request is truncated so the table has exactly
``n_rows`` rows), every candidate shown at one position 1..n.

Logging policy. The logger scores each candidate (``logged_score``: popularity,
the user-item affinity and the logger's own noise) and samples the order of the
request from a Plackett-Luce distribution over ``logged_score / temperature``
(``temperature`` inf: a uniformly random order). So ``position`` is
(realistically) confounded with relevance, and every order has a known
probability: ``propensity`` is the exact marginal probability that the logger
puts the row's item at the row's position (see ``plackett_luce.py``).

Clicks follow the position-based model (PBM): a user examines position p with
probability ``examination(p) = p ** -EXAMINATION_POWER`` (1 at the top),
independently of the item, and clicks an examined item with its attractiveness
``p_click_examined``; P(click) = examination(p) * attractiveness. Conversions
happen only after a click, with a probability that does not depend on the
position; so does the dwell after a click. ``exam_propensity`` is the probability
that the row's item is examined under the logging policy,
sum_p P(item at p) * examination(p).

Columns of :func:`make_feed` (in this order):

=============== ======= ========================================================
column          dtype   meaning
=============== ======= ========================================================
request_id      int64   request / page-view index (0..R-1 within the file)
user_id         int64   sparse raw user id (~20k users, Zipf activity)
device          string  "ios", "android" or "web" (per request)
hour            int64   hour of day 0..23 (per request, diurnal profile)
position        int64   1..k slot of the row within its request
item_id         int64   sparse raw item id (~30k items, Zipf popularity)
item_category   string  "cat_<j>", ~200 values, attribute of the item
user_segment    string  "seg_<j>", 12 values, attribute of the user
price           float32 item price, log-normal, heavy tail (item attribute)
item_age_h      float32 item age in hours at impression, log-normal, ~5% NaN
user_activity   float32 heavy-tailed activity level (user attribute)
affinity        float32 noisy estimate of the user-item latent affinity, ~5% NaN
noise           float32 pure N(0, 1) noise, carries no signal
click           int8    1 if clicked (~5% of rows)
dwell           float32 dwell seconds, log-normal, every row; larger on clicks
convert         int8    1 if converted (~0.4% of rows, ~8% of clicks); 0 unless
                        ``click`` is 1
logged_score    float32 the logging policy's score of the row
propensity      float64 P(the logger puts this item at this position)
examination     float64 examination probability of the row's position (PBM)
exam_propensity float64 P(this item is examined) under the logging policy
=============== ======= ========================================================

:func:`feed_oracle` returns, for the very same rows, the true ``p_click``,
``p_convert`` (= P(convert | features) = p_click * P(convert | click)),
``p_convert_given_click`` and ``dwell_log1p_mean`` (E[log1p(dwell) | features]),
all at the row's logged position, and the position-free ``p_click_examined``,
``examination`` and ``dwell_given_click_mean`` (E[dwell | click]).
:func:`feed_policy_value` gives the true expected KPIs@k of any ranking of the
same rows: the oracle of the off-policy estimators.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from multikpi.synthetic._feed_world import (
    DEVICES,
    LOG_PRICE_CENTER,
    N_CATEGORIES,
    N_ITEMS,
    N_SEGMENTS,
    N_USERS,
    World,
    context_tables,
    item_tables,
    sigmoid,
    user_tables,
)
from multikpi.synthetic.plackett_luce import position_marginals, sample_ranks

__all__ = ["make_feed", "feed_oracle", "feed_policy_value", "examination", "LOGGING_TEMPERATURE"]

REQUEST_MIN, REQUEST_MAX = 10, 50
CLICK_RATE = 0.05
CONVERT_RATE = 0.004
MISSING_RATE = 0.05
CALIBRATION_ROWS = 40_000
DWELL_SIGMA = 0.7
EXAMINATION_POWER = 0.5     # examination(p) = p ** -0.5: 1 at the top, 0.32 at position 10, 0.14 at 50
LOGGING_TEMPERATURE = 0.5   # Plackett-Luce temperature of the logging policy
LOGGER_NOISE = 0.5          # sd of the logger's own noise in logged_score

_WORLD_TAG, _CALIBRATION_TAG, _ROWS_TAG, _LOGGER_TAG = 11, 23, 37, 41


def _draw_requests(n_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Request sizes (last one truncated) and the request index of every row."""
    sizes = rng.integers(REQUEST_MIN, REQUEST_MAX + 1, n_rows // REQUEST_MIN + 1)
    ends = np.cumsum(sizes)
    n_requests = int(np.searchsorted(ends, n_rows)) + 1
    sizes = sizes[:n_requests].copy()
    sizes[-1] -= ends[n_requests - 1] - n_rows
    return sizes, np.repeat(np.arange(n_requests, dtype=np.int64), sizes)


def examination(position: np.ndarray) -> np.ndarray:
    """(N,) probability that a user examines each 1-based position (the PBM's position effect)."""
    return np.asarray(position, dtype=np.float64) ** -EXAMINATION_POWER


def _draw_rows(world: World, n_rows: int, rng: np.random.Generator, temperature: float,
               logger_rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw requests and candidates, order each request with the logging policy (Plackett-Luce
    over logged_score / temperature, from `logger_rng`), and draw row-level covariates (no labels)."""
    sizes, req = _draw_requests(n_rows, rng)
    n_req = sizes.size
    user_r = rng.choice(N_USERS, n_req, p=world.user_p)
    device_r = np.where(rng.random(n_req) < 0.85, world.user_device[user_r],
                        rng.integers(0, len(DEVICES), n_req))
    hour_r = rng.choice(24, n_req, p=world.hour_p)
    user = user_r[req]
    item = rng.choice(N_ITEMS, n_rows, p=world.item_p)
    inter = np.einsum("ij,ij->i", world.user_vec[user], world.item_vec[item])
    logged = 0.3 * np.log(world.item_p[item] * N_ITEMS) + 0.5 * inter + LOGGER_NOISE * rng.normal(size=n_rows)
    order = np.lexsort((sample_ranks(logged, req, temperature, logger_rng), req))
    item, inter, logged = item[order], inter[order], logged[order]
    starts = np.cumsum(sizes) - sizes
    return {
        "sizes": sizes,
        "logged_score": logged,
        "request": req,
        "user": user,
        "device": device_r[req],
        "hour": hour_r[req],
        "position": np.arange(n_rows, dtype=np.int64) - starts[req] + 1,
        "item": item,
        "inter": inter,
        "age": np.exp(world.item_age_mu[item] + 0.6 * rng.normal(size=n_rows)),
        "affinity": inter + 0.6 * rng.normal(size=n_rows),
        "noise": rng.normal(size=n_rows),
        "age_missing": rng.random(n_rows) < MISSING_RATE,
        "affinity_missing": rng.random(n_rows) < MISSING_RATE,
    }


def _logits(world: World, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """True attractiveness (click given examined) / convert-given-click logits and dwell log-means,
    per row. None of them depends on the position."""
    u, i, inter = rows["user"], rows["item"], rows["inter"]
    cat, seg = world.item_category[i], world.user_segment[u]
    z_price = world.item_log_price[i] - LOG_PRICE_CENTER
    freshness = np.exp(-rows["age"] / 24.0)
    click = (world.user_click[u] + world.item_click[i] + world.cat_click[cat]
             + world.seg_cat_click[seg, cat] + world.device_click[rows["device"]]
             + world.hour_click[rows["hour"]]
             + 0.35 * inter + 0.12 * np.maximum(inter, 0.0) ** 2
             - 0.15 * z_price - 0.2 * z_price**2 + 0.6 * freshness + world.click_bias)
    cvr = (world.user_cvr[u] + world.item_cvr[i] + world.cat_cvr[cat]
           + world.seg_cvr[seg] + world.device_cvr[rows["device"]]
           + 0.5 * inter - 0.9 * z_price - 0.2 * np.maximum(z_price, 0.0) ** 2
           + world.cvr_bias)
    dwell0 = 1.0 + world.user_dwell[u] + world.item_dwell[i]
    dwell1 = dwell0 + 1.8 + 0.25 * inter + 0.15 * z_price
    return {"click": click, "cvr": cvr, "dwell0": dwell0, "dwell1": dwell1}


def _bisect(fn: Callable[[float], float], target: float, lo: float = -30.0,
            hi: float = 30.0, iters: int = 60) -> float:
    """Solve ``fn(x) == target`` for increasing ``fn`` by bisection."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fn(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def _calibrate(world: World, world_seed: int) -> World:
    """Set the label intercepts so the rates hit their targets on a fixed sample logged with the
    default logging policy (the world does not depend on the temperature of a file)."""
    rng = np.random.default_rng([_CALIBRATION_TAG, world_seed])
    rows = _draw_rows(world, CALIBRATION_ROWS, rng, LOGGING_TEMPERATURE,
                      np.random.default_rng([_CALIBRATION_TAG, _LOGGER_TAG, world_seed]))
    logits, seen = _logits(world, rows), examination(rows["position"])
    click_bias = _bisect(lambda b: float((seen * sigmoid(logits["click"] + b)).mean()), CLICK_RATE)
    p_click = seen * sigmoid(logits["click"] + click_bias)
    cvr_bias = _bisect(lambda b: float((p_click * sigmoid(logits["cvr"] + b)).mean()),
                       CONVERT_RATE)
    return replace(world, click_bias=click_bias, cvr_bias=cvr_bias)


@lru_cache(maxsize=4)
def _build_world(world_seed: int) -> World:
    """Build the hidden world (tables + calibrated intercepts) from ``world_seed``. Cached: the
    world is immutable (frozen, and no caller writes into its arrays)."""
    rng = np.random.default_rng([_WORLD_TAG, world_seed])
    tables = {**user_tables(rng), **item_tables(rng), **context_tables(rng)}
    return _calibrate(World(**tables), world_seed)  # type: ignore[arg-type]


def _simulate(n_rows: int, seed: int, world_seed: int, temperature: float) -> dict[str, Any]:
    """Draw rows and labels; return world, rows, logits, probabilities and labels."""
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (inf: a uniformly random order), got {temperature}")
    world = _build_world(world_seed)
    rng = np.random.default_rng([_ROWS_TAG, world_seed, seed])
    rows = _draw_rows(world, n_rows, rng, temperature, np.random.default_rng([_LOGGER_TAG, world_seed, seed]))
    logits = _logits(world, rows)
    attract, p_cvr = sigmoid(logits["click"]), sigmoid(logits["cvr"])
    seen = examination(rows["position"])
    p_click = seen * attract
    click = rng.random(n_rows) < p_click
    convert = click & (rng.random(n_rows) < p_cvr)
    log_dwell = np.where(click, logits["dwell1"], logits["dwell0"])
    dwell = np.exp(log_dwell + DWELL_SIGMA * rng.normal(size=n_rows))
    return {"world": world, "rows": rows, "logits": logits, "p_click": p_click, "attract": attract,
            "examination": seen, "p_cvr": p_cvr, "click": click, "convert": convert, "dwell": dwell,
            "temperature": temperature}


def _strings(prefix_or_names: str | tuple[str, ...], n: int, idx: np.ndarray) -> pa.Array:
    """Arrow string column from integer codes (``prefix_<j>`` or explicit names)."""
    if isinstance(prefix_or_names, str):
        names = [f"{prefix_or_names}_{j}" for j in range(n)]
    else:
        names = list(prefix_or_names)
    return pa.array(names, type=pa.string()).take(pa.array(idx.astype(np.int64)))


def _masked(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """float32 copy of ``values`` with NaN where ``missing``."""
    return np.where(missing, np.nan, values).astype(np.float32)


def _to_table(sim: dict[str, Any]) -> pa.Table:
    """Assemble the public Arrow table from a simulation."""
    world, rows = sim["world"], sim["rows"]
    u, i = rows["user"], rows["item"]
    columns = {
        "request_id": rows["request"].astype(np.int64),
        "user_id": world.user_ids[u],
        "device": _strings(DEVICES, len(DEVICES), rows["device"]),
        "hour": rows["hour"].astype(np.int64),
        "position": rows["position"].astype(np.int64),
        "item_id": world.item_ids[i],
        "item_category": _strings("cat", N_CATEGORIES, world.item_category[i]),
        "user_segment": _strings("seg", N_SEGMENTS, world.user_segment[u]),
        "price": np.exp(world.item_log_price[i]).astype(np.float32),
        "item_age_h": _masked(rows["age"], rows["age_missing"]),
        "user_activity": world.user_activity[u],
        "affinity": _masked(rows["affinity"], rows["affinity_missing"]),
        "noise": rows["noise"].astype(np.float32),
        "click": sim["click"].astype(np.int8),
        "dwell": sim["dwell"].astype(np.float32),
        "convert": sim["convert"].astype(np.int8),
        **_logging_columns(sim),
    }
    return pa.table(columns)


def _logging_columns(sim: dict[str, Any]) -> dict[str, np.ndarray]:
    """logged_score, propensity (exact PL marginal of the row's item at its position),
    examination and exam_propensity (sum_p P(item at p) * examination(p))."""
    rows = sim["rows"]
    logged = rows["logged_score"]
    curve = examination(np.arange(1, REQUEST_MAX + 1))
    propensity, exam_propensity = position_marginals(logged, rows["sizes"], sim["temperature"],
                                                     rows["position"], curve)
    return {"logged_score": logged.astype(np.float32), "propensity": propensity,
            "examination": sim["examination"], "exam_propensity": exam_propensity}


def make_feed(n_rows: int, seed: int = 0, world_seed: int = 2024,
              temperature: float = LOGGING_TEMPERATURE) -> pa.Table:
    """Generate ``n_rows`` synthetic feed impressions (see module docstring).

    Args:
        n_rows: exact number of rows (>= 0).
        seed: non-negative seed of the row stream (different files, one world).
        world_seed: non-negative seed of the hidden world.
        temperature: the logging policy's Plackett-Luce temperature (> 0; ``math.inf``: every
            request in a uniformly random order, a position-randomised slice). The same seed with
            another temperature gives the same requests and candidates in another order.

    Returns:
        A ``pyarrow.Table`` with the columns listed in the module docstring.
    """
    return _to_table(_simulate(n_rows, seed, world_seed, temperature))


def _expected_log1p(mu: np.ndarray, sigma: float, n_nodes: int = 24) -> np.ndarray:
    """E[log1p(exp(mu + sigma * Z))], Z ~ N(0, 1), by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    values = np.logaddexp(0.0, mu[:, None] + sigma * nodes[None, :])
    return values @ (weights / weights.sum())


def feed_oracle(n_rows: int, seed: int = 0, world_seed: int = 2024,
                temperature: float = LOGGING_TEMPERATURE) -> dict[str, np.ndarray]:
    """Ground-truth expectations for the rows of ``make_feed(n_rows, seed, world_seed, temperature)``.

    Returns:
        At the row's logged position: ``p_click``: P(click | features); ``p_convert``:
        P(convert | features) (unconditional on click); ``p_convert_given_click``:
        P(convert | click, features); ``dwell_log1p_mean``: E[log1p(dwell) | features].
        Position-free: ``p_click_examined``: P(click | examined, features), the
        attractiveness; ``dwell_given_click_mean``: E[dwell | click, features]; and
        ``examination``: the examination probability of the row's position. All float64
        arrays of length ``n_rows``, aligned with the table rows.
    """
    sim = _simulate(n_rows, seed, world_seed, temperature)
    p_click, p_cvr, logits = sim["p_click"], sim["p_cvr"], sim["logits"]
    dwell0 = _expected_log1p(logits["dwell0"], DWELL_SIGMA)
    dwell1 = _expected_log1p(logits["dwell1"], DWELL_SIGMA)
    return {
        "p_click": p_click,
        "p_convert": p_click * p_cvr,
        "p_convert_given_click": p_cvr,
        "dwell_log1p_mean": p_click * dwell1 + (1.0 - p_click) * dwell0,
        "p_click_examined": sim["attract"],
        "examination": sim["examination"],
        "dwell_given_click_mean": np.exp(logits["dwell1"] + 0.5 * DWELL_SIGMA**2),
    }


def feed_policy_value(oracle: dict[str, np.ndarray], request_id: np.ndarray, ranks: np.ndarray,
                      k: int) -> dict[str, float]:
    """The true expected KPIs@k of a deterministic ranking of the rows of an oracle's file.

    ranks: (N,) the target ranking's 1-based rank of each row within its request (the rows of
    ``request_id``, aligned with the oracle). Under the PBM the item at rank j <= k is examined
    with probability examination(j), whatever the logger did, so per request

        click@k   = sum_{j <= k} examination(j) * p_click_examined(item at j)
        convert@k = sum_{j <= k} examination(j) * p_click_examined * P(convert | click)
        dwell@k   = sum_{j <= k} examination(j) * p_click_examined * E[dwell | click]

    (dwell after clicks, in seconds), each averaged over the requests.
    """
    ranks = np.asarray(ranks)
    top = ranks <= k
    gain = np.where(top, examination(np.where(top, ranks, 1)), 0.0) * oracle["p_click_examined"]
    requests = np.unique(np.asarray(request_id)).size
    per_kpi = {"click": gain, "convert": gain * oracle["p_convert_given_click"],
               "dwell": gain * oracle["dwell_given_click_mean"]}
    return {f"{name}@{k}": float(values.sum() / max(requests, 1)) for name, values in per_kpi.items()}
