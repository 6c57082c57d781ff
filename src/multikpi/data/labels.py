"""Labels and sample weights: read, checked, fitted on train, encoded to the model's scale.

Binary labels must be 0/1; the model scale is the logit. Regression labels with `loss: mse` get
the configured transform and are standardized with train statistics (the model learns on that
scale); with `loss: poisson | tweedie` the model output is the log of the mean of the raw label.
A null label is NaN in the encoded array: no loss and no metric. With `train_on: parent`, the label
is also NaN where the parent's label is not 1.

Back in label units, an mse prediction on a `log1p` target is `expm1` of the predicted mean of
log1p(y): the mean of the log, not the log of the mean, so it underestimates E[y]. The smearing
estimate of Duan (1983) corrects it: E[y | x] = E[exp(log1p y) | x] − 1 ≈ exp(ẑ(x))·S − 1 with,
in its ratio form, S = Σ_i w_i·(1 + y_i) / Σ_i w_i·exp(ẑ(x_i)), so that the mean estimate equals the
mean label on the rows it is fitted on (`training/centering.smearing_factor`, after training;
`LabelStats.smearing`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa

from multikpi.data.specs import LabelSpec
from multikpi.errors import DataError


class ColumnSource(Protocol):
    """What the encoders read: a pyarrow Table, or a Parquet file decoded one column at a time."""

    num_rows: int
    column_names: list[str]

    def column(self, name: str) -> pa.ChunkedArray: ...


@dataclass(frozen=True)
class LabelStats:
    """One task's fitted label statistics.

    mean/std: mse regression: of the transformed target; poisson/tweedie: mean of the raw label, 1;
    binary: base rate, 1. smearing: the factor S of the module docstring (1 until fitted).
    clip: regression with `tasks.<t>.clip`: the (min, max) of the training labels, to which the
    estimates in label units are clipped; None = not clipped."""

    kind: str
    label: str
    transform: str
    mean: float
    std: float
    train_on: str | None
    loss: str = "mse"
    tweedie_power: float = 1.5
    smearing: float = 1.0
    clip: tuple[float, float] | None = None

    @property
    def log_link(self) -> bool:
        return self.kind == "regression" and self.loss in ("poisson", "tweedie")


def read_label(column: pa.ChunkedArray, task: str, kind: str, label: str) -> np.ndarray:
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
            raise DataError(binary_label_message(values, bad, task, label))
    return values


def binary_label_message(values: np.ndarray, bad: np.ndarray, task: str, label: str) -> str:
    """Every distinct offending value (the first ten and a count), the rows, and a mapping hint."""
    offending = np.unique(values[bad])
    shown = ", ".join(f"{v:g}" for v in offending[:10])
    more = f" and {offending.size - 10} more distinct values" if offending.size > 10 else ""
    present = np.unique(values[~np.isnan(values)])
    if present.size == 2:
        hint = f"map {present[0]:g}/{present[1]:g} to 0/1"
    elif present.size <= 20 and np.all(present == np.round(present)) and present.max() - present.min() >= 3:
        hint = (f"it looks like a rating ({present.min():g} to {present.max():g}): make a 0/1 column with a "
                f"threshold (e.g. >= {np.ceil(np.median(present)):g}), or use `kind: regression`")
    else:
        hint = "make a 0/1 column, or use `kind: regression`"
    return (f"label column {label!r} of binary task {task!r} must be 0 or 1 (or null). Got {shown}{more} "
            f"in {int(bad.sum()):,} of {values.size:,} rows; {hint}")


def label_values(table: ColumnSource, name: str, spec: LabelSpec, labels: Mapping[str, LabelSpec]) -> np.ndarray:
    """The task's label values, NaN where null or where its `train_on` parent's label is not 1."""
    values = read_label(table.column(spec.column), name, spec.kind, spec.column)
    if spec.train_on is not None:
        parent = labels[spec.train_on]
        gate = read_label(table.column(parent.column), spec.train_on, "binary", parent.column)
        values = np.where(gate == 1.0, values, np.nan)
    return values


def transform(values: np.ndarray, name: str) -> np.ndarray:
    if name == "log1p":
        return np.log1p(np.maximum(values, 0.0))
    return values


def fit_label(values: np.ndarray, name: str, spec: LabelSpec) -> LabelStats:
    """Statistics of the training labels `values` (NaN = no label) of task `name`."""
    present = values[~np.isnan(values)]
    if present.size == 0:
        raise DataError(f"task {name!r} has no labelled rows in the training data (column {spec.column!r} is all null)")
    if spec.kind == "binary":
        return LabelStats("binary", spec.column, "none", float(present.mean()), 1.0, spec.train_on)
    if spec.loss in ("poisson", "tweedie"):
        if present.min() < 0:
            raise DataError(f"label column {spec.column!r} of task {name!r} must be >= 0 for `loss: {spec.loss}`. "
                            f"Got a minimum of {present.min():g}")
        return LabelStats("regression", spec.column, "none", float(present.mean()), 1.0, spec.train_on,
                          spec.loss, spec.tweedie_power, clip=_label_range(present, spec))
    transformed = transform(present, spec.transform)
    mean, std = float(transformed.mean()), float(transformed.std())
    if not (np.isfinite(mean) and np.isfinite(std)):
        raise DataError(f"label column {spec.column!r} of task {name!r}: its mean or std overflows float64 "
                        f"(values up to {np.abs(present).max():g}); rescale it or use transform: log1p")
    return LabelStats("regression", spec.column, spec.transform, mean, std if std > 0 else 1.0, spec.train_on,
                      clip=_label_range(present, spec))


def _label_range(present: np.ndarray, spec: LabelSpec) -> tuple[float, float] | None:
    return (float(present.min()), float(present.max())) if spec.clip else None


def encode_label(values: np.ndarray, stats: LabelStats) -> np.ndarray:
    """Label values -> the model's target scale (NaN stays NaN)."""
    if stats.kind == "binary" or stats.log_link:
        return values
    return (transform(values, stats.transform) - stats.mean) / stats.std


def to_transformed(stats: LabelStats, outputs: np.ndarray) -> np.ndarray:
    """Regression outputs on the model scale -> the transformed-target scale (log1p units for a
    log1p task; label units for transform none and for log-link losses)."""
    if stats.log_link:
        return np.exp(outputs)
    return outputs * stats.std + stats.mean


def to_label_units(stats: LabelStats, outputs: np.ndarray, smeared: bool = True) -> np.ndarray:
    """Regression outputs on the model scale -> estimates of the mean label, in label units;
    clipped to the training label range when the task has `clip: true` (`stats.clip`)."""
    transformed = to_transformed(stats, outputs)
    if stats.transform != "log1p":
        units = transformed
    elif smeared:
        units = np.exp(transformed) * stats.smearing - 1.0
    else:
        units = np.expm1(transformed)
    if smeared and stats.clip is not None:
        units = np.clip(units, stats.clip[0], stats.clip[1])
    return units


def read_weights(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """float32 sample weights: numeric, finite, >= 0, not null, and not all 0."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise DataError(f"weight column {name!r} must be numeric. Got type {column.type}")
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        raise DataError(f"weight column {name!r} must hold finite values >= 0 (no nulls). Got {int(bad.sum())} "
                        f"bad row(s), e.g. {values[bad][0]!r}")
    if not values.any():
        raise DataError(f"weight column {name!r} is 0 on every row")
    return values.astype(np.float32)


def decode_label(encoded: np.ndarray, stats: LabelStats) -> np.ndarray:
    """The inverse of `encode_label`: encoded regression labels -> label units (no smearing: a
    label is a value, not an estimate of a mean). log1p clips negative labels to 0 on the way in."""
    if stats.kind == "binary" or stats.log_link:
        return encoded
    return to_label_units(stats, encoded, smeared=False)
