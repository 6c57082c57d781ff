"""The fast path of POST /rank (service/fast_request.py) against its oracle, the generated pydantic
model and the usual ranking: a body the fast path accepts must be one the model accepts, ranked
identically (order, scores, estimates, ids, OOV counts); a body the model refuses must never be
accepted by the fast path. Hand-picked bodies with one defect each, then hypothesis mutations."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from multikpi import Predictor
from multikpi.errors import MultiKPIError
from multikpi.serve.request import rank_columns
from multikpi.service.schema import Limits, request_models
from request_fixtures import CANDIDATE_FEATURES, feed_request

pytest.importorskip("orjson")


@pytest.fixture(scope="module")
def predictor(serving_run):
    return Predictor.load(serving_run)


@pytest.fixture(scope="module")
def models(predictor):
    return request_models(predictor, Limits(max_candidates=50))


@pytest.fixture(scope="module")
def body(feed_files) -> dict:
    context, candidates, _ = feed_request(pq.read_table(feed_files["test"]), 7)
    return {"context": context, "candidates": candidates}


def _slow(predictor, models, raw: bytes):
    request = models.rank.validate_json(raw)
    return predictor.rank({"context": request.context, "candidates": request.candidates,
                           "top_k": request.top_k, "score": request.score})


def _outcome(run):
    """('ranked', RankedCandidates) or ('refused', the error's type name) of `run()`."""
    try:
        return "ranked", run()
    except (ValidationError, MultiKPIError) as err:
        return "refused", type(err).__name__


def _same(a, b) -> None:
    assert a.indices.tolist() == b.indices.tolist()
    assert np.array_equal(a.scores, b.scores, equal_nan=True)
    assert set(a.estimates) == set(b.estimates)
    assert all(np.array_equal(a.estimates[t], b.estimates[t]) for t in a.estimates)
    assert a.ids == b.ids and a.oov == b.oov and a.top_k == b.top_k and a.formula == b.formula


def _check(predictor, models, raw: bytes) -> str:
    """Assert the fast path agrees with the oracle (the model, then the usual ranking) on `raw`:
    it takes only bodies the model accepts, and then ends as the oracle does. Returns which path."""
    fast = models.fast_rank.parse(raw)
    if fast is None:
        return "fallback"
    kind, oracle = _outcome(lambda: _slow(predictor, models, raw))
    assert oracle != "ValidationError", f"the fast path accepted a body the model refuses: {raw[:300]!r}"
    mine, result = _outcome(lambda: rank_columns(predictor, fast.columns, fast.top_k, fast.score))
    assert (mine, type(result).__name__ if mine == "ranked" else result) == \
        (kind, type(oracle).__name__ if kind == "ranked" else oracle)
    if kind == "ranked":
        _same(result, oracle)
    return "fast"


def _dumps(body: dict) -> bytes:
    return json.dumps(body).encode()


def _with(body: dict, where: str, key: str, value) -> dict:
    changed = json.loads(json.dumps(body))
    target = changed if where == "top" else changed["context"] if where == "context" else changed["candidates"][1]
    if value is DELETE:
        target.pop(key, None)
    else:
        target[key] = value
    return changed


DELETE = object()


def test_valid_bodies_take_the_fast_path_and_rank_exactly_as_the_model(predictor, models, body):
    variants = [
        body,
        {**body, "top_k": 3, "score": "convert"},
        {"candidates": [{**c, "user_id": body["context"]["user_id"], "device": "web"} for c in body["candidates"]]},
        _with(body, "candidate", "price", 3),  # an int where a number goes
        _with(body, "candidate", "affinity", None),  # null in a column with a missing indicator
        _with(body, "candidate", "item_id", None),  # a null id: out of vocabulary
        _with(body, "candidate", "item_category", "never seen"),  # unseen: out of vocabulary
        _with(body, "context", "device", None),
        _with(_with(body, "context", "request_id", DELETE), "candidate", "request_id", 99),  # an id in one candidate
        _with(body, "candidate", "item_id", 2**63 - 1),  # the largest int64
    ]
    for number, variant in enumerate(variants):
        assert _check(predictor, models, _dumps(variant)) == "fast", number


@pytest.mark.parametrize("where, key, value", [
    ("top", "extra", 1), ("top", "context", None), ("top", "candidates", []), ("top", "candidates", {}),
    ("top", "top_k", 0), ("top", "top_k", True), ("top", "top_k", 1.5), ("top", "top_k", "3"),
    ("top", "score", ""), ("top", "score", "x" * 5000), ("top", "score", 3),
    ("context", "unknown", 1), ("context", "user_id", "7"), ("context", "user_id", 1.0),
    ("context", "user_id", True), ("context", "user_id", 2**63), ("context", "device", 3),
    ("candidate", "unknown", 1), ("candidate", "item_id", 1.5), ("candidate", "item_id", False),
    ("candidate", "item_id", "12"), ("candidate", "item_id", -(2**63) - 1), ("candidate", "item_category", 5),
    ("candidate", "price", "9.5"), ("candidate", "price", True), ("candidate", "price", None),
    ("candidate", "price", [1.0]), ("candidate", "affinity", {}), ("candidate", "request_id", 1.5),
    ("candidate", "request_id", 2**64 - 1), ("candidate", "price", DELETE),  # a candidate lacking a feature
    ("candidate", "user_id", 5),  # a feature in the context and a candidate
])
def test_bodies_with_one_defect_fall_back_to_the_model(predictor, models, body, where, key, value):
    raw = _dumps(_with(body, where, key, value))
    assert _check(predictor, models, raw) == "fallback"
    assert _outcome(lambda: _slow(predictor, models, raw))[0] == "refused"


@pytest.mark.parametrize("raw", [
    b'{"candidates": [{"price": NaN}]}', b'{"candidates": [{"price": Infinity}]}', b'{"candidates": [{"price": 1e400}]}',
    b'\xef\xbb\xbf{"candidates": []}', b'{"candidates": [{}],}', b'{"candidates": [{}]} {}', b'[]', b'',
    b'{"candidates": [{"item_category": "\\ud800"}]}', b'{"candidates": ' + b'[{}]' * 1,
])
def test_malformed_json_falls_back(predictor, models, raw):
    assert models.fast_rank.parse(raw) is None


def test_too_many_candidates_fall_back(predictor, models, body):
    many = {**body, "candidates": (body["candidates"] * 60)[:51]}
    assert _check(predictor, models, _dumps(many)) == "fallback"
    assert _check(predictor, models, _dumps({**many, "candidates": many["candidates"][:50]})) == "fast"


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**65), max_value=2**65),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
                        st.lists(st.integers(), max_size=2))
FIELDS = st.sampled_from(["user_id", "device", "request_id", "unknown", *CANDIDATE_FEATURES])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(["top", "context", "candidate"]), FIELDS,
                                  st.one_of(JSON_VALUES, st.just(DELETE))), min_size=1, max_size=3))
def test_random_mutations_agree_with_the_model(predictor, models, body, changes):
    changed = body
    for where, key, value in changes:
        changed = _with(changed, where, key, value)
    _check(predictor, models, _dumps(changed))
