"""Datasets (data/datasets.py), the one-pass fit (data/stream_fit.py) and its summaries
(data/sketches.py), and hashing (data/hashing.py), each against an exact oracle: the in-memory fit,
Counter, numpy, a closed form."""
from __future__ import annotations

import collections
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multikpi.data.columns import bin_edges
from multikpi.data.datasets import ParquetDataset, write_parts
from multikpi.data.encoders import FeatureEncoder
from multikpi.data.hashing import bucket_codes, collision_rate, expected_collision_rate, hash_values
from multikpi.data.sketches import DistinctSample, FrequencySketch, Moments, ValueSample, merged
from multikpi.data.specs import ColumnSpec, LabelSpec
from multikpi.data.split import HashHoldout
from multikpi.data.stream_fit import finish, fit_chunks, split_chunks
from multikpi.errors import DataError
from multikpi.synthetic.feed import make_feed

COLUMNS = ColumnSpec(("user_id", "item_id", "item_category", "device"), ("price", "affinity", "item_age_h", "position"),
                     ("price",), 1, None, 16)
LABELS = {"click": LabelSpec("binary", "click"), "dwell": LabelSpec("regression", "dwell", "log1p", clip=True),
          "convert": LabelSpec("binary", "convert", train_on="click")}
NEEDED = ["user_id", "item_id", "item_category", "device", "price", "affinity", "item_age_h", "position", "click",
          "dwell", "convert"]


def write_dataset(table: pa.Table, root, sizes: list[int], row_group: int = 700):
    """`table` as files of `sizes` rows (uneven on purpose), row groups of `row_group` rows."""
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, size in enumerate(sizes):
        pq.write_table(table.slice(start, size), root / f"part-{i}.parquet", row_group_size=row_group)
        start += size
    return root


@pytest.fixture(scope="module")
def feed(tmp_path_factory):
    table = make_feed(5001, seed=0)
    root = write_dataset(table, tmp_path_factory.mktemp("ds") / "train", [2100, 1400, 1501])
    return table, root


def test_directory_glob_and_uri_read_the_same_rows_in_canonical_order(feed, tmp_path):
    table, root = feed
    for location in (str(root), str(root) + "/", str(root / "part-*.parquet"), f"file://{root}"):
        dataset = ParquetDataset(location, NEEDED)
        assert dataset.num_rows == 5001
        assert dataset.column("item_id").equals(table.column("item_id"))
        starts = [c.start for c in dataset.chunks]
        assert starts == sorted(starts) and sum(c.num_rows for c in dataset.chunks) == 5001
    assert ParquetDataset(str(root / "part-[01].parquet"), NEEDED).num_rows == 3500


def test_hive_partitions_become_columns_and_hidden_files_are_skipped(tmp_path):
    table = pa.table({"x": list(range(10)), "y": [0.5] * 10})
    for day, part in (("2024-05-01", table.slice(0, 4)), ("2024-05-02", table.slice(4))):
        (tmp_path / f"day={day}").mkdir()
        pq.write_table(part, tmp_path / f"day={day}" / "p.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".p.parquet.tmp-1").write_text("junk")
    dataset = ParquetDataset(str(tmp_path), ["x", "day"])
    assert dataset.num_rows == 10 and len(dataset.paths) == 2
    assert dataset.column("day").to_pylist() == ["2024-05-01"] * 4 + ["2024-05-02"] * 6


@pytest.mark.parametrize("case, setup, expected", [
    ("missing", lambda p: p / "nope", r"data '.*nope' does not exist"),
    ("no-parquet", lambda p: _csv_only(p), r"holds no Parquet files"),
    ("scheme", lambda p: "foo://bucket/feed", r"cannot open its filesystem: Unrecognized filesystem type"),
    ("column", lambda p: _two_files(p, pa.table({"x": [1]}), pa.table({"x": [2]})), r"has no column\(s\) \['y'\]"),
    ("types", lambda p: _two_files(p, pa.table({"x": [1], "y": [1]}), pa.table({"x": [2], "y": ["a"]})),
     r"column 'y' has type string; the dataset's first file has int64"),
])
def test_dataset_errors_are_one_line(tmp_path, case, setup, expected):
    with pytest.raises(DataError, match=expected) as info:
        ParquetDataset(str(setup(tmp_path)), ["x", "y"])
    assert "\n" not in str(info.value)


def _csv_only(root):
    (root / "d").mkdir()
    (root / "d" / "a.csv").write_text("x\n1\n")
    return root / "d"


def _two_files(root, first: pa.Table, second: pa.Table):
    root = root / "two"
    root.mkdir()
    pq.write_table(first, root / "a.parquet")
    pq.write_table(second, root / "b.parquet")
    return root


def test_write_parts_is_all_or_nothing(tmp_path):
    out = tmp_path / "parts"

    def parts():
        yield pa.table({"x": [1, 2]})
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError):
        write_parts(parts(), out)
    assert not out.exists() and not list(tmp_path.iterdir())
    files = write_parts(iter([pa.table({"x": [1, 2]}), pa.table({"x": [3]})]), out)
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    with pytest.raises(DataError, match="exists and is not an empty directory"):
        write_parts(iter([]), out)


# --- the one-pass fit against the in-memory fit ------------------------------------------------

def test_streaming_fit_equals_the_in_memory_fit(feed):
    table, root = feed
    dataset = ParquetDataset(str(root), NEEDED)
    streamed = finish(fit_chunks(dataset, list(range(len(dataset.chunks))), COLUMNS, LABELS, None), COLUMNS, LABELS)
    in_memory = FeatureEncoder.fit(table, COLUMNS, LABELS)
    for column in COLUMNS.categorical:
        assert streamed.vocabs[column].equals(in_memory.vocabs[column]), column
        for key in ("distinct", "vocab", "train_oov_rate", "expected_oov_rate"):
            assert streamed.column_stats[column][key] == pytest.approx(in_memory.column_stats[column][key], abs=1e-12)
    for column in COLUMNS.dense:
        mine, theirs = streamed.dense_stats[column], in_memory.dense_stats[column]
        assert mine["mean"] == pytest.approx(theirs["mean"], rel=1e-12, abs=1e-12)
        assert mine["std"] == pytest.approx(theirs["std"], rel=1e-12)
        assert mine["bin_edges"] == theirs["bin_edges"]  # every row is in the quantile sample
        assert mine["indicator"] == theirs["indicator"]
    for task in LABELS:
        a, b = streamed.labels[task], in_memory.labels[task]
        assert (a.kind, a.transform, a.train_on, a.clip) == (b.kind, b.transform, b.train_on, b.clip)
        assert a.mean == pytest.approx(b.mean, rel=1e-12) and a.std == pytest.approx(b.std, rel=1e-12)
    # the encodings agree row for row
    assert np.array_equal(streamed.encode(table).categorical.numpy(), in_memory.encode(table).categorical.numpy())


def test_the_fit_is_the_same_however_the_row_groups_are_split_between_readers(feed):
    _, root = feed
    dataset = ParquetDataset(str(root), NEEDED)
    whole = fit_chunks(dataset, list(range(len(dataset.chunks))), COLUMNS, LABELS, None)
    parts = [fit_chunks(dataset, split_chunks(dataset.chunks, 3, r), COLUMNS, LABELS, None) for r in range(3)]
    for part in parts[1:]:
        parts[0].merge(part)
    one, three = finish(whole, COLUMNS, LABELS), finish(parts[0], COLUMNS, LABELS)
    assert one.dense_stats == three.dense_stats  # bitwise: moments merge per row group in canonical order
    assert one.labels == three.labels
    assert all(one.vocabs[c].equals(three.vocabs[c]) for c in COLUMNS.categorical)


def test_hash_holdout_keeps_whole_groups_on_one_side_and_the_share_is_near_the_fraction(feed):
    table, root = feed
    holdout = HashHoldout(0.2, seed=5, group="request_id")
    held = holdout.held_out(table, np.arange(table.num_rows))
    groups = table.column("request_id").to_numpy()
    assert all(len(set(held[groups == g])) == 1 for g in np.unique(groups))
    by_row = HashHoldout(0.2, seed=5).held_out(table, np.arange(table.num_rows))
    assert abs(by_row.mean() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / table.num_rows)
    dataset = ParquetDataset(str(root), NEEDED + ["request_id"])
    state = fit_chunks(dataset, list(range(len(dataset.chunks))), COLUMNS, LABELS, holdout)
    assert sum(state.held_rows.values()) == int(held.sum())
    assert sum(state.train_rows.values()) == int((~held).sum())


# --- the summaries ------------------------------------------------------------------------------

def _zipf_ids(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).zipf(1.3, rows) % 50_000


def test_frequency_sketch_is_exact_without_capacity_and_merges():
    ids = _zipf_ids(60_000, 0)
    sketches = [FrequencySketch() for _ in range(3)]
    for i, part in enumerate(np.array_split(ids, 7)):
        sketches[i % 3].update(pa.array(part))
    for other in sketches[1:]:
        sketches[0].merge(other)
    values, counts = sketches[0].result()
    assert sketches[0].exact and dict(zip(values.to_pylist(), counts.tolist())) == collections.Counter(ids.tolist())


def test_misra_gries_keeps_every_heavy_hitter_within_its_error_bound():
    ids = _zipf_ids(200_000, 1)
    truth = collections.Counter(ids.tolist())
    capacity = 200
    sketches = [FrequencySketch(capacity) for _ in range(2)]
    for i, part in enumerate(np.array_split(ids, 50)):
        sketches[i % 2].update(pa.array(part))
    sketches[0].merge(sketches[1])
    values, counts = sketches[0].result()
    kept = dict(zip(values.to_pylist(), counts.tolist()))
    error = sketches[0].error
    assert not sketches[0].exact and len(kept) <= capacity and 0 < error <= ids.size / (capacity + 1)
    heavy = [v for v, c in truth.items() if c > ids.size / (capacity + 1)]
    assert heavy and all(v in kept for v in heavy)
    assert all(truth[v] - error <= c <= truth[v] for v, c in kept.items())


def test_distinct_sample_estimates_distinct_and_singletons():
    ids = np.random.default_rng(2).integers(0, 2_000_000, 600_000)
    sample = DistinctSample(capacity=1 << 12)
    for part in np.array_split(ids, 9):
        values, counts = np.unique(part, return_counts=True)
        sample.update_counts(pa.array(values), counts)
    distinct, singletons = sample.estimates()
    values, counts = np.unique(ids, return_counts=True)
    assert sample.level > 0
    assert distinct == pytest.approx(values.size, rel=0.08)
    assert singletons == pytest.approx(int((counts == 1).sum()), rel=0.08)


def test_moments_merge_to_numpy_mean_and_std():
    values = np.random.default_rng(3).lognormal(2.0, 1.5, 10_001)
    values[::17] = np.nan
    total = merged([Moments.of(part) for part in np.array_split(values, 13)])
    assert total.mean == pytest.approx(np.nanmean(values), rel=1e-13)
    assert total.std == pytest.approx(np.nanstd(values), rel=1e-12)
    assert total.missing == int(np.isnan(values).sum())


def test_value_sample_bin_edges_match_the_in_memory_edges():
    rng = np.random.default_rng(4)
    few = rng.integers(0, 9, 5000).astype(float)
    many = rng.normal(size=5000)
    for values, bins in ((few, 16), (many, 16)):
        sample = ValueSample(size=10_000, distinct_cap=bins)
        for part, keys in zip(np.array_split(values, 4), np.array_split(np.arange(values.size, dtype=np.uint64), 4)):
            sample.update(part, keys)
        assert np.array_equal(sample.edges(bins), bin_edges(values, bins))
    small = ValueSample(size=500, distinct_cap=16)  # a sample: quantiles within sampling error
    small.update(many, np.random.default_rng(5).integers(0, 2**63, many.size).astype(np.uint64))
    assert np.allclose(small.edges(4), np.quantile(many, [0.25, 0.5, 0.75]), atol=0.15)


# --- hashing ------------------------------------------------------------------------------------

def _splitmix64(x: int) -> int:
    """The reference finaliser in plain Python integers (Steele, Lea & Flood 2014)."""
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


GOLDEN_INTS = [12035550249420947055, 627405149472732430, 8814202233882078983]


def test_hashes_are_stable_across_chunking_slicing_and_versions():
    strings = pa.array(["a", "bb", "", None, "bb", "ccc", "é"])
    full = hash_values(strings)
    assert np.array_equal(hash_values(pa.chunked_array([strings.slice(0, 3), strings.slice(3)])), full)
    assert np.array_equal(hash_values(strings.slice(2)), full[2:])
    assert full[1] == full[4] and len(set(full[[0, 1, 2, 5, 6]].tolist())) == 5
    # golden values: a change here would silently re-bucket every trained model's tail ids
    assert hash_values(pa.array([0, 1, 12345]), 0).tolist() == GOLDEN_INTS
    assert GOLDEN_INTS == [_splitmix64(v ^ _splitmix64(0)) for v in (0, 1, 12345)]
    large = pa.array(["item_42", "x"], type=pa.large_string())
    assert np.array_equal(hash_values(large), hash_values(pa.array(["item_42", "x"])))


def test_bucket_codes_and_collision_rate_against_the_closed_form():
    ids = pa.array(np.arange(20_000, dtype=np.int64) * 7919)
    codes = bucket_codes(ids, np.zeros(len(ids), dtype=np.int32), vocab_size=10, buckets=5000)
    assert codes.min() >= 11 and codes.max() <= 5010
    assert np.array_equal(codes, bucket_codes(ids, np.zeros(len(ids), dtype=np.int32), 10, 5000))  # deterministic
    measured = collision_rate(codes, np.ones(len(ids)))
    assert measured == pytest.approx(expected_collision_rate(20_000, 5000), abs=0.01)
    nulls = pa.array([None, 3], type=pa.int64())
    assert bucket_codes(nulls, np.zeros(2, dtype=np.int32), 4, 8)[0] == 0  # a null is not hashed


def test_max_vocab_and_hash_buckets_in_memory_and_streamed_agree(feed):
    table, root = feed
    columns = ColumnSpec(("item_id", "device"), ("price",), (), 1, None, 0, max_vocab=300, hash_buckets=64)
    dataset = ParquetDataset(str(root), NEEDED)
    streamed = finish(fit_chunks(dataset, list(range(len(dataset.chunks))), columns, LABELS, None), columns, LABELS)
    in_memory = FeatureEncoder.fit(table, columns, LABELS)
    assert len(in_memory.vocabs["item_id"]) == 300 and streamed.vocabs["item_id"].equals(in_memory.vocabs["item_id"])
    assert in_memory.vocab_sizes[:2] == [300 + 1 + 64, 3 + 1 + 64]
    counts = collections.Counter(table.column("item_id").to_pylist())
    top = sorted(counts.values(), reverse=True)
    assert min(counts[v] for v in in_memory.vocabs["item_id"].to_pylist()) == top[299]
    stats = in_memory.column_stats["item_id"]
    assert stats["train_coverage"] == pytest.approx(sum(top[:300]) / table.num_rows)
    assert stats["hash_collision_rate"] == pytest.approx(streamed.column_stats["item_id"]["hash_collision_rate"])
    codes = in_memory.encode(table).categorical.numpy()[:, 0]
    assert (codes > 300).mean() == pytest.approx(1 - stats["train_coverage"])  # the tail is hashed (301..364), not OOV
