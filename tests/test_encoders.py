"""Tests of the feature/label encoders and of reading tables, against hand-computed values and
numpy closed forms."""
from __future__ import annotations

import gzip
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from multikpi.config import config_from_dict
from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.data.tabular import read_table, write_table
from multikpi.errors import ArtifactError, DataError
from multikpi.synthetic.feed import make_feed
from multikpi.training.setup import encoder_specs

NAN = float("nan")


def make_config(categorical=("user",), dense=("x",), log1p=(), min_frequency=1, tasks=None, numeric_bins=0):
    # numeric_bins 0: these tests are about the categorical and scalar dense inputs; bins have their own tests
    if tasks is None:
        tasks = {"click": {"kind": "binary", "label": "click"}}
    return config_from_dict({
        "data": {"train": "train.parquet", "categorical": list(categorical), "dense": list(dense),
                 "log1p": list(log1p), "min_frequency": min_frequency, "numeric_bins": numeric_bins},
        "tasks": tasks,
    })


FULL_TASKS = {
    "click": {"kind": "binary", "label": "click"},
    "convert": {"kind": "binary", "label": "convert", "train_on": "click"},
    "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"},
}


def train_table() -> pa.Table:
    return pa.table({
        "user": pa.array([10, 20, 10, None, 30, 20], pa.int64()),
        "item": pa.array(["b", "a", "b", "c", None, "b"]),
        "x": pa.array([1.0, 2.0, None, 4.0, NAN, 8.0], pa.float64()),
        "price": pa.array([0.0, 1.0, 3.0, 7.0, 15.0, 99.0], pa.float32()),
        "click": pa.array([1, 0, 1, 1, 0, 0], pa.int8()),
        "convert": pa.array([1, 1, 0, None, 0, 1], pa.int8()),
        "dwell": pa.array([1.0, 3.0, None, 0.0, 10.0, 20.0], pa.float32()),
    })


def full_config(**kwargs):
    base = dict(categorical=("user", "item"), dense=("x", "price"), log1p=("price",), tasks=FULL_TASKS)
    base.update(kwargs)
    return make_config(**base)


# --- categorical -----------------------------------------------------------------------------

def test_vocabulary_is_fit_on_train_only():
    config = make_config()
    train = pa.table({"user": [10, 20, 30], "x": [1.0, 2.0, 3.0], "click": [0, 1, 0]})
    other = pa.table({"user": [30, 40, 10, 20, 99], "x": [1.0] * 5, "click": [0] * 5})
    encoder = FeatureEncoder.fit(train, *encoder_specs(config))
    assert encoder.vocab_sizes == [4]  # 3 ids + the out-of-vocabulary row
    assert encoder.encode(train).categorical[:, 0].tolist() == [1, 2, 3]
    # 40 and 99 appear only in the second table: out of vocabulary.
    assert encoder.encode(other).categorical[:, 0].tolist() == [3, 0, 1, 2, 0]


def test_nulls_map_to_zero_and_are_not_in_vocabulary():
    config = make_config(categorical=("user", "item"))
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(config))
    assert encoder.vocabs["user"].to_pylist() == [10, 20, 30]
    assert encoder.vocabs["item"].to_pylist() == ["a", "b", "c"]
    encoded = encoder.encode(train_table()).categorical
    assert encoded.dtype == torch.int32
    assert encoded[:, 0].tolist() == [1, 2, 1, 0, 3, 2]
    assert encoded[:, 1].tolist() == [2, 1, 2, 3, 0, 2]


def test_min_frequency_drops_rare_ids():
    config = make_config(categorical=("user", "item"), min_frequency=2)
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(config))
    assert encoder.vocabs["user"].to_pylist() == [10, 20]  # 30 seen once
    assert encoder.vocabs["item"].to_pylist() == ["b"]     # a and c seen once
    assert encoder.vocab_sizes == [3, 2]
    encoded = encoder.encode(train_table()).categorical
    assert encoded[:, 0].tolist() == [1, 2, 1, 0, 0, 2]
    assert encoded[:, 1].tolist() == [1, 0, 1, 0, 0, 1]


def test_string_and_integer_ids_match_a_dictionary_oracle():
    table = make_feed(2000, seed=1)
    config = make_config(categorical=("user_id", "item_category", "device"), dense=("noise",))
    encoder = FeatureEncoder.fit(table, *encoder_specs(config))
    encoded = encoder.encode(table).categorical.numpy()
    for j, column in enumerate(("user_id", "item_category", "device")):
        values = table.column(column).to_pylist()
        vocab = sorted(set(v for v in values if v is not None))
        index = {v: i + 1 for i, v in enumerate(vocab)}
        assert encoder.vocab_sizes[j] == len(vocab) + 1
        np.testing.assert_array_equal(encoded[:, j], [index.get(v, 0) for v in values])


def test_other_integer_width_and_dictionary_columns_encode_like_train():
    config = make_config(categorical=("user", "item"))
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(config))
    other = pa.table({
        "user": pa.array([30, 10, 77], pa.int32()),
        "item": pa.array(["c", "zz", "a"]).dictionary_encode(),
        "x": [0.0, 0.0, 0.0],
        "click": [0, 0, 0],
    })
    encoded = encoder.encode(other).categorical
    assert encoded[:, 0].tolist() == [3, 1, 0]
    assert encoded[:, 1].tolist() == [3, 0, 1]


def test_categorical_ids_of_incompatible_type_raise():
    config = make_config()
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(config))
    other = pa.table({"user": ["u1", "u2"], "x": [1.0, 2.0], "click": [0, 1]})
    with pytest.raises(DataError, match=r"categorical column 'user' holds string ids \(string\); the model was "
                                        r"trained on integer ids \(int64\)"):
        encoder.encode(other)


def test_float_categorical_column_raises():
    config = make_config()
    table = pa.table({"user": [1.5, 2.5], "x": [1.0, 2.0], "click": [0, 1]})
    with pytest.raises(DataError, match=r"categorical column 'user' must hold integer, string or boolean "
                                        r"ids\. Got type double"):
        FeatureEncoder.fit(table, *encoder_specs(config))


def test_a_boolean_categorical_column_is_the_ids_0_and_1():
    """pandas' bool flags (is_weekend) as categorical ids: booleans and 0/1 integers encode alike,
    in training and at prediction, and a null is out of vocabulary."""
    config = make_config()
    flags = [True, False, True, True, False, True]
    train = pa.table({"user": flags, "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "click": [1, 0, 1, 1, 0, 0]})
    encoder = FeatureEncoder.fit(train, *encoder_specs(config))
    assert encoder.vocabs["user"].to_pylist() == [0, 1]
    as_bools = encoder.encode(pa.table({"user": pa.array([True, False, None]), "x": [1.0, 1.0, 1.0], "click": [0, 1, 0]}))
    as_ints = encoder.encode(pa.table({"user": pa.array([1, 0, None]), "x": [1.0, 1.0, 1.0], "click": [0, 1, 0]}))
    np.testing.assert_array_equal(as_bools.categorical[:, 0], [2, 1, 0])
    np.testing.assert_array_equal(as_ints.categorical, as_bools.categorical)


# --- dense -----------------------------------------------------------------------------------

def test_dense_standardized_with_train_statistics():
    config = make_config(dense=("x", "price"))
    train = train_table()
    encoder = FeatureEncoder.fit(train, *encoder_specs(config))
    x = np.array([1.0, 2.0, NAN, 4.0, NAN, 8.0])
    price = np.array([0.0, 1.0, 3.0, 7.0, 15.0, 99.0])
    mean, std = np.nanmean(x), np.nanstd(x)  # population std (ddof=0)
    assert encoder.dense_stats["x"]["mean"] == pytest.approx(15.0 / 4)
    assert encoder.dense_stats["x"]["std"] == pytest.approx(std)
    assert encoder.dense_stats["price"]["mean"] == pytest.approx(price.mean())
    assert encoder.dense_stats["price"]["std"] == pytest.approx(price.std())
    assert encoder.missing_indicators == ["x"]  # price has no NaN in train
    assert encoder.num_dense_inputs == 3

    dense = encoder.encode(train).dense
    assert dense.dtype == torch.float32 and dense.shape == (6, 3)
    missing = np.isnan(x)
    expected_x = np.where(missing, 0.0, (x - mean) / std)
    np.testing.assert_allclose(dense[:, 0].numpy(), expected_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dense[:, 1].numpy(), (price - price.mean()) / price.std(), rtol=1e-6, atol=1e-6)
    # The indicator column sits after the dense columns and is 1 exactly where x was NaN or null.
    np.testing.assert_array_equal(dense[:, 2].numpy(), missing.astype(np.float32))


def test_new_data_uses_train_statistics():
    config = make_config(dense=("x",))
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(config))
    x = np.array([1.0, 2.0, NAN, 4.0, NAN, 8.0])
    mean, std = np.nanmean(x), np.nanstd(x)
    other = pa.table({"user": [1, 2, 3], "x": [100.0, None, -3.0], "click": [0, 0, 1]})
    dense = encoder.encode(other).dense.numpy()
    np.testing.assert_allclose(dense[:, 0], [(100 - mean) / std, 0.0, (-3 - mean) / std], rtol=1e-6)
    np.testing.assert_array_equal(dense[:, 1], [0.0, 1.0, 0.0])


def test_log1p_applied_before_standardizing():
    config = make_config(dense=("price",), log1p=("price",))
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(config))
    logged = np.log1p(np.array([0.0, 1.0, 3.0, 7.0, 15.0, 99.0]))
    assert encoder.dense_stats["price"]["mean"] == pytest.approx(logged.mean())
    assert encoder.dense_stats["price"]["std"] == pytest.approx(logged.std())
    dense = encoder.encode(train_table()).dense[:, 0].numpy()
    np.testing.assert_allclose(dense, (logged - logged.mean()) / logged.std(), rtol=1e-5, atol=1e-6)


def test_log1p_clips_negative_values_to_zero():
    config = make_config(dense=("v",), log1p=("v",))
    train = pa.table({"user": [1, 2, 3, 4], "v": [-5.0, 0.0, 1.0, 3.0], "click": [0, 1, 0, 1]})
    encoder = FeatureEncoder.fit(train, *encoder_specs(config))
    logged = np.log1p(np.array([0.0, 0.0, 1.0, 3.0]))
    assert encoder.dense_stats["v"]["mean"] == pytest.approx(logged.mean())


def test_constant_dense_column_gets_unit_std():
    config = make_config(dense=("v",))
    train = pa.table({"user": [1, 2, 3], "v": [5.0, 5.0, 5.0], "click": [0, 1, 0]})
    encoder = FeatureEncoder.fit(train, *encoder_specs(config))
    assert encoder.dense_stats["v"]["std"] == 1.0
    other = pa.table({"user": [1], "v": [7.0], "click": [0]})
    assert encoder.encode(other).dense[0, 0].item() == pytest.approx(2.0)


def test_integer_and_boolean_dense_columns():
    config = make_config(dense=("n", "b"))
    train = pa.table({"user": [1, 2, 3, 4], "n": pa.array([1, 2, 3, 6], pa.int16()),
                      "b": [True, False, True, True], "click": [0, 1, 0, 1]})
    dense = FeatureEncoder.fit(train, *encoder_specs(config)).encode(train).dense.numpy()
    n, b = np.array([1.0, 2, 3, 6]), np.array([1.0, 0, 1, 1])
    np.testing.assert_allclose(dense[:, 0], (n - n.mean()) / n.std(), rtol=1e-6)
    np.testing.assert_allclose(dense[:, 1], (b - b.mean()) / b.std(), rtol=1e-6)


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_inf_in_dense_column_raises(value):
    config = make_config(dense=("x",))
    bad = pa.table({"user": [1, 2], "x": [1.0, value], "click": [0, 1]})
    with pytest.raises(DataError, match=r"dense column 'x' must be finite or null\. Got 1 infinite value"):
        FeatureEncoder.fit(bad, *encoder_specs(config))
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(config))
    with pytest.raises(DataError, match=r"dense column 'x' must be finite"):
        encoder.encode(bad)


def test_string_dense_column_raises():
    config = make_config(dense=("x",))
    bad = pa.table({"user": [1, 2], "x": ["1.0", "2.0"], "click": [0, 1]})
    with pytest.raises(DataError, match=r"dense column 'x' must be numeric\. Got type string"):
        FeatureEncoder.fit(bad, *encoder_specs(config))


def test_all_null_dense_column_raises():
    config = make_config(dense=("x",))
    bad = pa.table({"user": [1, 2], "x": pa.array([None, None], pa.float64()), "click": [0, 1]})
    with pytest.raises(DataError, match=r"dense column 'x' has no values in the training data"):
        FeatureEncoder.fit(bad, *encoder_specs(config))


def test_missing_column_raises_data_error():
    config = make_config(dense=("x",))
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(config))
    without = train_table().drop_columns(["x"])
    with pytest.raises(DataError, match=r"no column\(s\) \['x'\]"):
        FeatureEncoder.fit(without, *encoder_specs(config))
    with pytest.raises(DataError, match=r"no column\(s\) \['x'\]"):
        encoder.encode(without)
    # Labels are only needed when they are encoded.
    no_label = train_table().drop_columns(["click"])
    with pytest.raises(DataError, match=r"no column\(s\) \['click'\]"):
        encoder.encode(no_label)
    assert torch.isnan(encoder.encode(no_label, with_labels=False).labels).all()


# --- labels ----------------------------------------------------------------------------------

def test_binary_label_with_value_two_raises():
    config = make_config()
    bad = pa.table({"user": [1, 2, 3], "x": [1.0, 2.0, 3.0], "click": [0, 2, 1]})
    with pytest.raises(DataError, match=r"label column 'click' of binary task 'click' must be 0 or 1 \(or null\)\. "
                                        r"Got 2 in 1 of 3 rows; make a 0/1 column"):
        FeatureEncoder.fit(bad, *encoder_specs(config))
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(config))
    with pytest.raises(DataError, match=r"label column 'click'.*must be 0 or 1 \(or null\)\. Got 2 in 1 of 3"):
        encoder.encode(bad)


@pytest.mark.parametrize(("values", "expected"), [
    ([1, 2, 2, 1, None], r"Got 2 in 2 of 5 rows; map 1/2 to 0/1$"),
    ([1, 2, 3, 4, 5, 5, 0], r"Got 2, 3, 4, 5 in 5 of 7 rows; it looks like a rating \(0 to 5\): make a 0/1 "
                            r"column with a threshold \(e\.g\. >= 3\), or use `kind: regression`$"),
    (list(range(2, 40)), r"Got 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 28 more distinct values in 38 of 38 rows; make a 0/1"),
])
def test_binary_label_message_lists_the_offending_values_rows_and_a_mapping(values, expected):
    from multikpi.data.labels import read_label

    with pytest.raises(DataError, match=expected):
        read_label(pa.chunked_array([pa.array(values, pa.float64())]), "click", "binary", "click")


def test_all_null_label_raises():
    config = make_config(tasks={"dwell": {"kind": "regression", "label": "dwell"}})
    bad = pa.table({"user": [1, 2], "x": [1.0, 2.0], "dwell": pa.array([None, None], pa.float32())})
    with pytest.raises(DataError, match=r"task 'dwell' has no labelled rows .*column 'dwell' is all null"):
        FeatureEncoder.fit(bad, *encoder_specs(config))


def test_string_label_raises():
    config = make_config()
    bad = pa.table({"user": [1, 2], "x": [1.0, 2.0], "click": ["yes", "no"]})
    with pytest.raises(DataError, match=r"label column 'click' of task 'click' must be numeric"):
        FeatureEncoder.fit(bad, *encoder_specs(config))


def test_binary_labels_and_nulls():
    config = make_config(tasks={"click": {"kind": "binary", "label": "click"},
                                "convert": {"kind": "binary", "label": "convert"}})
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(config))
    assert encoder.labels["click"].mean == pytest.approx(0.5)
    assert encoder.labels["convert"].mean == pytest.approx(3 / 5)
    labels = encoder.encode(train_table()).labels.numpy()
    np.testing.assert_array_equal(labels[:, 0], [1, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(labels[:, 1], [1, 1, 0, NAN, 0, 1])


def test_train_on_masks_label_where_parent_is_not_one():
    config = full_config()
    table = train_table()
    encoder = FeatureEncoder.fit(table, *encoder_specs(config))
    data = encoder.encode(table)
    assert data.tasks == ("click", "convert", "dwell")
    convert = data.labels[:, 1].numpy()
    # click = [1, 0, 1, 1, 0, 0]; convert = [1, 1, 0, null, 0, 1]
    np.testing.assert_array_equal(convert, [1, NAN, 0, NAN, NAN, NAN])
    # The base rate is fit on the gated rows only: rows 0 and 2.
    assert encoder.labels["convert"].mean == pytest.approx(0.5)
    assert encoder.labels["convert"].train_on == "click"


def test_regression_label_standardized_and_inverted():
    config = full_config()
    table = train_table()
    encoder = FeatureEncoder.fit(table, *encoder_specs(config))
    dwell = np.array([1.0, 3.0, NAN, 0.0, 10.0, 20.0])
    present = dwell[~np.isnan(dwell)]
    mean, std = np.log1p(present).mean(), np.log1p(present).std()
    stats = encoder.labels["dwell"]
    assert (stats.kind, stats.transform) == ("regression", "log1p")
    assert stats.mean == pytest.approx(mean) and stats.std == pytest.approx(std)
    encoded = encoder.encode(table).labels[:, 2].numpy()
    np.testing.assert_allclose(encoded, (np.log1p(dwell) - mean) / std, rtol=1e-5, atol=1e-6)
    assert np.isnan(encoded[2])
    back = encoder.to_original_units("dwell", encoded.astype(np.float64))
    np.testing.assert_allclose(back, dwell, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(encoder.to_transformed("dwell", encoded.astype(np.float64)), np.log1p(dwell),
                               rtol=1e-5, atol=1e-6)
    # The model's 0 is the train mean of log1p(dwell).
    assert encoder.to_original_units("dwell", np.array([0.0]))[0] == pytest.approx(np.expm1(mean))


def test_regression_label_without_transform():
    config = make_config(tasks={"y": {"kind": "regression", "label": "y"}})
    y = np.array([2.0, -4.0, 6.0, 12.0])
    table = pa.table({"user": [1, 2, 3, 4], "x": [0.0, 1.0, 2.0, 3.0], "y": y})
    encoder = FeatureEncoder.fit(table, *encoder_specs(config))
    encoded = encoder.encode(table).labels[:, 0].numpy()
    np.testing.assert_allclose(encoded, (y - y.mean()) / y.std(), rtol=1e-6)
    np.testing.assert_allclose(encoder.to_original_units("y", encoded.astype(np.float64)), y, rtol=1e-6)


def test_without_labels_everything_is_nan():
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(full_config()))
    data = encoder.encode(train_table(), with_labels=False)
    assert data.labels.shape == (6, 3) and torch.isnan(data.labels).all()
    assert isinstance(data, EncodedData) and data.num_rows == 6


# --- save / load -----------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    config = full_config(min_frequency=2)
    train = train_table()
    encoder = FeatureEncoder.fit(train, *encoder_specs(config))
    files = encoder.save(tmp_path / "enc")
    assert all(f.exists() for f in files) and (tmp_path / "enc" / "encoders.json") in files
    loaded = FeatureEncoder.load(tmp_path / "enc")
    assert loaded.categorical == encoder.categorical and loaded.dense == encoder.dense
    assert loaded.vocab_sizes == encoder.vocab_sizes
    assert loaded.missing_indicators == encoder.missing_indicators
    assert loaded.labels == encoder.labels
    other = pa.table({
        "user": [30, 10, 5, None], "item": ["b", "q", None, "a"], "x": [3.0, None, 1e3, -2.0],
        "price": [0.5, 2.0, 1e4, 0.0], "click": [1, 1, 0, 0], "convert": [0, 1, 1, None],
        "dwell": [2.0, None, 0.5, 1.0],
    })
    for table in (train, other):
        a, b = encoder.encode(table), loaded.encode(table)
        assert torch.equal(a.categorical, b.categorical)
        assert torch.equal(a.dense, b.dense)
        np.testing.assert_array_equal(a.labels.numpy(), b.labels.numpy())  # NaN == NaN here
        assert a.tasks == b.tasks


def test_load_from_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match=r"cannot be read"):
        FeatureEncoder.load(tmp_path / "nothing")


# --- read_table / write_table ----------------------------------------------------------------

def small_table() -> pa.Table:
    return pa.table({"a": pa.array([1, 2, 3], pa.int64()), "b": ["x", None, "z"], "c": [0.5, 1.5, None]})


def test_read_parquet_and_select_columns(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(small_table(), path)
    assert read_table(path).equals(small_table())
    assert read_table(path, ["c", "a"]).column_names == ["c", "a"]


def test_read_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"'.*nope\.parquet' does not exist"):
        read_table(tmp_path / "nope.parquet")


def test_read_empty_file(tmp_path):
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"is empty \(0 bytes\)"):
        read_table(path)


def test_read_corrupt_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(DataError, match=r"x\.parquet' is not readable parquet"):
        read_table(path)


def test_read_missing_column_names_it(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(small_table(), path)
    with pytest.raises(DataError, match=r"has no column\(s\) \['dwell'\]; it has \['a', 'b', 'c'\]"):
        read_table(path, ["a", "dwell"])


def test_unknown_suffix(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("{}")
    with pytest.raises(DataError, match=r"the name must end in one of"):
        read_table(path)


def test_read_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n1,x,0.5\n2,,1.5\n3,z,\n")
    table = read_table(path)
    assert table.column("a").to_pylist() == [1, 2, 3]
    assert table.column("b").to_pylist() == ["x", None, "z"]
    assert table.column("c").to_pylist() == [0.5, 1.5, None]
    assert read_table(path, ["b"]).column_names == ["b"]
    with pytest.raises(DataError, match=r"has no column\(s\) \['d'\]"):
        read_table(path, ["d"])


def test_csv_with_header_only_has_no_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataError, match=r"has no rows"):
        read_table(path)


def test_ragged_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match=r"is not readable csv"):
        read_table(path)


def test_csv_with_invalid_utf8_is_a_data_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"a,b\n1,\xff\xfe\n2,ok\n")
    with pytest.raises(DataError, match=r"bad\.csv' is not readable csv: column\(s\) \['b'\] .*not valid UTF-8"):
        read_table(path)
    # Only the requested columns are checked.
    assert read_table(path, ["a"]).column("a").to_pylist() == [1, 2]
    header = tmp_path / "bad_header.csv"
    header.write_bytes(b"a,\xff\n1,2\n")
    with pytest.raises(DataError, match=r"is not readable csv"):
        read_table(header)


def test_tsv_is_tab_separated(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("a\tb\n1\tx\n2\ty\n")
    table = read_table(path)
    assert table.column_names == ["a", "b"]
    assert table.column("a").to_pylist() == [1, 2]


@pytest.mark.parametrize("name", ["t.parquet", "t.csv", "t.csv.gz", "t.tsv"])
def test_write_then_read_round_trip(tmp_path, name):
    path = tmp_path / "sub" / name
    write_table(small_table(), path)
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left behind
    back = read_table(path)
    assert back.column_names == ["a", "b", "c"]
    for column in ("a", "b", "c"):
        assert back.column(column).to_pylist() == small_table().column(column).to_pylist()


def test_written_csv_gz_is_gzip(tmp_path):
    path = tmp_path / "t.csv.gz"
    write_table(small_table(), path)
    assert gzip.decompress(path.read_bytes()).decode().splitlines()[0] == '"a","b","c"'


def test_encoders_on_a_csv_round_trip(tmp_path):
    table = make_feed(500, seed=3)
    path = tmp_path / "feed.csv"
    write_table(table, path)
    config = make_config(categorical=("user_id", "device"), dense=("price", "affinity"), log1p=("price",),
                         tasks={"click": {"kind": "binary", "label": "click"},
                                "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"}})
    from_csv = FeatureEncoder.fit(read_table(path), *encoder_specs(config))
    direct = FeatureEncoder.fit(table, *encoder_specs(config))
    a, b = direct.encode(table), from_csv.encode(read_table(path))
    assert torch.equal(a.categorical, b.categorical)
    np.testing.assert_allclose(a.dense.numpy(), b.dense.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.labels.numpy(), b.labels.numpy(), rtol=1e-5, atol=1e-5)
    # affinity has ~5% NaN: the indicator matches the column's nulls exactly.
    assert direct.missing_indicators == ["affinity"]
    affinity = table.column("affinity").to_numpy(zero_copy_only=False).astype(np.float64)
    np.testing.assert_array_equal(a.dense[:, 2].numpy(), np.isnan(affinity).astype(np.float32))


@pytest.mark.parametrize("min_frequency", [1, 2])
def test_fit_encode_equals_fit_then_encode(min_frequency):
    """The one-pass training encoding must match encoding the training table afterwards."""
    table = make_feed(3000, seed=4)
    config = make_config(categorical=("user_id", "item_id", "item_category", "device"),
                         dense=("price", "affinity"), log1p=("price",), min_frequency=min_frequency,
                         tasks=FULL_TASKS | {"dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"}})
    encoder, encoded = FeatureEncoder.fit_encode(table, *encoder_specs(config))
    again = encoder.encode(table)
    assert torch.equal(encoded.categorical, again.categorical)
    assert torch.equal(encoded.dense, again.dense)
    assert torch.equal(encoded.labels.isnan(), again.labels.isnan())
    if min_frequency == 2:
        assert (encoded.categorical[:, 1] == 0).any()  # rare items went out of vocabulary


# --- numeric bins ----------------------------------------------------------------------------


def test_few_distinct_values_get_one_bin_each_and_missing_gets_bin_0():
    config = make_config(numeric_bins=4)
    table = pa.table({"user": [1, 2, 3, 4, 5, 6], "x": [3.0, 1.0, None, 3.0, 7.0, 1.0], "click": [0, 1, 0, 1, 0, 1]})
    encoder, encoded = FeatureEncoder.fit_encode(table, *encoder_specs(config))
    assert encoder.binned == ["x"] and encoder.dense_stats["x"]["bin_edges"] == [2.0, 5.0]  # midpoints of 1, 3, 7
    assert encoder.vocab_sizes == [7, 4]  # 6 users + OOV; 3 value bins + the missing bin
    assert encoded.categorical[:, 1].tolist() == [2, 1, 0, 2, 3, 1]
    # New values fall into the bin of the nearest training value's side of a midpoint.
    other = pa.table({"user": [1, 1, 1], "x": [0.0, 2.5, 100.0], "click": [0, 0, 0]})
    assert encoder.encode(other).categorical[:, 1].tolist() == [1, 2, 3]


def test_many_distinct_values_get_quantile_bins():
    rng = np.random.default_rng(0)
    values = rng.normal(size=10_000)
    config = make_config(numeric_bins=8)
    table = pa.table({"user": np.zeros(10_000, dtype=np.int64), "x": values, "click": (values > 0).astype(np.int8)})
    encoder, encoded = FeatureEncoder.fit_encode(table, *encoder_specs(config))
    edges = np.asarray(encoder.dense_stats["x"]["bin_edges"])
    assert edges == pytest.approx(np.quantile(values, np.linspace(0, 1, 9)[1:-1]))
    counts = np.bincount(encoded.categorical[:, 1].numpy(), minlength=9)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] - 1250) <= 1)  # equal-mass bins


def test_bins_round_trip_through_save_and_load(tmp_path):
    config = make_config(numeric_bins=3)
    encoder = FeatureEncoder.fit(train_table(), *encoder_specs(config))
    encoder.save(tmp_path / "enc")
    loaded = FeatureEncoder.load(tmp_path / "enc")
    assert loaded.vocab_sizes == encoder.vocab_sizes
    assert torch.equal(loaded.encode(train_table()).categorical, encoder.encode(train_table()).categorical)


@pytest.mark.parametrize(("transform", "loss"), [("none", "mse"), ("log1p", "mse"), ("none", "poisson")])
def test_decode_label_inverts_encode_label_without_smearing(transform, loss):
    from dataclasses import replace

    from multikpi.data.labels import decode_label, encode_label, fit_label
    from multikpi.data.specs import LabelSpec

    values = np.array([0.0, 1.5, 3.0, 40.0, np.nan])
    stats = fit_label(values, "dwell", LabelSpec(kind="regression", column="dwell", transform=transform, loss=loss))
    smeared = replace(stats, smearing=1.7)  # an estimate's correction, never applied to a label
    np.testing.assert_allclose(decode_label(encode_label(values, smeared), smeared), values, rtol=1e-12, atol=1e-12)


# --- column names and CSV dialects (a new user's first hour) ---------------------------------

def test_a_missing_column_suggests_the_closest_one(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("Clothing ID,Age,Rating\n1,30,5\n2,40,4\n")
    with pytest.raises(DataError, match=r"has no column\(s\) \['Clothing Id'\]; did you mean 'Clothing ID' for "
                                        r"'Clothing Id'\?"):
        read_table(path, ["Clothing Id", "Age"])
    with pytest.raises(DataError, match=r"did you mean 'Clothing ID' for 'clothing_id'\?"):
        read_table(path, ["clothing_id"])


def test_many_missing_columns_list_the_file_s_columns_instead_of_guesses(tmp_path):
    """A file cut to its first columns (Ali-CCP's numeric names): 'did you mean 101 for 109_14'
    for each of 20 names misleads; the message lists what the file has."""
    path = tmp_path / "cut.csv"
    path.write_text("click,101,121,122\n0,1,2,3\n")
    wanted = ["101", "129", "205", "206", "109_14"]
    with pytest.raises(DataError) as err:
        read_table(path, wanted)
    assert "did you mean" not in str(err.value)
    assert str(err.value).endswith("has no column(s) ['129', '205', '206', '109_14']; it has "
                                   "['click', '101', '121', '122']")
    with pytest.raises(DataError, match=r"did you mean '122' for '129'\?"):  # one missing: likely a typo
        read_table(path, ["101", "129"])


def test_quoted_values_with_line_breaks_are_read_as_one_value(tmp_path):
    """Review texts hold line breaks inside quotes; Arrow's default chunker refuses such a file
    ("got out of sync with chunker") once it spans several blocks."""
    import csv

    path = tmp_path / "reviews.csv"
    texts = [f"line one of {i}\nline two, with a comma\n\nand \"quotes\"" for i in range(30_000)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Review Text", "Rating"])
        writer.writerows((t, i % 5) for i, t in enumerate(texts))
    table = read_table(path, ["Review Text", "Rating"])
    assert table.column("Review Text").to_pylist() == texts
    assert table.column("Rating").to_pylist() == [i % 5 for i in range(30_000)]


def test_a_numeric_column_name_read_by_yaml_as_a_number_says_to_quote_it(tmp_path):
    from multikpi.config import config_from_dict
    from multikpi.config.yaml_loader import load_yaml

    path = tmp_path / "rf1.parquet"
    pq.write_table(pa.table({"109_14": [1.0, 2.0], "y": [0.5, 0.7]}), path)
    raw = load_yaml("data: {train: x.parquet, dense: [109_14]}\ntasks: {y: {kind: regression, label: y}}\n")
    config = config_from_dict(raw)
    assert config.data.dense == ["10914"]  # YAML's number, taken as the name the user meant to write
    with pytest.raises(DataError, match=r"YAML read the unquoted name 109_14 as the number 10914: quote numeric "
                                        r"column names \(\"109_14\"\)"):
        read_table(path, config.data.dense)


@pytest.mark.parametrize("delimiter", [";", "|", "\t"])
def test_a_csv_with_another_delimiter_is_read_by_its_header(tmp_path, delimiter):
    path = tmp_path / "export.csv"
    path.write_text(delimiter.join(["user", "price", "click"]) + "\n"
                    + "\n".join(delimiter.join([f"u{i}", f"{i}.5", str(i % 2)]) for i in range(5)) + "\n")
    table = read_table(path, ["user", "price", "click"])
    assert table.column("price").to_pylist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert table.column("click").to_pylist() == [0, 1, 0, 1, 0]


def test_a_comma_csv_with_semicolons_in_quoted_text_stays_comma_separated(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('id,"Review; Text",rating\n1,"good; fits",5\n2,"bad, small",1\n')
    assert read_table(path).column_names == ["id", "Review; Text", "rating"]


def test_a_header_that_is_one_long_field_gets_a_hint(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("user:price:click\nu1:1.0:1\n")
    with pytest.raises(DataError, match=r"its header is one field \('user:price:click'\); is it delimited by "
                                        r"something other than , ; tab or \|\?"):
        read_table(path, ["user", "click"])
