"""What the recipe does before the loop: seeding, and reading and encoding the splits."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import pyarrow as pa
import torch

from multikpi.config.schema import NUMERIC_BINS_AUTO, NUMERIC_BINS_AUTO_ROWS, RunConfig
from multikpi.data.datasets import open_source
from multikpi.data.encoders import ColumnSource, EncodedData, FeatureEncoder
from multikpi.data.specs import ColumnSpec, LabelSpec
from multikpi.data.split import RowSubset, group_values, holdout_rows
from multikpi.models.esmm import check_entire_space_labels

logger = logging.getLogger("multikpi")


def seed_everything(seed: int, threads: int | None, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; set the torch thread count when given; optionally make torch
    use deterministic algorithms only."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    # Only when it changes: the call imports torch._dynamo and sympy (1.1 s and 70 MB of resident
    # memory, measured on the feed benchmark), which a default run never needs.
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)
    if deterministic and "STRICT" not in os.environ.get("MKL_CBWR", "").upper():
        logger.warning("warning: train.deterministic: MKL's matrix products are bitwise reproducible across "
                       "processes only with MKL_CBWR=AUTO,STRICT set before torch loads (the multikpi command "
                       "sets it); without it a resumed run may differ from an uninterrupted one in the last bit")


def numeric_bins(config: RunConfig, train_rows: int | None) -> int:
    """`data.numeric_bins`, with auto resolved by the training rows (128 up to 500k rows, else 0)."""
    bins = config.data.numeric_bins
    if bins != "auto":
        return bins
    return NUMERIC_BINS_AUTO if train_rows is None or train_rows <= NUMERIC_BINS_AUTO_ROWS else 0


def encoder_specs(config: RunConfig, train_rows: int | None = None) -> tuple[ColumnSpec, dict[str, LabelSpec]]:
    """The config's input columns and each task's label, as the data layer's plain specs;
    `train_rows` resolves `data.numeric_bins: auto` (None: as for small data)."""
    data = config.data
    columns = ColumnSpec(tuple(data.categorical), tuple(data.dense), tuple(data.log1p), data.min_frequency,
                         data.weight, numeric_bins(config, train_rows), data.position, max_vocab=data.max_vocab,
                         hash_buckets=data.hash_buckets)
    labels = {name: LabelSpec(task.kind, task.label, task.transform, task.train_on, task.loss, task.tweedie_power,
                              task.clip)
              for name, task in config.tasks.items()}
    return columns, labels


def needed_columns(config: RunConfig, with_labels: bool = True) -> list[str]:
    """The input columns of `config`, then (when `with_labels`) the label columns."""
    columns = list(config.data.categorical) + list(config.data.dense)
    if with_labels:
        columns += [t.label for t in config.tasks.values()]
        columns += [c for c in (config.data.weight, config.data.position) if c]
    return list(dict.fromkeys(columns))


def load_splits(config: RunConfig) -> tuple[FeatureEncoder, dict[str, EncodedData]]:
    """Read train (and valid/test when configured), fit the encoders on train, encode every split.
    Without `data.valid`, `data.valid_fraction` of the training rows (of its groups, with
    `data.group`) is held out as the valid split, before the encoders are fitted."""
    data = config.data
    held_out = data.valid is None and data.valid_fraction > 0
    columns = needed_columns(config) + ([data.group] if held_out and data.group else [])
    train_table: ColumnSource = open_source(data.train, list(dict.fromkeys(columns)))
    valid_table: ColumnSource | None = None
    if held_out:
        groups = group_values(train_table, data.group) if data.group else None
        train_rows, valid_rows = holdout_rows(train_table.num_rows, data.valid_fraction, config.train.seed, groups)
        train_table, valid_table = RowSubset(train_table, train_rows), RowSubset(train_table, valid_rows)
        logger.info("data: no data.valid; held out %d of %d training rows%s as the valid split (data.valid_fraction "
                    "%g, seed %d)", valid_rows.size, train_rows.size + valid_rows.size,
                    f" by {data.group!r}" if data.group else "", data.valid_fraction, config.train.seed)
    encoder, train_data = FeatureEncoder.fit_encode(train_table, *encoder_specs(config, train_table.num_rows))
    splits = {"train": train_data}
    if valid_table is not None:
        splits["valid"] = encoder.encode(valid_table)
    del train_table, valid_table
    for name, path in (("valid", data.valid), ("test", data.test)):
        if path is not None:
            splits[name] = encoder.encode(open_source(path, needed_columns(config)))
    esmm = config.model.esmm
    if config.model.arch == "esmm" and esmm is not None:  # a data value check: conversions must follow clicks
        for name, encoded in splits.items():
            check_entire_space_labels(encoded.labels.numpy(), list(encoded.tasks), esmm.ctr, esmm.ctcvr, name)
    # The raw columns are gone; hand the Arrow allocator's cached pages back to the OS (about 150 MB
    # of resident memory on the 1M-row benchmark) before the model and optimizer state arrive.
    pa.default_memory_pool().release_unused()
    return encoder, splits
