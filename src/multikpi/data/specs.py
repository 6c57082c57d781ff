"""What the data layer needs to know about the columns, as plain values: the encoders take these,
not the run's config (the training recipe builds them from it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ColumnSpec:
    """Input columns. `log1p` names dense columns to log1p before standardizing; ids seen fewer than
    `min_frequency` times in train map to out-of-vocabulary; `weight` is the sample-weight column;
    `numeric_bins` > 0 also gives each dense column a binned categorical input (columns.py);
    `position`: the logged position, read with the labels only (training and evaluation), never at prediction;
    `max_vocab` caps each vocabulary at its most frequent ids; `hash_buckets` > 0 hashes the ids
    outside the vocabulary into that many buckets per column instead of one out-of-vocabulary row."""

    categorical: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    log1p: tuple[str, ...] = ()
    min_frequency: int = 1
    weight: str | None = None
    numeric_bins: int = 0
    position: str | None = None
    max_vocab: int | None = None
    hash_buckets: int = 0


@dataclass(frozen=True)
class LabelSpec:
    """One task's label. kind: "binary" | "regression"; transform: "none" | "log1p" (regression);
    train_on: a binary task whose label must be 1 for this task to have a label; loss: "mse" |
    "poisson" | "tweedie" (regression; the last two model the raw label with a log link); clip:
    regression estimates are clipped to the training label range."""

    kind: str
    column: str
    transform: str = "none"
    train_on: str | None = None
    loss: str = "mse"
    tweedie_power: float = 1.5
    clip: bool = False
