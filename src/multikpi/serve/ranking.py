"""The ranking core shared by the server and `multikpi rank`: one request's candidates ordered by
their fused score, and the formula a request asks for. NumPy only, so that `serve` needs nothing
from `decide` (which imports `clean_scores` from here: one definition of the order).

Order: by score descending; equal scores keep the candidates' input order (a stable sort); a NaN
score (e.g. the log of a negative estimate) sorts as -inf, last. Ranks are 1..N.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from multikpi.errors import ConfigError
from multikpi.formula import Formula, parse_formula


def clean_scores(scores: np.ndarray) -> np.ndarray:
    """(N,) float64 with NaN replaced by -inf, so that NaN sorts last."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(scores), -np.inf, scores)


def request_order(scores: np.ndarray) -> np.ndarray:
    """(N,) scores of one request's candidates -> (N,) candidate indices, best first (stable)."""
    return np.argsort(-clean_scores(scores), kind="stable")


@lru_cache(maxsize=256)
def request_formula(text: str, tasks: tuple[str, ...], what: str = "score") -> Formula:
    """Parse a fusion formula over `tasks` (cached: a server sees the same few formulas again and
    again). ConfigError (a FormulaError) naming `what` when it cannot be parsed or uses no task."""
    formula = parse_formula(text, tasks, what=what, source="rank", kind="tasks")
    if not formula.names:
        raise ConfigError([f"{what} must use at least one of the tasks {list(tasks)}. Got {text!r}"], source="rank")
    return formula
