"""What training stores for the report (multikpi.eval.diagnostics), against counts and closed forms,
and metrics.json's optional sections: written, read back, and absent in older files."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from multikpi.artifacts.metrics import RunMetrics
from multikpi.data.encoders import EncodedData, FeatureEncoder, LabelStats
from multikpi.data.specs import ColumnSpec, LabelSpec
from multikpi.eval.diagnostics import RESIDUAL_QUANTILES, binned_residuals, data_summary, label_coverage

NAN = float("nan")


def _labels_only(labels: list[list[float]], stats: dict[str, LabelStats]) -> tuple[EncodedData, FeatureEncoder]:
    rows = len(labels)
    data = EncodedData(torch.zeros((rows, 0), dtype=torch.int32), torch.zeros((rows, 0)),
                       torch.tensor(labels, dtype=torch.float32), tuple(stats))
    return data, FeatureEncoder(vocabs={}, dense_stats={}, labels=stats)


def test_label_coverage_counts_labels_train_on_masks_and_positives():
    stats = {"click": LabelStats("binary", "click", "none", 0.5, 1.0, None),
             "convert": LabelStats("binary", "convert", "none", 0.1, 1.0, "click"),
             "dwell": LabelStats("regression", "dwell", "none", 0.0, 1.0, None)}
    # click: 1, 1, 0, NaN, 1, 1 -> convert is masked where click != 1 (rows 2, 3) and missing in row 4.
    labels = [[1, 1, 3.0], [1, 0, NAN], [0, NAN, 1.0], [NAN, NAN, 2.0], [1, NAN, NAN], [1, 1, 0.5]]
    data, encoder = _labels_only(labels, stats)
    coverage = label_coverage({"train": data}, encoder)["train"]
    assert coverage["click"] == {"rows": 6, "labelled": 5, "masked_by_train_on": 0, "missing": 1, "positives": 4}
    assert coverage["convert"] == {"rows": 6, "labelled": 3, "masked_by_train_on": 2, "missing": 1, "positives": 2}
    assert coverage["dwell"] == {"rows": 6, "labelled": 4, "masked_by_train_on": 0, "missing": 2, "positives": 0}


def test_data_summary_vocabulary_sizes_and_out_of_vocabulary_rates():
    train = pa.table({"item": [1, 1, 2, 2, 3], "price": [1.0, 2.0, 3.0, 4.0, 5.0], "y": [0, 1, 0, 1, 0]})
    encoder, train_data = FeatureEncoder.fit_encode(train, ColumnSpec(("item",), ("price",), (), 2),
                                                    {"y": LabelSpec("binary", "y")})
    test = pa.table({"item": pa.array([1, 3, 7, None], pa.int64()), "price": [1.0] * 4, "y": [0, 1, 0, 1]})
    summary = data_summary({"train": train_data, "test": encoder.encode(test)}, encoder)
    # min_frequency 2: item 3 (seen once) is out of vocabulary, as are the unseen 7 and the null.
    assert summary["vocabulary"]["item"]["size"] == 2
    assert summary["vocabulary"]["item"]["oov_rate"] == {"train": pytest.approx(1 / 5), "test": pytest.approx(3 / 4)}
    assert summary["rows"] == {"train": 5, "test": 4}
    assert summary["dense"] == ["price"]


def test_binned_residuals_of_a_known_residual_pattern():
    preds = np.arange(200, dtype=np.float64)
    residual = (np.arange(200) % 10) - 4.5  # every bin of 10 consecutive predictions holds -4.5 .. 4.5
    result = binned_residuals(preds + residual, preds, bins=20)
    assert result["bin_count"] == [10] * 20
    np.testing.assert_allclose(result["bin_mean_pred"], np.arange(20) * 10 + 4.5)
    np.testing.assert_allclose(result["bin_mean_label"], result["bin_mean_pred"])  # mean residual 0 in each bin
    quantiles = dict(zip(result["quantiles"], np.array(result["residual_quantiles"])))
    assert list(quantiles) == list(RESIDUAL_QUANTILES)
    np.testing.assert_allclose(quantiles[0.5], 0.0, atol=1e-12)
    np.testing.assert_allclose(quantiles[0.9], np.quantile(np.arange(10) - 4.5, 0.9))
    hist = result["residual_histogram"]
    assert sum(hist["counts"]) + hist["below"] + hist["above"] == 200
    assert result["residual_mean"] == pytest.approx(0.0)


def test_metrics_optional_sections_round_trip_and_old_files_read_as_none(tmp_path):
    metrics = RunMetrics(splits={"test": {"click": {"auc": 0.7}}}, selection={"monitor": "valid.click.auc",
                         "epoch": 2, "step": 20, "per_task_best_epoch": {"click": 2}},
                         label_coverage={"train": {"click": {"rows": 3, "labelled": 3, "masked_by_train_on": 0,
                                                             "missing": 0, "positives": 1}}},
                         data_summary={"rows": {"train": 3}}, regression_bins={"split": "test", "tasks": {}})
    metrics.save(tmp_path / "metrics.json")
    assert RunMetrics.load(tmp_path / "metrics.json") == metrics
    old = {"format": 2, "splits": {"test": {"click": {"auc": 0.7}}}, "loss_weights": {}, "timing": {},
           "calibration": None, "gate_usage": None}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = RunMetrics.load(tmp_path / "old.json")
    assert loaded.selection is None and loaded.label_coverage is None and loaded.regression_bins is None
