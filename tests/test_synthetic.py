"""Tests of the synthetic personalised-feed generator."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder, StandardScaler

try:
    from multikpi.synthetic.feed import feed_oracle, make_feed
except ModuleNotFoundError:  # package not installed: fall back to the src layout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from multikpi.synthetic.feed import feed_oracle, make_feed

N_ROWS = 100_000

EXPECTED_SCHEMA = {
    "request_id": pa.int64(),
    "user_id": pa.int64(),
    "device": pa.string(),
    "hour": pa.int64(),
    "position": pa.int64(),
    "item_id": pa.int64(),
    "item_category": pa.string(),
    "user_segment": pa.string(),
    "price": pa.float32(),
    "item_age_h": pa.float32(),
    "user_activity": pa.float32(),
    "affinity": pa.float32(),
    "noise": pa.float32(),
    "click": pa.int8(),
    "dwell": pa.float32(),
    "convert": pa.int8(),
    # the logging policy's columns (issue 18), after every earlier column
    "logged_score": pa.float32(),
    "propensity": pa.float64(),
    "examination": pa.float64(),
    "exam_propensity": pa.float64(),
}


def _np(table: pa.Table, column: str) -> np.ndarray:
    """Column as a numpy array."""
    return table[column].to_numpy()


@pytest.fixture(scope="module")
def feed_a() -> tuple[pa.Table, dict[str, np.ndarray]]:
    """100k rows of seed 1 with their oracle."""
    return make_feed(N_ROWS, seed=1), feed_oracle(N_ROWS, seed=1)


@pytest.fixture(scope="module")
def feed_b() -> tuple[pa.Table, dict[str, np.ndarray]]:
    """100k rows of seed 2 (same world) with their oracle."""
    return make_feed(N_ROWS, seed=2), feed_oracle(N_ROWS, seed=2)


def _identical(a: pa.Table, b: pa.Table) -> bool:
    """Tables equal column by column, NaN compared equal to NaN."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    for name in a.column_names:
        x, y = a[name].to_numpy(zero_copy_only=False), b[name].to_numpy(zero_copy_only=False)
        same = np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
        if not same:
            return False
    return True


def test_same_arguments_give_identical_tables() -> None:
    assert _identical(make_feed(5_000, seed=3), make_feed(5_000, seed=3))
    o1, o2 = feed_oracle(2_000, seed=3), feed_oracle(2_000, seed=3)
    assert o1.keys() == o2.keys()
    assert all(np.array_equal(o1[k], o2[k]) for k in o1)


def test_different_seeds_give_different_rows() -> None:
    a, b = make_feed(5_000, seed=3), make_feed(5_000, seed=4)
    assert not _identical(a, b)
    assert not np.array_equal(_np(a, "item_id"), _np(b, "item_id"))


def test_different_world_seed_changes_the_world() -> None:
    a, b = make_feed(5_000, seed=3), make_feed(5_000, seed=3, world_seed=7)
    assert np.intersect1d(_np(a, "item_id"), _np(b, "item_id")).size < 100


def test_exact_row_counts_and_small_sizes() -> None:
    for n in (0, 1, 7, 10, 51, 1_234):
        table = make_feed(n, seed=5)
        assert table.num_rows == n
        assert len(feed_oracle(n, seed=5)["p_click"]) == n
    assert _np(make_feed(7, seed=5), "position").tolist() == list(range(1, 8))


def test_schema(feed_a) -> None:
    table, oracle = feed_a
    assert table.column_names == list(EXPECTED_SCHEMA)
    for name, dtype in EXPECTED_SCHEMA.items():
        assert table.schema.field(name).type == dtype, name
    assert set(oracle) >= {"p_click", "p_convert", "dwell_log1p_mean"}
    assert all(len(v) == N_ROWS for v in oracle.values())
    assert set(table["device"].to_pylist()) == {"ios", "android", "web"}
    assert set(_np(table, "hour")) <= set(range(24))


def test_cardinalities_and_long_tails(feed_a) -> None:
    table, _ = feed_a
    categories = set(table["item_category"].to_pylist())
    assert 150 <= len(categories) <= 200
    assert all(c.startswith("cat_") for c in categories)
    assert len(set(table["user_segment"].to_pylist())) == 12
    _, item_counts = np.unique(_np(table, "item_id"), return_counts=True)
    assert item_counts.size > 10_000
    assert item_counts.max() > 50 * np.median(item_counts)  # Zipf head
    price = _np(table, "price")
    assert price.min() > 0 and np.quantile(price, 0.99) > 5 * np.median(price)
    activity = _np(table, "user_activity")
    assert activity.min() > 0 and np.quantile(activity, 0.99) > 10 * np.median(activity)


def test_request_structure(feed_a) -> None:
    table, _ = feed_a
    req = _np(table, "request_id")
    assert np.all(np.diff(req) >= 0)
    starts = np.flatnonzero(np.r_[True, req[1:] != req[:-1]])
    sizes = np.diff(np.r_[starts, req.size])
    assert np.all((sizes[:-1] >= 10) & (sizes[:-1] <= 50))
    assert 1 <= sizes[-1] <= 50
    expected_pos = np.arange(req.size) - np.repeat(starts, sizes) + 1
    assert np.array_equal(_np(table, "position"), expected_pos)
    for column in ("user_id", "hour"):
        values = _np(table, column)
        assert np.array_equal(values, np.repeat(values[starts], sizes)), column
    device = np.asarray(table["device"].to_pylist())
    assert np.array_equal(device, np.repeat(device[starts], sizes))


def test_label_rates(feed_a) -> None:
    table, _ = feed_a
    click, convert = _np(table, "click"), _np(table, "convert")
    dwell = _np(table, "dwell")
    assert 0.04 <= click.mean() <= 0.06
    assert 0.003 <= convert.mean() <= 0.006
    assert 0.05 <= convert[click == 1].mean() <= 0.12
    assert not np.any((convert == 1) & (click == 0))
    assert np.all(np.isfinite(dwell)) and np.all(dwell > 0)
    assert np.median(dwell[click == 1]) > 3 * np.median(dwell[click == 0])
    assert 0.4 <= np.corrcoef(click, np.log1p(dwell))[0, 1] <= 0.6


def test_missing_fractions(feed_a) -> None:
    table, _ = feed_a
    for column in ("item_age_h", "affinity"):
        assert 0.04 <= np.isnan(_np(table, column)).mean() <= 0.06, column
    for column in ("price", "user_activity", "noise", "dwell"):
        assert not np.isnan(_np(table, column)).any(), column
    age = _np(table, "item_age_h")
    assert np.nanmin(age) > 0


def test_oracle_aucs(feed_a) -> None:
    table, oracle = feed_a
    click, convert = _np(table, "click"), _np(table, "convert")
    assert 0.75 <= roc_auc_score(click, oracle["p_click"]) <= 0.82
    assert 0.85 <= roc_auc_score(convert, oracle["p_convert"]) <= 0.93
    assert np.all(oracle["p_convert"] <= oracle["p_click"])
    assert abs(oracle["p_click"].mean() - click.mean()) < 0.005
    dwell_corr = np.corrcoef(oracle["dwell_log1p_mean"], np.log1p(_np(table, "dwell")))[0, 1]
    assert dwell_corr > 0.4
    assert abs(oracle["dwell_log1p_mean"].mean() - np.log1p(_np(table, "dwell")).mean()) < 0.05


def test_noise_column_has_no_signal(feed_a) -> None:
    table, _ = feed_a
    noise = _np(table, "noise")
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1.0) < 0.02
    assert abs(roc_auc_score(_np(table, "click"), noise) - 0.5) < 0.03


def _per_item(table: pa.Table, p_click: np.ndarray) -> tuple[np.ndarray, ...]:
    """Unique item ids, row counts, clicks and summed oracle p_click per item."""
    ids, inverse, counts = np.unique(_np(table, "item_id"), return_inverse=True,
                                     return_counts=True)
    clicks = np.bincount(inverse, _np(table, "click"))
    return ids, counts, clicks, np.bincount(inverse, p_click)


def test_seeds_share_one_world(feed_a, feed_b) -> None:
    (ta, oa), (tb, ob) = feed_a, feed_b
    ids_a, n_a, clicks_a, p_a = _per_item(ta, oa["p_click"])
    ids_b, n_b, clicks_b, p_b = _per_item(tb, ob["p_click"])
    top = ids_a[np.argsort(-n_a)[:30]]
    assert np.isin(top, ids_b).all()
    ia, ib = np.searchsorted(ids_a, top), np.searchsorted(ids_b, top)
    ctr_a, ctr_b = clicks_a[ia].sum() / n_a[ia].sum(), clicks_b[ib].sum() / n_b[ib].sum()
    assert abs(ctr_a - ctr_b) < 0.015
    assert np.corrcoef(clicks_a[ia] / n_a[ia], clicks_b[ib] / n_b[ib])[0, 1] > 0.5
    assert np.corrcoef(p_a[ia] / n_a[ia], p_b[ib] / n_b[ib])[0, 1] > 0.9
    # item attributes are world properties: identical for a shared item id
    for column in ("item_category", "price"):
        map_a = dict(zip(ta["item_id"].to_pylist(), ta[column].to_pylist()))
        map_b = dict(zip(tb["item_id"].to_pylist(), tb[column].to_pylist()))
        assert all(map_a[i] == map_b[i] for i in top.tolist()), column


def _features(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Simple features: context categoricals (as strings) and log/NaN-filled dense columns."""
    categorical = np.column_stack([
        _np(table, "position").astype(str),
        _np(table, "hour").astype(str),
        np.asarray(table["device"].to_pylist()),
    ])
    age = _np(table, "item_age_h")
    dense = np.column_stack([
        np.log1p(_np(table, "price")),
        np.nan_to_num(np.log1p(age), nan=0.0),
        np.isnan(age).astype(np.float64),
        np.log1p(_np(table, "user_activity")),
        np.nan_to_num(_np(table, "affinity"), nan=0.0),
        _np(table, "noise"),
    ])
    return categorical, dense


def test_learnable_click_signal() -> None:
    train, test = make_feed(50_000, seed=11), make_feed(20_000, seed=12)
    (cat_tr, num_tr), (cat_te, num_te) = _features(train), _features(test)
    encoder, scaler = OneHotEncoder(handle_unknown="ignore"), StandardScaler()
    x_train = np.hstack([encoder.fit_transform(cat_tr).toarray(), scaler.fit_transform(num_tr)])
    x_test = np.hstack([encoder.transform(cat_te).toarray(), scaler.transform(num_te)])
    model = LogisticRegression(max_iter=1_000).fit(x_train, _np(train, "click"))
    auc = roc_auc_score(_np(test, "click"), model.predict_proba(x_test)[:, 1])
    assert auc > 0.6
