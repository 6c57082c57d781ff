"""Streaming batch sources: train on a dataset of any size in memory that does not grow with it.

An epoch reads the training rows (a row group is the unit) in an order drawn from (seed, epoch):

1. The row groups are permuted; the sequence of their training rows is cut into S = `data.shards`
   intervals of equal size (±1 row).
2. Each interval is streamed on its own, through a shuffle buffer of `data.shuffle_buffer` / S
   rows: a step draws rows uniformly without replacement from the buffer and puts the interval's
   next rows into the freed slots (as tf.data's `shuffle`, vectorised per step).
3. Step k of an epoch of K = ceil(N / batch_size) steps takes ⌊(k+1)·n_j/K⌋ − ⌊k·n_j/K⌋ rows from
   interval j (n_j its rows), so every interval ends on the last step and every row is used once.
   A batch is about batch_size rows.

A process of a distributed run of W processes streams the intervals r·S/W … (r+1)·S/W − 1 and
its batch is their part of the step: the union over ranks of step k is the same rows for any W
dividing S, so 1 and W processes train on the same global batches.

Resuming at batch k replays the buffers' choices on row positions only (integers, no I/O), then
reads the rows the buffers held at that point (a few row groups) and continues: exact, and cheap.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from multikpi.data.batches import Batch, rows_of
from multikpi.data.datasets import ParquetDataset
from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.data.split import HashHoldout

_STREAM_TAG = 0x57AE
_ORDER_TAG = 0x0DE5


def interval_seed(seed: int, epoch: int, interval: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, epoch, interval, _STREAM_TAG])


def torch_seed(seed: int, epoch: int, interval: int) -> int:
    """A 63-bit torch seed for one interval's shuffle in one epoch."""
    high, low = interval_seed(seed, epoch, interval).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


def rows_at_step(rows: int, steps: int, step: int) -> int:
    """Rows an interval of `rows` rows gives at `step` (0-based) of `steps`."""
    return (step + 1) * rows // steps - step * rows // steps


def interval_bounds(total: int, shards: int) -> np.ndarray:
    """(S+1,) boundaries of S intervals of equal size (±1) over `total` positions."""
    return np.array([total * j // shards for j in range(shards + 1)], dtype=np.int64)


def rank_intervals(shards: int, world_size: int, rank: int) -> range:
    """The contiguous block of intervals rank `rank` of `world_size` streams."""
    per_rank = shards // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)


@dataclass(frozen=True)
class EpochOrder:
    """The row groups of one epoch in reading order and where their rows start (in positions of the
    epoch's row sequence). `order` (C,) chunk indices; `starts` (C+1,) cumulative rows."""

    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, chunk_rows: np.ndarray, seed: int | None, epoch: int) -> EpochOrder:
        """A seeded permutation of the row groups, or the canonical order when `seed` is None."""
        if seed is None:
            order = np.arange(chunk_rows.size)
        else:
            order = np.random.default_rng([seed, epoch, _ORDER_TAG]).permutation(chunk_rows.size)
        return cls(order, np.concatenate([[0], np.cumsum(chunk_rows[order])]).astype(np.int64))

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row group index, row offset among its kept rows) of each position."""
        slot = np.searchsorted(self.starts, positions, side="right") - 1
        return self.order[slot], positions - self.starts[slot]

    def spans(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(row group index, first kept row, end kept row) covering positions [start, stop)."""
        slot = int(np.searchsorted(self.starts, start, side="right") - 1)
        while start < stop and slot < self.order.size:
            first = start - int(self.starts[slot])
            end = min(stop, int(self.starts[slot + 1])) - int(self.starts[slot])
            if end > first:
                yield int(self.order[slot]), first, end
            start = int(self.starts[slot + 1])
            slot += 1


class ChunkReader:
    """The encoded rows of row groups: the training side (or the held-out side) of a hash hold-out,
    `columns` read, rows encoded by `encoder` and checked by `check` (e.g. ESMM's label rule)."""

    def __init__(self, dataset: ParquetDataset, encoder: FeatureEncoder, holdout: HashHoldout | None = None,
                 held_side: bool = False, check: Callable[[EncodedData], None] | None = None):
        self.dataset = dataset
        self.encoder = encoder
        self.holdout = holdout
        self.held_side = held_side
        self.check = check
        group = [holdout.group] if holdout is not None and holdout.group else []
        position = [encoder.position[0]] if encoder.position is not None else []
        self.columns = list(dict.fromkeys(encoder.needed_columns() + position + group))

    def tables(self, chunk: int, first: int = 0, end: int | None = None) -> Iterator[pa.Table]:
        """Raw kept rows [first, end) of row group `chunk`, as Tables (in record batches)."""
        info = self.dataset.chunks[chunk]
        seen, offset = 0, 0
        for table in self.dataset.read_chunk(info, self.columns):
            rows = np.arange(info.start + offset, info.start + offset + table.num_rows, dtype=np.int64)
            offset += table.num_rows
            if self.holdout is not None:
                keep = self.holdout.held_out(table, rows) == self.held_side
                table = table.filter(pa.array(keep)) if not keep.all() else table
            lo, hi = max(first - seen, 0), table.num_rows if end is None else min(end - seen, table.num_rows)
            seen += table.num_rows
            if hi > lo:
                yield table.slice(lo, hi - lo)
            if end is not None and seen >= end:
                return

    def encode(self, table: pa.Table) -> EncodedData:
        data = self.encoder.encode(table)
        if self.check is not None:
            self.check(data)
        return data

    def pieces(self, chunk: int, first: int = 0, end: int | None = None) -> Iterator[EncodedData]:
        for table in self.tables(chunk, first, end):
            yield self.encode(table)

    def rows(self, chunk: int, offsets: np.ndarray) -> EncodedData:
        """The kept rows `offsets` (sorted, unique) of row group `chunk`, encoded."""
        tables = list(self.tables(chunk, int(offsets[0]), int(offsets[-1]) + 1))
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return self.encode(table.take(pa.array(offsets - offsets[0])))

    def empty(self) -> EncodedData:
        schema = self.dataset.schema
        return self.encode(pa.table({c: pa.array([], type=schema.field(c).type) for c in self.columns}))


def concat(parts: list[EncodedData], empty: EncodedData) -> EncodedData:
    """Rows of several parts, in order (`empty` when there are none)."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return empty
    if len(parts) == 1:
        return parts[0]

    def joined(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        present = [t for t in tensors if t is not None]
        return torch.cat(present) if len(present) == len(tensors) else None

    return EncodedData(torch.cat([p.categorical for p in parts]), torch.cat([p.dense for p in parts]),
                       torch.cat([p.labels for p in parts]), parts[0].tasks, weights=joined([p.weights for p in parts]),
                       position=joined([p.position for p in parts]))


def rows_at(reader: ChunkReader, order: EpochOrder, positions: np.ndarray) -> EncodedData:
    """The rows at `positions` (any order, repeats allowed) of the sequence `order` describes, in
    that order. Each row group holding one of them is read once."""
    if positions.size == 0:
        return reader.empty()
    unique = np.unique(positions)
    chunks, offsets = order.locate(unique)
    read_order = np.lexsort((offsets, chunks))  # rows are read by row group index, then offset
    parts = [reader.rows(int(c), offsets[read_order][chunks[read_order] == c]) for c in np.unique(chunks)]
    rows = concat(parts, reader.empty())
    where = np.empty_like(read_order)
    where[read_order] = np.arange(read_order.size)
    return take(rows, torch.from_numpy(where[np.searchsorted(unique, positions)]))


def take(data: EncodedData, index: torch.Tensor) -> EncodedData:
    """The rows `index` (1-D int64) of `data`."""
    return rows_of(data, index)


def as_batch(data: EncodedData) -> Batch:
    return Batch(data.categorical, data.dense, data.labels, weights=data.weights, position=data.position)
