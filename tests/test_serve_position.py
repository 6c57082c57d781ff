"""Serving a run trained with a position tower (`data.position`) and row-sparse embeddings
(`lazy_adam` on the embeddings group): the server ranks at the position-free estimate, as
`Predictor.predict` and `evaluate` do (oracle: main's `model_outputs` on `FeatureEncoder.encode`
without labels, which never runs the tower), requests need no position, and the ONNX export of
such a model passes the parity gate and serves the same ranking over HTTP."""
from __future__ import annotations

import copy
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import TINY_CONFIG
from multikpi import Predictor, train
from multikpi.artifacts.run_dir import load_run
from multikpi.eval.evaluate import estimates, model_outputs
from multikpi.serve.export import export_run
from multikpi.service.server import ServeSettings, build_app

pytest.importorskip("onnxruntime")
fastapi_testclient = pytest.importorskip("fastapi.testclient")
pytestmark = pytest.mark.slow
FEATURES = ["item_id", "item_category", "price", "item_age_h", "affinity"]  # no position: not a feature


@pytest.fixture(scope="module")
def position_run(feed_files, tmp_path_factory):
    config = copy.deepcopy(TINY_CONFIG)
    config["data"].update({k: str(v) for k, v in feed_files.items()})
    config["data"]["categorical"] = [c for c in config["data"]["categorical"] if c != "position"]
    config["data"].update({"position": "position", "id_columns": ["request_id", "item_id"], "group": "request_id"})
    config["decide"] = {"score": "click * (1 + 0.01 * dwell)", "top_k": 5}
    config["optim"] = {"groups": {"embeddings": {"name": "lazy_adam", "lr": 0.003}}}
    config["train"].update({"precision": "fp32", "seed": 0})
    return train(config, out_dir=tmp_path_factory.mktemp("position") / "run").run_dir


def _body(table: pa.Table, request_id: int) -> dict:
    rows = table.filter(pa.compute.equal(table.column("request_id"), request_id)).to_pylist()
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    return {"context": {"user_id": rows[0]["user_id"], "device": rows[0]["device"], "request_id": request_id},
            "candidates": [{k: r[k] for k in FEATURES} for r in rows], "top_k": len(rows)}


def test_serving_is_position_free_like_evaluate(position_run, feed_files):
    run = load_run(position_run)
    assert run.model.position_tower is not None and run.encoder.position[0] == "position"
    table = pq.read_table(feed_files["test"])
    data = run.encoder.encode(table, with_labels=True)  # with the logged position
    free = model_outputs(run.model, data, 4096)  # position-free: the oracle
    logged = model_outputs(run.model, data, 4096, at_logged_position=True)
    assert np.abs(free["click"] - logged["click"]).max() > 1e-3  # the tower does move the logits
    expected = estimates(free, run.encoder)
    predictor = Predictor.load(position_run)
    got = predictor.predict(table.drop(["position"]), calibrated=False)
    for task in ("click", "dwell", "convert"):
        np.testing.assert_allclose(got.column(task).to_numpy(), expected[task], rtol=1e-6, atol=1e-7)
    body = _body(table, 7)
    ranked = predictor.rank(body)
    rows = table.filter(pa.compute.equal(table.column("request_id"), 7))
    raw = predictor.predict(rows)  # calibrated, as rank is
    order = np.argsort(-(raw.column("click").to_numpy() * (1 + 0.01 * raw.column("dwell").to_numpy())), kind="stable")
    assert ranked.indices.tolist() == order.tolist()


def test_onnx_export_and_http_serve_the_same_ranking(position_run, feed_files):
    report = export_run(position_run)
    assert report.rows_checked == 1500 and report.requests_checked > 50 and report.max_abs_diff < 1e-5
    table = pq.read_table(feed_files["test"])
    eager = Predictor.load(position_run)
    for backend in ("torch", "onnx"):
        same_backend = Predictor.load(position_run, backend=backend)
        app = build_app(ServeSettings(str(position_run), backend=backend))
        with fastapi_testclient.TestClient(app) as client:
            assert client.get("/metadata").json()["position_tower"] == "position"
            for request_id in (3, 7, 12):
                body = _body(table, request_id)
                response = client.post("/rank", json=body)
                assert response.status_code == 200, response.text
                got = response.json()["candidates"]
                assert [c["index"] for c in got] == eager.rank(body).indices.tolist()  # onnx too: the same order
                expected = same_backend.rank(body)
                np.testing.assert_allclose([c["score"] for c in got], expected.scores, rtol=1e-12, atol=0)
            with_position = {**body, "candidates": [{**c, "position": 1} for c in body["candidates"]]}
            response = client.post("/rank", json=with_position)
            assert response.status_code == 422 and "candidates[0].position" in response.json()["detail"]
