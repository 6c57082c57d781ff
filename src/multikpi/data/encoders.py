"""Feature and label encoders, fit on the training split only and saved with the model.

Categorical and dense columns: `columns.py`; labels and sample weights: `labels.py`. The encoder
fits every column in one pass (columns in parallel on a long-lived thread pool) and records per
categorical column its vocabulary size, distinct ids and out-of-vocabulary rate in train, so that
a split whose OOV rate is far above train's can be flagged.

Position (optional, `ColumnSpec.position`): a vocabulary of the logged positions, like a
categorical column, read only together with the labels (training, evaluation and calibration):
it feeds the model's position tower, which prediction never runs. Index 1 is the smallest
position seen in train, the tower's reference.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from multikpi.data.columns import DenseEncoding, encode_ids, fit_encode_dense, fit_encode_ids, standardize
from multikpi.data.encoders_file import parse_encoders_file
from multikpi.data.hashing import bucket_codes
from multikpi.data.labels import (
    ColumnSource,
    LabelStats,
    encode_label,
    fit_label,
    label_values,
    read_label,
    read_weights,
    to_label_units,
    to_transformed,
)
from multikpi.data.specs import ColumnSpec, LabelSpec
from multikpi.errors import ArtifactError, DataError

__all__ = ["ColumnSource", "EncodedData", "FeatureEncoder", "LabelStats"]


@dataclass(frozen=True)
class EncodedData:
    """Model-ready tensors for N rows.

    categorical: (N, F) int32, per-column vocabulary index, 0 = out of vocabulary.
    dense:       (N, D) float32, standardized numerics then missing indicators.
    labels:      (N, T) float32 in the order of `tasks`; NaN where the task has no label.
    weights:     (N,) float32 sample weights, or None (every row weighs 1).
    position:    (N,) int32 index in the position vocabulary (0 = unseen), or None without one.
    """

    categorical: torch.Tensor
    dense: torch.Tensor
    labels: torch.Tensor
    tasks: tuple[str, ...]
    weights: torch.Tensor | None = None
    position: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return int(self.categorical.shape[0])

    def oov_rates(self, vocab_lengths: list[int] | None = None) -> np.ndarray:
        """(F,) share of rows whose id is out of vocabulary, per categorical column. With
        `vocab_lengths` (the vocabularies' sizes), a hash-bucket code (> the size) counts as out of
        vocabulary too; only the first len(vocab_lengths) columns are returned then."""
        if vocab_lengths is not None:
            codes = self.categorical[:, :len(vocab_lengths)]
            if self.num_rows == 0:
                return np.zeros(len(vocab_lengths))
            outside = (codes == 0) | (codes > torch.tensor(vocab_lengths, dtype=codes.dtype))
            return outside.float().mean(dim=0).numpy().astype(np.float64)
        if self.num_rows == 0:
            return np.zeros(self.categorical.shape[1])
        return (self.categorical == 0).float().mean(dim=0).numpy().astype(np.float64)


class FeatureEncoder:
    """Fitted encoders of the input columns and labels. Use `fit`, then `encode`; `save`/`load` round-trip.

    vocabs: categorical column -> its vocabulary; dense_stats: dense column -> mean, std, log1p,
    indicator; labels: task -> LabelStats; column_stats: categorical column -> distinct ids,
    vocabulary size and OOV rate in train; weight: the sample-weight column or None; hash_buckets:
    categorical column -> B > 0 when its ids outside the vocabulary are hashed into B buckets
    (embedding rows len(vocab) + 1 .. len(vocab) + B) instead of sharing row 0."""

    def __init__(self, *, vocabs: dict[str, pa.Array], dense_stats: dict[str, dict[str, Any]],
                 labels: dict[str, LabelStats], column_stats: dict[str, dict[str, float]] | None = None,
                 weight: str | None = None, hash_buckets: Mapping[str, int] | None = None,
                 position: tuple[str, pa.Array] | None = None):
        self.vocabs = vocabs
        self.dense_stats = dense_stats
        self.labels = labels
        self.column_stats = column_stats or {}
        self.weight = weight
        self.hash_buckets = {c: int(b) for c, b in (hash_buckets or {}).items() if b > 0}
        self.position = position  # (column, vocabulary of the logged positions), or None

    @property
    def num_positions(self) -> int:
        """Rows of the position tower's table, including the unseen-position row 0 (0 without one)."""
        return len(self.position[1]) + 1 if self.position is not None else 0

    @property
    def categorical(self) -> list[str]:
        return list(self.vocabs)

    @property
    def dense(self) -> list[str]:
        return list(self.dense_stats)

    @property
    def binned(self) -> list[str]:
        """Dense columns that also have a binned categorical input (after the categorical columns)."""
        return [c for c, s in self.dense_stats.items() if "bin_edges" in s]

    @property
    def vocab_sizes(self) -> list[int]:
        """Rows of each embedded column's table, including row 0 (out of vocabulary / missing): the
        categorical columns, then the binned dense columns."""
        bins = [len(self.dense_stats[c]["bin_edges"]) + 2 for c in self.binned]
        return [len(v) + 1 + self.hash_buckets.get(c, 0) for c, v in self.vocabs.items()] + bins

    @property
    def label_columns(self) -> list[str]:
        """The label columns of the tasks (a `train_on` parent's label is among them)."""
        return list(dict.fromkeys(s.label for s in self.labels.values()))

    def needed_columns(self, with_labels: bool = True) -> list[str]:
        """Input columns, then (when `with_labels`) the label columns and the weight column."""
        extra = self.label_columns + ([self.weight] if self.weight else []) if with_labels else []
        return list(dict.fromkeys(self.categorical + self.dense + extra))

    @property
    def missing_indicators(self) -> list[str]:
        return [c for c, s in self.dense_stats.items() if s["indicator"]]

    @property
    def num_dense_inputs(self) -> int:
        return len(self.dense_stats) + len(self.missing_indicators)

    @classmethod
    def fit(cls, table: ColumnSource, columns: ColumnSpec, labels: Mapping[str, LabelSpec]) -> FeatureEncoder:
        """Fit every encoder on the training table. `labels`: task -> its label, in task order."""
        return cls.fit_encode(table, columns, labels)[0]

    @classmethod
    def fit_encode(cls, table: ColumnSource, columns: ColumnSpec,
                   labels: Mapping[str, LabelSpec]) -> tuple[FeatureEncoder, EncodedData]:
        """Fit on the training table and return its encoding too, in one pass over each column
        (the vocabulary comes from one hash pass that also yields the training codes)."""
        weight = [columns.weight] if columns.weight else []
        _require_columns(table, [*columns.categorical, *columns.dense, *(s.column for s in labels.values()), *weight])
        binned = len(columns.dense) if columns.numeric_bins > 0 else 0
        categorical = np.empty((table.num_rows, len(columns.categorical) + binned), dtype=np.int32)

        def fit_column(i: int, column: str) -> tuple[pa.Array, dict[str, float]]:
            vocab, categorical[:, i], counts = fit_encode_ids(table.column(column), column, columns.min_frequency,
                                                              columns.max_vocab, columns.hash_buckets)
            return vocab, counts

        fitted = _in_parallel([partial(fit_column, i, c) for i, c in enumerate(columns.categorical)])
        vocabs = {c: vocab for c, (vocab, _) in zip(columns.categorical, fitted)}
        column_stats = _column_stats(columns.categorical, [counts for _, counts in fitted], vocabs,
                                     categorical[:, :len(columns.categorical)], columns.hash_buckets)
        # Dense columns are decoded and standardized once: statistics and values in one job each.
        fitted_dense = _in_parallel([partial(fit_encode_dense, table.column(c), c, c in columns.log1p,
                                             columns.numeric_bins) for c in columns.dense])
        dense_stats = {c: stats for c, (stats, _) in zip(columns.dense, fitted_dense)}
        standardized = {c: encoded for c, (_, encoded) in zip(columns.dense, fitted_dense)}
        label_stats = {name: fit_label(label_values(table, name, spec, labels), name, spec)
                       for name, spec in labels.items()}
        position = None
        if columns.position is not None:
            _require_columns(table, [columns.position])
            position = (columns.position, fit_encode_ids(table.column(columns.position), columns.position, 1)[0])
        encoder = cls(vocabs=vocabs, dense_stats=dense_stats, labels=label_stats, column_stats=column_stats,
                      weight=columns.weight, hash_buckets={c: columns.hash_buckets for c in columns.categorical},
                      position=position)
        return encoder, encoder._encode_rest(table, categorical, with_labels=True, standardized=standardized)

    def encode(self, table: ColumnSource, with_labels: bool = True) -> EncodedData:
        """Encode a table with the fitted statistics. Labels are all-NaN (and weights None) when
        `with_labels` is False; the position is encoded only with the labels, when the table has
        the column."""
        labels_needed = self.label_columns + ([self.weight] if self.weight else []) if with_labels else []
        _require_columns(table, self.categorical + self.dense + labels_needed)
        categorical = np.empty((table.num_rows, len(self.vocabs) + len(self.binned)), dtype=np.int32)

        def encode_column(i: int, column: str) -> None:
            values = table.column(column)
            codes = encode_ids(values, self.vocabs[column], column)
            buckets = self.hash_buckets.get(column, 0)
            categorical[:, i] = bucket_codes(values, codes, len(self.vocabs[column]), buckets) if buckets else codes

        _in_parallel([partial(encode_column, i, c) for i, c in enumerate(self.vocabs)])
        return self._encode_rest(table, categorical, with_labels)

    def _encode_rest(self, table: ColumnSource, categorical: np.ndarray, with_labels: bool,
                     standardized: dict[str, DenseEncoding] | None = None) -> EncodedData:
        """Dense inputs (and their bin codes), labels and weights, around already encoded categorical
        codes. `standardized` holds dense columns the caller has already encoded (column ->
        (values, missing mask, bin codes))."""
        n = table.num_rows
        dense = np.empty((n, self.num_dense_inputs), dtype=np.float32)
        indicator_at = {c: len(self.dense_stats) + k for k, c in enumerate(self.missing_indicators)}
        bins_at = {c: len(self.vocabs) + k for k, c in enumerate(self.binned)}

        def encode_column(i: int, column: str) -> None:
            if standardized is not None:
                values, missing, codes = standardized[column]
            else:
                values, missing, codes = standardize(table.column(column), column, self.dense_stats[column])
            dense[:, i] = values
            if column in indicator_at:
                dense[:, indicator_at[column]] = missing
            if codes is not None:
                categorical[:, bins_at[column]] = codes

        _in_parallel([partial(encode_column, i, c) for i, c in enumerate(self.dense_stats)])
        labels = np.full((n, len(self.labels)), np.nan, dtype=np.float32)
        weights = None
        if with_labels:
            for i, name in enumerate(self.labels):
                labels[:, i] = self._encode_label(table, name)
            if self.weight:
                weights = torch.from_numpy(read_weights(table.column(self.weight), self.weight))
        position = None
        if with_labels and self.position is not None and self.position[0] in table.column_names:
            column, vocab = self.position
            position = torch.from_numpy(encode_ids(table.column(column), vocab, column))
        return EncodedData(torch.from_numpy(categorical), torch.from_numpy(dense),
                           torch.from_numpy(labels), tuple(self.labels), weights=weights, position=position)

    def _encode_label(self, table: ColumnSource, name: str) -> np.ndarray:
        stats = self.labels[name]
        values = read_label(table.column(stats.label), name, stats.kind, stats.label)
        if stats.train_on is not None:
            parent = self.labels[stats.train_on]
            gate = read_label(table.column(parent.label), stats.train_on, "binary", parent.label)
            values = np.where(gate == 1.0, values, np.nan)
        return encode_label(values, stats)

    def to_original_units(self, task: str, outputs: np.ndarray) -> np.ndarray:
        """Regression: model scale -> the estimate of the mean label in label units (undo
        standardization and transform, with the smearing correction of a log1p target)."""
        return to_label_units(self.labels[task], outputs)

    def to_transformed(self, task: str, outputs: np.ndarray) -> np.ndarray:
        """Regression: model scale -> transformed-target scale (e.g. log1p seconds)."""
        return to_transformed(self.labels[task], outputs)

    def with_smearing(self, factors: Mapping[str, float]) -> FeatureEncoder:
        """A copy whose log1p regression tasks carry the fitted smearing factors."""
        labels = {t: replace(s, smearing=float(factors[t])) if t in factors else s for t, s in self.labels.items()}
        return FeatureEncoder(vocabs=self.vocabs, dense_stats=self.dense_stats, labels=labels,
                              column_stats=self.column_stats, weight=self.weight, hash_buckets=self.hash_buckets,
                              position=self.position)

    def files(self) -> dict[str, bytes]:
        """The encoders as files: file name -> bytes, one Parquet vocabulary per categorical column
        (`vocab_000.parquet`, ...) and `encoders.json`, last. The run directory writes them atomically."""
        out = {f"vocab_{i:03d}.parquet": _parquet_bytes(vocab) for i, vocab in enumerate(self.vocabs.values())}
        meta: dict[str, Any] = {"categorical": self.categorical, "dense": self.dense_stats,
                                "column_stats": self.column_stats, "weight": self.weight,
                                "labels": {name: asdict(stats) for name, stats in self.labels.items()},
                                "position": self.position[0] if self.position is not None else None}
        if self.hash_buckets:
            meta["hash_buckets"] = self.hash_buckets
        if self.position is not None:
            out["position_vocab.parquet"] = _parquet_bytes(self.position[1])
        out["encoders.json"] = json.dumps(meta, indent=1).encode()
        return out

    def save(self, directory: Path) -> list[Path]:
        """Write `files()` into `directory` (each through a temporary name); returns the files written."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in self.files().items():
            tmp = directory / f".{name}.tmp-{os.getpid()}"
            tmp.write_bytes(data)
            os.replace(tmp, directory / name)
            written.append(directory / name)
        return written

    @classmethod
    def load(cls, directory: Path) -> FeatureEncoder:
        """Read and check encoders.json (data/encoders_file.py) and the vocabularies."""
        source = repr(str(directory / "encoders.json"))
        try:
            meta = parse_encoders_file(json.loads((directory / "encoders.json").read_text()), source)
            vocabs = {column: _read_vocab(directory / f"vocab_{i:03d}.parquet", column)
                      for i, column in enumerate(meta.categorical)}
            position = None
            if meta.position is not None:
                position = (meta.position, _read_vocab(directory / "position_vocab.parquet", meta.position))
        except (OSError, ValueError, pa.ArrowInvalid) as err:
            raise ArtifactError(f"encoders in {str(directory)!r} cannot be read: {err}") from None
        labels = {name: LabelStats(**stats.model_dump()) for name, stats in meta.labels.items()}
        dense = {c: stats.model_dump(exclude_none=True) for c, stats in meta.dense.items()}
        return cls(vocabs=vocabs, dense_stats=dense, labels=labels, column_stats=meta.column_stats,
                   weight=meta.weight, hash_buckets=meta.hash_buckets, position=position)


def _parquet_bytes(vocab: pa.Array) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"value": vocab}), sink)
    return bytes(sink.getvalue().to_pybytes())


def _read_vocab(path: Path, column: str) -> pa.Array:
    """One vocabulary: distinct, non-null integer or string ids in a `value` column."""
    vocab = pq.read_table(path).column("value").combine_chunks()
    kind_ok = pa.types.is_integer(vocab.type) or pa.types.is_string(vocab.type) or pa.types.is_large_string(vocab.type)
    if not kind_ok or vocab.null_count or len(pc.unique(vocab)) != len(vocab):
        raise ValueError(f"the vocabulary of {column!r} ({path.name}) must hold distinct, non-null integer or "
                         f"string ids. Got {vocab.type} with {vocab.null_count} null(s)")
    return vocab


def _column_stats(names: tuple[str, ...], counts: list[dict[str, float]], vocabs: dict[str, pa.Array],
                  codes: np.ndarray, hash_buckets: int = 0) -> dict[str, dict[str, float]]:
    """Per categorical column: distinct ids, vocabulary size, the OOV rate of the training rows (ids
    outside the vocabulary, hashed or not, and nulls), and the expected OOV rate of new rows from
    the same distribution: the training OOV rate plus the Good–Turing estimate of the unseen mass,
    ids seen once / rows (Good 1953). Also `train_coverage` (1 − train OOV rate), `exact` (1: the
    counts are exact, as here in memory) and, with hash buckets, `hash_buckets` and
    `hash_collision_rate` (data/hashing.py)."""
    rows = max(codes.shape[0], 1)
    sizes = np.array([len(vocabs[c]) for c in names])
    outside = (codes == 0) | (codes > sizes)
    oov = outside.mean(axis=0) if codes.shape[0] else np.zeros(len(names))
    stats = {}
    for c, count, rate in zip(names, counts, oov):
        stats[c] = {"distinct": count["distinct"], "vocab": len(vocabs[c]), "train_oov_rate": float(rate),
                    "expected_oov_rate": float(min(1.0, rate + count["singletons"] / rows)),
                    "train_coverage": float(1.0 - rate), "exact": 1.0}
        if hash_buckets > 0:
            stats[c].update(hash_buckets=float(hash_buckets), hash_collision_rate=count["hash_collision_rate"])
    return stats


def _require_columns(table: ColumnSource, columns: list[str]) -> None:
    """DataError naming every configured column the table lacks (instead of Arrow's KeyError)."""
    missing = [c for c in dict.fromkeys(columns) if c not in table.column_names]
    if missing:
        raise DataError(f"input table has no column(s) {missing}; it has {table.column_names}")


_POOL: list[ThreadPoolExecutor] = []  # one long-lived pool per process, created on first use


def _in_parallel(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run independent column jobs on a small thread pool (Arrow and NumPy release the GIL). The
    pool lives as long as the process: a server encoding every request must not start threads per call."""
    if len(jobs) < 2 or (os.cpu_count() or 1) < 2:
        return [job() for job in jobs]
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="multikpi-encode"))
    return list(_POOL[0].map(lambda job: job(), jobs))
