"""Metric accumulators against scikit-learn and NumPy on whole arrays: batch by batch, merged in
any grouping, the result is the same (the AUC exactly, ties included)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from multikpi.data.encoders import EncodedData
from multikpi.data.sources import InMemorySource
from multikpi.eval.accumulators import BinaryAccumulator, RegressionAccumulator


def _chunks(n: int, rng: np.random.Generator) -> list[slice]:
    cuts = np.sort(rng.choice(np.arange(1, n), size=7, replace=False))
    edges = [0, *cuts.tolist(), n]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def test_binary_accumulator_merged_from_batches_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = (rng.random(5000) < 0.2).astype(float)
    probs = np.round(rng.random(5000), 2)  # only 101 distinct values: many ties
    parts = []
    for rows in _chunks(5000, rng):
        part = BinaryAccumulator()
        part.update(labels[rows], probs[rows])
        parts.append(part)
    total = parts[0]
    for part in parts[1:]:
        total.merge(part)
    metrics = total.compute()
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert metrics["logloss"] == pytest.approx(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7)), rel=1e-9)
    assert metrics["calibration"] == pytest.approx(probs.mean() / labels.mean())
    assert metrics["count"] == 5000


def test_binary_accumulator_compacts_to_distinct_scores(monkeypatch):
    import multikpi.eval.accumulators as accumulators

    monkeypatch.setattr(accumulators, "_COMPACT_ROWS", 100)
    rng = np.random.default_rng(1)
    acc = BinaryAccumulator()
    labels = (rng.random(3000) < 0.3).astype(float)
    probs = rng.integers(0, 50, 3000) / 50.0
    for start in range(0, 3000, 64):
        acc.update(labels[start:start + 64], probs[start:start + 64])
    assert sum(s.size for s in acc._scores) <= 50 + 64 + 100  # compacted: memory ~ distinct scores
    assert acc.auc() == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)


def test_one_class_gives_nan_auc():
    acc = BinaryAccumulator()
    acc.update(np.zeros(10), np.linspace(0.1, 0.9, 10))
    assert np.isnan(acc.compute()["auc"])


def test_regression_accumulator_equals_numpy():
    rng = np.random.default_rng(2)
    labels = rng.normal(3.0, 2.0, 4000)
    preds = labels + rng.normal(0.0, 1.0, 4000)
    total = RegressionAccumulator("_x")
    for rows in _chunks(4000, rng):
        part = RegressionAccumulator("_x")
        part.update(labels[rows], preds[rows])
        total.merge(part)
    metrics = total.compute()
    assert metrics["rmse_x"] == pytest.approx(np.sqrt(np.mean((labels - preds) ** 2)), rel=1e-10)
    assert metrics["mae_x"] == pytest.approx(np.mean(np.abs(labels - preds)), rel=1e-10)
    assert metrics["pearson_x"] == pytest.approx(np.corrcoef(labels, preds)[0, 1], rel=1e-10)


def test_constant_predictions_have_no_pearson():
    acc = RegressionAccumulator()
    acc.update(np.arange(5.0), np.full(5, 2.0))
    assert np.isnan(acc.compute()["pearson"])


def _data(rows: int) -> EncodedData:
    return EncodedData(torch.arange(rows, dtype=torch.int32)[:, None], torch.zeros(rows, 1),
                       torch.zeros(rows, 1), ("t",))


def test_in_memory_source_resumes_mid_epoch_with_the_same_batches():
    source = InMemorySource(_data(1000), batch_size=64, seed=3)
    assert source.steps_per_epoch == 16
    full = [b.categorical[:, 0].tolist() for b in source.epoch(2)]
    assert sorted(sum(full, [])) == list(range(1000))  # a permutation: every row once
    resumed = [b.categorical[:, 0].tolist() for b in source.epoch(2, skip=5)]
    assert resumed == full[5:]
    assert [b.categorical[:, 0].tolist() for b in source.epoch(3)] != full  # each epoch its own order
