"""Encoding at serving time: the fitted `FeatureEncoder`'s statistics applied to in-memory columns,
with lookup structures built once per loaded run, so that a request costs a few array operations.

`FeatureEncoder.encode` looks ids up with `pyarrow.compute.index_in`, which hashes the whole
vocabulary on every call: fine for a file of a million rows, most of the cost for a request of a
hundred candidates (the benchmark's item column has ~100k ids). Here integer vocabularies (sorted,
as fitted) are searched with `np.searchsorted` and string vocabularies through a dict built once;
dense columns go through the very same `standardize`. The codes equal `FeatureEncoder.encode`'s
(tests/test_serve_encoding.py checks it on whole splits).

Context columns (one value for the whole request: the user and the page view) are encoded once
and broadcast to every candidate row.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from multikpi.data.columns import (
    DenseEncoding,
    bin_codes,
    check_id_kind,
    check_id_type,
    encode_ids,
    finite_values,
    standardize,
    standardize_values,
)
from multikpi.data.encoders import FeatureEncoder
from multikpi.errors import DataError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LARGE = 50_000  # rows of a string column above which the vocabulary is hashed per call instead
SORTED_SEARCH_VOCAB = 4096  # vocabulary entries above which (and ...
SORTED_SEARCH_ROWS = 64  # ... values from which) values are searched in sorted order (`_search`)


@dataclass(frozen=True)
class EncodedRequest:
    """categorical: (N, F + B) int64 vocabulary indices (0 = out of vocabulary), the categorical
    columns then the binned dense columns; dense: (N, D) float32 standardized values then missing
    indicators; oov: categorical column -> values sent that are out of vocabulary (a context value
    counts once); context: (columns of `categorical`, columns of `dense`) that came from the
    context, the same in every row."""

    categorical: np.ndarray
    dense: np.ndarray
    oov: dict[str, int]
    context: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())


class ServingEncoder:
    """`encode(columns, rows, context)` -> EncodedRequest. Thread-safe: the lookups are read-only
    once built (a string column's dict is built on first use, under a lock)."""

    def __init__(self, encoder: FeatureEncoder):
        self.encoder = encoder
        self.categorical = encoder.categorical
        self.dense = encoder.dense
        self.features = self.categorical + self.dense
        self._sorted = {c: v.to_numpy(zero_copy_only=False) for c, v in encoder.vocabs.items()
                        if pa.types.is_integer(v.type)}
        self._dicts: dict[str, dict[Any, int]] = {}
        self._lock = threading.Lock()
        self._indicator_at = {c: len(self.dense) + k for k, c in enumerate(encoder.missing_indicators)}
        self._bins_at = {c: len(self.categorical) + k for k, c in enumerate(encoder.binned)}
        self.num_categorical = len(self.categorical) + len(self._bins_at)
        self.num_dense = encoder.num_dense_inputs
        stats = [encoder.dense_stats[c] for c in self.dense]
        self._log1p_columns = np.array([j for j, s in enumerate(stats) if s["log1p"]], dtype=np.int64)
        self._means = np.array([s["mean"] for s in stats], dtype=np.float64)
        self._stds = np.array([s["std"] for s in stats], dtype=np.float64)
        self._bin_edges = {j: np.asarray(s["bin_edges"]) for j, s in enumerate(stats) if "bin_edges" in s}
        self._context_layouts: dict[frozenset[str], tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def encode(self, columns: Mapping[str, Any], rows: int,
               context: Mapping[str, Any] | None = None) -> EncodedRequest:
        """columns: feature -> `rows` values (list, NumPy or Arrow array); context: feature -> one
        value for every row. Every feature must be in exactly one of them."""
        context = context or {}
        categorical = np.empty((rows, self.num_categorical), dtype=np.int64)
        dense = np.empty((rows, self.num_dense), dtype=np.float32)
        oov: dict[str, int] = {}
        for i, column in enumerate(self.categorical):
            code = self._context_code(column, context[column]) if column in context else None
            if code is not None:  # one context value: looked up once, broadcast
                categorical[:, i] = code
                oov[column] = int(code == 0)
                continue
            raw = self._raw(column, columns, context, rows)
            codes = self._fast_codes(column, raw)
            if codes is None:
                codes = self.codes(column, as_arrow(raw, column))
            oov[column] = int(np.count_nonzero(codes == 0))
            categorical[:, i] = codes
        matrix = self._dense_matrix(columns, rows, context)
        encoded = (self._standardize_matrix(matrix) if matrix is not None else
                   [self._standardize(c, self._raw(c, columns, context, rows)) for c in self.dense])
        for i, (column, (values, missing, bins)) in enumerate(zip(self.dense, encoded)):
            with np.errstate(over="ignore"):
                dense[:, i] = values
            if not np.isfinite(dense[:, i]).all():  # finite in float64, beyond float32 once standardized
                raise DataError(f"dense feature {column!r} has a value too large for the model (its "
                                f"standardized value overflows float32)")
            if column in self._indicator_at:
                dense[:, self._indicator_at[column]] = missing
            if bins is not None:
                categorical[:, self._bins_at[column]] = bins
        return EncodedRequest(categorical, dense, oov, self._context_columns(tuple(context)))

    def _context_columns(self, context: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The columns of the encoded arrays that the context's features fill (see EncodedRequest);
        cached per set of context keys (a server sees the same few)."""
        key = frozenset(context)
        cached = self._context_layouts.get(key)
        if cached is None:
            cached = self._context_layouts[key] = self._layout_of(key)
        return cached

    def _layout_of(self, context: frozenset[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        categorical = [i for i, c in enumerate(self.categorical) if c in context]
        categorical += [self._bins_at[c] for c in self.dense if c in context and c in self._bins_at]
        dense = [i for i, c in enumerate(self.dense) if c in context]
        dense += [self._indicator_at[c] for c in self.dense if c in context and c in self._indicator_at]
        return tuple(sorted(categorical)), tuple(sorted(dense))

    def _context_code(self, column: str, value: Any) -> int | None:
        """The code of one context value (None: not a plain int or str; the general path decides)."""
        if value is None:
            return 0  # a missing id: out of vocabulary, as a null in a column
        vocab = self._sorted.get(column)
        if vocab is not None and type(value) is int and vocab.dtype == np.int64 and INT64_MIN <= value <= INT64_MAX:
            at = int(np.searchsorted(vocab, value))
            return at + 1 if at < vocab.size and vocab[at] == value else 0
        if vocab is None and type(value) is str and pa.types.is_string(self.encoder.vocabs[column].type):
            return self._lookup(column).get(value, 0)
        return None

    def _dense_matrix(self, columns: Mapping[str, Any], rows: int, context: Mapping[str, Any]) -> np.ndarray | None:
        """(rows, D) float64 of the dense features when each is a float64 array (NaN = missing, as
        the HTTP fast path gives them) or a number or null in the context; else None."""
        matrix = np.empty((rows, len(self.dense)), dtype=np.float64)
        for j, column in enumerate(self.dense):
            value = context[column] if column in context else columns.get(column)
            if column in context and (value is None or type(value) in (int, float)):
                matrix[:, j] = np.nan if value is None else value
            elif isinstance(value, np.ndarray) and value.dtype == np.float64 and value.shape == (rows,):
                matrix[:, j] = value
            else:
                return None
        return matrix

    def _standardize_matrix(self, matrix: np.ndarray) -> list[DenseEncoding]:
        """`standardize` of every dense column at once: the same float64 operations, in one pass
        over the (rows, D) matrix instead of one per column. Infinite values take the per-column
        path, whose error names the column."""
        if np.isinf(matrix).any():
            return [self._standardize(c, matrix[:, j].copy()) for j, c in enumerate(self.dense)]
        log = self._log1p_columns
        if log.size:
            matrix[:, log] = np.log1p(np.maximum(matrix[:, log], 0.0))
        missing = np.isnan(matrix)
        bins = {j: bin_codes(matrix[:, j], edges) for j, edges in self._bin_edges.items()}
        matrix -= self._means
        matrix /= self._stds
        matrix[missing] = 0.0
        return [(matrix[:, j], missing[:, j], bins.get(j)) for j in range(len(self.dense))]

    def _fast_codes(self, column: str, raw: Any) -> np.ndarray | None:
        """Codes of a plain list of Python ints (what a JSON request holds) or an int64 array in an
        int64 vocabulary, without Arrow; None when the values are anything else (nulls, other
        types: `codes`)."""
        if column not in self._sorted or self._sorted[column].dtype != np.int64:
            return None
        if isinstance(raw, np.ndarray):
            values = raw
        elif isinstance(raw, list):
            values = np.array(raw)
        else:
            return None
        if values.dtype != np.int64 or values.ndim != 1:
            return None
        return self._search(self._sorted[column], values)

    def _standardize(self, column: str, raw: Any) -> DenseEncoding:
        """The dense column's standardized values, missing mask and bin codes (`standardize`); a
        list of Python numbers and None is converted by NumPy directly."""
        stats = self.encoder.dense_stats[column]
        if isinstance(raw, (list, np.ndarray)):
            values = np.asarray(raw)
            if values.ndim == 1 and values.dtype.kind in "fiub":  # numbers only (None or text: Arrow below)
                return standardize_values(finite_values(values.astype(np.float64), column, stats["log1p"]), stats)
        return standardize(as_arrow(raw, column), column, stats)

    def codes(self, column: str, values: pa.ChunkedArray) -> np.ndarray:
        """(n,) int64 vocabulary index + 1 of each value, 0 for unseen and null ids."""
        vocab = self.encoder.vocabs[column]
        if pa.types.is_null(values.type):  # every value null (e.g. one JSON null): all out of vocabulary
            return np.zeros(len(values), dtype=np.int64)
        check_id_kind(values, vocab, column)  # integers for string ids (or the reverse) are refused
        values = check_id_type(values, column)
        if values.type != vocab.type:
            try:
                values = values.cast(vocab.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise DataError(f"categorical column {column!r} must hold ids of type {vocab.type} as in "
                                f"training. Got {values.type}") from None
        array = values.combine_chunks()
        if column in self._sorted:
            if not array.null_count:
                return self._search(self._sorted[column], array.to_numpy())
            return self._search(self._sorted[column], array.fill_null(0).to_numpy(zero_copy_only=False),
                                array.is_null().to_numpy(zero_copy_only=False))
        if len(array) > LARGE:  # a whole file: one vectorised hash lookup beats a Python loop
            return encode_ids(values, vocab, column).astype(np.int64)
        lookup = self._lookup(column)
        return np.fromiter((lookup.get(v, 0) for v in array.to_pylist()), dtype=np.int64, count=len(array))

    @staticmethod
    def _search(vocab: np.ndarray, values: np.ndarray, nulls: np.ndarray | None = None) -> np.ndarray:
        """Index + 1 of each value in the sorted `vocab`, 0 where absent or null."""
        if vocab.size == 0:
            return np.zeros(len(values), dtype=np.int64)
        if vocab.size > SORTED_SEARCH_VOCAB and values.size >= SORTED_SEARCH_ROWS:
            # the values searched in increasing order walk neighbouring paths of the binary search,
            # which stay in cache: 14 lookups of 1000 candidates, 1.0 -> 0.8 ms (vocabularies to 110k);
            # a table's 200k ids in a 110k vocabulary, 31 -> 16 ms
            order = np.argsort(values)
            at = np.empty_like(order)
            at[order] = np.searchsorted(vocab, values[order])
        else:
            at = np.searchsorted(vocab, values)
        at = np.minimum(at, vocab.size - 1)
        found = vocab[at] == values
        if nulls is not None:
            found &= ~nulls
        return np.where(found, at + 1, 0).astype(np.int64, copy=False)

    def _lookup(self, column: str) -> dict[Any, int]:
        lookup = self._dicts.get(column)
        if lookup is None:
            with self._lock:
                lookup = self._dicts.get(column)
                if lookup is None:
                    values = self.encoder.vocabs[column].to_pylist()
                    lookup = {v: i + 1 for i, v in enumerate(values)}
                    self._dicts[column] = lookup
        return lookup

    def _raw(self, column: str, columns: Mapping[str, Any], context: Mapping[str, Any], rows: int) -> Any:
        """The column's `rows` values as given, or its one context value as a list of one (broadcast
        later by NumPy assignment, so never copied per row)."""
        if column in context:
            return [context[column]]
        if column not in columns:
            raise DataError(f"input has no feature {column!r}; the model needs {self.features}")
        values = columns[column]
        if len(values) != rows:
            raise DataError(f"feature {column!r} has {len(values)} values; expected one per row ({rows})")
        return values


def as_arrow(values: Any, column: str) -> pa.ChunkedArray:
    if isinstance(values, pa.ChunkedArray):
        return values
    if isinstance(values, pa.Array):
        return pa.chunked_array([values])
    try:
        return pa.chunked_array([pa.array(values)])
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as err:
        raise DataError(f"feature {column!r}: values of mixed or unsupported types: {err}") from None
