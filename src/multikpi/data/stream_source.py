"""The BatchSources of a dataset read in shards (data/streaming.py explains the epoch order):

- `StreamingSource`: intervals streamed through shuffle buffers; memory is the buffers and a few
  record batches, whatever the number of rows.
- `ShardedMemorySource`: a distributed run that keeps its shard in memory (`data.streaming: off`):
  the rank's intervals, in canonical order, each shuffled whole per epoch.

Both implement the BatchSource protocol of data/sources.py and give every rank the same number of
steps; a rank whose intervals are exhausted early gets empty batches (never repeated rows).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from multikpi.data.batches import Batch, batch_at
from multikpi.data.encoders import EncodedData
from multikpi.data.streaming import (
    ChunkReader,
    EpochOrder,
    as_batch,
    concat,
    interval_bounds,
    interval_seed,
    rank_intervals,
    rows_at,
    rows_at_step,
    torch_seed,
)

_DONE = object()


class _Prefetched:
    """An iterator of encoded pieces whose next item is read on a background thread while the
    caller trains (Arrow decoding and the encoders release the GIL)."""

    def __init__(self, pieces: Iterator[EncodedData], pool: ThreadPoolExecutor):
        self.pieces = pieces
        self.pool = pool
        self.future: Future = pool.submit(next, pieces, _DONE)

    def next(self) -> EncodedData | None:
        piece = self.future.result()
        if piece is _DONE:
            return None
        self.future = self.pool.submit(next, self.pieces, _DONE)
        return piece


class _Incoming:
    """The rows of an interval that have not entered its buffer yet, in order."""

    def __init__(self, pieces: _Prefetched):
        self.pieces = pieces
        self.current: EncodedData | None = None
        self.offset = 0

    def take(self, count: int, empty: EncodedData) -> EncodedData:
        parts = []
        while count > 0:
            if self.current is None or self.offset >= self.current.num_rows:
                self.current, self.offset = self.pieces.next(), 0
                if self.current is None:
                    raise RuntimeError("a streamed interval ended before its planned rows (the data changed?)")
            got = min(count, self.current.num_rows - self.offset)
            parts.append(_rows(self.current, self.offset, self.offset + got))
            self.offset += got
            count -= got
        return concat(parts, empty)


def _rows(data: EncodedData, start: int, stop: int) -> EncodedData:
    """Rows [start, stop) of `data`, as views."""
    rows = slice(start, stop)
    return EncodedData(data.categorical[rows], data.dense[rows], data.labels[rows], data.tasks,
                       weights=data.weights[rows] if data.weights is not None else None,
                       position=data.position[rows] if data.position is not None else None)



class ShuffleBuffer:
    """The positions in one interval's shuffle buffer, and what each step does to them. Pure
    integer bookkeeping: replaying it reproduces any step without reading rows.

    start, end: the interval's positions [start, end); capacity: buffer slots; steps: the epoch's steps."""

    def __init__(self, start: int, end: int, capacity: int, steps: int, rng: np.random.Generator):
        self.end = end
        self.rows = end - start
        self.steps = steps
        self.rng = rng
        first = min(capacity, self.rows)
        self.positions = np.arange(start, start + first, dtype=np.int64)
        self.next_position = start + first

    def advance(self, step: int) -> tuple[np.ndarray, int, np.ndarray | None]:
        """(slots drawn at `step`, how many of them were refilled, the mask of slots kept when the
        others were dropped because the interval's rows ran out, else None)."""
        wanted = rows_at_step(self.rows, self.steps, step)
        if wanted == 0:
            return np.zeros(0, dtype=np.int64), 0, None
        slots = self.rng.choice(self.positions.size, size=wanted, replace=False)
        refill = min(wanted, self.end - self.next_position)
        self.positions[slots[:refill]] = np.arange(self.next_position, self.next_position + refill)
        self.next_position += refill
        if refill == wanted:
            return slots, refill, None
        keep = np.ones(self.positions.size, dtype=bool)
        keep[slots[refill:]] = False
        self.positions = self.positions[keep]
        return slots, refill, keep


class _BufferedInterval:
    """One interval's buffer with its rows: `step(k)` -> the rows it gives at step k."""

    def __init__(self, buffer: ShuffleBuffer, slots: EncodedData, incoming: _Incoming, empty: EncodedData):
        self.buffer = buffer
        fields = {"categorical": slots.categorical, "dense": slots.dense, "labels": slots.labels,
                  "weights": slots.weights, "position": slots.position}
        self.slots = {k: v.clone() for k, v in fields.items() if v is not None}
        self.tasks = slots.tasks
        self.incoming = incoming
        self.empty = empty

    def step(self, step: int) -> EncodedData:
        drawn, refill, keep = self.buffer.advance(step)
        if drawn.size == 0:
            return self.empty
        index = torch.from_numpy(drawn)
        picked = {k: v.index_select(0, index) for k, v in self.slots.items()}
        out = EncodedData(picked["categorical"], picked["dense"], picked["labels"], self.tasks,
                          weights=picked.get("weights"), position=picked.get("position"))
        if refill:
            rows = self.incoming.take(refill, self.empty)
            at = index[:refill]
            incoming = {"categorical": rows.categorical, "dense": rows.dense, "labels": rows.labels,
                        "weights": rows.weights, "position": rows.position}
            for key, tensor in self.slots.items():
                value = incoming[key]
                assert value is not None  # every piece of a reader has the same fields
                tensor[at] = value
        if keep is not None:
            mask = torch.from_numpy(keep)
            self.slots = {k: v[mask] for k, v in self.slots.items()}
        return out


class StreamingSource:
    """Training batches streamed from a dataset (data/streaming.py). `chunk_rows` (C,): the training
    rows of each row group (all of them, or the training side of a hash hold-out)."""

    def __init__(self, reader: ChunkReader, chunk_rows: np.ndarray, batch_size: int, seed: int, *,
                 shuffle_buffer: int, shards: int, rank: int = 0, world_size: int = 1):
        self.reader = reader
        self.chunk_rows = np.asarray(chunk_rows, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.shards = shards
        self.intervals = rank_intervals(shards, world_size, rank)

    @property
    def num_rows(self) -> int:
        return int(self.chunk_rows.sum())

    @property
    def steps_per_epoch(self) -> int:
        return max(math.ceil(self.num_rows / self.batch_size), 1)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` after the first `skip` (replayed, then the buffers' rows read)."""
        order = EpochOrder.of(self.chunk_rows, self.seed, epoch)
        bounds = interval_bounds(self.num_rows, self.shards)
        empty = self.reader.empty()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="multikpi-stream")
        try:
            streams = [self._interval(order, bounds, j, epoch, skip, empty, pool) for j in self.intervals]
            for step in range(skip, self.steps_per_epoch):
                yield as_batch(concat([s.step(step) for s in streams], empty))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _buffer(self, order: EpochOrder, bounds: np.ndarray, j: int, epoch: int) -> ShuffleBuffer:
        """Interval j's shuffle buffer at the start of `epoch` (positions only, no rows)."""
        start, end = int(bounds[j]), int(bounds[j + 1])
        per_step = math.ceil((end - start) / self.steps_per_epoch) if end > start else 0
        capacity = max(self.shuffle_buffer // self.shards, per_step, 1)
        rng = np.random.default_rng(interval_seed(self.seed, epoch, j))
        return ShuffleBuffer(start, end, capacity, self.steps_per_epoch, rng)

    def _interval(self, order: EpochOrder, bounds: np.ndarray, j: int, epoch: int, skip: int, empty: EncodedData,
                  pool: ThreadPoolExecutor) -> _BufferedInterval:
        end = int(bounds[j + 1])
        buffer = self._buffer(order, bounds, j, epoch)
        if skip == 0:
            incoming = _Incoming(_Prefetched(self._pieces(order, int(bounds[j]), end), pool))
            slots = incoming.take(buffer.positions.size, empty)
        else:
            for step in range(skip):
                buffer.advance(step)
            slots = rows_at(self.reader, order, buffer.positions)
            incoming = _Incoming(_Prefetched(self._pieces(order, buffer.next_position, end), pool))
        return _BufferedInterval(buffer, slots, incoming, empty)

    def epoch_rows(self, epoch: int) -> Iterator[np.ndarray]:
        """The rows of each batch of `epoch`, as indices of the training rows in canonical order
        (files sorted by path, rows in file order; only the training side of a hold-out counted),
        in the order `epoch` yields them. Bookkeeping only: no row is read."""
        order = EpochOrder.of(self.chunk_rows, self.seed, epoch)
        bounds = interval_bounds(self.num_rows, self.shards)
        first_row = np.concatenate([[0], np.cumsum(self.chunk_rows)])
        buffers = [self._buffer(order, bounds, j, epoch) for j in self.intervals]
        for step in range(self.steps_per_epoch):
            drawn = []
            for buffer in buffers:
                before = buffer.positions.copy()
                slots, _, _ = buffer.advance(step)
                drawn.append(before[slots])
            chunks, offsets = order.locate(np.concatenate(drawn).astype(np.int64))
            yield first_row[chunks] + offsets

    def _pieces(self, order: EpochOrder, start: int, end: int) -> Iterator[EncodedData]:
        for chunk, first, last in order.spans(start, end):
            yield from self.reader.pieces(chunk, first, last)


class ShardedMemorySource:
    """A rank's intervals held in memory: `data` are the training rows at canonical positions
    [first_position, first_position + data.num_rows) of `total_rows`; each of the rank's intervals
    is shuffled whole every epoch (torch.randperm seeded by seed, epoch and interval)."""

    def __init__(self, data: EncodedData, total_rows: int, first_position: int, batch_size: int, seed: int, *,
                 shards: int, rank: int = 0, world_size: int = 1):
        self.data = data
        self.total_rows = total_rows
        self.first_position = first_position
        self.batch_size = batch_size
        self.seed = seed
        self.shards = shards
        self.intervals = rank_intervals(shards, world_size, rank)

    @property
    def num_rows(self) -> int:
        return self.total_rows

    @property
    def steps_per_epoch(self) -> int:
        return max(math.ceil(self.total_rows / self.batch_size), 1)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        bounds = interval_bounds(self.total_rows, self.shards)
        steps = self.steps_per_epoch
        orders = []
        for j in self.intervals:
            rows = int(bounds[j + 1] - bounds[j])
            generator = torch.Generator().manual_seed(torch_seed(self.seed, epoch, j))
            orders.append((rows, torch.randperm(rows, generator=generator) + int(bounds[j]) - self.first_position))
        for step in range(skip, steps):
            parts = [order[step * rows // steps:(step + 1) * rows // steps] for rows, order in orders]
            yield batch_at(self.data, torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64))


def canonical_rows(reader: ChunkReader, chunk_rows: np.ndarray, start: int, end: int) -> EncodedData:
    """The training rows at canonical positions [start, end), encoded (one rank's in-memory shard)."""
    order = EpochOrder.of(np.asarray(chunk_rows, dtype=np.int64), None, 0)
    parts = [piece for chunk, first, last in order.spans(start, end) for piece in reader.pieces(chunk, first, last)]
    return concat(parts, reader.empty())
