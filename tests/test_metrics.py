"""Tests of the per-task metrics against scikit-learn, scipy and numpy closed forms."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy.special import expit
from scipy.stats import pearsonr
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from multikpi.config import config_from_dict
from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.eval.evaluate import estimates, task_metrics
from multikpi.eval.metrics import binary_metrics, regression_metrics
from multikpi.training.setup import encoder_specs

NAN = float("nan")


# --- binary_metrics --------------------------------------------------------------------------

def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400).astype(np.float64)
    probs = np.clip(expit(1.5 * (labels - 0.5) + rng.normal(0, 1, 400)), 0.01, 0.99)
    m = binary_metrics(labels, probs)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(labels, probs), rel=1e-12)
    assert m["pos_rate"] == pytest.approx(labels.mean())
    assert m["mean_pred"] == pytest.approx(probs.mean())
    assert m["calibration"] == pytest.approx(probs.mean() / labels.mean())
    assert m["count"] == 400 and isinstance(m["count"], int)
    assert 0.5 < m["auc"] < 1.0  # the oracle is informative, so the test can tell AUC from 1 - AUC


def test_binary_metrics_hand_computed():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.1, 0.6, 0.35, 0.8])
    m = binary_metrics(labels, probs)
    # Positive/negative pairs: (0.35 > 0.1), (0.35 < 0.6), (0.8 > 0.1), (0.8 > 0.6): 3 of 4.
    assert m["auc"] == pytest.approx(0.75)
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.35) + math.log(0.8)) / 4
    assert m["logloss"] == pytest.approx(expected)
    assert m["calibration"] == pytest.approx((1.85 / 4) / 0.5)
    assert m["pos_rate"] == 0.5


def test_binary_metrics_one_class():
    m = binary_metrics(np.zeros(5), np.full(5, 0.2))
    assert math.isnan(m["auc"])
    assert math.isnan(m["calibration"])  # mean label is 0
    assert m["logloss"] == pytest.approx(-math.log(0.8))
    m = binary_metrics(np.ones(4), np.array([0.5, 0.5, 0.25, 0.75]))
    assert math.isnan(m["auc"])
    assert m["calibration"] == pytest.approx(0.5)


def test_binary_metrics_clip_extreme_probabilities():
    m = binary_metrics(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert math.isfinite(m["logloss"])
    assert m["logloss"] == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert m["auc"] == 0.0


# --- regression_metrics ----------------------------------------------------------------------

def test_regression_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(1)
    labels = rng.normal(3.0, 2.0, 300)
    preds = 0.7 * labels + rng.normal(0.0, 1.0, 300)
    m = regression_metrics(labels, preds)
    assert set(m) == {"rmse", "mae", "pearson"}
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(labels, preds)))
    assert m["mae"] == pytest.approx(mean_absolute_error(labels, preds))
    assert m["pearson"] == pytest.approx(pearsonr(labels, preds)[0])


def test_regression_metrics_hand_computed_and_suffix():
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    preds = np.array([2.0, 2.0, 2.0, 6.0])
    m = regression_metrics(labels, preds, "_log1p")
    assert set(m) == {"rmse_log1p", "mae_log1p", "pearson_log1p"}
    assert m["rmse_log1p"] == pytest.approx(math.sqrt((1 + 0 + 1 + 4) / 4))
    assert m["mae_log1p"] == pytest.approx((1 + 0 + 1 + 2) / 4)
    # Pearson by its definition.
    a, b = labels - labels.mean(), preds - preds.mean()
    assert m["pearson_log1p"] == pytest.approx((a @ b) / math.sqrt((a @ a) * (b @ b)))


def test_regression_metrics_constant_side_gives_nan_pearson():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))
    assert math.isnan(m["pearson"])
    assert m["rmse"] == pytest.approx(math.sqrt(2 / 3))


def test_regression_metrics_perfect_prediction():
    y = np.array([0.5, 1.5, -2.0, 8.0])
    m = regression_metrics(y, y.copy())
    assert m["rmse"] == 0.0 and m["mae"] == 0.0 and m["pearson"] == pytest.approx(1.0)


# --- task_metrics ----------------------------------------------------------------------------

CONFIG = config_from_dict({
    "data": {"train": "t.parquet", "categorical": ["user"], "dense": ["x"]},
    "tasks": {
        "click": {"kind": "binary", "label": "click"},
        "convert": {"kind": "binary", "label": "convert", "train_on": "click"},
        "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"},
        "grade": {"kind": "regression", "label": "score"},  # a task may not be called score (a rank column)
    },
})


def labelled_table(n: int = 200, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    click = rng.integers(0, 2, n)
    convert = rng.integers(0, 2, n).astype(np.float64)
    convert[rng.random(n) < 0.1] = np.nan
    dwell = rng.lognormal(1.0, 1.0, n)
    dwell[rng.random(n) < 0.2] = np.nan
    score = rng.normal(0.0, 3.0, n)
    return pa.table({
        "user": rng.integers(0, 10, n),
        "x": rng.normal(size=n),
        "click": pa.array(click, pa.int8()),
        "convert": pa.array(convert, pa.float64(), from_pandas=True),  # NaN -> null
        "dwell": pa.array(dwell, pa.float32(), from_pandas=True),
        "score": score,
    })


def fitted(n: int = 200, seed: int = 0):
    table = labelled_table(n, seed)
    encoder = FeatureEncoder.fit(table, *encoder_specs(CONFIG))
    data = encoder.encode(table)
    rng = np.random.default_rng(seed + 100)
    labels = {name: table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
              for name in ("click", "convert", "dwell", "score")}
    # Outputs correlated with the labels, as a model's would be.
    outputs = {
        "click": (2.0 * (labels["click"] - 0.5) + rng.normal(0, 1.5, n)).astype(np.float32),
        "convert": rng.normal(0, 1.0, n).astype(np.float32),
        "dwell": (0.5 * np.nan_to_num(data.labels[:, 2].numpy()) + rng.normal(0, 0.5, n)).astype(np.float32),
        "grade": (0.8 * data.labels[:, 3].numpy() + rng.normal(0, 0.4, n)).astype(np.float32),
    }
    return table, encoder, data, labels, outputs


def test_task_metrics_binary_uses_sigmoid_of_logits():
    _, encoder, data, labels, outputs = fitted()
    metrics = task_metrics(outputs, data, encoder)
    probs = expit(outputs["click"].astype(np.float64))
    y = labels["click"]
    m = metrics["click"]
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, probs), rel=1e-9)
    assert m["calibration"] == pytest.approx(probs.mean() / y.mean(), rel=1e-9)
    assert m["mean_pred"] == pytest.approx(probs.mean(), rel=1e-9)
    assert m["pos_rate"] == pytest.approx(y.mean())
    assert m["count"] == len(y)
    # Treating logits as probabilities would give another log loss.
    assert m["logloss"] != pytest.approx(log_loss(y, np.clip(outputs["click"], 1e-7, 1 - 1e-7)), rel=1e-3)


def test_task_metrics_use_only_labelled_rows():
    _, encoder, data, labels, outputs = fitted()
    metrics = task_metrics(outputs, data, encoder)
    # convert counts only where its label is present and click == 1 (train_on).
    keep = ~np.isnan(labels["convert"]) & (labels["click"] == 1)
    assert 0 < keep.sum() < len(keep)
    y, probs = labels["convert"][keep], expit(outputs["convert"][keep].astype(np.float64))
    m = metrics["convert"]
    assert m["count"] == int(keep.sum())
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, probs), rel=1e-9)
    assert m["pos_rate"] == pytest.approx(y.mean())
    assert m["calibration"] == pytest.approx(probs.mean() / y.mean(), rel=1e-9)


def test_task_metrics_regression_in_original_and_transformed_units():
    _, encoder, data, labels, outputs = fitted()
    metrics = task_metrics(outputs, data, encoder)
    stats = encoder.labels["dwell"]
    keep = ~np.isnan(labels["dwell"])
    assert 0 < keep.sum() < len(keep)
    y = labels["dwell"][keep]
    pred_log = outputs["dwell"][keep].astype(np.float64) * stats.std + stats.mean
    pred = np.expm1(pred_log)
    m = metrics["dwell"]
    assert set(m) == {"rmse", "mae", "pearson", "rmse_log1p", "mae_log1p", "pearson_log1p", "count", "calibration",
                      "relative_loss"}
    assert m["count"] == int(keep.sum())
    # Labels pass through float32 standardization, hence the relative tolerance.
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, pred)), rel=1e-5)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-5)
    assert m["pearson"] == pytest.approx(pearsonr(y, pred)[0], rel=1e-5)
    assert m["rmse_log1p"] == pytest.approx(math.sqrt(mean_squared_error(np.log1p(y), pred_log)), rel=1e-5)
    assert m["mae_log1p"] == pytest.approx(mean_absolute_error(np.log1p(y), pred_log), rel=1e-5)
    assert m["pearson_log1p"] == pytest.approx(np.corrcoef(np.log1p(y), pred_log)[0, 1], rel=1e-5)
    # The two scales differ (a test of the transform, not a tautology).
    assert m["rmse"] != pytest.approx(m["rmse_log1p"], rel=1e-2)


def test_task_metrics_regression_without_transform_has_no_suffix():
    _, encoder, data, labels, outputs = fitted()
    m = task_metrics(outputs, data, encoder)["grade"]
    assert set(m) == {"rmse", "mae", "pearson", "count", "calibration", "relative_loss"}
    stats = encoder.labels["grade"]
    y = labels["score"]
    pred = outputs["grade"].astype(np.float64) * stats.std + stats.mean
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, pred)), rel=1e-5)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-5)
    assert m["pearson"] == pytest.approx(pearsonr(y, pred)[0], rel=1e-5)
    assert m["count"] == len(y)


def test_task_metrics_skip_tasks_without_labels():
    _, encoder, data, _, outputs = fitted()
    labels = data.labels.clone()
    labels[:, 1] = float("nan")
    unlabelled = EncodedData(data.categorical, data.dense, labels, data.tasks)
    metrics = task_metrics(outputs, unlabelled, encoder)
    assert set(metrics) == {"click", "dwell", "grade"}
    assert set(task_metrics(outputs, encoder.encode(labelled_table(), with_labels=False), encoder)) == set()


def test_task_metrics_hand_built_example():
    """Four rows, every number by hand."""
    config = config_from_dict({
        "data": {"train": "t.parquet", "dense": ["x"]},
        "tasks": {"click": {"kind": "binary", "label": "click"},
                  "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"}},
    })
    e = math.e
    table = pa.table({"x": [0.0, 1.0, 2.0, 3.0], "click": pa.array([1, 0, None, 1], pa.int8()),
                      "dwell": [e - 1, e ** 3 - 1, None, None]})  # log1p(dwell) = 1, 3 -> mean 2, std 1
    encoder = FeatureEncoder.fit(table, *encoder_specs(config))
    assert (encoder.labels["dwell"].mean, encoder.labels["dwell"].std) == pytest.approx((2.0, 1.0))
    data = encoder.encode(table)
    outputs = {"click": np.array([0.0, math.log(3.0), 50.0, -math.log(3.0)], np.float32),
               "dwell": np.array([0.0, 0.0, 9.0, 9.0], np.float32)}
    metrics = task_metrics(outputs, data, encoder)
    c = metrics["click"]
    # Labelled rows 0, 1, 3: probs 0.5, 0.75, 0.25 for labels 1, 0, 1.
    assert c["count"] == 3
    assert c["logloss"] == pytest.approx(-(math.log(0.5) + math.log(0.25) + math.log(0.25)) / 3, rel=1e-6)
    assert c["auc"] == 0.0  # positive/negative pairs (0.5 vs 0.75), (0.25 vs 0.75): 0 of 2 ranked right
    assert c["mean_pred"] == pytest.approx(0.5, rel=1e-6)
    assert c["calibration"] == pytest.approx(0.5 / (2 / 3), rel=1e-6)
    d = metrics["dwell"]
    # Labelled rows 0, 1: prediction log1p = 2 on both; labels log1p = 1 and 3.
    assert d["count"] == 2
    assert d["rmse_log1p"] == pytest.approx(1.0, rel=1e-6)
    assert d["mae_log1p"] == pytest.approx(1.0, rel=1e-6)
    assert math.isnan(d["pearson_log1p"]) and math.isnan(d["pearson"])
    errors = np.array([(e - 1) - (e ** 2 - 1), (e ** 3 - 1) - (e ** 2 - 1)])
    assert d["mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-6)
    assert d["rmse"] == pytest.approx(math.sqrt((errors ** 2).mean()), rel=1e-6)


def test_estimates_are_probabilities_and_label_units():
    _, encoder, _, _, outputs = fitted()
    out = estimates(outputs, encoder)
    np.testing.assert_allclose(out["click"], expit(outputs["click"].astype(np.float64)), rtol=1e-12)
    stats = encoder.labels["dwell"]
    np.testing.assert_allclose(out["dwell"], np.expm1(outputs["dwell"].astype(np.float64) * stats.std + stats.mean),
                               rtol=1e-12)
    score = encoder.labels["grade"]
    np.testing.assert_allclose(out["grade"], outputs["grade"].astype(np.float64) * score.std + score.mean, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_with_many_ties(seed):
    from sklearn.metrics import roc_auc_score

    from multikpi.eval.metrics import roc_auc

    rng = np.random.default_rng(seed)
    labels = (rng.random(5000) < 0.1).astype(np.float64)
    scores = np.round(rng.random(5000) + 0.3 * labels, 1)  # only ~14 distinct values: heavy ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
