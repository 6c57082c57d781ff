"""The hidden world of the synthetic feed: user, item, category, segment, hour and device tables
(attributes, effects and latent factors). Built from one random stream by `feed.py`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_USERS = 20_000
N_ITEMS = 30_000
N_CATEGORIES = 200
N_SEGMENTS = 12
DEVICES = ("ios", "android", "web")
LATENT_DIM = 8
LOG_PRICE_CENTER = 3.0


@dataclass(frozen=True, eq=False)
class World:
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


def sigmoid(x: np.ndarray) -> np.ndarray:
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


def user_tables(rng: np.random.Generator) -> dict[str, np.ndarray]:
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


def item_tables(rng: np.random.Generator) -> dict[str, np.ndarray]:
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


def context_tables(rng: np.random.Generator) -> dict[str, np.ndarray]:
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
