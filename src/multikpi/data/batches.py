"""Mini-batches taken by index from pre-encoded contiguous tensors.

No DataLoader and no per-row collate: one `index_select` per tensor per batch, which costs well
under a second per million rows (per-row batching was 40% of a peer's epoch)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from multikpi.data.encoders import EncodedData


@dataclass(frozen=True)
class Batch:
    """B rows. categorical (B, F) int32; dense (B, D) float32; labels (B, T) float32, NaN = no
    label; weights (B,) float32 sample weights or None (every row weighs 1); position (B,) int32
    position-vocabulary index, or None (no position tower, or prediction)."""

    categorical: torch.Tensor
    dense: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None = None
    position: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> Batch:
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return tensor.to(device) if tensor is not None else None

        return Batch(self.categorical.to(device), self.dense.to(device), self.labels.to(device),
                     weights=move(self.weights), position=move(self.position))


def batch_at(data: EncodedData, index: torch.Tensor) -> Batch:
    """The rows `index` (1-D int64) of `data`."""
    def take(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return tensor.index_select(0, index) if tensor is not None else None

    return Batch(data.categorical.index_select(0, index), data.dense.index_select(0, index),
                 data.labels.index_select(0, index), weights=take(data.weights), position=take(data.position))


def rows_of(data: EncodedData, index: torch.Tensor) -> EncodedData:
    """The rows `index` (1-D int64) of `data`, as EncodedData."""
    batch = batch_at(data, index)
    return EncodedData(batch.categorical, batch.dense, batch.labels, data.tasks, weights=batch.weights,
                       position=batch.position)


def shuffled_batches(data: EncodedData, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """One epoch in a random order drawn from `generator`; the last batch may be smaller."""
    order = torch.randperm(data.num_rows, generator=generator)
    for index in order.split(batch_size):
        yield batch_at(data, index)


def evenly_spaced_rows(data: EncodedData, max_rows: int) -> EncodedData:
    """At most `max_rows` rows of `data`, evenly spaced (all rows when it has no more)."""
    if data.num_rows <= max_rows:
        return data
    return rows_of(data, torch.linspace(0, data.num_rows - 1, max_rows).round().to(torch.int64))


def ordered_batches(data: EncodedData, batch_size: int) -> Iterator[Batch]:
    """Rows in file order, as contiguous slices (no copy)."""
    for start in range(0, data.num_rows, batch_size):
        rows = slice(start, start + batch_size)
        yield Batch(data.categorical[rows], data.dense[rows], data.labels[rows],
                    weights=data.weights[rows] if data.weights is not None else None,
                    position=data.position[rows] if data.position is not None else None)
