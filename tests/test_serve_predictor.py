"""Serving in-process: the ServingEncoder against FeatureEncoder.encode (the oracle), Predictor.rank
against predict + the formula + a stable sort, the shared ranking core, and concurrent callers."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multikpi import Predictor
from multikpi.decide.ranking import rank_groups
from multikpi.errors import ConfigError, DataError
from multikpi.serve.ranking import request_order
from request_fixtures import feed_request


@pytest.fixture(scope="module")
def predictor(serving_run) -> Predictor:
    return Predictor.load(serving_run)


@pytest.fixture(scope="module")
def test_table(feed_files) -> pa.Table:
    return pq.read_table(feed_files["test"])


def test_serving_encoder_equals_feature_encoder_on_whole_splits(predictor, feed_files):
    for split in ("valid", "test"):
        table = pq.read_table(feed_files[split])
        expected = predictor.encoder.encode(table, with_labels=False)
        got = predictor.serving_encoder.encode({c: table.column(c) for c in predictor.feature_columns()},
                                               table.num_rows)
        assert np.array_equal(got.categorical, expected.categorical.numpy())  # incl. unseen ids -> 0
        assert np.array_equal(got.dense, expected.dense.numpy())
        assert (got.categorical[:, 0] == 0).any()  # the split does have out-of-vocabulary user ids
        assert got.oov["user_id"] == int((expected.categorical[:, 0] == 0).sum())


def test_python_lists_as_json_gives_them_encode_the_same(predictor, feed_files):
    """The request path: plain lists of ints, strings, floats and None (no Arrow) -> the same codes."""
    table = pq.read_table(feed_files["test"])
    expected = predictor.encoder.encode(table, with_labels=False)
    lists = {c: [None if isinstance(v, float) and math.isnan(v) else v for v in table.column(c).to_pylist()]
             for c in predictor.feature_columns()}
    assert any(v is None for v in lists["affinity"]) or any(v is None for v in lists["price"])
    got = predictor.serving_encoder.encode(lists, table.num_rows)
    assert np.array_equal(got.categorical, expected.categorical.numpy())
    assert np.array_equal(got.dense, expected.dense.numpy())
    with pytest.raises(DataError, match=r"dense column 'price' must be numeric. Got type string"):
        predictor.serving_encoder.encode({**lists, "price": ["1.5"] * table.num_rows}, table.num_rows)
    with pytest.raises(DataError, match=r"dense column 'price' must be finite or null. Got 1 infinite value"):
        predictor.serving_encoder.encode({**lists, "price": [math.inf] + lists["price"][1:]}, table.num_rows)


def test_arrays_as_the_http_fast_path_gives_them_encode_the_same(predictor, feed_files):
    """int64 arrays for integer ids and float64 arrays with NaN for missing numbers (all dense
    columns standardized at once, `_standardize_matrix`) -> the same codes and values."""
    table = pq.read_table(feed_files["test"])
    expected = predictor.encoder.encode(table, with_labels=False)
    encoder = predictor.encoder
    arrays = {c: (table.column(c).to_numpy().astype(np.int64) if pa.types.is_integer(encoder.vocabs[c].type)
                  else table.column(c).to_pylist()) for c in encoder.categorical}
    arrays.update({c: table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in encoder.dense})
    assert any(np.isnan(arrays[c]).any() for c in encoder.dense) and encoder.binned  # missing values and bins
    got = predictor.serving_encoder.encode(arrays, table.num_rows)
    assert np.array_equal(got.categorical, expected.categorical.numpy())
    assert np.array_equal(got.dense, expected.dense.numpy())
    broken = {**arrays, "item_age_h": np.where(np.arange(table.num_rows) == 3, np.inf, arrays["item_age_h"])}
    with pytest.raises(DataError, match=r"dense column 'item_age_h' must be finite or null. Got 1 infinite value"):
        predictor.serving_encoder.encode(broken, table.num_rows)


@pytest.mark.parametrize("vocab_size,rows", [(10, 1000), (5000, 10), (5000, 1000), (120_000, 3000)])
def test_vocabulary_search_equals_a_dictionary(vocab_size, rows):
    """Both ways `_search` looks ids up (in request order; sorted first, for large vocabularies
    and requests) give a dictionary's answer: index + 1, 0 for absent ids and nulls."""
    from multikpi.serve.encoding import ServingEncoder

    rng = np.random.default_rng(vocab_size + rows)
    vocab = np.unique(rng.integers(-(2**62), 2**62, vocab_size))
    values = np.concatenate([rng.choice(vocab, rows - rows // 4), rng.integers(-(2**62), 2**62, rows // 4),
                             vocab[[0, -1]], [np.iinfo(np.int64).min, np.iinfo(np.int64).max]])
    rng.shuffle(values)
    nulls = rng.random(values.size) < 0.05
    lookup = {int(v): i + 1 for i, v in enumerate(vocab)}
    expected = np.array([lookup.get(int(v), 0) for v in values])
    assert np.array_equal(ServingEncoder._search(vocab, values), expected)
    assert np.array_equal(ServingEncoder._search(vocab, values, nulls), np.where(nulls, 0, expected))


def test_context_is_broadcast_like_repeated_rows(predictor, test_table):
    context, candidates, rows = feed_request(test_table, 3)
    full = [{**context, **c} for c in candidates]
    columns = {f: [r[f] for r in full] for f in predictor.feature_columns()}
    repeated = predictor.serving_encoder.encode(columns, len(full))
    broadcast = predictor.serving_encoder.encode(
        {f: [c[f] for c in candidates] for f in predictor.feature_columns() if f not in context},
        len(candidates), {k: v for k, v in context.items() if k in predictor.feature_columns()})
    assert np.array_equal(broadcast.categorical, repeated.categorical)
    assert np.array_equal(broadcast.dense, repeated.dense)


def test_null_and_unseen_ids_are_out_of_vocabulary(predictor, test_table):
    codes = predictor.serving_encoder.codes("device", pa.chunked_array([pa.array(["no-such-device", None])]))
    assert codes.tolist() == [0, 0]
    assert predictor.serving_encoder.codes("item_id", pa.chunked_array([pa.array([None], pa.null())])).tolist() == [0]
    with pytest.raises(DataError, match=r"categorical column 'item_id' holds string ids \(string\); the model was "
                                        r"trained on integer ids \(int64\): convert the column to integers"):
        predictor.serving_encoder.codes("item_id", pa.chunked_array([pa.array(["x"])]))
    with pytest.raises(DataError, match=r"categorical column 'item_id' holds string ids"):  # as FeatureEncoder says
        one = test_table.slice(0, 1)
        predictor.encoder.encode(one.set_column(one.column_names.index("item_id"), "item_id", pa.array(["x"])),
                                 with_labels=False)
    with pytest.raises(DataError, match=r"categorical column 'item_id' must hold integer, string or boolean ids. "
                                        r"Got type double"):
        predictor.serving_encoder.codes("item_id", pa.chunked_array([pa.array([1.5])]))


def test_rank_is_predict_then_the_formula_then_a_stable_sort(predictor, test_table):
    context, candidates, rows = feed_request(test_table, 5)
    ranked = predictor.rank({"context": context, "candidates": candidates, "top_k": 4})
    predicted = predictor.predict(rows)
    click, dwell = predicted.column("click").to_numpy(), predicted.column("dwell").to_numpy()
    scores = click * (1 + 0.01 * dwell)  # the run's decide.score
    expected = np.argsort(-scores, kind="stable")[:4]
    assert ranked.indices.tolist() == expected.tolist()
    # rank computes the context's share of the first layer once (forward_request): the same values
    # up to float rounding (seen: 1.5e-10 relative), well inside the 1e-6 that serving promises
    assert ranked.scores == pytest.approx(scores[expected], rel=1e-6)
    assert ranked.estimates["dwell"] == pytest.approx(dwell[expected], rel=1e-6)
    assert ranked.ids == {"request_id": [5] * 4, "item_id": rows.column("item_id").to_numpy()[expected].tolist()}
    rows_out = ranked.to_rows()
    assert [r["rank"] for r in rows_out] == [1, 2, 3, 4] and rows_out[0]["index"] == expected[0]


def test_rank_takes_columns_and_a_request_score(predictor, test_table):
    context, candidates, rows = feed_request(test_table, 8)
    columns = {k: [c[k] for c in candidates] for k in candidates[0]}
    by_rows = predictor.rank({"context": context, "candidates": candidates, "score": "convert"})
    by_columns = predictor.rank({"context": context, "candidates": columns, "score": "convert"})
    assert by_rows.indices.tolist() == by_columns.indices.tolist()
    assert by_rows.formula == "convert" and by_rows.top_k == 5  # serving.top_k
    assert np.all(np.diff(by_rows.estimates["convert"]) <= 0)


@pytest.mark.parametrize("request_, expected", [
    ({"candidates": []}, r"candidates must be a non-empty list"),
    ({"candidates": [{"item_id": 1}]}, r"candidates\[0\] has no feature 'user_id' \(and the context neither\)"),
    ({"context": {"userid": 1}, "candidates": [{}]}, r"context has unknown field\(s\) \['userid'\]"),
    ({"top_k": 0, "candidates": [{}]}, r"top_k must be a positive integer. Got 0"),
])
def test_rank_errors_name_the_field(predictor, test_table, request_, expected):
    with pytest.raises(DataError, match=expected):
        predictor.rank(request_)


def test_the_first_bad_candidate_is_named(predictor, test_table):
    context, candidates, _ = feed_request(test_table, 3)
    with pytest.raises(DataError, match=r"candidates\[1\] has no feature '\w+' \(and the context neither\)"):
        predictor.rank({"context": context, "candidates": [candidates[0], "not an object", candidates[2]]})
    missing = dict(candidates[2])
    feature = next(iter(missing))
    del missing[feature]
    with pytest.raises(DataError, match=rf"candidates\[2\] has no feature '{feature}'"):
        predictor.rank({"context": context, "candidates": [candidates[0], candidates[1], missing]})


def test_a_feature_in_context_and_candidates_is_refused(predictor, test_table):
    context, candidates, _ = feed_request(test_table, 2)
    candidates[1]["user_id"] = 1
    with pytest.raises(DataError, match=r"feature 'user_id' is in the context and in candidates\[1\]"):
        predictor.rank({"context": context, "candidates": candidates})
    with pytest.raises(ConfigError, match=r"score: unknown name 'clik'"):
        predictor.rank({"context": context, "candidates": candidates[:1], "score": "clik"})


def test_request_order_is_the_ranking_of_one_group():
    scores = np.array([0.5, np.nan, 0.9, 0.5, -np.inf, 0.9])
    order = request_order(scores)
    assert order.tolist() == [2, 5, 0, 3, 1, 4]  # ties keep the input order; NaN ties with -inf, both last
    assert order.tolist() == rank_groups(np.zeros(6, dtype=int), scores).order.tolist()  # same as `multikpi rank`


def test_concurrent_callers_get_the_sequential_answers(predictor, test_table):
    requests = [feed_request(test_table, r)[:2] for r in range(12)]
    sequential = [predictor.rank({"context": c, "candidates": k}).indices.tolist() for c, k in requests]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda r: predictor.rank({"context": r[0], "candidates": r[1]}).indices.tolist(),
                                   requests * 4))
    assert concurrent == sequential * 4


def test_predict_on_a_pandas_dataframe_equals_predict_on_the_table(tiny_config, feed_files):
    from multikpi import train

    predictor = Predictor.load(train(tiny_config).run_dir)
    table = pq.read_table(feed_files["test"])
    frame = table.to_pandas()
    frame.index = frame.index + 1000  # a non-default index is not a column
    assert predictor.predict(frame).equals(predictor.predict(table))


def test_a_dataframe_without_pandas_installed_names_the_extra(monkeypatch):
    import sys

    from multikpi.extras import MissingExtraError
    from multikpi.serve.predictor import _dataframe_table

    class DataFrame:  # what an object from a pandas-like library looks like to predict()
        columns = ["a"]

    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(MissingExtraError, match=r"predict\(\) on a DataFrame needs the 'pandas' package, which is "
                                                r"not installed: pip install 'multikpi\[pandas\]'"):
        _dataframe_table(DataFrame())
