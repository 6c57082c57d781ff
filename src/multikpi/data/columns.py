"""Input columns: a vocabulary per categorical column, standardization per dense column.

Categorical: the ids seen at least `min_frequency` times in train, sorted; index 0 is reserved for
out-of-vocabulary: unseen, rare and null ids all map to it.

Dense: optional log1p (negative values clipped to 0 first), then standardized with the train mean
and std. A column that had NaN in train gets a 0/1 missing-indicator input; NaN is then imputed
with 0, the train mean after standardization.

Numeric bins (`numeric_bins` B > 0): each dense column is also cut into bins whose index is one
more categorical input, so that the model learns an embedding per bin: a piecewise-constant
function of the value, which an MLP on the standardized scalar learns slowly (Gorishniy, Rubachev &
Babenko, "On Embeddings for Numerical Features in Tabular Deep Learning", NeurIPS 2022). A column
with at most B distinct training values gets one bin per value (edges at the midpoints: ages,
counts, codes, the spikes of capital gains); any other column B quantile bins (edges are the
distinct quantiles, so heavy ties give fewer bins). Bin 0 is for missing values.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from multikpi.data.hashing import bucket_codes, collision_rate
from multikpi.errors import DataError


def check_id_type(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """`column` as integer or string ids: dictionary-encoded columns (pandas' `category`) decoded,
    booleans (pandas' `bool`, a flag such as is_weekend) as the int64 ids 0 and 1, the id type the
    serving encoder's fast paths take."""
    if pa.types.is_boolean(column.type):
        return column.cast(pa.int64())
    if not (pa.types.is_integer(column.type) or pa.types.is_string(column.type)
            or pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type)):
        raise DataError(f"categorical column {name!r} must hold integer, string or boolean ids. Got type "
                        f"{column.type}")
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column


def fit_encode_ids(column: pa.ChunkedArray, name: str, min_frequency: int, max_vocab: int | None = None,
                   hash_buckets: int = 0) -> tuple[pa.Array, np.ndarray, dict[str, float]]:
    """(vocabulary, codes, counts): the sorted distinct non-null values seen at least
    `min_frequency` times (the `max_vocab` most frequent of them, when set), each row's index in it
    + 1 (0 for null and rare ids, or with `hash_buckets` B > 0 the rare ids' hash bucket
    len(vocabulary) + 1 .. len(vocabulary) + B), and counts: `distinct` non-null values before the
    frequency cut, `singletons`, the ids seen once, and with buckets the `hash_collision_rate`."""
    column = check_id_type(column, name)
    encoded = pc.dictionary_encode(column.combine_chunks())
    distinct = encoded.dictionary
    codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int32) + 1
    frequency = np.bincount(codes, minlength=len(distinct) + 1)[1:]
    keep = top_frequent(distinct, frequency, min_frequency, max_vocab)
    order = pc.sort_indices(distinct).to_numpy()
    kept = order[keep[order]]
    remap = np.zeros(len(distinct) + 1, dtype=np.int32)
    remap[kept + 1] = np.arange(1, len(kept) + 1)
    counts: dict[str, float] = {"distinct": len(distinct), "singletons": int((frequency == 1).sum())}
    if hash_buckets > 0:
        tail = np.flatnonzero(~keep)
        remap[tail + 1] = bucket_codes(distinct.take(pa.array(tail)), np.zeros(tail.size, dtype=np.int32),
                                       len(kept), hash_buckets)
        counts["hash_collision_rate"] = collision_rate(remap[tail + 1], frequency[tail])
    return distinct.take(pa.array(kept)), remap[codes], counts


def top_frequent(values: pa.Array, frequency: np.ndarray, min_frequency: int, max_vocab: int | None) -> np.ndarray:
    """(K,) bool: the values seen at least `min_frequency` times, and of those the `max_vocab` most
    frequent (ties broken by value order, so the choice is deterministic)."""
    keep = frequency >= min_frequency
    if max_vocab is not None and int(keep.sum()) > max_vocab:
        by_value = pc.sort_indices(values).to_numpy()
        ranked = by_value[np.argsort(-frequency[by_value], kind="stable")]
        keep = np.zeros(len(frequency), dtype=bool)
        keep[ranked[:max_vocab]] = True
        keep &= frequency >= min_frequency
    return keep


def _id_kind(type_: pa.DataType) -> str:
    if pa.types.is_dictionary(type_):
        return _id_kind(type_.value_type)
    if pa.types.is_integer(type_) or pa.types.is_boolean(type_):  # booleans are the ids 0 and 1
        return "integer"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    return "other"


def check_id_kind(column: pa.ChunkedArray, vocab: pa.Array, name: str) -> None:
    """Ids of another kind than in training (integers where the vocabulary holds strings, or the other
    way round) are refused: cast to the vocabulary's type, they would rarely match ("0012" is not
    "12", "user_12" is not 12), and every row would be out of vocabulary."""
    kinds = (_id_kind(column.type), _id_kind(vocab.type))
    if len(vocab) and column.null_count < len(column) and "other" not in kinds and kinds[0] != kinds[1]:
        raise DataError(f"categorical column {name!r} holds {kinds[0]} ids ({column.type}); the model was trained "
                        f"on {kinds[1]} ids ({vocab.type}): convert the column to {kinds[1]}s as in training")


def encode_ids(column: pa.ChunkedArray, vocab: pa.Array, name: str) -> np.ndarray:
    """Vocabulary index + 1, or 0 for unseen and null ids; ids of another kind are refused
    (`check_id_kind`)."""
    check_id_kind(column, vocab, name)
    column = check_id_type(column, name)
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
    return finite_values(column.cast(pa.float64()).to_numpy(), name, log1p)


def finite_values(values: np.ndarray, name: str, log1p: bool) -> np.ndarray:
    """float64 `values` (NaN for null) checked finite, log1p'd if asked; a writeable array."""
    if np.isinf(values).any():
        count = int(np.isinf(values).sum())
        raise DataError(f"dense column {name!r} must be finite or null. Got {count} infinite value(s)")
    if log1p:
        return np.log1p(np.maximum(values, 0.0))
    return values if values.flags.writeable else values.copy()  # Arrow's zero-copy view is read-only


def dense_values(column: pa.ChunkedArray | pa.Array, name: str, log1p: bool) -> np.ndarray:
    """float64 values of a dense column (NaN for null), log1p'd if asked; DataError for Inf or a
    non-numeric column. The streaming fit (stream_fit.py) reads its batches through this."""
    return _dense_values(pa.chunked_array([column]) if isinstance(column, pa.Array) else column, name, log1p)


DenseEncoding = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # standardized, missing, bin codes


def fit_encode_dense(column: pa.ChunkedArray, name: str, log1p: bool,
                     bins: int = 0) -> tuple[dict[str, Any], DenseEncoding]:
    """(statistics, (standardized values with NaN -> 0, missing mask, bin codes or None)) of one
    training column; `bins` > 0 also fits the bin edges (`statistics["bin_edges"]`)."""
    values = _dense_values(column, name, log1p)
    missing = np.isnan(values)
    if missing.all():
        raise DataError(f"dense column {name!r} has no values in the training data (all null)")
    mean = float(np.nanmean(values))
    std = float(np.nanstd(values))
    if not (np.isfinite(mean) and np.isfinite(std)):
        raise DataError(f"dense column {name!r}: its mean or std overflows float64 (values up to "
                        f"{np.nanmax(np.abs(values)):g}); rescale it or add it to data.log1p")
    stats: dict[str, Any] = {"mean": mean, "std": std if std > 0 else 1.0, "log1p": log1p,
                             "indicator": bool(missing.any())}
    codes = None
    if bins > 0:
        stats["bin_edges"] = bin_edges(values[~missing], bins).tolist()
        codes = bin_codes(values, np.asarray(stats["bin_edges"]))
    return stats, (_scale(values, missing, stats).astype(np.float32), missing, codes)  # float32: held until assembled


def standardize(column: pa.ChunkedArray, name: str, stats: dict[str, Any]) -> DenseEncoding:
    """(standardized values with NaN -> 0, missing mask, bin codes or None) with fitted statistics."""
    return standardize_values(_dense_values(column, name, stats["log1p"]), stats)


def standardize_values(values: np.ndarray, stats: dict[str, Any]) -> DenseEncoding:
    """`standardize` of float64 values already checked and log1p'd (`finite_values`); modifies them."""
    missing = np.isnan(values)
    codes = bin_codes(values, np.asarray(stats["bin_edges"])) if "bin_edges" in stats else None
    return _scale(values, missing, stats), missing, codes


def bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges of the non-missing training `values`: midpoints between the distinct
    values when there are at most `bins` of them, else the distinct (bins)-quantiles."""
    distinct = np.unique(values)
    if distinct.size <= bins:
        return (distinct[1:] + distinct[:-1]) / 2.0
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def bin_codes(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """int32 bin index + 1 of each value (1..len(edges)+1), 0 for NaN."""
    codes = np.searchsorted(edges, values, side="right").astype(np.int32) + 1
    codes[np.isnan(values)] = 0
    return codes


def _scale(values: np.ndarray, missing: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    values -= stats["mean"]
    values /= stats["std"]
    values[missing] = 0.0
    return values
