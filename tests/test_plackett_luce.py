"""The logging policy of the synthetic feed: Plackett-Luce sampling and its exact marginals, checked
against full enumeration of the n! rankings and against sampling; and the feed's logged columns."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from multikpi.synthetic.feed import examination, feed_oracle, feed_policy_value, make_feed
from multikpi.synthetic.plackett_luce import position_marginals, sample_ranks


def _enumerated_marginals(utilities: np.ndarray) -> np.ndarray:
    """(n, n) P(item i at position k + 1) by summing the PL probability of every ranking."""
    n, weights = utilities.size, np.exp(utilities)
    pmf = np.zeros((n, n))
    for ranking in itertools.permutations(range(n)):
        probability, left = 1.0, weights.sum()
        for item in ranking:
            probability *= weights[item] / left
            left -= weights[item]
        pmf[list(ranking), np.arange(n)] += probability
    return pmf


@pytest.mark.parametrize("n, scale, temperature", [(2, 1.0, 1.0), (4, 0.3, 1.0), (5, 2.0, 0.5), (7, 1.0, 0.7),
                                                   (8, 3.0, 1.0), (6, 6.0, 1.0)])
def test_marginals_equal_enumeration(n, scale, temperature):
    rng = np.random.default_rng(n)
    scores = rng.normal(size=n) * scale
    exact = _enumerated_marginals(scores / temperature)
    every_position = np.tile(np.arange(1, n + 1), (n, 1))  # ask for each (item, position) pair in turn
    got = np.empty((n, n))
    for k in range(n):
        got[:, k], _ = position_marginals(scores, np.array([n]), temperature, every_position[:, k],
                                          np.ones(n))
    assert np.abs(got - exact).max() < 1e-5
    big = exact > 1e-4
    assert np.max(np.abs(got - exact)[big] / exact[big]) < 1e-3
    assert np.allclose(got.sum(axis=0), 1.0, atol=1e-6) and np.allclose(got.sum(axis=1), 1.0, atol=1e-9)


def test_weighted_marginal_and_sampling_agree():
    """30 requests of 10-40 items: the frequency of each item's position over 4,000 sampled
    rankings matches the exact marginal, and the mean of a position weight matches `expected`."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(10, 41, 30)
    request = np.repeat(np.arange(sizes.size), sizes)
    scores = rng.normal(size=request.size)
    curve = examination(np.arange(1, 41))
    draws = np.stack([sample_ranks(scores, request, 0.5, rng) for _ in range(4000)])  # (S, N)
    observed_first = (draws == 1).mean(axis=0)
    exact_first, expected = position_marginals(scores, sizes, 0.5, np.ones(request.size, dtype=np.int64), curve)
    se = np.sqrt(exact_first * (1 - exact_first) / 4000) + 1e-9
    assert np.max(np.abs(observed_first - exact_first) / se) < 5.0
    mean_weight = curve[draws - 1].mean(axis=0)
    se_weight = curve[draws - 1].std(axis=0) / np.sqrt(4000) + 1e-9
    assert np.max(np.abs(mean_weight - expected) / se_weight) < 5.0
    # the first position's probabilities are the softmax of the utilities, in closed form
    starts = np.cumsum(sizes) - sizes
    softmax = np.exp(scores / 0.5) / np.repeat(np.add.reduceat(np.exp(scores / 0.5), starts), sizes)
    assert exact_first == pytest.approx(softmax, abs=1e-6)


def test_infinite_temperature_is_uniform():
    sizes = np.array([3, 10])
    scores = np.arange(13, dtype=float)
    propensity, expected = position_marginals(scores, sizes, math.inf, np.ones(13, dtype=np.int64),
                                              np.arange(1.0, 11.0))
    assert propensity == pytest.approx(np.repeat(1.0 / sizes, sizes))
    assert expected == pytest.approx(np.repeat([2.0, 5.5], sizes))


def test_feed_logs_the_policy_it_ran():
    """The feed's propensity, examination and exam_propensity are those of its logging policy."""
    table = make_feed(3_000, seed=4)
    sizes = np.bincount(table["request_id"].to_numpy())
    position = table["position"].to_numpy()
    propensity, exam = position_marginals(table["logged_score"].to_numpy().astype(np.float64), sizes, 0.5,
                                          position, examination(np.arange(1, 51)))
    assert table["propensity"].to_numpy() == pytest.approx(propensity, rel=1e-5)
    assert table["exam_propensity"].to_numpy() == pytest.approx(exam, rel=1e-5)
    assert table["examination"].to_numpy() == pytest.approx(position ** -0.5)
    assert np.all((table["propensity"].to_numpy() > 0) & (table["propensity"].to_numpy() <= 1))
    uniform = make_feed(3_000, seed=4, temperature=math.inf)
    assert uniform["propensity"].to_numpy() == pytest.approx(np.repeat(1.0 / sizes, sizes))
    # another temperature orders the same candidates of the same requests differently
    for column in ("request_id", "item_id"):
        assert sorted(zip(table["request_id"].to_pylist(), table[column].to_pylist())) == \
            sorted(zip(uniform["request_id"].to_pylist(), uniform[column].to_pylist()))
    assert not np.array_equal(table["item_id"].to_numpy(), uniform["item_id"].to_numpy())


def test_clicks_follow_the_position_based_model():
    """On a position-randomised file the click rate at position p over the rate at 1 is the
    examination curve p ** -0.5, and conversions per click do not depend on the position."""
    table = make_feed(200_000, seed=9, temperature=math.inf)
    position, click = table["position"].to_numpy(), table["click"].to_numpy()
    convert = table["convert"].to_numpy()
    top = click[position == 1].mean()
    for p in (2, 5, 10):
        ratio = click[position == p].mean() / top
        assert ratio == pytest.approx(p ** -0.5, rel=0.12), p
    high, low = position <= 5, position >= 20
    cvr_high, cvr_low = convert[high & (click == 1)].mean(), convert[low & (click == 1)].mean()
    assert abs(cvr_high - cvr_low) < 0.03


def test_policy_value_oracle_for_the_logged_ranking():
    """For the logger's own ranking (rank = position), the true value of each KPI@k is the sum of
    the oracle's expectations at the logged positions, and the logged labels agree within noise."""
    n = 40_000
    table, oracle = make_feed(n, seed=6), feed_oracle(n, seed=6)
    request, position = table["request_id"].to_numpy(), table["position"].to_numpy()
    truth = feed_policy_value(oracle, request, position, 10)
    groups = np.unique(request).size
    top = position <= 10
    assert truth["click@10"] == pytest.approx(oracle["p_click"][top].sum() / groups)
    assert truth["convert@10"] == pytest.approx(oracle["p_convert"][top].sum() / groups)
    observed = table["click"].to_numpy()[top].sum() / groups
    assert abs(observed - truth["click@10"]) < 4 * np.sqrt(truth["click@10"] / groups)
    dwell_after_click = (table["dwell"].to_numpy() * table["click"].to_numpy())[top].sum() / groups
    assert dwell_after_click == pytest.approx(truth["dwell@10"], rel=0.1)
