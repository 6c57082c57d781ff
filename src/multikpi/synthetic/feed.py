"""Deterministic synthetic personalised-feed logs with a known ground truth.

A hidden *world* (user / item / category tables, latent factors and effect
tables, plus the label intercepts) depends only on ``world_seed``.  The rows of
a file are drawn from a random stream derived from ``seed`` (and
``world_seed``), so files made with different seeds share one world but hold
different rows, and the same arguments always give the same table.

Rows are grouped in requests (page views): each request has 10-50 candidate
rows (uniform size; the last request is truncated so the table has exactly
``n_rows`` rows).  Within a request the candidates are ordered by a noisy
logging ranker, so ``position`` is (realistically) confounded with relevance.

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
=============== ======= ========================================================

:func:`feed_oracle` returns, for the very same rows, the true ``p_click``,
``p_convert`` (= P(convert | features) = p_click * P(convert | click)),
``p_convert_given_click`` and ``dwell_log1p_mean`` (E[log1p(dwell) | features]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["make_feed", "feed_oracle"]

N_USERS = 20_000
N_ITEMS = 30_000
N_CATEGORIES = 200
N_SEGMENTS = 12
DEVICES = ("ios", "android", "web")
LATENT_DIM = 8
REQUEST_MIN, REQUEST_MAX = 10, 50
CLICK_RATE = 0.05
CONVERT_RATE = 0.004
MISSING_RATE = 0.05
CALIBRATION_ROWS = 40_000
LOG_PRICE_CENTER = 3.0
DWELL_SIGMA = 0.7

_WORLD_TAG, _CALIBRATION_TAG, _ROWS_TAG = 11, 23, 37


@dataclass(frozen=True, eq=False)
class _World:
    """Hidden ground truth shared by every file made with one ``world_seed``."""

    user_ids: np.ndarray
    user_p: np.ndarray
    user_segment: np.ndarray
    user_device: np.ndarray
    user_activity: np.ndarray
    user_click: np.ndarray
    user_cvr: np.ndarray
    user_dwell: np.ndarray
    user_vec: np.ndarray
    item_ids: np.ndarray
    item_p: np.ndarray
    item_category: np.ndarray
    item_log_price: np.ndarray
    item_age_mu: np.ndarray
    item_click: np.ndarray
    item_cvr: np.ndarray
    item_dwell: np.ndarray
    item_vec: np.ndarray
    cat_click: np.ndarray
    cat_cvr: np.ndarray
    seg_cat_click: np.ndarray
    seg_cvr: np.ndarray
    hour_p: np.ndarray
    hour_click: np.ndarray
    device_click: np.ndarray
    device_cvr: np.ndarray
    click_bias: float = 0.0
    cvr_bias: float = 0.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _zscore(x: np.ndarray) -> np.ndarray:
    """Standardise ``x`` to mean 0, standard deviation 1."""
    return (x - x.mean()) / x.std()


def _zipf_probs(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like probabilities over ``n`` values, randomly assigned to indices."""
    weights = rng.permutation(1.0 / np.arange(1, n + 1) ** exponent)
    return weights / weights.sum()


def _sparse_ids(n: int, base: int, max_gap: int, rng: np.random.Generator) -> np.ndarray:
    """Unique, increasing, sparse int64 raw ids."""
    return base + np.cumsum(rng.integers(1, max_gap, n, dtype=np.int64))


def _user_tables(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-user attributes, effects and latent factors."""
    user_p = _zipf_probs(N_USERS, 0.7, rng)
    log_activity = 1.5 + 0.6 * _zscore(np.log(user_p)) + 0.8 * rng.normal(size=N_USERS)
    activity_z = _zscore(log_activity)
    return {
        "user_ids": _sparse_ids(N_USERS, 100_000, 2_000, rng),
        "user_p": user_p,
        "user_segment": rng.choice(N_SEGMENTS, N_USERS, p=_zipf_probs(N_SEGMENTS, 0.9, rng)),
        "user_device": rng.choice(len(DEVICES), N_USERS, p=[0.4, 0.45, 0.15]),
        "user_activity": np.exp(log_activity).astype(np.float32),
        "user_click": 0.4 * rng.normal(size=N_USERS) + 0.12 * activity_z,
        "user_cvr": 0.5 * rng.normal(size=N_USERS) - 0.1 * activity_z,
        "user_dwell": 0.3 * rng.normal(size=N_USERS),
        "user_vec": rng.normal(size=(N_USERS, LATENT_DIM)) / LATENT_DIM**0.25,
    }


def _item_tables(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-item attributes, effects and latent factors."""
    item_p = _zipf_probs(N_ITEMS, 0.8, rng)
    category = rng.choice(N_CATEGORIES, N_ITEMS, p=_zipf_probs(N_CATEGORIES, 0.8, rng))
    cat_price = LOG_PRICE_CENTER + 0.8 * rng.normal(size=N_CATEGORIES)
    quality = rng.normal(size=N_ITEMS)
    pop_z = _zscore(np.log(item_p))
    return {
        "item_ids": _sparse_ids(N_ITEMS, 5_000_000, 5_000, rng),
        "item_p": item_p,
        "item_category": category,
        "item_log_price": cat_price[category] + 0.6 * rng.normal(size=N_ITEMS),
        "item_age_mu": np.log(48.0) + 1.0 * rng.normal(size=N_ITEMS),
        "item_click": 0.42 * quality + 0.1 * pop_z,
        "item_cvr": 0.3 * quality + 0.4 * rng.normal(size=N_ITEMS),
        "item_dwell": 0.25 * quality + 0.3 * rng.normal(size=N_ITEMS),
        "item_vec": rng.normal(size=(N_ITEMS, LATENT_DIM)) / LATENT_DIM**0.25,
    }


def _context_tables(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Category, segment, hour and device tables."""
    hours = np.arange(24)
    diurnal = 1.0 + 0.8 * np.sin(2 * np.pi * (hours - 14) / 24) + 0.1 * rng.random(24)
    return {
        "cat_click": 0.4 * rng.normal(size=N_CATEGORIES),
        "cat_cvr": 0.5 * rng.normal(size=N_CATEGORIES),
        "seg_cat_click": 0.25 * rng.normal(size=(N_SEGMENTS, N_CATEGORIES)),
        "seg_cvr": 0.4 * rng.normal(size=N_SEGMENTS),
        "hour_p": diurnal / diurnal.sum(),
        "hour_click": 0.25 * np.sin(2 * np.pi * (hours - 20) / 24) + 0.05 * rng.normal(size=24),
        "device_click": np.array([0.1, 0.0, -0.25]),
        "device_cvr": np.array([0.35, -0.1, 0.1]),
    }


def _draw_requests(n_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Request sizes (last one truncated) and the request index of every row."""
    sizes = rng.integers(REQUEST_MIN, REQUEST_MAX + 1, n_rows // REQUEST_MIN + 1)
    ends = np.cumsum(sizes)
    n_requests = int(np.searchsorted(ends, n_rows)) + 1
    sizes = sizes[:n_requests].copy()
    sizes[-1] -= ends[n_requests - 1] - n_rows
    return sizes, np.repeat(np.arange(n_requests, dtype=np.int64), sizes)


def _draw_rows(world: _World, n_rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw requests, candidates and row-level covariates (no labels)."""
    sizes, req = _draw_requests(n_rows, rng)
    n_req = sizes.size
    user_r = rng.choice(N_USERS, n_req, p=world.user_p)
    device_r = np.where(rng.random(n_req) < 0.85, world.user_device[user_r],
                        rng.integers(0, len(DEVICES), n_req))
    hour_r = rng.choice(24, n_req, p=world.hour_p)
    user = user_r[req]
    item = rng.choice(N_ITEMS, n_rows, p=world.item_p)
    inter = np.einsum("ij,ij->i", world.user_vec[user], world.item_vec[item])
    ranker = 0.3 * np.log(world.item_p[item] * N_ITEMS) + 0.5 * inter + rng.normal(size=n_rows)
    order = np.lexsort((-ranker, req))
    item, inter = item[order], inter[order]
    starts = np.cumsum(sizes) - sizes
    return {
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


def _logits(world: _World, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """True click / convert-given-click logits and dwell log-means, per row."""
    u, i, inter = rows["user"], rows["item"], rows["inter"]
    cat, seg = world.item_category[i], world.user_segment[u]
    z_price = world.item_log_price[i] - LOG_PRICE_CENTER
    freshness = np.exp(-rows["age"] / 24.0)
    click = (world.user_click[u] + world.item_click[i] + world.cat_click[cat]
             + world.seg_cat_click[seg, cat] + world.device_click[rows["device"]]
             + world.hour_click[rows["hour"]] - 0.3 * np.log(rows["position"])
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


def _calibrate(world: _World, world_seed: int) -> _World:
    """Set the label intercepts so the rates hit their targets on a fixed sample."""
    rng = np.random.default_rng([_CALIBRATION_TAG, world_seed])
    logits = _logits(world, _draw_rows(world, CALIBRATION_ROWS, rng))
    click_bias = _bisect(lambda b: float(_sigmoid(logits["click"] + b).mean()), CLICK_RATE)
    p_click = _sigmoid(logits["click"] + click_bias)
    cvr_bias = _bisect(lambda b: float((p_click * _sigmoid(logits["cvr"] + b)).mean()),
                       CONVERT_RATE)
    return replace(world, click_bias=click_bias, cvr_bias=cvr_bias)


def _build_world(world_seed: int) -> _World:
    """Build the hidden world (tables + calibrated intercepts) from ``world_seed``."""
    rng = np.random.default_rng([_WORLD_TAG, world_seed])
    tables = {**_user_tables(rng), **_item_tables(rng), **_context_tables(rng)}
    return _calibrate(_World(**tables), world_seed)  # type: ignore[arg-type]


def _simulate(n_rows: int, seed: int, world_seed: int) -> dict[str, Any]:
    """Draw rows and labels; return world, rows, logits, probabilities and labels."""
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    world = _build_world(world_seed)
    rng = np.random.default_rng([_ROWS_TAG, world_seed, seed])
    rows = _draw_rows(world, n_rows, rng)
    logits = _logits(world, rows)
    p_click, p_cvr = _sigmoid(logits["click"]), _sigmoid(logits["cvr"])
    click = rng.random(n_rows) < p_click
    convert = click & (rng.random(n_rows) < p_cvr)
    log_dwell = np.where(click, logits["dwell1"], logits["dwell0"])
    dwell = np.exp(log_dwell + DWELL_SIGMA * rng.normal(size=n_rows))
    return {"world": world, "rows": rows, "logits": logits, "p_click": p_click,
            "p_cvr": p_cvr, "click": click, "convert": convert, "dwell": dwell}


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
    }
    return pa.table(columns)


def make_feed(n_rows: int, seed: int = 0, world_seed: int = 2024) -> pa.Table:
    """Generate ``n_rows`` synthetic feed impressions (see module docstring).

    Args:
        n_rows: exact number of rows (>= 0).
        seed: non-negative seed of the row stream (different files, one world).
        world_seed: non-negative seed of the hidden world.

    Returns:
        A ``pyarrow.Table`` with the columns listed in the module docstring.
    """
    return _to_table(_simulate(n_rows, seed, world_seed))


def _expected_log1p(mu: np.ndarray, sigma: float, n_nodes: int = 24) -> np.ndarray:
    """E[log1p(exp(mu + sigma * Z))], Z ~ N(0, 1), by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    values = np.logaddexp(0.0, mu[:, None] + sigma * nodes[None, :])
    return values @ (weights / weights.sum())


def feed_oracle(n_rows: int, seed: int = 0, world_seed: int = 2024) -> dict[str, np.ndarray]:
    """Ground-truth expectations for the rows of ``make_feed(n_rows, seed, world_seed)``.

    Returns:
        ``p_click``: P(click | features); ``p_convert``: P(convert | features)
        (unconditional on click); ``p_convert_given_click``: P(convert | click,
        features); ``dwell_log1p_mean``: E[log1p(dwell) | features].  All float64
        arrays of length ``n_rows``, aligned with the table rows.
    """
    sim = _simulate(n_rows, seed, world_seed)
    p_click, p_cvr, logits = sim["p_click"], sim["p_cvr"], sim["logits"]
    dwell0 = _expected_log1p(logits["dwell0"], DWELL_SIGMA)
    dwell1 = _expected_log1p(logits["dwell1"], DWELL_SIGMA)
    return {
        "p_click": p_click,
        "p_convert": p_click * p_cvr,
        "p_convert_given_click": p_cvr,
        "dwell_log1p_mean": p_click * dwell1 + (1.0 - p_click) * dwell0,
    }
