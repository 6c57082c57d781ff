"""Fitting the encoders in one pass over a dataset of any size, in bounded memory.

Each reader (a process, or a rank of a distributed run) folds its row groups into a `FitState`
(data/sketches.py summaries); the states are merged in reader order and `finish` turns the result
into a FeatureEncoder with the file format of the in-memory fit (encoders.json + vocabularies).

What equals the in-memory fit (data/encoders.py) and what approximates it:

- vocabularies: exact (the same ids, in the same order) unless `data.max_vocab` is set and a
  column has more than 4·max_vocab distinct ids; then the frequent ids come from the Misra–Gries
  summary: every id seen more than N/(k+1) times is kept, counts are at most `count_error` low.
- distinct ids and ids seen once (for `expected_oov_rate`): exact while the counts are; else from
  the distinct sample (relative error about 1/√(65536) ≈ 0.4%).
- dense mean and std, label statistics: exact up to floating-point summation order (merged per
  row group in canonical order, so the same for any number of readers).
- numeric bin edges: exact when a column has at most `numeric_bins` distinct values or at most
  QUANTILE_SAMPLE rows; else quantiles of a uniform sample of QUANTILE_SAMPLE values.

Memory: O(distinct ids per column) without `data.max_vocab`, O(max_vocab) with it, plus
QUANTILE_SAMPLE values per dense column, plus a few numbers per row group.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from multikpi.data.columns import check_id_type, dense_values, top_frequent
from multikpi.data.datasets import Chunk, ParquetDataset
from multikpi.data.encoders import FeatureEncoder, LabelStats
from multikpi.data.hashing import bucket_codes, collision_rate, expected_collision_rate, hash_rows, unit_interval
from multikpi.data.labels import label_values, read_weights, transform
from multikpi.data.sketches import DistinctSample, FrequencySketch, Moments, ValueSample, merged, value_counts
from multikpi.data.specs import ColumnSpec, LabelSpec
from multikpi.data.split import HashHoldout
from multikpi.errors import DataError

QUANTILE_SAMPLE = 1 << 17  # values per dense column kept for quantile bin edges
CAPACITY_PER_VOCAB = 4     # Misra–Gries counters per vocabulary entry allowed by data.max_vocab
FIT_BATCH_ROWS = 1 << 16
_ROW_KEY_SALT = 0x5A3F_1E00
_HELD_SAMPLE_SALT = 0x5A3F_1E01


@dataclass
class FitState:
    """The summaries of the rows one reader has seen (see the module docstring). Per row group:
    `train_rows` / `held_rows` (rows on each side of a hash hold-out), dense and label moments."""

    frequency: dict[str, FrequencySketch]
    distinct: dict[str, DistinctSample]
    samples: dict[str, ValueSample]
    dense: dict[int, dict[str, Moments]] = field(default_factory=dict)
    labels: dict[int, dict[str, tuple[Moments, Moments]]] = field(default_factory=dict)
    train_rows: dict[int, int] = field(default_factory=dict)
    held_rows: dict[int, int] = field(default_factory=dict)
    weight_total: float = 0.0
    positions: FrequencySketch | None = None  # the logged positions (exact: a few distinct values)
    samples_taken: dict[str, list[pa.Table]] = field(default_factory=dict)  # "train" / "held" -> raw rows

    def without_samples(self) -> FitState:
        """A copy without the raw sample rows (what every process needs of another's state)."""
        return FitState(self.frequency, self.distinct, self.samples, self.dense, self.labels, self.train_rows,
                        self.held_rows, self.weight_total, self.positions)

    def merge(self, other: FitState) -> None:
        for column, sketch in other.frequency.items():
            self.frequency[column].merge(sketch)
            self.distinct[column].merge(other.distinct[column])
        for column, sample in other.samples.items():
            self.samples[column].merge(sample)
        self.dense.update(other.dense)
        self.labels.update(other.labels)
        self.train_rows.update(other.train_rows)
        self.held_rows.update(other.held_rows)
        self.weight_total += other.weight_total
        if self.positions is not None and other.positions is not None:
            self.positions.merge(other.positions)


def new_state(columns: ColumnSpec) -> FitState:
    capacity = CAPACITY_PER_VOCAB * columns.max_vocab if columns.max_vocab is not None else None
    return FitState(frequency={c: FrequencySketch(capacity) for c in columns.categorical},
                    distinct={c: DistinctSample() for c in columns.categorical},
                    samples={c: ValueSample(QUANTILE_SAMPLE, columns.numeric_bins) for c in columns.dense}
                    if columns.numeric_bins > 0 else {},
                    positions=FrequencySketch() if columns.position is not None else None)


@dataclass(frozen=True)
class SamplePlan:
    """Rows to keep raw while fitting: `train_rows`, sorted global row numbers (those on the training
    side are kept), and each held-out row with probability `held_rate` (by a hash of its row number)."""

    train_rows: np.ndarray
    held_rate: float = 0.0


def fit_chunks(dataset: ParquetDataset, chunks: list[int], columns: ColumnSpec, labels: Mapping[str, LabelSpec],
               holdout: HashHoldout | None, samples: SamplePlan | None = None) -> FitState:
    """Fold the row groups `chunks` (indices into dataset.chunks) into a fresh FitState; with
    `samples`, also keep those rows (the sampled columns only) in `samples_taken`."""
    state = new_state(columns)
    needed = _fit_columns(columns, labels, holdout)
    for index in chunks:
        chunk = dataset.chunks[index]
        offset = 0
        for table in dataset.read_chunk(chunk, needed, FIT_BATCH_ROWS):
            rows = np.arange(chunk.start + offset, chunk.start + offset + table.num_rows, dtype=np.int64)
            offset += table.num_rows
            held = holdout.held_out(table, rows) if holdout is not None else np.zeros(table.num_rows, dtype=bool)
            if samples is not None:
                _keep_samples(state, table, rows, held, samples)
            _fold_batch(state, index, table, rows, held, columns, labels)
    return state


def _keep_samples(state: FitState, table: pa.Table, rows: np.ndarray, held: np.ndarray, plan: SamplePlan) -> None:
    chosen = np.isin(rows, plan.train_rows, assume_unique=True) & ~held
    if chosen.any():
        state.samples_taken.setdefault("train", []).append(table.filter(pa.array(chosen)))
    if plan.held_rate > 0 and held.any():
        picked = held & (unit_interval(hash_rows(rows, _HELD_SAMPLE_SALT)) < plan.held_rate)
        if picked.any():
            state.samples_taken.setdefault("held", []).append(table.filter(pa.array(picked)))


def _fit_columns(columns: ColumnSpec, labels: Mapping[str, LabelSpec], holdout: HashHoldout | None) -> list[str]:
    label_columns = [s.column for s in labels.values()]
    extra = [c for c in (columns.weight, columns.position) if c]
    group = [holdout.group] if holdout is not None and holdout.group else []
    return list(dict.fromkeys([*columns.categorical, *columns.dense, *label_columns, *extra, *group]))


def _fold_batch(state: FitState, index: int, table: pa.Table, rows: np.ndarray, held: np.ndarray,
                columns: ColumnSpec, labels: Mapping[str, LabelSpec]) -> None:
    """Fold the training rows of one record batch of row group `index` (global row numbers `rows`,
    `held` the held-out ones) into `state`."""
    if held.any():
        state.held_rows[index] = state.held_rows.get(index, 0) + int(held.sum())
        keep = np.flatnonzero(~held)
        table, rows = table.take(pa.array(keep)), rows[keep]
    state.train_rows[index] = state.train_rows.get(index, 0) + table.num_rows
    if table.num_rows == 0:
        return
    for column in columns.categorical:
        values = check_id_type(table.column(column), column)
        distinct, counts = value_counts(values)
        state.frequency[column].update_counts(distinct, counts, table.num_rows)
        if len(distinct):
            state.distinct[column].update_counts(distinct, counts)
    keys = hash_rows(rows, _ROW_KEY_SALT) if state.samples else None
    per_chunk = state.dense.setdefault(index, {})
    for column in columns.dense:
        values = dense_values(table.column(column), column, column in columns.log1p)
        per_chunk.setdefault(column, Moments()).merge(Moments.of(values))
        if keys is not None:
            state.samples[column].update(values, keys)
    label_chunk = state.labels.setdefault(index, {})
    for name, spec in labels.items():
        values = label_values(table, name, spec, labels)
        present = values[~np.isnan(values)]
        raw, transformed = label_chunk.setdefault(name, (Moments(), Moments()))
        raw.merge(Moments.of(present))
        transformed.merge(Moments.of(transform(present, spec.transform)))
    if columns.weight:
        state.weight_total += float(read_weights(table.column(columns.weight), columns.weight).sum())
    if state.positions is not None and columns.position is not None:
        state.positions.update(check_id_type(table.column(columns.position), columns.position))


def finish(state: FitState, columns: ColumnSpec, labels: Mapping[str, LabelSpec]) -> FeatureEncoder:
    """The encoder of the merged state; DataError for what the in-memory fit refuses too."""
    rows = sum(state.train_rows.values())
    vocabs, column_stats = {}, {}
    for column in columns.categorical:
        vocabs[column], column_stats[column] = _vocabulary(state, column, columns, rows)
    dense_stats = {c: _dense_stats(state, c, columns) for c in columns.dense}
    label_stats = {name: _label_stats(state, name, spec) for name, spec in labels.items()}
    if columns.weight and not state.weight_total > 0:
        raise DataError(f"weight column {columns.weight!r} is 0 on every row")
    return FeatureEncoder(vocabs=vocabs, dense_stats=dense_stats, labels=label_stats, column_stats=column_stats,
                          weight=columns.weight, hash_buckets={c: columns.hash_buckets for c in columns.categorical},
                          position=_positions(state, columns.position))


def _positions(state: FitState, column: str | None) -> tuple[str, pa.Array] | None:
    """(column, sorted distinct logged positions) as the in-memory fit gives them, or None."""
    if column is None or state.positions is None:
        return None
    values, _ = state.positions.result()
    if values is None:
        return column, pa.array([], type=pa.int64())
    return column, values.take(pc.sort_indices(values))


def _vocabulary(state: FitState, column: str, columns: ColumnSpec, rows: int) -> tuple[pa.Array, dict[str, float]]:
    """(vocabulary sorted by value, column_stats entry) of one categorical column."""
    sketch = state.frequency[column]
    values, counts = sketch.result()
    if values is None:  # every value null: an empty vocabulary, as in memory
        return pa.array([], type=pa.int64()), _stats(0.0, 0.0, 0, 0.0, rows, True, columns.hash_buckets, math.nan)
    keep = top_frequent(values, counts, columns.min_frequency, columns.max_vocab)
    order = pc.sort_indices(values).to_numpy()
    kept = order[keep[order]]
    vocab = values.take(pa.array(kept))
    covered = float(counts[kept].sum())
    if sketch.exact:
        distinct, singletons = float(len(values)), float((counts == 1).sum())
    else:
        distinct, singletons = state.distinct[column].estimates()
    collision = math.nan
    if columns.hash_buckets > 0:
        tail = np.flatnonzero(~keep)
        if sketch.exact:
            buckets = bucket_codes(values.take(pa.array(tail)), np.zeros(tail.size, dtype=np.int32), 0,
                                   columns.hash_buckets)
            collision = collision_rate(buckets, counts[tail])
        else:
            collision = expected_collision_rate(distinct - len(kept), columns.hash_buckets)
    return vocab, _stats(distinct, singletons, len(kept), covered, rows, sketch.exact, columns.hash_buckets, collision,
                         sketch.error)


def _stats(distinct: float, singletons: float, vocab: int, covered: float, rows: int, exact: bool, buckets: int,
           collision: float, error: int = 0) -> dict[str, float]:
    """The column_stats entry (keys as in data/encoders.py `_column_stats`, plus `count_error`:
    the Misra–Gries bound on how far each count may be low, as a share of the rows)."""
    total = max(rows, 1)
    oov = max(0.0, 1.0 - covered / total)  # a lower bound on the coverage when the counts are not exact
    stats = {"distinct": distinct, "vocab": float(vocab), "train_oov_rate": oov,
             "expected_oov_rate": min(1.0, oov + singletons / total), "train_coverage": 1.0 - oov,
             "exact": 1.0 if exact else 0.0, "count_error": error / total}
    if buckets > 0:
        stats.update(hash_buckets=float(buckets), hash_collision_rate=collision)
    return stats


def _dense_stats(state: FitState, column: str, columns: ColumnSpec) -> dict[str, object]:
    moments = merged([state.dense[i][column] for i in sorted(state.dense) if column in state.dense[i]])
    if moments.count == 0:
        raise DataError(f"dense column {column!r} has no values in the training data (all null)")
    if not (math.isfinite(moments.mean) and math.isfinite(moments.std)):
        raise DataError(f"dense column {column!r}: its mean or std overflows float64 (values up to "
                        f"{moments.largest_abs:g}); rescale it or add it to data.log1p")
    stats: dict[str, object] = {"mean": moments.mean, "std": moments.std if moments.std > 0 else 1.0,
                                "log1p": column in columns.log1p, "indicator": moments.missing > 0}
    if columns.numeric_bins > 0:
        stats["bin_edges"] = state.samples[column].edges(columns.numeric_bins).tolist()
    return stats


def _label_stats(state: FitState, name: str, spec: LabelSpec) -> LabelStats:
    """LabelStats as data/labels.py `fit_label` computes them, from the merged moments."""
    parts = [state.labels[i][name] for i in sorted(state.labels) if name in state.labels[i]]
    raw, transformed = merged([p[0] for p in parts]), merged([p[1] for p in parts])
    if raw.count == 0:
        raise DataError(f"task {name!r} has no labelled rows in the training data (column {spec.column!r} is all null)")
    if spec.kind == "binary":
        return LabelStats("binary", spec.column, "none", raw.mean, 1.0, spec.train_on)
    clip = (raw.minimum, raw.maximum) if spec.clip else None  # `tasks.<t>.clip`: the training label range
    if spec.loss in ("poisson", "tweedie"):
        if raw.minimum < 0:
            raise DataError(f"label column {spec.column!r} of task {name!r} must be >= 0 for `loss: {spec.loss}`. "
                            f"Got a minimum of {raw.minimum:g}")
        return LabelStats("regression", spec.column, "none", raw.mean, 1.0, spec.train_on, spec.loss,
                          spec.tweedie_power, clip=clip)
    mean, std = transformed.mean, transformed.std
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise DataError(f"label column {spec.column!r} of task {name!r}: its mean or std overflows float64 "
                        f"(values up to {raw.largest_abs:g}); rescale it or use transform: log1p")
    return LabelStats("regression", spec.column, spec.transform, mean, std if std > 0 else 1.0, spec.train_on,
                      clip=clip)


def chunk_rows(dataset: ParquetDataset, state: FitState | None) -> np.ndarray:
    """(C,) training rows per row group: all of them without a hold-out, else the fitted counts."""
    if state is None:
        return np.array([c.num_rows for c in dataset.chunks], dtype=np.int64)
    return np.array([state.train_rows.get(i, 0) for i in range(len(dataset.chunks))], dtype=np.int64)


def held_rows(dataset: ParquetDataset, state: FitState) -> np.ndarray:
    """(C,) held-out rows per row group."""
    return np.array([state.held_rows.get(i, 0) for i in range(len(dataset.chunks))], dtype=np.int64)


def split_chunks(chunks: list[Chunk], readers: int, reader: int) -> list[int]:
    """The contiguous block of row-group indices reader `reader` of `readers` fits on."""
    count = len(chunks)
    return list(range(count * reader // readers, count * (reader + 1) // readers))
