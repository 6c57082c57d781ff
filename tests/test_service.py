"""The HTTP service in-process (FastAPI TestClient): /rank against Predictor.rank, validation that
names the field (422) and limits (413), OOV counting, /metadata, /predict, /metrics, reload."""
from __future__ import annotations

import json
import re
import shutil
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multikpi import Predictor
from multikpi.service.schema import Limits
from multikpi.service.server import ServeSettings, build_app
from request_fixtures import CANDIDATE_FEATURES, feed_request

fastapi_testclient = pytest.importorskip("fastapi.testclient")


def _client(run_dir, limits: Limits | None = None):
    return fastapi_testclient.TestClient(build_app(ServeSettings(str(run_dir), limits=limits or Limits())))


@pytest.fixture(scope="module")
def client(serving_run):
    with _client(serving_run) as c:
        yield c


@pytest.fixture(scope="module")
def request_body(feed_files) -> dict:
    context, candidates, _ = feed_request(pq.read_table(feed_files["test"]), 4)
    return {"context": context, "candidates": candidates}


def test_rank_answers_what_the_predictor_does(client, serving_run, request_body):
    response = client.post("/rank", json={**request_body, "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    ranked = Predictor.load(serving_run).rank({**request_body, "top_k": 3})
    assert [c["index"] for c in body["candidates"]] == ranked.indices.tolist()
    assert [c["rank"] for c in body["candidates"]] == [1, 2, 3]
    assert [c["score"] for c in body["candidates"]] == pytest.approx(ranked.scores.tolist(), rel=1e-12)
    assert body["candidates"][0]["estimates"] == pytest.approx({t: v[0] for t, v in ranked.estimates.items()})
    assert body["candidates"][0]["ids"] == {"request_id": 4, "item_id": ranked.ids["item_id"][0]}
    assert body["score"] == "click * (1 + 0.01 * dwell)" and body["num_candidates"] == len(request_body["candidates"])
    assert body["version"] == client.get("/health").json()["version"]


def _bad(body: dict, **changes) -> dict:
    bad = json.loads(json.dumps(body))
    for path, value in changes.items():
        where, _, key = path.partition("__")
        target = bad["candidates"][1] if where == "candidate" else bad[where]
        if value is KeyError:
            target.pop(key)
        else:
            target[key] = value
    return bad


@pytest.mark.parametrize("changes, expected", [
    ({"candidate__price": "cheap"}, r"^candidates\[1\]\.price: Input should be a valid number \(got 'cheap'\)"),
    ({"candidate__item_id": "17"}, r"^candidates\[1\]\.item_id: Input should be a valid integer"),
    ({"candidate__item_id": 2**64}, r"^candidates\[1\]\.item_id: Input should be less than or equal to"),
    ({"candidate__position": True}, r"^candidates\[1\]\.position: Input should be a valid integer"),
    ({"candidate__colour": "red"}, r"^candidates\[1\]\.colour: Extra inputs are not permitted"),
    ({"candidate__item_category": KeyError}, r"candidates\[1\] has no feature 'item_category' \(and the context"),
    ({"context__user_id": KeyError}, r"candidates\[0\] has no feature 'user_id'"),
    ({"context__device": 3}, r"^context\.device: Input should be a valid string \(got 3\)"),
])
def test_bad_requests_are_422_naming_the_field(client, request_body, changes, expected):
    response = client.post("/rank", json=_bad(request_body, **changes))
    assert response.status_code == 422, response.text
    assert re.search(expected, response.json()["detail"]), response.json()


@pytest.mark.parametrize("raw, expected", [
    (b'{"candidates": [{"price": NaN}]}', r"candidates\[0\]\.price: Input should be a finite number"),
    (b'{"candidates": [{"price": Infinity}]}', r"candidates\[0\]\.price: Input should be a finite number"),
    (b'{"candidates": [{"price": 1e999}]}', r"candidates\[0\]\.price: Input should be a finite number"),
    (b'{"candidates": [', r"^body: Invalid JSON"),
    (b'[]', r"^body: Input should be an object"),
    (b'', r"^body: Invalid JSON"),
    (b'{"candidates": []}', r"^candidates: List should have at least 1 item"),
    (b'{"candidates": [{}], "top_k": 0}', r"^top_k: Input should be greater than or equal to 1"),
    (b'{"candidates": [{}], "score": "clik"}', r"unknown name 'clik' at position 0; did you mean 'click'"),
])
def test_malformed_bodies_are_422(client, raw, expected):
    response = client.post("/rank", content=raw)
    assert response.status_code == 422, response.text
    assert re.search(expected, response.json()["detail"]), response.json()


def test_null_is_allowed_only_where_training_saw_missing_values(client, serving_run, request_body):
    stats = Predictor.load(serving_run).encoder.dense_stats
    nullable = [c for c in ("price", "item_age_h", "affinity") if stats[c]["indicator"]]
    strict = [c for c in ("price", "item_age_h", "affinity") if not stats[c]["indicator"]]
    assert strict, "the tiny feed has a dense column without missing values"
    response = client.post("/rank", json=_bad(request_body, **{f"candidate__{strict[0]}": None}))
    assert response.status_code == 422 and f"candidates[1].{strict[0]}: Input should be a valid number (got None)" in \
        response.json()["detail"]
    if nullable:
        assert client.post("/rank", json=_bad(request_body, **{f"candidate__{nullable[0]}": None})).status_code == 200
    assert client.post("/rank", json=_bad(request_body, candidate__item_id=None)).status_code == 200  # id -> OOV


def test_limits_on_candidates_and_body_bytes(serving_run, request_body):
    with _client(serving_run, Limits(max_candidates=3, max_body_bytes=4000)) as small:
        many = {**request_body, "candidates": request_body["candidates"][:4]}
        response = small.post("/rank", json=many)
        assert response.status_code == 422 and "candidates: List should have at most 3 items" in response.json()["detail"]
        huge = {**request_body, "candidates": request_body["candidates"][:3], "score": "click" + " " * 5000}
        response = small.post("/rank", json=huge)
        assert response.status_code == 413
        assert response.json()["detail"] == "request body is larger than the limit of 4,000 bytes"


def test_unknown_ids_are_out_of_vocabulary_and_counted(client, request_body):
    before = _metric(client, 'multikpi_oov_values_total{column="item_id"}')
    body = _bad(request_body, candidate__item_id=-12345)
    response = client.post("/rank", json={**body, "top_k": 100})
    assert response.status_code == 200
    assert response.json()["oov"]["item_id"] >= 1
    assert _metric(client, 'multikpi_oov_values_total{column="item_id"}') - before == response.json()["oov"]["item_id"]


def _metric(client, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_requests_errors_and_latency(client, request_body):
    ok = _metric(client, 'multikpi_requests_total{endpoint="/rank",status="200"}')
    bad = _metric(client, 'multikpi_request_errors_total{endpoint="/rank",status="422"}')
    client.post("/rank", json=request_body)
    client.post("/rank", json={"candidates": []})
    client.get("/no/such/path")
    assert _metric(client, 'multikpi_requests_total{endpoint="/rank",status="200"}') == ok + 1
    assert _metric(client, 'multikpi_request_errors_total{endpoint="/rank",status="422"}') == bad + 1
    assert _metric(client, 'multikpi_request_errors_total{endpoint="other",status="404"}') >= 1
    assert _metric(client, 'multikpi_request_duration_seconds_count{endpoint="/rank"}') >= 2
    assert _metric(client, "multikpi_candidates_total") >= len(request_body["candidates"])


def test_metadata_describes_the_run(client, serving_run):
    meta = client.get("/metadata").json()
    predictor = Predictor.load(serving_run)
    assert meta["version"] == predictor.version and meta["backend"] == "torch"
    assert meta["tasks"] == {"click": {"kind": "binary", "label": "click"}, "dwell": {"kind": "regression",
                             "label": "dwell"}, "convert": {"kind": "binary", "label": "convert"}}
    assert meta["features"]["item_id"] == {"kind": "categorical", "type": "int64", "nullable": True,
                                           "vocabulary": len(predictor.encoder.vocabs["item_id"])}
    assert meta["features"]["device"]["type"] == "string" and meta["features"]["price"]["kind"] == "dense"
    assert meta["score"] == "click * (1 + 0.01 * dwell)" and meta["top_k"] == 5 and meta["calibration"] == "platt"
    assert meta["metrics"]["splits"]["test"]["click"]["auc"] == pytest.approx(
        json.loads((serving_run / "metrics.json").read_text())["splits"]["test"]["click"]["auc"])


def test_predict_gives_calibrated_or_raw_estimates(client, serving_run, request_body):
    rows = [{**request_body["context"], **c} for c in request_body["candidates"][:3]]
    predictor = Predictor.load(serving_run)
    table = pa.Table.from_pylist(rows)
    for calibrated in (True, False):
        response = client.post("/predict", json={"rows": rows, "calibrated": calibrated})
        assert response.status_code == 200, response.text
        got = [p["estimates"]["click"] for p in response.json()["predictions"]]
        assert got == pytest.approx(predictor.predict(table, calibrated=calibrated).column("click").to_pylist())
    assert response.json()["predictions"][0]["ids"] == {"request_id": 4, "item_id": rows[0]["item_id"]}
    response = client.post("/predict", json={"rows": [{"item_id": 1}]})
    assert response.status_code == 422 and "rows[0].user_id: Field required" in response.json()["detail"]


def test_openapi_is_generated_from_the_run(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert set(components["Candidate"]["properties"]) >= set(CANDIDATE_FEATURES)
    assert components["Candidate"]["additionalProperties"] is False
    assert components["RankRequest"]["properties"]["candidates"]["maxItems"] == Limits().max_candidates
    assert schema["paths"]["/rank"]["post"]["requestBody"]["required"] is True


def test_reload_swaps_atomically_and_refuses_a_bad_run(serving_run, serving_run_b, request_body, tmp_path):
    with _client(serving_run) as c:
        old = c.get("/health").json()["version"]
        broken = tmp_path / "broken"
        shutil.copytree(serving_run_b, broken)
        (broken / "model.safetensors").write_bytes(b"not weights")
        response = c.post("/admin/reload", json={"run_dir": str(broken)})
        assert response.status_code == 409
        assert response.json()["detail"].startswith("reload refused: run ") and "sha256 mismatch" in \
            response.json()["detail"] and response.json()["detail"].endswith(f"still serving version {old[:12]}")
        assert c.get("/health").json()["version"] == old and c.post("/rank", json=request_body).status_code == 200
        response = c.post("/admin/reload", json={"run_dir": str(serving_run_b)})
        assert response.status_code == 200 and response.json()["previous"] == old
        new = c.get("/health").json()["version"]
        assert new == Predictor.load(serving_run_b).version != old
        assert c.get("/metadata").json()["score"] == "click"
        assert c.post("/rank", json=request_body).json()["version"] == new
        assert 'multikpi_reloads_total{result="refused"} 1.0' in c.get("/metrics").text


def test_requests_in_flight_finish_on_the_old_model(serving_run, serving_run_b, request_body):
    """A reload (here from another thread, as SIGHUP does) swaps the model while a /rank request is
    being computed: that request still answers from the old model, the next one from the new."""
    app = build_app(ServeSettings(str(serving_run)))
    with fastapi_testclient.TestClient(app) as c:
        state = _state(app)
        old = state.current
        started = threading.Event()
        compute = old.predictor.backend.outputs

        def outputs_after_the_swap(categorical, dense, context=None):
            started.set()
            deadline = time.monotonic() + 120
            while state.current is old and time.monotonic() < deadline:  # the swap happens meanwhile
                time.sleep(0.01)
            return compute(categorical, dense, context)

        old.predictor.backend.outputs = outputs_after_the_swap
        reloader = threading.Thread(target=lambda: started.wait(60) and state.reload(str(serving_run_b)))
        reloader.start()
        response = c.post("/rank", json=request_body)
        reloader.join(120)
        assert state.current is not old and state.current.version == Predictor.load(serving_run_b).version
        assert response.status_code == 200 and response.json()["version"] == old.version
        assert c.post("/rank", json=request_body).json()["version"] == state.current.version


def _state(app):
    """The ServiceState the app serves (reached through the /health endpoint's closure)."""
    for route in app.routes:
        if getattr(route, "path", None) == "/health":
            return next(c.cell_contents for c in route.endpoint.__closure__ if hasattr(c.cell_contents, "current"))
    raise AssertionError("no /health route")


def test_admin_token_guards_reload(serving_run, monkeypatch):
    monkeypatch.setenv("MULTIKPI_ADMIN_TOKEN", "s3cret")
    with _client(serving_run) as c:
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 401
        started = time.perf_counter()
        response = c.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 200, response.text  # the same run, read anew
        assert time.perf_counter() - started < 120


def test_serve_options_and_backends_are_checked_with_one_line_errors(serving_run, capsys):
    from multikpi.cli.main import main
    from multikpi.errors import DataError

    assert main(["serve", str(serving_run), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "multikpi serve: error: --workers must be a positive integer. Got 0"
    assert main(["serve", str(serving_run) + "-absent"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"run directory '{serving_run}-absent' does not exist")
    with pytest.raises(DataError, match=r"^backend must be one of torch, onnx. Got 'tensorrt'$"):
        Predictor.load(serving_run, backend="tensorrt")


def test_a_reload_body_must_be_json_or_absent(client):
    """Found by the fuzzer: whitespace (or a form feed) is not an empty body: 422, no reload."""
    version = client.get("/health").json()["version"]
    for body in (b" \t\r\n", b"\x0c"):
        response = client.post("/admin/reload", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and "json" in response.json()["detail"].lower(), response.text
    assert client.get("/health").json()["version"] == version


def test_serve_binds_loopback_by_default():
    from multikpi.cli.main import build_parser

    args = build_parser().parse_args(["serve", "runs/x"])
    assert (args.host, args.port, args.workers, args.backend) == ("127.0.0.1", 8000, 1, "torch")
    args = build_parser().parse_args(["serve", "runs/x", "--host", "0.0.0.0", "--port", "9000", "--workers", "2"])
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 9000, 2)


def test_serving_errors_are_in_the_catalogue():
    from conftest import REPO

    text = (REPO / "docs" / "errors.md").read_text()
    ids = ["serve-invalid-field", "serve-missing-feature", "serve-feature-twice", "serve-body-too-large",
           "serve-reload-refused", "serve-bad-option", "serve-bad-backend", "serve-onnx-stale", "export-bad-format",
           "export-out-not-onnx"]
    assert [i for i in ids if f"`{i}`" not in text] == []


def test_the_loaded_run_is_frozen_out_of_the_cyclic_collector(serving_run, serving_run_b, monkeypatch):
    """gc.freeze after loading (and again after a reload, once the old model is collected): a full
    collection over the loaded process never lands in the middle of a request."""
    import gc

    from multikpi.service import state as state_module

    with state_module.FREEZE_LOCK:  # other tests' reload timers wait
        app = build_app(ServeSettings(str(serving_run)))
        assert gc.get_freeze_count() > 10_000  # torch, the model, the encoders...
    refrozen: list[int] = []
    freeze = state_module.freeze_loaded_objects

    def recording() -> None:
        with state_module.FREEZE_LOCK:
            freeze()
            refrozen.append(gc.get_freeze_count())

    monkeypatch.setattr(state_module, "freeze_loaded_objects", recording)
    monkeypatch.setattr(state_module, "REFREEZE_SECONDS", 0.05)
    _state(app).reload(str(serving_run_b))
    deadline = time.monotonic() + 30
    while not refrozen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert refrozen and refrozen[0] > 10_000
