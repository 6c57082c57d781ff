"""Stable 64-bit hashes of ids and row numbers, vectorised, the same on every machine and process.

Python's `hash` is salted per process and Arrow has no scalar hash kernel, so the streaming code
hashes with numpy: integers through the splitmix64 finaliser (Steele, Lea & Flood, "Fast
splittable pseudorandom number generators", OOPSLA 2014), strings by a polynomial over their UTF-8
bytes (mod 2^64) followed by the same finaliser. Uses:

- the tail of a vocabulary hashed into `data.hash_buckets` buckets (`bucket_codes`);
- the held-out valid share of a streamed dataset, by group or by row (`unit_interval`);
- the distinct-value sample and the quantile sample of the one-pass fit (data/sketches.py).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_BYTE_BASE = np.uint64(0x100000001B3)  # the FNV prime, as the polynomial's base
_LENGTH = np.uint64(0xD6E8FEB86659FD93)

BUCKET_SALT = 0x5EED_B0C7  # hash buckets: fixed, so that serving hashes exactly as training did


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of uint64 `values` (N,) -> (N,) uint64; a bijection."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64, copy=True) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def hash_rows(rows: np.ndarray, salt: int) -> np.ndarray:
    """(N,) int64 row numbers -> (N,) uint64 hashes that depend on `salt` (e.g. the run seed)."""
    salted = rows.astype(np.int64).view(np.uint64) ^ mix64(np.array([salt], dtype=np.uint64))[0]
    return mix64(salted)


def hash_values(values: pa.Array | pa.ChunkedArray, salt: int = 0) -> np.ndarray:
    """(N,) integer or string ids -> (N,) uint64 hashes; nulls hash to an arbitrary value (mask them)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    key = mix64(np.array([salt], dtype=np.uint64))[0]
    if pa.types.is_integer(values.type):
        ints = pc.fill_null(values.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        return mix64(ints.view(np.uint64) ^ key)
    return mix64(_string_polynomial(values) ^ key)


def _string_polynomial(values: pa.Array) -> np.ndarray:
    """Σ_i byte_i · P^(len-1-i) mod 2^64 of each string, mixed with its length; vectorised over the
    Arrow offsets and data buffers (no Python loop over rows)."""
    offset_type: type[np.integer] = np.int64
    if not pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
        offset_type = np.int32
    n = len(values)
    buffers = values.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[values.offset:values.offset + n + 1].astype(np.int64)
    lengths = np.diff(offsets)
    out = np.zeros(n, dtype=np.uint64)
    total = int(offsets[-1] - offsets[0])
    if total > 0:
        data = np.frombuffer(buffers[2], dtype=np.uint8)[offsets[0]:offsets[-1]].astype(np.uint64)
        owner = np.repeat(np.arange(n), lengths)
        exponent = (offsets[owner + 1] - offsets[0] - 1) - np.arange(total)
        with np.errstate(over="ignore"):
            powers = np.cumprod(np.concatenate([[np.uint64(1)], np.full(int(lengths.max()) - 1, _BYTE_BASE)]))
            terms = data * powers[exponent]
        nonempty = np.flatnonzero(lengths > 0)
        out[nonempty] = np.add.reduceat(terms, (offsets[nonempty] - offsets[0]).astype(np.int64))
    with np.errstate(over="ignore"):
        return out ^ (lengths.astype(np.uint64) * _LENGTH)


def unit_interval(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes -> float64 in [0, 1) (their top 53 bits)."""
    return (hashes >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def bucket_codes(column: pa.ChunkedArray | pa.Array, codes: np.ndarray, vocab_size: int, buckets: int) -> np.ndarray:
    """Vocabulary codes (N,) int32 (0 = null or not in vocabulary) with the non-null ids outside the
    vocabulary moved to one of `buckets` hash buckets: codes vocab_size + 1 ... vocab_size + buckets.
    Nulls stay 0."""
    if buckets <= 0:
        return codes
    missing = codes == 0
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    present = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    tail = np.flatnonzero(missing & present)
    if tail.size:
        hashed = hash_values(column.take(pa.array(tail)), BUCKET_SALT)
        codes = codes.copy()
        codes[tail] = (vocab_size + 1 + (hashed % np.uint64(buckets))).astype(np.int32)
    return codes


def collision_rate(buckets_of_ids: np.ndarray, counts: np.ndarray) -> float:
    """The share of the hashed rows whose bucket also holds another id: `buckets_of_ids` (K,) the
    bucket of each distinct hashed id, `counts` (K,) its rows. NaN when nothing is hashed."""
    total = float(counts.sum())
    if total <= 0:
        return float("nan")
    _, inverse, ids_per_bucket = np.unique(buckets_of_ids, return_inverse=True, return_counts=True)
    return float(counts[ids_per_bucket[inverse] > 1].sum()) / total


def expected_collision_rate(distinct_hashed: float, buckets: int) -> float:
    """The expected share of hashed rows whose bucket holds another id, when `distinct_hashed` ids are
    hashed uniformly into `buckets`: 1 − (1 − 1/B)^(d − 1) (used when the ids are not all known)."""
    if distinct_hashed <= 0:
        return float("nan")
    return float(1.0 - (1.0 - 1.0 / buckets) ** max(distinct_hashed - 1.0, 0.0))
