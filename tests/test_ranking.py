"""Ranking within groups and the offline ranking metrics: hand-made examples with hand-computed
values, and parity with scikit-learn's ndcg_score / roc_auc_score applied group by group."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from multikpi.decide.ranking import group_auc, kpi_at_k, ndcg_at_k, rank_groups, ranking_metrics

# Two groups, given out of order; group "b" has a tie (rows 1 and 3) and a NaN score (row 5).
GROUPS = np.array(["b", "a", "b", "b", "a", "b", "a"])
SCORES = np.array([0.9, 0.2, 0.1, 0.9, 0.7, np.nan, 0.5])


def test_ranks_within_groups_descending_ties_by_row_order_nan_last():
    ranking = rank_groups(GROUPS, SCORES)
    # a: rows 4 (0.7), 6 (0.5), 1 (0.2); b: rows 0 and 3 tie at 0.9 -> row order, then 2, then 5 (NaN)
    assert ranking.ranks.tolist() == [1, 3, 3, 2, 1, 4, 2]
    assert ranking.order.tolist() == [4, 6, 1, 0, 3, 2, 5]
    assert ranking.sizes.tolist() == [3, 4] and ranking.codes.tolist() == [1, 0, 1, 1, 0, 1, 0]


def test_integer_groups_and_a_single_group():
    ranking = rank_groups(np.array([7, 7, 7]), np.array([1.0, 3.0, 2.0]))
    assert ranking.ranks.tolist() == [3, 1, 2] and ranking.num_groups == 1


def test_kpi_at_k_by_hand():
    clicks = np.array([1, 0, 1, 0, 1, 1, 0], dtype=float)
    ranking = rank_groups(GROUPS, SCORES)
    # top 2 of a = rows 4, 6 -> 1 + 0; top 2 of b = rows 0, 3 -> 1 + 0
    assert kpi_at_k(ranking, clicks, 2).tolist() == [1.0, 1.0]
    # top 3 of b adds row 2 (1); a has only 3 rows
    assert kpi_at_k(ranking, clicks, 3).tolist() == [1.0, 2.0]
    assert kpi_at_k(ranking, np.array([np.nan, 0, 1, 0, 1, 1, 0]), 2).tolist() == [1.0, 0.0]  # NaN counts 0


def test_ndcg_by_hand():
    ranking = rank_groups(np.array([0, 0, 0, 1, 1]), np.array([3.0, 2.0, 1.0, 2.0, 1.0]))
    gains = np.array([0.0, 1.0, 1.0, 0.0, 0.0])
    ndcg = ndcg_at_k(ranking, gains, 2)
    dcg = 1 / math.log2(3)                # the positive at rank 2
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg[0] == pytest.approx(dcg / idcg)
    assert math.isnan(ndcg[1])            # no positive: skipped
    graded = ndcg_at_k(ranking, np.array([5.0, 10.0, 0.0, 1.0, 3.0]), 3)
    assert graded[0] == pytest.approx((5 + 10 / math.log2(3)) / (10 + 5 / math.log2(3)))
    assert graded[1] == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))


def test_gauc_by_hand_with_a_tie():
    codes = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.8, 0.4, 0.4, 0.1, 0.5, 0.6])
    labels = np.array([1, 1, 0, 0, 1, 1])
    auc, counts = group_auc(codes, scores, labels, 2)
    # group 0: pairs (pos, neg): (0.8,0.4) 1, (0.8,0.1) 1, (0.4,0.4) 1/2, (0.4,0.1) 1 -> 3.5 / 4
    assert auc[0] == pytest.approx(3.5 / 4)
    assert math.isnan(auc[1]) and counts.tolist() == [4, 2]


def test_ranking_metrics_by_hand():
    groups = np.array([1, 1, 1, 2, 2, 2, 2])
    scores = np.array([0.9, 0.5, 0.1, 0.3, 0.8, 0.2, 0.6])
    click = np.array([0, 1, 1, 0, 1, 0, 0], dtype=float)
    dwell = np.array([2.0, 8.0, 4.0, 1.0, 9.0, 0.0, 3.0])
    ranking = rank_groups(groups, scores)
    m = ranking_metrics(ranking, scores, {"click": click, "dwell": dwell}, {"click": "binary", "dwell": "regression"}, 2)
    # group 1 top 2: rows 0, 1 -> clicks 1, dwell 10; group 2 top 2: rows 4, 6 -> clicks 1, dwell 12
    assert m["click@2"] == 1.0 and m["dwell@2"] == 11.0
    ndcg1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m["ndcg_click@2"] == pytest.approx((ndcg1 + 1.0) / 2)
    auc1, auc2 = 0.0, 1.0  # group 1: both positives (0.5, 0.1) below the negative 0.9; group 2: 0.8 above all
    assert m["gauc_click"] == pytest.approx((3 * auc1 + 4 * auc2) / 7)
    assert m["gauc_click_unweighted"] == pytest.approx((auc1 + auc2) / 2)
    assert m["groups"] == 2 and m["skipped_gauc_click"] == 0 and "gauc_dwell" not in m


def _random_groups(seed: int):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 25, 40)
    groups = np.repeat(np.arange(sizes.size), sizes)
    rng.shuffle(groups)
    scores = rng.random(groups.size)               # continuous: no ties
    labels = (rng.random(groups.size) < 0.3).astype(float)
    graded = rng.exponential(5.0, groups.size) * (rng.random(groups.size) < 0.5)
    return groups, scores, labels, graded


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_ndcg_matches_sklearn_per_group(seed, k):
    groups, scores, labels, graded = _random_groups(seed)
    ranking = rank_groups(groups, scores)
    for gains in (labels, graded):
        ours = ndcg_at_k(ranking, gains, k)
        for g in range(ranking.num_groups):
            rows = groups == g
            if gains[rows].sum() == 0:
                assert math.isnan(ours[g])
                continue
            expected = ndcg_score(gains[rows][None, :], scores[rows][None, :], k=k)
            assert ours[g] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_gauc_matches_sklearn_per_group(seed):
    groups, scores, labels, _ = _random_groups(seed)
    scores = np.round(scores, 1)  # many ties: both count them one half
    ranking = rank_groups(groups, scores)
    auc, counts = group_auc(ranking.codes, scores, labels, ranking.num_groups)
    expected, weights = [], []
    for g in range(ranking.num_groups):
        rows = groups == g
        if 0 < labels[rows].sum() < rows.sum():
            expected.append(roc_auc_score(labels[rows], scores[rows]))
            weights.append(rows.sum())
            assert auc[g] == pytest.approx(expected[-1], abs=1e-12)
        else:
            assert math.isnan(auc[g])
    metrics = ranking_metrics(ranking, scores, {"click": labels}, {"click": "binary"}, 5)
    assert metrics["gauc_click"] == pytest.approx(np.average(expected, weights=weights))
    assert metrics["gauc_click_unweighted"] == pytest.approx(np.mean(expected))
    assert metrics["skipped_gauc_click"] == ranking.num_groups - len(expected)


def test_kpi_at_k_matches_a_loop():
    groups, scores, labels, graded = _random_groups(3)
    ranking = rank_groups(groups, scores)
    for g in range(ranking.num_groups):
        rows = np.flatnonzero(groups == g)
        top = rows[np.argsort(-scores[rows], kind="stable")[:5]]
        assert kpi_at_k(ranking, graded, 5)[g] == pytest.approx(graded[top].sum())
