"""Input columns: a vocabulary per categorical column, standardization per dense column.

Categorical: the ids seen at least `min_frequency` times in train, sorted; index 0 is reserved for
out-of-vocabulary: unseen, rare and null ids all map to it.

Dense: optional log1p (negative values clipped to 0 first), then standardized with the train mean
and std. A column that had NaN in train gets a 0/1 missing-indicator input; NaN is then imputed
with 0, the train mean after standardization.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from multikpi.errors import DataError


def check_id_type(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    if not (pa.types.is_integer(column.type) or pa.types.is_string(column.type)
            or pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type)):
        raise DataError(f"categorical column {name!r} must hold integer or string ids. Got type {column.type}")
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column


def fit_encode_ids(column: pa.ChunkedArray, name: str,
                   min_frequency: int) -> tuple[pa.Array, np.ndarray, dict[str, float]]:
    """(vocabulary, codes, counts): the sorted distinct non-null values seen at least
    `min_frequency` times, each row's index in it + 1 (0 for null and rare ids), and counts:
    `distinct` non-null values before the frequency cut, and `singletons`, the ids seen once."""
    column = check_id_type(column, name)
    encoded = pc.dictionary_encode(column.combine_chunks())
    distinct = encoded.dictionary
    codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int32) + 1
    frequency = np.bincount(codes, minlength=len(distinct) + 1)[1:]
    keep = frequency >= min_frequency
    order = pc.sort_indices(distinct).to_numpy()
    kept = order[keep[order]]
    remap = np.zeros(len(distinct) + 1, dtype=np.int32)
    remap[kept + 1] = np.arange(1, len(kept) + 1)
    counts: dict[str, float] = {"distinct": len(distinct), "singletons": int((frequency == 1).sum())}
    return distinct.take(pa.array(kept)), remap[codes], counts


def encode_ids(column: pa.ChunkedArray, vocab: pa.Array, name: str) -> np.ndarray:
    """Vocabulary index + 1, or 0 for unseen and null ids."""
    if column.type != vocab.type:
        try:
            column = column.cast(vocab.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(
                f"categorical column {name!r} must hold ids of type {vocab.type} as in training. Got {column.type}"
            ) from None
    index = pc.index_in(column, value_set=vocab)
    return pc.fill_null(index, -1).to_numpy().astype(np.int32) + 1


def _dense_values(column: pa.ChunkedArray, name: str, log1p: bool) -> np.ndarray:
    """float64 values (NaN for null), log1p'd if asked. Inf is an error."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
            or pa.types.is_boolean(column.type) or pa.types.is_null(column.type)):
        raise DataError(f"dense column {name!r} must be numeric. Got type {column.type}")
    values = column.cast(pa.float64()).to_numpy()
    if np.isinf(values).any():
        count = int(np.isinf(values).sum())
        raise DataError(f"dense column {name!r} must be finite or null. Got {count} infinite value(s)")
    if log1p:
        return np.log1p(np.maximum(values, 0.0))
    return values if values.flags.writeable else values.copy()  # Arrow's zero-copy view is read-only


def fit_encode_dense(column: pa.ChunkedArray, name: str,
                     log1p: bool) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(statistics, standardized values with NaN -> 0, missing mask) of one training column."""
    values = _dense_values(column, name, log1p)
    missing = np.isnan(values)
    if missing.all():
        raise DataError(f"dense column {name!r} has no values in the training data (all null)")
    mean = float(np.nanmean(values))
    std = float(np.nanstd(values))
    stats = {"mean": mean, "std": std if std > 0 else 1.0, "log1p": log1p, "indicator": bool(missing.any())}
    return stats, _scale(values, missing, stats).astype(np.float32), missing  # float32: held until assembled


def standardize(column: pa.ChunkedArray, name: str, stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(standardized values with NaN -> 0, missing mask) with fitted statistics."""
    values = _dense_values(column, name, stats["log1p"])
    missing = np.isnan(values)
    return _scale(values, missing, stats), missing


def _scale(values: np.ndarray, missing: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    values -= stats["mean"]
    values /= stats["std"]
    values[missing] = 0.0
    return values
