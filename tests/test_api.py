"""The Python API: train -> Run -> Predictor, and run-directory integrity."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from multikpi import ArtifactError, Predictor, evaluate, train
from multikpi.eval import binary_metrics


def test_train_predict_round_trip(tiny_config):
    run = train(tiny_config)
    predictor = Predictor.load(run.run_dir)
    table = pq.read_table(tiny_config["data"]["test"])
    preds = predictor.predict(table, keep=["request_id"])
    assert preds.column_names == ["request_id", "click", "dwell", "convert"]
    probs = preds.column("click").to_numpy()
    assert np.all((probs > 0) & (probs < 1))
    assert np.all(preds.column("dwell").to_numpy() >= 0)  # expm1 of a log1p-scale value, seconds
    expected = binary_metrics(table.column("click").to_numpy(), probs)["auc"]
    assert run.metrics.splits["test"]["click"]["auc"] == pytest.approx(expected)
    assert evaluate(run.run_dir, tiny_config["data"]["test"])["click"]["auc"] == pytest.approx(expected)


def test_binary_head_bias_starts_at_base_rate(tiny_config):
    tiny_config["optim"] = {"default": {"lr": 0.0}}
    run = train(tiny_config)
    rate = pq.read_table(tiny_config["data"]["train"]).column("click").to_numpy().mean()
    bias = run.model.heads["click"].out.bias.item()
    assert bias == pytest.approx(np.log(rate / (1 - rate)), rel=1e-5)


def test_mixed_binary_and_regression_do_not_collapse(tiny_config):
    """The peer's failure: click AUC below 0.5 once dwell joins. Here click must stay learnable."""
    tiny_config["train"]["epochs"] = 6
    tiny_config["optim"] = {"default": {"lr": 3e-3}}
    run = train(tiny_config)
    assert run.metrics.splits["valid"]["click"]["auc"] > 0.6
    assert run.metrics.splits["valid"]["dwell"]["pearson_log1p"] > 0.1


def test_train_on_restricts_task_to_parent_positives(tiny_config):
    tiny_config["tasks"]["convert"]["train_on"] = "click"
    run = train(tiny_config)
    clicks = int(pq.read_table(tiny_config["data"]["valid"]).column("click").to_numpy().sum())
    assert run.metrics.splits["valid"]["convert"]["count"] == clicks


def test_tampered_weights_are_refused(tiny_config):
    run = train(tiny_config)
    weights = run.run_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.safetensors.*modified"):
        Predictor.load(run.run_dir)


def test_incomplete_run_is_refused(tiny_config):
    run = train(tiny_config)
    (run.run_dir / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Predictor.load(run.run_dir)


def test_predict_passes_through_configured_id_columns(tiny_config):
    tiny_config["data"]["id_columns"] = ["request_id", "item_id"]
    run = train(tiny_config)
    preds = Predictor.load(run.run_dir).predict(tiny_config["data"]["test"])
    assert preds.column_names == ["request_id", "item_id", "click", "dwell", "convert"]
    table = pq.read_table(tiny_config["data"]["test"])
    assert preds.column("item_id").equals(table.column("item_id"))
