"""The synthetic two-task regression data of the MMoE paper (Ma et al., KDD 2018, §3.2), whose
task relatedness is set by one number, the cosine p between the tasks' weight vectors.

    1. u1, u2 ∈ R^d: orthogonal unit vectors.
    2. w1 = c·u1,  w2 = c·(p·u1 + sqrt(1 − p²)·u2)          so cos(w1, w2) = p.
    3. x ∈ R^d with x_j ~ N(0, 1).
    4. y_t = w_tᵀx + Σ_{i=1..m} sin(α_i·w_tᵀx + β_i) + ε_t,  t = 1, 2.

With the paper's values: d = 100, c = 1, m = 10, α_i, β_i ~ N(0, 0.01) and ε_t ~ N(0, 0.01), where
N(μ, σ²) is written with its variance (standard deviation 0.1). α_i and β_i are shared by both
tasks. The *world* (u1, u2, α, β) depends only on `world_seed`, the rows only on `seed`, so a
train and a test file made with different seeds share one world.

Columns of `make_mmoe_synthetic`: x0..x{d-1} float32, then y1, y2 float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = ["MMoESyntheticWorld", "make_mmoe_synthetic", "mmoe_synthetic_arrays", "mmoe_synthetic_world"]

DIM = 100
NUM_SINES = 10
SCALE = 1.0
PARAM_STD = 0.1  # α_i, β_i ~ N(0, 0.01): variance 0.01
NOISE_STD = 0.1  # ε ~ N(0, 0.01): variance 0.01


@dataclass(frozen=True, eq=False)
class MMoESyntheticWorld:
    """The hidden parameters: w1, w2 (d,), cos(w1, w2) = correlation; alpha, beta (m,)."""

    correlation: float
    u1: np.ndarray
    u2: np.ndarray
    w1: np.ndarray
    w2: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray

    def label_means(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """E[y1 | x], E[y2 | x] for x (N, d): w_tᵀx + Σ_i sin(α_i·w_tᵀx + β_i)."""
        return self._mean(x @ self.w1), self._mean(x @ self.w2)

    def _mean(self, projection: np.ndarray) -> np.ndarray:
        return projection + np.sin(np.outer(projection, self.alpha) + self.beta).sum(axis=1)


def mmoe_synthetic_world(correlation: float, world_seed: int = 2018, dim: int = DIM,
                         num_sines: int = NUM_SINES) -> MMoESyntheticWorld:
    """The world of steps 1-2, with the α_i, β_i of step 4. `correlation` must be in [-1, 1]."""
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [-1, 1]. Got {correlation!r}")
    rng = np.random.default_rng([world_seed, 3, 2])
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))  # two orthonormal columns
    u1, u2 = q[:, 0], q[:, 1]
    w1 = SCALE * u1
    w2 = SCALE * (correlation * u1 + np.sqrt(1.0 - correlation**2) * u2)
    alpha = rng.normal(0.0, PARAM_STD, num_sines)
    beta = rng.normal(0.0, PARAM_STD, num_sines)
    return MMoESyntheticWorld(float(correlation), u1, u2, w1, w2, alpha, beta)


def mmoe_synthetic_arrays(rows: int, world: MMoESyntheticWorld, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x (rows, d) float32 and y (rows, 2) float32, steps 3-4 repeated `rows` times."""
    rng = np.random.default_rng([seed, 3, 2, 1])
    x = rng.standard_normal((rows, world.w1.shape[0]))
    means = np.stack(world.label_means(x), axis=1)
    y = means + rng.normal(0.0, NOISE_STD, means.shape)
    return x.astype(np.float32), y.astype(np.float32)


def make_mmoe_synthetic(rows: int, correlation: float, seed: int = 0, world_seed: int = 2018) -> pa.Table:
    """A table of `rows` rows: dense inputs x0..x99 and regression labels y1, y2."""
    world = mmoe_synthetic_world(correlation, world_seed)
    x, y = mmoe_synthetic_arrays(rows, world, seed)
    columns = {f"x{j}": pa.array(x[:, j]) for j in range(x.shape[1])}
    columns.update({"y1": pa.array(y[:, 0]), "y2": pa.array(y[:, 1])})
    return pa.table(columns)
