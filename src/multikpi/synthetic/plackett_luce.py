"""Plackett-Luce rankings: sampling, and the exact probability of every (item, position) pair.

A Plackett-Luce (PL) ranking of the n items of a request, with utilities a_i (weights
w_i = exp(a_i)), puts item i first with probability w_i / sum_j w_j, then picks the next item among
those left in the same way, and so on (Luce 1959, Plackett 1975). Equivalently (the Gumbel-max
trick), it sorts the items by a_i + G_i in decreasing order, with G_i iid standard Gumbel:
`sample_ranks` does that. A temperature tau divides the utilities (a_i = s_i / tau); tau = inf is a
uniformly random order.

Marginals. P(item i at position k + 1) = P(exactly k other items beat i). Given i's Gumbel draw
G_i, the others beat i independently; with v = exp(-G_i) ~ Exp(1),
P(j beats i | v) = 1 - exp(-v w_j / w_i). Substituting t = v / w_i:

    P(rank_i = k + 1) = int_0^inf w_i exp(-w_i t) [z^k] prod_{j != i} (e^{-t w_j} + (1 - e^{-t w_j}) z) dt

a Poisson-binomial pmf averaged over t. The product over all j is the same for every i (i's
polynomial is that product divided by i's own factor: a deflation, run forward or backward,
whichever is stable), and the integral is a trapezoid rule in u = log t. The integrand is smooth
(entire) and decays exponentially to the left and double-exponentially to the right, so the rule
converges geometrically: with a step of 0.4 the marginals are exact to ~1e-7. Cost per request of
n items: O(Q n^2) with Q ~ 75 nodes. `tests/test_plackett_luce.py` checks the marginals against
full enumeration of the n! rankings and against sampling.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["sample_ranks", "position_marginals"]

_STEP = 0.4           # trapezoid step in u = log t
_LEFT_TAIL = 12.0     # nodes start at log t = -12; the tail left of it is added in closed form
_RIGHT_TAIL = 3.8     # ... and right of -log(w) + 3.8 less than exp(-e^3.8) = e^-44
_CHUNK_ELEMENTS = 60_000  # requests per chunk: C * n * Q doubles per array at most (~0.5 MB)


def sample_ranks(utilities: np.ndarray, request: np.ndarray, temperature: float,
                 rng: np.random.Generator) -> np.ndarray:
    """(N,) 1-based PL ranks within each request (rows of a request contiguous, requests sorted).

    utilities: (N,) scores s_i; temperature: tau > 0 (inf = uniformly random order)."""
    gumbel = rng.gumbel(size=utilities.size)
    keys = gumbel if math.isinf(temperature) else utilities / temperature + gumbel
    order = np.lexsort((-keys, request))
    sizes = np.bincount(request)
    starts = np.cumsum(sizes) - sizes
    ranks = np.empty(utilities.size, dtype=np.int64)
    ranks[order] = np.arange(utilities.size) - starts[request[order]] + 1
    return ranks


def position_marginals(utilities: np.ndarray, sizes: np.ndarray, temperature: float,
                       positions: np.ndarray, position_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact PL marginals of the rows of contiguous requests.

    utilities: (N,) scores s_i; sizes: (R,) rows per request (sum = N); positions: (N,) 1-based
    position of each row; position_weights: (P,) a value per position 1..P, P >= max(sizes).

    Returns ((N,) P(row's item at its position), (N,) sum_p P(row's item at p) * position_weights[p-1])."""
    propensity = np.empty(utilities.size)
    expected = np.empty(utilities.size)
    starts = np.cumsum(sizes) - sizes
    blocks = []
    for n in np.unique(sizes[sizes > 0]):
        first = starts[sizes == n]
        rows = first[:, None] + np.arange(n)[None, :]  # (R_n, n) row indices
        per_chunk = max(1, _CHUNK_ELEMENTS // (int(n) * 75))
        blocks += [rows[begin:begin + per_chunk] for begin in range(0, len(first), per_chunk)]

    def run(block: np.ndarray) -> None:  # blocks hold disjoint rows: the threads never write the same element
        pmf = _request_pmfs(utilities[block], temperature)  # (C, n, n): item, position
        at = positions[block] - 1
        propensity[block] = np.take_along_axis(pmf, at[:, :, None], axis=2)[:, :, 0]
        expected[block] = pmf @ position_weights[:block.shape[1]]

    # NumPy releases the GIL in the array operations, so the chunks run in parallel on threads.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(run, blocks))
    return propensity, expected


def _request_pmfs(scores: np.ndarray, temperature: float) -> np.ndarray:
    """(C, n) scores of C requests of n items -> (C, n, n) P(item i at position k + 1)."""
    count, n = scores.shape
    if n == 1 or math.isinf(temperature):
        return np.full((count, n, n), 1.0 / n)
    utilities = scores / temperature
    utilities = utilities - utilities.max(axis=1, keepdims=True)
    weights = np.exp(utilities)  # (C, n) in (0, 1], the largest 1
    u = np.arange(-_LEFT_TAIL, -utilities.min() + _RIGHT_TAIL + _STEP, _STEP)  # (Q,) nodes in log t
    t_w = weights[:, :, None] * np.exp(u)[None, None, :]  # (C, n, Q): t * w_j
    stay = np.exp(-t_w)       # P(j does not beat i | t): the constant coefficient of j's factor
    beat = -np.expm1(-t_w)    # P(j beats i | t)
    product = _polynomial_product(stay, beat)  # (n + 1, C, 1, Q), the power of z first
    density = _STEP * t_w * stay               # (C, n, Q): trapezoid weight of w_i e^u exp(-w_i e^u)
    pmf = np.zeros((n, count, n))              # position - 1, request, item
    # Divide by i's own factor (stay_i + beat_i z) from the constant term where stay_i >= beat_i
    # (an error shrinks by beat/stay <= 1 per step), from the leading term elsewhere (by
    # stay/beat < 1). stay falls with the node: the first nodes need only the first pass, the last
    # ones only the second. Entries a pass must skip divide by 1 + 0 z instead (no overflow).
    forward = stay >= beat
    used = forward.any(axis=(0, 1))
    if used.any():
        end = int(np.flatnonzero(used)[-1]) + 1
        f = forward[..., :end]
        _accumulate(product[..., :end], np.where(f, stay[..., :end], 1.0), np.where(f, beat[..., :end], 0.0),
                    density[..., :end] * f, pmf, reverse=False)
    used = ~forward.all(axis=(0, 1))
    if used.any():
        start = int(np.flatnonzero(used)[0])
        b = ~forward[..., start:]
        _accumulate(product[::-1, ..., start:], np.where(b, beat[..., start:], 1.0),
                    np.where(b, stay[..., start:], 0.0), density[..., start:] * b, pmf, reverse=True)
    # Left of the first node (t -> 0) item i beats every other item: that tail of the density,
    # 1 - exp(-w_i t) at the first cell's edge, belongs to position 1 (exact up to O(t^2)).
    pmf[0] -= np.expm1(-weights * math.exp(u[0] - 0.5 * _STEP))
    pmf = np.clip(pmf.transpose(1, 2, 0), 0.0, None)
    return pmf / pmf.sum(axis=2, keepdims=True)


def _polynomial_product(stay: np.ndarray, beat: np.ndarray) -> np.ndarray:
    """prod_j (stay_j + beat_j z) per request and node: (C, n, Q) -> (n + 1, C, 1, Q) coefficients."""
    count, n, nodes = stay.shape
    coef = np.zeros((n + 1, count, 1, nodes))
    coef[0] = 1.0
    for j in range(n):
        a, b = stay[:, j:j + 1, :], beat[:, j:j + 1, :]
        shifted = coef[0:j + 1] * b
        coef[1:j + 2] *= a
        coef[1:j + 2] += shifted
        coef[0] *= a
    return coef


def _accumulate(coef: np.ndarray, lead: np.ndarray, second: np.ndarray, weight: np.ndarray,
                pmf: np.ndarray, reverse: bool) -> None:
    """pmf[k] += sum over nodes of weight * (coef / (lead + second z))_k, the quotient's
    coefficients from the constant term: q_0 = coef_0 / lead, q_k = (coef_k - second q_{k-1}) / lead.
    With `reverse`, coef is reversed and q_k is added to pmf[n - 1 - k] (a division from the
    leading term). coef (n + 1, C, 1, Q); lead, second, weight (C, n, Q); pmf (n, C, n)."""
    n = pmf.shape[0]
    inverse = 1.0 / lead
    quotient = coef[0] * inverse
    scratch = np.empty_like(quotient)
    for k in range(n):
        if k:
            np.multiply(second, quotient, out=scratch)
            np.subtract(coef[k], scratch, out=quotient)
            quotient *= inverse
        pmf[n - 1 - k if reverse else k] += np.einsum("cnq,cnq->cn", quotient, weight)
