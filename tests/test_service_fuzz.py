"""Fuzzing the live service from its own OpenAPI schema (schemathesis, negative and positive
generation): at least 1,000 generated malformed requests (negative mode: bodies that violate the
schema) and more valid ones, none answered with a 5xx, and afterwards the server is alive and ranks a
known request exactly as the Predictor does."""
from __future__ import annotations

import math
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from live_server import live_server
from multikpi import Predictor

schemathesis = pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow
EXAMPLES = {"negative": 400, "positive": 100}  # per operation; the GETs take few (they have no inputs)
SEEN: Counter[tuple[str, str]] = Counter()  # (malformed | valid, status class) -> responses
ACCEPTED_MALFORMED: list[str] = []  # curl commands of negative-mode cases answered 2xx


@pytest.fixture(scope="module")
def server(serving_run, tmp_path_factory):
    with live_server(serving_run, log_dir=tmp_path_factory.mktemp("fuzz")) as live:
        yield live


MODES = ("negative", "positive")


@pytest.mark.parametrize("mode", MODES)
def test_no_generated_request_gets_a_server_error(server, mode):
    """Every operation of the schema, `EXAMPLES` Hypothesis examples each (schemathesis strategies;
    its pytest plugin is not used: it does not support this pytest)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    api = schemathesis.openapi.from_url(server.url + "/openapi.json")
    generation_mode = {"negative": schemathesis.GenerationMode.NEGATIVE,
                       "positive": schemathesis.GenerationMode.POSITIVE}[mode]
    for result in api.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES[mode], deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=generation_mode))
        def call(case):
            response = case.call(timeout=60)
            # schemathesis' negative mode may also drop an optional body: a bare POST /admin/reload
            # is valid (it reloads the run being served) and is not counted as malformed
            bare_reload = case.operation.path == "/admin/reload" and not response.request.body
            kind = "malformed" if mode == "negative" and not bare_reload else "valid"
            SEEN[kind, f"{response.status_code // 100}xx"] += 1
            if kind == "malformed" and response.status_code < 300:
                ACCEPTED_MALFORMED.append(f"{case.as_curl_command()} -> {response.text[:200]}")
            assert response.status_code < 500, (case.as_curl_command(), response.text[:500])

        try:
            call()
        except Unsatisfiable:  # nothing to make invalid: a GET without parameters, in negative mode
            assert mode == "negative" and operation.method.upper() == "GET", operation.label


def test_the_fuzzed_server_is_alive_and_answers_correctly(server, serving_run, feed_files):
    malformed = sum(n for (kind, _), n in SEEN.items() if kind == "malformed")
    print(f"fuzz: {sum(SEEN.values())} generated requests, {malformed} of them malformed; by kind and status "
          f"class {dict(SEEN)}")
    assert malformed >= 1000, SEEN
    assert not ACCEPTED_MALFORMED, ACCEPTED_MALFORMED[:5]  # a request violating the schema is refused
    assert not any(status == "5xx" for _, status in SEEN), SEEN
    table = pq.read_table(feed_files["test"])
    rows = table.filter(pa.compute.equal(table.column("request_id"), 7)).to_pylist()
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    context = {"user_id": rows[0]["user_id"], "device": rows[0]["device"]}
    features = ["item_id", "item_category", "position", "price", "item_age_h", "affinity"]
    request = {"context": context, "candidates": [{k: r[k] for k in features} for r in rows], "top_k": 50}
    with server.client() as client:
        assert client.get("/health").json()["status"] == "ok"
        body = client.post("/rank", json=request).json()
        metrics = client.get("/metrics").text
    expected = Predictor.load(serving_run).rank(request)
    assert [c["index"] for c in body["candidates"]] == expected.indices.tolist()
    assert [c["score"] for c in body["candidates"]] == pytest.approx(expected.scores.tolist(), rel=1e-9)
    assert 'status="5' not in metrics  # the server counted no 5xx either
