"""The acceptance test of serving: one request ranked through the Python Predictor (both backends),
the HTTP service (a real `multikpi serve`, torch and onnx backends) and `multikpi rank` on a
one-request file gives the same order and estimates within 1e-6. Also SIGHUP reload, and reload
across several workers."""
from __future__ import annotations

import math
import shutil
import signal
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from live_server import live_server
from multikpi import Predictor
from multikpi.cli.main import main

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow
FEATURES = ["item_id", "item_category", "position", "price", "item_age_h", "affinity"]
REQUEST_ID = 11


@pytest.fixture(scope="module")
def one_request(feed_files, tmp_path_factory):
    """(the request's rows as a one-request Parquet file, the /rank body with top_k = all)."""
    table = pq.read_table(feed_files["test"])
    rows = table.filter(pa.compute.equal(table.column("request_id"), REQUEST_ID))
    path = tmp_path_factory.mktemp("one_request") / "request.parquet"
    pq.write_table(rows, path)
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
               for r in rows.to_pylist()]
    body = {"context": {"user_id": records[0]["user_id"], "device": records[0]["device"], "request_id": REQUEST_ID},
            "candidates": [{k: r[k] for k in FEATURES} for r in records], "top_k": len(records)}
    return path, body


def _ranked_by_cli(run_dir, path, tmp_path) -> dict[str, np.ndarray]:
    out = tmp_path / "ranked.parquet"
    assert main(["rank", str(run_dir), str(path), "--group", "request_id", "--out", str(out)]) == 0
    ranked = pq.read_table(out)
    assert ranked.column("rank").to_pylist() == list(range(1, ranked.num_rows + 1))
    return {c: ranked.column(c).to_numpy() for c in ("item_id", "score", "click", "dwell", "convert")}


def _ranked_by_http(body) -> dict[str, np.ndarray]:
    candidates = body["candidates"]
    out = {"item_id": np.array([c["ids"]["item_id"] for c in candidates]),
           "score": np.array([c["score"] for c in candidates]),
           "index": np.array([c["index"] for c in candidates])}
    out.update({t: np.array([c["estimates"][t] for c in candidates]) for t in ("click", "dwell", "convert")})
    return out


def _ranked_by_predictor(predictor, body) -> dict[str, np.ndarray]:
    ranked = predictor.rank(body)
    return {"item_id": np.array(ranked.ids["item_id"]), "score": ranked.scores, "index": ranked.indices,
            **ranked.estimates}


def test_one_request_ranks_the_same_everywhere(serving_run, one_request, tmp_path):
    if not (serving_run / "model.onnx").is_file():
        assert main(["export", str(serving_run)]) == 0
    path, body = one_request
    results = {"predictor-torch": _ranked_by_predictor(Predictor.load(serving_run), body),
               "predictor-onnx": _ranked_by_predictor(Predictor.load(serving_run, backend="onnx"), body),
               "cli-rank": _ranked_by_cli(serving_run, path, tmp_path)}
    for backend in ("torch", "onnx"):
        with live_server(serving_run, "--backend", backend, log_dir=tmp_path) as server, server.client() as client:
            response = client.post("/rank", json=body)
            assert response.status_code == 200, response.text
            assert client.get("/health").json()["backend"] == backend
            results[f"http-{backend}"] = _ranked_by_http(response.json())
            if backend == "onnx":
                _golden_requests_rank_as_pytorch(client, serving_run)
    reference = results["predictor-torch"]
    assert len(reference["item_id"]) == len(body["candidates"]) > 5
    for name, result in results.items():
        assert result["item_id"].tolist() == reference["item_id"].tolist(), name  # identical order
        if "index" in result:
            assert result["index"].tolist() == reference["index"].tolist(), name
        for key in ("score", "click", "dwell", "convert"):
            np.testing.assert_allclose(result[key], reference[key], rtol=1e-6, atol=1e-6, err_msg=f"{name} {key}")


def _golden_requests_rank_as_pytorch(client, run_dir) -> None:
    """The ONNX parity test through HTTP: every request of the test split gets the same top-k from
    the onnx server as from eager PyTorch (after the calibrators and the formula)."""
    eager = Predictor.load(run_dir)
    table = pq.read_table(eager.config.data.test)
    for request_id in np.unique(table.column("request_id").to_numpy()):
        rows = table.filter(pa.compute.equal(table.column("request_id"), request_id)).to_pylist()
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        body = {"context": {"user_id": rows[0]["user_id"], "device": rows[0]["device"]},
                "candidates": [{k: r[k] for k in FEATURES} for r in rows]}
        got = client.post("/rank", json=body).json()
        expected = eager.rank(body)
        assert [c["index"] for c in got["candidates"]] == expected.indices.tolist(), request_id
        np.testing.assert_allclose([c["score"] for c in got["candidates"]], expected.scores, rtol=1e-6, atol=1e-7)


def test_sighup_reloads_the_run_directory_and_keeps_a_bad_one_out(serving_run, serving_run_b, one_request, tmp_path):
    """SIGHUP re-reads the run directory being served: a run replaced in place (here: swapped for
    another run) is swapped in; a broken one is refused and the old model keeps serving."""
    live = tmp_path / "live"
    shutil.copytree(serving_run, live, ignore=shutil.ignore_patterns("model.onnx"))
    _, body = one_request
    with live_server(live, log_dir=tmp_path) as server, server.client() as client:
        first = client.get("/health").json()["version"]
        (live / "model.safetensors").write_bytes(b"broken")  # a bad run in place: refused
        server.signal(signal.SIGHUP)
        _wait_for(lambda: "reload refused" in server.log.read_text())
        assert client.get("/health").json()["version"] == first and client.post("/rank", json=body).status_code == 200
        shutil.rmtree(live)
        shutil.copytree(serving_run_b, live)  # a new run in place: swapped in
        server.signal(signal.SIGHUP)
        _wait_for(lambda: client.get("/health").json()["version"] != first)
        assert client.get("/health").json()["version"] == Predictor.load(serving_run_b).version
        assert client.post("/rank", json=body).status_code == 200


def test_reload_reaches_every_worker(serving_run, serving_run_b, one_request, tmp_path):
    _, body = one_request
    new = Predictor.load(serving_run_b).version
    with live_server(serving_run, "--workers", "2", log_dir=tmp_path) as server:
        with server.client() as client:
            response = client.post("/admin/reload", json={"run_dir": str(serving_run_b)})
            assert response.status_code == 200, response.text
        # a fresh connection lands on either worker: wait until both workers (by pid) serve the new
        # run; a run of new versions from one worker alone says nothing of the other
        versions: dict[int, str] = {}
        _wait_for(lambda: _both_workers_serve(server, versions, new), timeout=120)
        with server.client() as client:
            assert client.post("/rank", json=body).json()["version"] == new
            assert 'multikpi_reloads_total{result="ok"}' in client.get("/metrics").text


def _both_workers_serve(server, versions: dict[int, str], version: str) -> bool:
    """Ask /health on fresh connections, recording each worker's latest version by pid."""
    import httpx

    for _ in range(12):
        health = httpx.get(server.url + "/health", timeout=10).json()
        versions[health["pid"]] = health["version"]
    return len(versions) == 2 and set(versions.values()) == {version}


def _wait_for(condition, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError("condition not met in time")
