"""Off-policy estimators of a ranking's KPIs@k: closed forms on a hand-made request, and the
synthetic feed's exact oracle (`feed_policy_value`) over 30 seeds: coverage of the intervals,
errors against the naive count, and the bias of DM under a misspecified model."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from multikpi.decide.estimators import ESTIMATORS, LoggedRows, means_of, request_statistics, resample_counts
from multikpi.decide.policy_eval import (
    LogColumns,
    PolicyEvaluator,
    lift,
    logged_rows,
    position_free_rewards,
    support_warnings,
)
from multikpi.decide.ranking import group_codes, rank_codes
from multikpi.errors import DataError
from multikpi.synthetic.feed import feed_oracle, feed_policy_value, make_feed

KINDS = {"click": "binary", "convert": "binary", "dwell": "regression"}


def _one_request() -> LoggedRows:
    """3 items logged at positions 1, 2, 3 (theta 1, 0.5, 0.25), examination propensities 0.8, 0.6, 0.4."""
    return LoggedRows(codes=np.zeros(3, dtype=np.int64), position=np.array([1, 2, 3]),
                      curve=np.array([1.0, 0.5, 0.25]), exam_propensity=np.array([0.8, 0.6, 0.4]),
                      kpis={"click": np.array([1.0, 0.0, 1.0])})


def test_estimators_on_a_hand_computed_request():
    logs, ranks = _one_request(), np.array([3, 1, 2])  # the target puts item 2 first, item 3 second
    stats = request_statistics(logs, ranks, 2, {"click": np.array([0.2, 0.4, 0.6])})
    means = means_of(stats, None)
    # e_pi = (0, 1, 0.5); w = (0, 1/0.6, 0.5/0.4)
    assert ESTIMATORS["naive"](means, "click") == pytest.approx(1.0)
    assert ESTIMATORS["ips"](means, "click") == pytest.approx(1.25)
    control = (1 / 0.6) * 0.5 + 1.25 * 0.25
    assert ESTIMATORS["snips"](means, "click") == pytest.approx(1.25 * 1.5 / control)
    assert ESTIMATORS["dm"](means, "click") == pytest.approx(1 * 0.4 + 0.5 * 0.6)
    dr = 0.7 + (1 / 0.6) * (0.0 - 0.5 * 0.4) + 1.25 * (1.0 - 0.25 * 0.6)
    assert ESTIMATORS["dr"](means, "click") == pytest.approx(dr)


def test_dr_equals_dm_when_the_model_is_exact_in_every_draw_and_ips_when_it_is_zero():
    logs, ranks = _one_request(), np.array([2, 3, 1])
    means = means_of(request_statistics(logs, ranks, 3, {"click": np.zeros(3)}), None)
    assert ESTIMATORS["dr"](means, "click") == pytest.approx(ESTIMATORS["ips"](means, "click"))
    assert ESTIMATORS["dm"](means, "click") == 0.0


def test_bootstrap_counts_resample_requests():
    counts = resample_counts(50, 200, seed=3)
    assert counts.shape == (200, 50) and np.all(counts.sum(axis=1) == 50)
    assert np.array_equal(counts, resample_counts(50, 200, seed=3))
    assert abs(counts.mean() - 1.0) < 1e-12 and 0.8 < counts.var() < 1.2  # multinomial(G, 1/G): variance ~1


def _feed_case(seed: int, rows: int = 20_000):
    """Logs, oracle, codes and a target ranking that differs from the logger (by attractiveness and
    conversion, with noise), on one file of the built-in feed."""
    table, oracle = make_feed(rows, seed=seed), feed_oracle(rows, seed=seed)
    codes, values = group_codes(table["request_id"].to_numpy())
    labels = {t: table[t].to_numpy().astype(np.float64) for t in KINDS}
    logs = logged_rows(table, codes, labels, "click", LogColumns(), "feed")
    rng = np.random.default_rng(seed)
    score = (np.log(oracle["p_click_examined"]) + 0.5 * np.log(oracle["p_convert_given_click"])
             + 0.3 * rng.normal(size=rows))
    ranks = rank_codes(codes, score, values.size).ranks
    return table, oracle, logs, ranks, feed_policy_value(oracle, table["request_id"].to_numpy(), ranks, 10)


def _model_estimates(oracle: dict, exam_propensity: np.ndarray, rng: np.random.Generator,
                     misspecified: bool) -> dict[str, np.ndarray]:
    """Estimates per task as a model would give them: the truth with mean-one noise, or
    (misspecified) what a model that ignores the position effect learns, E[click | x] =
    attractiveness * the logger's mean examination of the item. (Not the probability at the
    *logged* position: an estimate that reads the logged position makes DR biased too.)"""
    n = oracle["p_click"].size
    noise = {t: np.exp(0.3 * rng.normal(size=n) - 0.045) for t in KINDS}
    clicks = oracle["p_click_examined"] * (exam_propensity if misspecified else 1.0)
    return {"click": clicks * noise["click"],
            "convert": clicks * oracle["p_convert_given_click"] * noise["convert"],
            "dwell": oracle["dwell_given_click_mean"] * noise["dwell"]}


@pytest.mark.slow
def test_estimators_against_the_feed_oracle_over_30_seeds():
    """30 files of 20,000 rows (~660 requests). Over 100 seeds (1000-1099) at this size the 95%
    intervals covered the truth in 93% (click) and 96% (convert) of the files, about their nominal
    level (docs/deciding.md); a window of 30 calibrated intervals has >= 27 hits ~90% of the time,
    so the window is fixed: seeds 1000-1029."""
    seeds = range(1000, 1030)
    names = ("naive", "snips", "dr", "dm")
    errors = {(e, t, m): [] for e in names for t in ("click", "convert") for m in (False, True)}
    covered = dict.fromkeys(errors, 0)
    for seed in seeds:
        _, oracle, logs, ranks, truth = _feed_case(seed)
        for misspecified in (False, True):
            estimates = _model_estimates(oracle, logs.exam_propensity, np.random.default_rng([seed, 1]), misspecified)
            evaluator = PolicyEvaluator(logs=logs, rewards_hat=position_free_rewards(estimates, KINDS, {}, "click"),
                                        k=10, resamples=400, seed=seed)
            value = evaluator.estimate(ranks)
            for (name, task, m) in errors:
                if m != misspecified:
                    continue
                interval = value.interval(name, f"{task}@10", 0.95)
                errors[name, task, m].append(interval.value - truth[f"{task}@10"])
                covered[name, task, m] += interval.low <= truth[f"{task}@10"] <= interval.high
    mae = {key: float(np.mean(np.abs(v))) for key, v in errors.items()}
    for task in ("click", "convert"):
        for misspecified in (False, True):
            for name in ("snips", "dr"):  # >= 90% coverage, and at least 2x more accurate than the naive count
                assert covered[name, task, misspecified] >= 27, (name, task, misspecified, covered)
                assert mae[name, task, misspecified] * 2 <= mae["naive", task, misspecified], mae
            assert covered["naive", task, misspecified] <= 3  # the naive count misses the truth
        # DM: unbiased with the well-specified model, biased (and its interval wrong) with the misspecified one
        bias = np.asarray(errors["dm", task, True])
        assert abs(bias.mean()) > 5 * bias.std() / np.sqrt(bias.size) and covered["dm", task, True] <= 3
        assert covered["dm", task, False] >= 24
        # DR is unbiased whatever the model: its mean error is within noise
        dr = np.asarray(errors["dr", task, True])
        assert abs(dr.mean()) < 3 * dr.std() / np.sqrt(dr.size)


def test_logged_value_and_lift_are_paired():
    _, oracle, logs, ranks, truth = _feed_case(7, rows=6_000)
    estimates = _model_estimates(oracle, logs.exam_propensity, np.random.default_rng(0), misspecified=False)
    evaluator = PolicyEvaluator(logs=logs, rewards_hat=position_free_rewards(estimates, KINDS, {}, "click"),
                                k=10, resamples=300, seed=1)
    target, logged = evaluator.estimate(ranks), evaluator.logged()
    expected_logged = np.bincount(logs.codes, weights=np.where(logs.position <= 10, logs.kpis["click"], 0)).mean()
    assert logged.point["logged"]["click@10"] == pytest.approx(expected_logged)
    same = lift(target, target, "dr", "click@10", 0.95)
    assert same.value == 0.0 and same.low == 0.0 and same.high == 0.0  # paired: identical draws cancel
    up = lift(target, logged, "dr", "click@10", 0.95, "logged")
    assert up.low < up.value < up.high
    assert up.value == pytest.approx(target.point["dr"]["click@10"] / logged.point["logged"]["click@10"] - 1)


def test_poor_support_and_missing_propensities():
    table, oracle, logs, ranks, _ = _feed_case(8, rows=4_000)
    estimates = _model_estimates(oracle, logs.exam_propensity, np.random.default_rng(0), misspecified=False)
    rewards = position_free_rewards(estimates, KINDS, {}, "click")
    deep = logs.position > 5  # as if the logger had never shown these rows where they are examined
    cut = LoggedRows(logs.codes, logs.position, logs.curve, np.where(deep, 0.0, logs.exam_propensity), logs.kpis)
    value = PolicyEvaluator(logs=cut, rewards_hat=rewards, k=10, resamples=50).estimate(ranks)
    assert value.diagnostics is not None and value.diagnostics.support < 0.5
    (warning,) = support_warnings(value, "the target", 10)
    assert warning.startswith("poor support for the target: only ") and "of its top-10" in warning
    bare = logged_rows(table.drop(["exam_propensity"]), logs.codes, {t: table[t].to_numpy().astype(float)
                                                                    for t in KINDS}, "click", LogColumns(), "x")
    evaluator = PolicyEvaluator(logs=bare, rewards_hat=rewards, k=10, resamples=50)
    assert evaluator.estimators == ("naive", "dm")
    assert set(evaluator.estimate(ranks).point) == {"naive", "dm"}


def test_post_click_kpis_and_rewards():
    table, _, logs, _, _ = _feed_case(9, rows=2_000)
    click = table["click"].to_numpy()
    assert np.array_equal(logs.kpis["convert"], table["convert"].to_numpy() * click)
    assert np.array_equal(logs.kpis["dwell"], table["dwell"].to_numpy() * click)
    estimates = {"click": np.array([0.5, 0.2]), "convert": np.array([0.1, 0.3]), "dwell": np.array([10.0, 20.0])}
    rewards = position_free_rewards(estimates, KINDS, {"convert": "click"}, "click")
    assert rewards["convert"] == pytest.approx([0.05, 0.06])  # train_on click: p_click * P(convert | click)
    assert rewards["dwell"] == pytest.approx([5.0, 4.0])
    assert position_free_rewards(estimates, KINDS, {}, "click")["convert"] == pytest.approx([0.1, 0.3])


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(["position"]), r"has no position column 'position'"),
    (lambda t: t.drop(["examination"]), r"has no examination column 'examination'"),
    (lambda t: t.set_column(t.column_names.index("position"), "position",
                            pa.array(np.zeros(t.num_rows, dtype=np.int64))), r"must hold whole numbers >= 1"),
    (lambda t: t.set_column(t.column_names.index("examination"), "examination",
                            pa.array(np.linspace(0.1, 1, t.num_rows))), r"one probability in \(0, 1\] per position"),
])
def test_bad_logging_columns(change, message):
    table = make_feed(500, seed=1)
    codes, _ = group_codes(table["request_id"].to_numpy())
    labels = {t: table[t].to_numpy().astype(float) for t in KINDS}
    with pytest.raises(DataError, match=message):
        logged_rows(change(table), codes, labels, "click", LogColumns(), "logs.parquet")
