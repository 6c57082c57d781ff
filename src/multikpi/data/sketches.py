"""Mergeable summaries for fitting the encoders in one pass of bounded memory (data/stream_fit.py).

Each is updated batch by batch and merged with another of its kind (another file range, another
rank); merging in a fixed order gives the same result however the rows were split.

- `FrequencySketch`: per-value counts of a categorical column. Exact while it holds at most
  `capacity` distinct values (always, without a capacity); beyond, the mergeable Misra–Gries
  summary (Misra & Gries 1982; Agarwal et al., "Mergeable summaries", TODS 2013): when a merge
  holds more than k = capacity counters, the (k+1)-th largest count is subtracted from every
  counter and the non-positive ones are dropped. Every value seen more than N/(k+1) times is kept,
  and each kept count is at most `error` (the sum of the subtractions, ≤ N/(k+1)) below the truth.
- `DistinctSample`: distinct sampling (Gibbons, "Distinct sampling for highly-accurate answers to
  distinct values queries", VLDB 2001): the values whose hash falls below 2^-level are kept with
  their exact counts; when more than `capacity` are kept, the level rises and half are dropped.
  Distinct values ≈ kept · 2^level and values seen once ≈ kept singletons · 2^level (exact at level 0).
- `Moments`: count, mean and sum of squared deviations, merged with the formulas of Chan, Golub &
  LeVeque (1979).
- `ValueSample`: a bottom-k sample (the k values whose row key is smallest), the key a hash of the
  global row number, so the sample does not depend on how rows were split between readers; exact
  quantiles while it holds every row. Together with the distinct values (kept up to `distinct_cap`)
  it gives the numeric bin edges.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from multikpi.data.hashing import hash_values

_PENDING_ROWS = 1 << 18  # batch counts buffered before they are folded into the summary
_DISTINCT_SALT = 0x0D15_71C7


def value_counts(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(distinct non-null values, (K,) int64 counts) of a batch."""
    counted = pc.value_counts(pc.drop_null(column))
    return counted.field("values"), counted.field("counts").to_numpy().astype(np.int64)


class FrequencySketch:
    """Counts of the non-null values of one column. `capacity` None: exact, memory O(distinct)."""

    def __init__(self, capacity: int | None = None):
        self.capacity = capacity
        self.values: pa.Array | None = None
        self.counts = np.zeros(0, dtype=np.int64)
        self.error = 0  # every kept count is at most this much below the true count
        self.rows = 0  # rows seen, nulls included
        self._pending: list[tuple[pa.Array, np.ndarray]] = []
        self._pending_rows = 0

    @property
    def exact(self) -> bool:
        return self.error == 0

    def update(self, column: pa.Array | pa.ChunkedArray) -> None:
        self.update_counts(*value_counts(column), rows=len(column))

    def update_counts(self, values: pa.Array, counts: np.ndarray, rows: int) -> None:
        """The distinct non-null `values` of a batch of `rows` rows, with their `counts`."""
        self.rows += rows
        if len(values):
            self._add(values, counts)

    def merge(self, other: FrequencySketch) -> None:
        other._fold()  # first: folding may subtract, and that is part of other's error
        self.rows += other.rows
        self.error += other.error
        if other.values is not None:
            self._add(other.values, other.counts)

    def _add(self, values: pa.Array, counts: np.ndarray) -> None:
        self._pending.append((values, counts))
        self._pending_rows += len(values)
        if self._pending_rows > max(_PENDING_ROWS, 2 * (self.capacity or 0)):
            self._fold()

    def _fold(self) -> None:
        """Sum the pending counts into the summary, then cut it to `capacity` counters."""
        if not self._pending:
            return
        parts = ([(self.values, self.counts)] if self.values is not None else []) + self._pending
        self._pending, self._pending_rows = [], 0
        table = pa.table({"v": pa.concat_arrays([v.cast(parts[0][0].type) for v, _ in parts]),
                          "c": np.concatenate([c for _, c in parts])})
        summed = table.group_by("v").aggregate([("c", "sum")])
        values, counts = summed.column("v").combine_chunks(), summed.column("c_sum").to_numpy()
        if self.capacity is not None and len(counts) > self.capacity:
            threshold = int(np.partition(counts, len(counts) - self.capacity - 1)[len(counts) - self.capacity - 1])
            counts = counts - threshold
            keep = np.flatnonzero(counts > 0)
            values, counts = values.take(pa.array(keep)), counts[keep]
            self.error += threshold
        self.values, self.counts = values, counts.astype(np.int64)

    def result(self) -> tuple[pa.Array | None, np.ndarray]:
        """(distinct values kept, their counts); None when no value was seen."""
        self._fold()
        return self.values, self.counts


class DistinctSample:
    """A hash-chosen sample of the distinct values of one column with their exact counts."""

    def __init__(self, capacity: int = 1 << 16):
        self.capacity = capacity
        self.level = 0
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.counts = np.zeros(0, dtype=np.int64)

    def update_counts(self, values: pa.Array, counts: np.ndarray) -> None:
        """Distinct `values` of a batch with their `counts`."""
        self._add(hash_values(values, _DISTINCT_SALT), counts)

    def merge(self, other: DistinctSample) -> None:
        self._add(other.hashes, other.counts, other.level)

    def _add(self, hashes: np.ndarray, counts: np.ndarray, level: int = 0) -> None:
        self.level = max(self.level, level)
        merged_h = np.concatenate([self.hashes, hashes])
        merged_c = np.concatenate([self.counts, counts])
        keep = self._kept(merged_h)
        unique, inverse = np.unique(merged_h[keep], return_inverse=True)
        self.hashes, self.counts = unique, np.bincount(inverse, weights=merged_c[keep]).astype(np.int64)
        while self.hashes.size > self.capacity:
            self.level += 1
            keep = self._kept(self.hashes)
            self.hashes, self.counts = self.hashes[keep], self.counts[keep]

    def _kept(self, hashes: np.ndarray) -> np.ndarray:
        if self.level == 0:
            return np.ones(hashes.size, dtype=bool)
        return (hashes >> np.uint64(64 - self.level)) == 0

    def estimates(self) -> tuple[float, float]:
        """(distinct values, values seen exactly once), scaled up by 2^level."""
        scale = float(2 ** self.level)
        return self.hashes.size * scale, float((self.counts == 1).sum()) * scale


@dataclass
class Moments:
    """count, mean and M2 = Σ (x − mean)² of the finite values seen, plus the missing (NaN) count."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    missing: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf
    largest_abs: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """Moments of (N,) float64 values; NaN counts as missing."""
        missing = np.isnan(values)
        present = values[~missing]
        if present.size == 0:
            return cls(missing=int(missing.sum()))
        mean = float(present.mean())
        return cls(int(present.size), mean, float(np.square(present - mean).sum()), int(missing.sum()),
                   float(present.min()), float(present.max()), float(np.abs(present).max()))

    def merge(self, other: Moments) -> None:
        n, m = self.count, other.count
        self.missing += other.missing
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.largest_abs = max(self.largest_abs, other.largest_abs)
        if m == 0:
            return
        total = n + m
        delta = other.mean - self.mean
        self.mean += delta * m / total
        self.m2 += other.m2 + delta * delta * n * m / total
        self.count = total

    @property
    def std(self) -> float:
        """The population standard deviation (numpy's default, ddof = 0)."""
        return math.sqrt(self.m2 / self.count) if self.count else math.nan


def merged(parts: list[Moments]) -> Moments:
    """The moments of several parts, merged left to right."""
    total = Moments()
    for part in parts:
        total.merge(part)
    return total


class ValueSample:
    """Bin-edge statistics of one dense column: its distinct values (up to `distinct_cap` + 1) and a
    bottom-`size` sample of its values keyed by a hash of the row number."""

    def __init__(self, size: int, distinct_cap: int):
        self.size = size
        self.distinct_cap = distinct_cap
        self.distinct: np.ndarray | None = np.zeros(0)  # None once more than distinct_cap values were seen
        self.keys = np.zeros(0, dtype=np.uint64)
        self.values = np.zeros(0)

    def update(self, values: np.ndarray, row_keys: np.ndarray) -> None:
        """values (N,) float64 with NaN for missing; row_keys (N,) uint64 hashes of their row numbers."""
        present = ~np.isnan(values)
        self._add(np.unique(values[present]), row_keys[present], values[present])

    def merge(self, other: ValueSample) -> None:
        self._add(other.distinct, other.keys, other.values)

    def _add(self, distinct: np.ndarray | None, keys: np.ndarray, values: np.ndarray) -> None:
        if self.distinct is not None:
            self.distinct = None if distinct is None else np.union1d(self.distinct, distinct)
            if self.distinct is not None and self.distinct.size > self.distinct_cap:
                self.distinct = None
        keys, values = np.concatenate([self.keys, keys]), np.concatenate([self.values, values])
        if keys.size > self.size:
            chosen = np.argpartition(keys, self.size - 1)[:self.size]
            keys, values = keys[chosen], values[chosen]
        self.keys, self.values = keys, values

    def edges(self, bins: int) -> np.ndarray:
        """Interior bin edges as in data/columns.py `bin_edges`: midpoints between the distinct values
        when there are at most `bins`, else the distinct quantiles of the sample."""
        if self.distinct is not None and self.distinct.size <= bins:
            return (self.distinct[1:] + self.distinct[:-1]) / 2.0
        return np.unique(np.quantile(self.values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
