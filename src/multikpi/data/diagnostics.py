"""Warnings about the data, one line each: a categorical column that is nearly unique in train (a
text or row-id column by mistake), and a split whose out-of-vocabulary rate is far above train's."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from multikpi.data.encoders import EncodedData, FeatureEncoder

NEARLY_UNIQUE = 0.9      # distinct ids / rows above which a column looks like an id or free text
MIN_ROWS_FOR_UNIQUE = 1000
OOV_GAP = 0.1            # a split's OOV rate at least this much above the expected one may be flagged


def nearly_unique_columns(encoder: FeatureEncoder, train_rows: int) -> list[str]:
    """Warnings for categorical columns whose distinct values are nearly as many as the training rows."""
    if train_rows < MIN_ROWS_FOR_UNIQUE:
        return []
    return [f"categorical column {column!r} has {int(stats['distinct']):,} distinct values in {train_rows:,} "
            f"training rows ({stats['distinct'] / train_rows:.0%}): is it free text or a row id?"
            for column, stats in encoder.column_stats.items() if stats["distinct"] / train_rows > NEARLY_UNIQUE]


def oov_warnings(encoder: FeatureEncoder, data: EncodedData, split: str) -> list[str]:
    """Warnings for categorical columns of `data` whose out-of-vocabulary rate is far above what new
    rows from the training distribution would have (`expected_oov_rate`, see encoders.py): ids of
    another type or another id space, a new catalogue, ..."""
    warnings = []
    for column, rate in zip(encoder.categorical, data.oov_rates([len(v) for v in encoder.vocabs.values()])):
        stats = encoder.column_stats.get(column, {})
        expected = stats.get("expected_oov_rate", stats.get("train_oov_rate", 0.0))
        # flagged when more than half of the rows expected in vocabulary are not (and by OOV_GAP)
        if rate > expected + max(OOV_GAP, (1.0 - expected) / 2):
            warnings.append(f"categorical column {column!r}: {rate:.1%} of the {split} rows are out of vocabulary "
                            f"(expected from train: {expected:.1%}); are its ids from the same id space as in "
                            f"training?")
    return warnings


def unlabelled_tasks(encoder: FeatureEncoder, data: EncodedData, split: str,
                     missing_columns: Sequence[str] = ()) -> dict[str, str]:
    """task -> why `split` has no labelled row for it (such a task gets no metrics): its label
    column is not in the file, every label is null, or its `train_on` parent's label is never 1."""
    labels = data.labels.numpy()
    reasons = {}
    for column, task in enumerate(data.tasks):
        if not np.isnan(labels[:, column]).all():
            continue
        stats = encoder.labels[task]
        if stats.label in missing_columns:
            reasons[task] = f"{split} has no column {stats.label!r}"
        elif stats.train_on is not None:
            reasons[task] = f"no row of {split} has a label for it where {stats.train_on!r} is 1"
        else:
            reasons[task] = f"every {stats.label!r} label in {split} is null"
    return reasons
