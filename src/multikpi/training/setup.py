"""What the recipe does before the loop: seeding, and reading and encoding the splits."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import torch

from multikpi.config.schema import RunConfig
from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.data.specs import ColumnSpec, LabelSpec
from multikpi.data.tabular import open_columns
from multikpi.models.esmm import check_entire_space_labels


def seed_everything(seed: int, threads: int | None, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; set the torch thread count when given; optionally make torch
    use deterministic algorithms only."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def encoder_specs(config: RunConfig) -> tuple[ColumnSpec, dict[str, LabelSpec]]:
    """The config's input columns and each task's label, as the data layer's plain specs."""
    data = config.data
    columns = ColumnSpec(tuple(data.categorical), tuple(data.dense), tuple(data.log1p), data.min_frequency,
                         data.position)
    labels = {name: LabelSpec(task.kind, task.label, task.transform, task.train_on)
              for name, task in config.tasks.items()}
    return columns, labels


def needed_columns(config: RunConfig, with_labels: bool = True) -> list[str]:
    """The input columns of `config`, then (when `with_labels`) the label columns."""
    columns = list(config.data.categorical) + list(config.data.dense)
    if with_labels:
        columns += [t.label for t in config.tasks.values()] + ([config.data.position] if config.data.position else [])
    return list(dict.fromkeys(columns))


def load_splits(config: RunConfig) -> tuple[FeatureEncoder, dict[str, EncodedData]]:
    """Read train (and valid/test when configured), fit the encoders on train, encode every split."""
    columns = needed_columns(config)
    train_table = open_columns(config.data.train, columns)
    encoder, train_data = FeatureEncoder.fit_encode(train_table, *encoder_specs(config))
    splits = {"train": train_data}
    del train_table
    for name, path in (("valid", config.data.valid), ("test", config.data.test)):
        if path is not None:
            splits[name] = encoder.encode(open_columns(path, columns))
    esmm = config.model.esmm
    if config.model.arch == "esmm" and esmm is not None:  # a data value check: conversions must follow clicks
        for name, data in splits.items():
            check_entire_space_labels(data.labels.numpy(), list(data.tasks), esmm.ctr, esmm.ctcvr, name)
    # The raw columns are gone; hand the Arrow allocator's cached pages back to the OS (about 150 MB
    # of resident memory on the 1M-row benchmark) before the model and optimizer state arrive.
    pa.default_memory_pool().release_unused()
    return encoder, splits
