"""Holding out a validation split from the training rows, by row or by group.

Streamed datasets (`HashHoldout`) hold out by hash instead, so that a row's side is known from the
row alone, in any reader and any order: a row (or its group) is held out when
hash(seed, group value or global row number) / 2^64 < fraction. The share is `fraction` in
expectation, not exactly; the in-memory split below is exact.

With a group column (a request / page-view id), whole groups go to one side, so that no request
is split between training and validation (ranking metrics and calibration need whole requests, and
rows of one request share their context). The choice is a seeded permutation of the distinct groups
(or rows): the same data and seed give the same split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from multikpi.data.hashing import hash_rows, hash_values, unit_interval
from multikpi.data.labels import ColumnSource
from multikpi.errors import DataError


def holdout_rows(num_rows: int, fraction: float, seed: int,
                 groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows), each sorted int64 row indices; about `fraction` of the rows
    (of the groups, when `groups` (N,) is given) are held out, at least one and never all."""
    rng = np.random.default_rng([seed, 7213])
    if groups is None:
        held = np.zeros(num_rows, dtype=bool)
        count = min(max(int(round(fraction * num_rows)), 1), num_rows - 1)
        held[rng.permutation(num_rows)[:count]] = True
    else:
        _, codes = np.unique(groups, return_inverse=True)
        num_groups = int(codes.max()) + 1 if codes.size else 0
        if num_groups < 2:
            raise DataError(f"cannot hold out a validation split by group: the training data has {num_groups} "
                            f"group(s); set data.valid, or data.group: null")
        count = min(max(int(round(fraction * num_groups)), 1), num_groups - 1)
        held = np.isin(codes, rng.permutation(num_groups)[:count])
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)


class RowSubset:
    """Some rows of a ColumnSource, itself a ColumnSource (columns are taken when asked for)."""

    def __init__(self, source: ColumnSource, rows: np.ndarray):
        self.source = source
        self.rows = pa.array(rows)
        self.num_rows = int(rows.size)
        self.column_names = list(source.column_names)

    def column(self, name: str) -> pa.ChunkedArray:
        return self.source.column(name).take(self.rows)


def group_values(source: ColumnSource, column: str) -> np.ndarray:
    """The group column as a NumPy array; DataError when it has nulls."""
    values = source.column(column)
    if values.null_count:
        raise DataError(f"group column {column!r} has {values.null_count} null value(s); every row needs a group "
                        f"to hold out a validation split by group")
    return np.asarray(values.to_numpy(zero_copy_only=False))


@dataclass(frozen=True)
class HashHoldout:
    """The held-out valid share of a streamed dataset: a row is held out when the hash of its
    `group` value (of its global row number when `group` is None), salted with `seed`, falls in
    the first `fraction` of the hash range."""

    fraction: float
    seed: int
    group: str | None = None

    def held_out(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """(N,) bool for the rows of `table`, whose global row numbers are `rows` (N,)."""
        if self.group is None:
            hashes = hash_rows(rows, self.seed)
        else:
            values = table.column(self.group)
            if values.null_count:
                raise DataError(f"group column {self.group!r} has {values.null_count} null value(s); every row "
                                f"needs a group to hold out a validation split by group")
            hashes = hash_values(values, self.seed)
        return unit_interval(hashes) < self.fraction
