"""Feature and label encoders, fit on the training split only and saved with the model.

Categorical: a vocabulary per column (ids seen at least `min_frequency` times in train).
Index 0 is reserved for out-of-vocabulary: unseen, rare and null ids all map to it.

Dense: optional log1p (negative values clipped to 0 first), then standardized with the train
mean and std. A column that had NaN in train gets a 0/1 missing-indicator input; NaN is then
imputed with 0, the train mean after standardization.

Position (optional, `ColumnSpec.position`): a vocabulary of the logged positions, like a
categorical column, read only together with the labels (training, evaluation and calibration):
it feeds the model's position tower, which prediction never runs. Index 1 is the smallest
position seen in train, the tower's reference.

Labels: binary labels must be 0/1; regression labels get the configured transform and are
standardized with train statistics (the model learns on that scale; predictions are mapped back
to original units). A null label is NaN in the encoded array: no loss and no metric. With
`train_on: parent`, the label is also NaN where the parent's label is not 1.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from multikpi.data.specs import ColumnSpec, LabelSpec
from multikpi.errors import ArtifactError, DataError


class ColumnSource(Protocol):
    """What the encoders read: a pyarrow Table, or a Parquet file decoded one column at a time."""

    num_rows: int
    column_names: list[str]

    def column(self, name: str) -> pa.ChunkedArray: ...


@dataclass(frozen=True)
class EncodedData:
    """Model-ready tensors for N rows.

    categorical: (N, F) int32, per-column vocabulary index, 0 = out of vocabulary.
    dense:       (N, D) float32, standardized numerics then missing indicators.
    labels:      (N, T) float32 in the order of `tasks`; NaN where the task has no label.
    position:    (N,) int32 index in the position vocabulary (0 = unseen), or None without one.
    """

    categorical: torch.Tensor
    dense: torch.Tensor
    labels: torch.Tensor
    tasks: tuple[str, ...]
    position: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return int(self.categorical.shape[0])


@dataclass(frozen=True)
class LabelStats:
    kind: str
    label: str
    transform: str
    mean: float  # regression: mean of the transformed target; binary: base rate
    std: float   # regression: std of the transformed target; binary: 1
    train_on: str | None


class FeatureEncoder:
    """Fitted encoders of the input columns and labels. Use `fit`, then `encode`; `save`/`load` round-trip."""

    def __init__(self, *, vocabs: dict[str, pa.Array], dense_stats: dict[str, dict[str, Any]],
                 labels: dict[str, LabelStats], position: tuple[str, pa.Array] | None = None):
        self.vocabs = vocabs
        self.dense_stats = dense_stats
        self.labels = labels
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
    def vocab_sizes(self) -> list[int]:
        """Rows of each column's embedding table, including the out-of-vocabulary row 0."""
        return [len(v) + 1 for v in self.vocabs.values()]

    @property
    def label_columns(self) -> list[str]:
        """The label columns of the tasks (a `train_on` parent's label is among them)."""
        return list(dict.fromkeys(s.label for s in self.labels.values()))

    def needed_columns(self, with_labels: bool = True) -> list[str]:
        """Input columns, then the label columns when `with_labels`."""
        columns = self.categorical + self.dense + (self.label_columns if with_labels else [])
        return list(dict.fromkeys(columns))

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
        data = columns
        _require_columns(table, [*data.categorical, *data.dense, *(s.column for s in labels.values())])
        categorical = np.empty((table.num_rows, len(data.categorical)), dtype=np.int32)

        def fit_column(i: int, column: str) -> pa.Array:
            vocab, categorical[:, i] = _fit_encode_ids(table.column(column), column, data.min_frequency)
            return vocab

        fitted = _in_parallel([partial(fit_column, i, c) for i, c in enumerate(data.categorical)])
        vocabs = dict(zip(data.categorical, fitted))
        # Dense columns are decoded and standardized once: statistics and values in one job each.
        fitted_dense = _in_parallel([partial(_fit_encode_dense, table.column(c), c, c in data.log1p)
                                     for c in data.dense])
        dense_stats = {c: stats for c, (stats, _, _) in zip(data.dense, fitted_dense)}
        standardized = {c: (values, missing) for c, (_, values, missing) in zip(data.dense, fitted_dense)}
        label_stats = {name: _fit_label(_label_values(table, name, spec, labels), name, spec)
                       for name, spec in labels.items()}
        position = None
        if data.position is not None:
            _require_columns(table, [data.position])
            position = (data.position, _fit_encode_ids(table.column(data.position), data.position, 1)[0])
        encoder = cls(vocabs=vocabs, dense_stats=dense_stats, labels=label_stats, position=position)
        return encoder, encoder._encode_rest(table, categorical, with_labels=True, standardized=standardized)

    def encode(self, table: ColumnSource, with_labels: bool = True) -> EncodedData:
        """Encode a table with the fitted statistics. Labels are all-NaN when `with_labels` is False;
        the position is encoded only with the labels, when the table has the column."""
        labels_needed = [s.label for s in self.labels.values()] if with_labels else []
        _require_columns(table, self.categorical + self.dense + labels_needed)
        categorical = np.empty((table.num_rows, len(self.vocabs)), dtype=np.int32)

        def encode_column(i: int, column: str) -> None:
            categorical[:, i] = _encode_ids(table.column(column), self.vocabs[column], column)

        _in_parallel([partial(encode_column, i, c) for i, c in enumerate(self.vocabs)])
        return self._encode_rest(table, categorical, with_labels)

    def _encode_rest(self, table: ColumnSource, categorical: np.ndarray, with_labels: bool,
                     standardized: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> EncodedData:
        """Dense inputs and labels, around already encoded categorical codes. `standardized` holds
        dense columns the caller has already standardized: column -> (values, missing mask)."""
        n = table.num_rows
        dense = np.empty((n, self.num_dense_inputs), dtype=np.float32)
        indicator_at = {c: len(self.dense_stats) + k for k, c in enumerate(self.missing_indicators)}

        def encode_column(i: int, column: str) -> None:
            if standardized is not None:
                values, missing = standardized[column]
            else:
                values, missing = _standardize(table.column(column), column, self.dense_stats[column])
            dense[:, i] = values
            if column in indicator_at:
                dense[:, indicator_at[column]] = missing

        _in_parallel([partial(encode_column, i, c) for i, c in enumerate(self.dense_stats)])
        labels = np.full((n, len(self.labels)), np.nan, dtype=np.float32)
        if with_labels:
            for i, name in enumerate(self.labels):
                labels[:, i] = self._encode_label(table, name)
        position = None
        if with_labels and self.position is not None and self.position[0] in table.column_names:
            column, vocab = self.position
            position = torch.from_numpy(_encode_ids(table.column(column), vocab, column))
        return EncodedData(torch.from_numpy(categorical), torch.from_numpy(dense),
                           torch.from_numpy(labels), tuple(self.labels), position)

    def _encode_label(self, table: ColumnSource, name: str) -> np.ndarray:
        stats = self.labels[name]
        values = _read_label(table.column(stats.label), name, stats.kind, stats.label)
        if stats.train_on is not None:
            parent = self.labels[stats.train_on]
            gate = _read_label(table.column(parent.label), stats.train_on, "binary", parent.label)
            values = np.where(gate == 1.0, values, np.nan)
        if stats.kind == "binary":
            return values
        return (_transform(values, stats.transform) - stats.mean) / stats.std

    def to_original_units(self, task: str, standardized: np.ndarray) -> np.ndarray:
        """Regression: model scale -> label units (undo standardization and transform)."""
        stats = self.labels[task]
        transformed = standardized * stats.std + stats.mean
        return np.expm1(transformed) if stats.transform == "log1p" else transformed

    def to_transformed(self, task: str, standardized: np.ndarray) -> np.ndarray:
        """Regression: model scale -> transformed-target scale (e.g. log1p seconds)."""
        stats = self.labels[task]
        return standardized * stats.std + stats.mean

    def save(self, directory: Path) -> list[Path]:
        """Write encoders.json plus one Parquet file per vocabulary; returns the files written."""
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for i, vocab in enumerate(self.vocabs.values()):
            path = directory / f"vocab_{i:03d}.parquet"
            pq.write_table(pa.table({"value": vocab}), path)
            files.append(path)
        meta = {
            "categorical": self.categorical,
            "dense": self.dense_stats,
            "labels": {name: vars(stats) for name, stats in self.labels.items()},
        }
        if self.position is not None:
            path = directory / "position_vocab.parquet"
            pq.write_table(pa.table({"value": self.position[1]}), path)
            files.append(path)
            meta["position"] = self.position[0]
        path = directory / "encoders.json"
        path.write_text(json.dumps(meta, indent=1))
        return files + [path]

    @classmethod
    def load(cls, directory: Path) -> FeatureEncoder:
        try:
            meta = json.loads((directory / "encoders.json").read_text())
            vocabs = {
                column: pq.read_table(directory / f"vocab_{i:03d}.parquet").column("value").combine_chunks()
                for i, column in enumerate(meta["categorical"])
            }
            labels = {name: LabelStats(**stats) for name, stats in meta["labels"].items()}
            position = None
            if meta.get("position") is not None:
                vocab = pq.read_table(directory / "position_vocab.parquet").column("value").combine_chunks()
                position = (meta["position"], vocab)
        except (OSError, KeyError, TypeError, ValueError, pa.ArrowInvalid) as err:
            raise ArtifactError(f"encoders in {str(directory)!r} cannot be read: {err}") from None
        return cls(vocabs=vocabs, dense_stats=meta["dense"], labels=labels, position=position)


def _require_columns(table: ColumnSource, columns: list[str]) -> None:
    """DataError naming every configured column the table lacks (instead of Arrow's KeyError)."""
    missing = [c for c in dict.fromkeys(columns) if c not in table.column_names]
    if missing:
        raise DataError(f"input table has no column(s) {missing}; it has {table.column_names}")


def _check_id_type(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    if not (pa.types.is_integer(column.type) or pa.types.is_string(column.type)
            or pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type)):
        raise DataError(f"categorical column {name!r} must hold integer or string ids. Got type {column.type}")
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column


def _fit_encode_ids(column: pa.ChunkedArray, name: str, min_frequency: int) -> tuple[pa.Array, np.ndarray]:
    """(vocabulary, codes): the sorted distinct non-null values seen at least `min_frequency`
    times, and each row's index in it + 1 (0 for null and rare ids)."""
    column = _check_id_type(column, name)
    encoded = pc.dictionary_encode(column.combine_chunks())
    distinct = encoded.dictionary
    codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int32) + 1
    keep = np.bincount(codes, minlength=len(distinct) + 1)[1:] >= min_frequency
    order = pc.sort_indices(distinct).to_numpy()
    kept = order[keep[order]]
    remap = np.zeros(len(distinct) + 1, dtype=np.int32)
    remap[kept + 1] = np.arange(1, len(kept) + 1)
    return distinct.take(pa.array(kept)), remap[codes]


_POOL: list[ThreadPoolExecutor] = []  # one long-lived pool per process, created on first use


def _in_parallel(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run independent column jobs on a small thread pool (Arrow and NumPy release the GIL). The
    pool lives as long as the process: a server encoding every request must not start threads per call."""
    if len(jobs) < 2 or (os.cpu_count() or 1) < 2:
        return [job() for job in jobs]
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="multikpi-encode"))
    return list(_POOL[0].map(lambda job: job(), jobs))


def _encode_ids(column: pa.ChunkedArray, vocab: pa.Array, name: str) -> np.ndarray:
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


def _fit_encode_dense(column: pa.ChunkedArray, name: str, log1p: bool) -> tuple[dict, np.ndarray, np.ndarray]:
    """(statistics, standardized values with NaN -> 0, missing mask) of one training column."""
    values = _dense_values(column, name, log1p)
    missing = np.isnan(values)
    if missing.all():
        raise DataError(f"dense column {name!r} has no values in the training data (all null)")
    mean = float(np.nanmean(values))
    std = float(np.nanstd(values))
    stats = {"mean": mean, "std": std if std > 0 else 1.0, "log1p": log1p, "indicator": bool(missing.any())}
    return stats, _scale(values, missing, stats).astype(np.float32), missing  # float32: held until assembled


def _standardize(column: pa.ChunkedArray, name: str, stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """(standardized values with NaN -> 0, missing mask) with fitted statistics."""
    values = _dense_values(column, name, stats["log1p"])
    missing = np.isnan(values)
    return _scale(values, missing, stats), missing


def _scale(values: np.ndarray, missing: np.ndarray, stats: dict) -> np.ndarray:
    values -= stats["mean"]
    values /= stats["std"]
    values[missing] = 0.0
    return values


def _read_label(column: pa.ChunkedArray, task: str, kind: str, label: str) -> np.ndarray:
    """float64 label values, NaN for null. Binary labels must be 0 or 1."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
            or pa.types.is_boolean(column.type) or pa.types.is_null(column.type)):
        raise DataError(f"label column {label!r} of task {task!r} must be numeric. Got type {column.type}")
    values = column.cast(pa.float64()).to_numpy()
    if np.isinf(values).any():
        raise DataError(f"label column {label!r} of task {task!r} must be finite or null. Got infinite values")
    if kind == "binary":
        bad = ~np.isnan(values) & (values != 0.0) & (values != 1.0)
        if bad.any():
            examples = sorted(set(values[bad].tolist()))[:3]
            raise DataError(f"label column {label!r} of binary task {task!r} must be 0 or 1. Got {examples}")
    return values


def _label_values(table: ColumnSource, name: str, task: LabelSpec, labels: Mapping[str, LabelSpec]) -> np.ndarray:
    values = _read_label(table.column(task.column), name, task.kind, task.column)
    if task.train_on is not None:
        parent = labels[task.train_on]
        gate = _read_label(table.column(parent.column), task.train_on, "binary", parent.column)
        values = np.where(gate == 1.0, values, np.nan)
    return values


def _transform(values: np.ndarray, transform: str) -> np.ndarray:
    if transform == "log1p":
        return np.log1p(np.maximum(values, 0.0))
    return values


def _fit_label(values: np.ndarray, name: str, task: LabelSpec) -> LabelStats:
    present = values[~np.isnan(values)]
    if present.size == 0:
        raise DataError(f"task {name!r} has no labelled rows in the training data (column {task.column!r} is all null)")
    if task.kind == "binary":
        return LabelStats("binary", task.column, "none", float(present.mean()), 1.0, task.train_on)
    transformed = _transform(present, task.transform)
    std = float(transformed.std())
    return LabelStats("regression", task.column, task.transform, float(transformed.mean()),
                      std if std > 0 else 1.0, task.train_on)
