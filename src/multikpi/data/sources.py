"""Batch sources: the seam between the data and the training loop.

A source knows how many steps an epoch has and yields the batches of epoch `e`, optionally skipping
the first `skip` of them (resuming part-way). The order of every epoch is a function of the seed
and the epoch number alone, so a source needs no state in a checkpoint: resuming epoch `e` at batch
`k` replays exactly the batches an uninterrupted run would have drawn.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from multikpi.data.batches import Batch, batch_at
from multikpi.data.encoders import EncodedData


class BatchSource(Protocol):
    """Training batches, one epoch at a time."""

    @property
    def num_rows(self) -> int: ...

    @property
    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` (1-based) after the first `skip`."""
        ...


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for one epoch's shuffle, derived from the run seed and the epoch number."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32).astype(np.uint64)
               .dot(np.array([1 << 31, 1], dtype=np.uint64)))


class InMemorySource:
    """Pre-encoded tensors, shuffled per epoch: one `index_select` per tensor per batch (no
    DataLoader and no per-row collate, which was 40% of a peer's epoch). The last batch may be smaller."""

    def __init__(self, data: EncodedData, batch_size: int, seed: int):
        self.data = data
        self.batch_size = batch_size
        self.seed = seed

    @property
    def num_rows(self) -> int:
        return self.data.num_rows

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.data.num_rows / self.batch_size)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(self.data.num_rows, generator=generator)
        for index in order.split(self.batch_size)[skip:]:
            yield batch_at(self.data, index)
