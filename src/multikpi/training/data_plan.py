"""The recipe's data: the encoders, the training BatchSource, the splits the final phase reads, and
how each split is evaluated. Three ways, chosen by `data.streaming` and the number of processes:

- in memory, one process (the default for data that fits): every split read and encoded whole
  (training/setup.py `load_splits`), an InMemorySource over train; unchanged from before;
- streamed, one process: the encoders fitted in one pass (data/stream_fit.py), train streamed
  (data/stream_source.py), valid/test kept in memory up to `data.eval_sample_rows` rows and
  evaluated from their files beyond;
- several processes (torchrun): as streamed, with the fit and every evaluation split between the
  ranks and merged; `data.streaming: off` keeps each rank's shard in memory instead of streaming it.

Without `data.valid`, the in-memory way holds out an exact share of the rows (data/split.py); the
other two hold out by hash of the group (or of the row number), `HashHoldout`, which needs no
second pass and gives each row the same side in every reader.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from multikpi.config.schema import RunConfig
from multikpi.data.datasets import ParquetDataset, footer_bytes, is_single_local_file
from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.data.sources import BatchSource, InMemorySource
from multikpi.data.split import HashHoldout
from multikpi.data.stream_fit import SamplePlan, chunk_rows, finish, fit_chunks, held_rows, split_chunks
from multikpi.data.stream_source import ShardedMemorySource, StreamingSource, canonical_rows
from multikpi.data.streaming import ChunkReader, EpochOrder, interval_bounds, rank_intervals, rows_at
from multikpi.data.tabular import file_format, open_columns
from multikpi.errors import DataError
from multikpi.eval.evaluate import RowsDone, evaluate_split
from multikpi.eval.streamed import accumulate, merge_states, metrics_state
from multikpi.models.esmm import check_entire_space_labels
from multikpi.models.multitask import MultiTaskModel
from multikpi.training.distributed import DistContext, check_shards
from multikpi.training.memory import available_bytes
from multikpi.training.selection import auto_batch_size
from multikpi.training.setup import encoder_specs, load_splits, needed_columns

logger = logging.getLogger("multikpi")
MEMORY_SHARE = 0.5  # streaming: auto streams when the in-memory path would need more of MemAvailable


@dataclass
class EvalSplit:
    """A split to evaluate: `sample` (N ≤ eval_sample_rows rows in memory; on rank 0 only under
    DDP), `complete` when it is the whole split; `reader` and `chunk_rows` stream the whole split."""

    rows: int
    sample: EncodedData | None = None
    complete: bool = True
    reader: ChunkReader | None = None
    chunk_rows: np.ndarray | None = None


@dataclass
class TrainingData:
    """What the recipe trains on and evaluates. `splits`: split -> the rows the final phase reads
    (whole splits in memory; samples when streamed; on rank 0 only under DDP)."""

    encoder: FeatureEncoder
    source: BatchSource
    batch_size: int
    evals: dict[str, EvalSplit]
    splits: dict[str, EncodedData] = field(default_factory=dict)
    mode: str = "memory"

    @property
    def rows(self) -> dict[str, int]:
        return {name: split.rows for name, split in self.evals.items()}


def load_training_data(config: RunConfig, context: DistContext) -> TrainingData:
    """Read, fit and encode as `data.streaming` and the number of processes say (module docstring)."""
    streaming = wants_streaming(config, context)
    if not context.active and not streaming:
        encoder, splits = load_splits(config)
        batch_size = _batch_size(config, splits["train"].num_rows)
        source = InMemorySource(splits["train"], batch_size, config.train.seed)
        return TrainingData(encoder, source, batch_size, {n: EvalSplit(d.num_rows, d) for n, d in splits.items()},
                            splits)
    return _sharded(config, context, streaming)


def wants_streaming(config: RunConfig, context: DistContext) -> bool:
    """`data.streaming`, with `auto` resolved from the footers: stream when the in-memory path's
    estimated peak exceeds MEMORY_SHARE of the available memory (per machine under torchrun)."""
    setting, train = config.data.streaming, config.data.train
    if is_single_local_file(train) and setting != "on" and not Path(train).is_file():
        return False  # the in-memory reader says what is wrong with it
    if is_single_local_file(train) and file_format(train) == "csv":
        if setting == "on":
            raise DataError(f"`data.streaming: on` reads Parquet datasets; {train!r} is CSV: convert it to Parquet "
                            f"or set data.streaming: off")
        return False
    if setting != "auto":
        return setting == "on"
    available = available_bytes()
    if available is None:
        return False
    try:
        estimate = _in_memory_bytes(config)
    except DataError:
        if is_single_local_file(train):
            return False  # the in-memory reader reports what is wrong with the file, as it always has
        raise
    return estimate * context.local_world_size / max(context.world_size, 1) > MEMORY_SHARE * available


def _in_memory_bytes(config: RunConfig) -> int:
    """The in-memory path's peak, estimated from the Parquet footers: the encoded rows twice (the
    encoders' working copies) and the widest decoded column three times."""
    rows, sizes = footer_bytes(config.data.train, needed_columns(config))
    encoded = 4 * (len(config.data.categorical) + 2 * len(config.data.dense) + len(config.tasks))
    return rows * encoded * 2 + 3 * max(sizes.values())


def _batch_size(config: RunConfig, rows: int) -> int:
    size = config.train.batch_size
    return auto_batch_size(rows) if size == "auto" else size


def resolve_shards(config: RunConfig, world_size: int) -> int:
    shards = config.data.shards
    resolved = math.lcm(8, world_size) if shards == "auto" else shards
    check_shards(resolved, world_size)
    return resolved


def _sharded(config: RunConfig, context: DistContext, streaming: bool) -> TrainingData:
    """The streamed / distributed way: fit on each rank's row groups, merge, build the source."""
    data = config.data
    holdout = HashHoldout(data.valid_fraction, config.train.seed, data.group) \
        if data.valid is None and data.valid_fraction > 0 else None
    group = [data.group] if holdout is not None and data.group else []
    train = _parquet(data.train, needed_columns(config) + group)
    columns, labels = encoder_specs(config, train.num_rows)
    plan = _sample_plan(config, train.num_rows, holdout)
    mine = fit_chunks(train, split_chunks(train.chunks, context.world_size, context.rank), columns, labels, holdout,
                      plan)
    states = context.all_gather(mine.without_samples())
    samples = context.gather(mine.samples_taken)
    merged = states[0]
    for other in states[1:]:
        merged.merge(other)
    encoder = finish(merged, columns, labels)
    train_rows = chunk_rows(train, merged if holdout is not None else None)
    if int(train_rows.sum()) == 0:
        raise DataError(f"data {data.train!r}: no training rows are left after holding out data.valid_fraction "
                        f"{data.valid_fraction}")
    check = _label_check(config)
    batch_size = _batch_size(config, int(train_rows.sum()))
    source = _train_source(config, context, ChunkReader(train, encoder, holdout, False, check), train_rows,
                           batch_size, streaming)
    evals = {"train": EvalSplit(int(train_rows.sum()), _encode_sample(encoder, samples, "train", check))}
    if holdout is not None:
        held = held_rows(train, merged)
        if int(held.sum()) == 0:
            raise DataError(f"data {data.train!r}: no rows were held out as the valid split (data.valid_fraction "
                            f"{data.valid_fraction}); raise it or set data.valid")
        evals["valid"] = EvalSplit(int(held.sum()), _encode_sample(encoder, samples, "held", check),
                                   plan.held_rate >= 1.0, ChunkReader(train, encoder, holdout, True, check), held)
    for name, location in (("valid", data.valid), ("test", data.test)):
        if location is not None:
            evals[name] = _eval_split(location, encoder, config, context, check)
    splits = {name: split.sample for name, split in evals.items() if split.sample is not None}
    return TrainingData(encoder, source, batch_size, evals, splits, "streaming" if streaming else "sharded-memory")


def _parquet(location: str, columns: list[str]) -> ParquetDataset:
    if is_single_local_file(location) and file_format(location) == "csv":
        raise DataError(f"streaming and torchrun read Parquet datasets; {location!r} is CSV: convert it to Parquet "
                        f"(or train in memory on one process with data.streaming: off)")
    return ParquetDataset(location, columns)


def _sample_plan(config: RunConfig, rows: int, holdout: HashHoldout | None) -> SamplePlan:
    """The train rows the final phase scores (evenly spaced, as in memory) and the share of the
    held-out rows kept in memory (all of them when they are at most data.eval_sample_rows)."""
    count = min(rows, config.train.train_metrics_rows)
    train = np.unique(np.linspace(0, rows - 1, count).round().astype(np.int64))
    if holdout is None:
        return SamplePlan(train)
    expected = max(holdout.fraction * rows, 1.0)
    return SamplePlan(train, min(1.0, config.data.eval_sample_rows / expected))


def _encode_sample(encoder: FeatureEncoder, samples: list[dict[str, list[pa.Table]]] | None, side: str,
                   check: Callable[[EncodedData], None]) -> EncodedData | None:
    """The raw sample rows every rank kept (gathered on rank 0), in rank order, encoded."""
    if samples is None:
        return None
    tables = [t for per_rank in samples for t in per_rank.get(side, [])]
    if not tables:
        return None
    data = encoder.encode(pa.concat_tables(tables))
    check(data)
    return data


def _train_source(config: RunConfig, context: DistContext, reader: ChunkReader, train_rows: np.ndarray,
                  batch_size: int, streaming: bool) -> BatchSource:
    shards = resolve_shards(config, context.world_size)
    if streaming:
        return StreamingSource(reader, train_rows, batch_size, config.train.seed,
                               shuffle_buffer=config.data.shuffle_buffer, shards=shards, rank=context.rank,
                               world_size=context.world_size)
    total = int(train_rows.sum())
    bounds = interval_bounds(total, shards)
    mine = rank_intervals(shards, context.world_size, context.rank)
    start, end = int(bounds[mine.start]), int(bounds[mine.stop])
    return ShardedMemorySource(canonical_rows(reader, train_rows, start, end), total, start, batch_size,
                               config.train.seed, shards=shards, rank=context.rank, world_size=context.world_size)


def _eval_split(location: str, encoder: FeatureEncoder, config: RunConfig, context: DistContext,
                check: Callable[[EncodedData], None]) -> EvalSplit:
    """valid/test from their own location: a CSV file in memory (rank 0); Parquet streamed, with up
    to data.eval_sample_rows evenly spaced rows in memory on rank 0."""
    if is_single_local_file(location) and file_format(location) == "csv":
        table = open_columns(location, needed_columns(config)) if context.is_writer else None
        sample = encoder.encode(table) if table is not None else None
        if sample is not None:
            check(sample)
        rows = context.broadcast(sample.num_rows if sample is not None else 0)
        return EvalSplit(rows, sample)
    dataset = ParquetDataset(location, needed_columns(config))
    counts = np.array([c.num_rows for c in dataset.chunks], dtype=np.int64)
    reader = ChunkReader(dataset, encoder, None, False, check)
    complete = dataset.num_rows <= config.data.eval_sample_rows
    sample = None
    if context.is_writer:
        if complete:
            sample = canonical_rows(reader, counts, 0, dataset.num_rows)
        else:
            positions = np.linspace(0, dataset.num_rows - 1, config.data.eval_sample_rows).round().astype(np.int64)
            sample = rows_at(reader, EpochOrder.of(counts, None, 0), np.unique(positions))
    return EvalSplit(dataset.num_rows, sample, complete, reader, counts)


def _label_check(config: RunConfig) -> Callable[[EncodedData], None]:
    """ESMM's data rule (conversions only on clicks), checked on every encoded piece."""
    esmm = config.model.esmm

    def check(data: EncodedData) -> None:
        if config.model.arch == "esmm" and esmm is not None and data.num_rows:
            check_entire_space_labels(data.labels.numpy(), list(data.tasks), esmm.ctr, esmm.ctcvr, "train")
    return check


def evaluate(data: TrainingData, name: str, model: MultiTaskModel, batch_size: int, precision: torch.dtype | None,
             context: DistContext, on_rows: RowsDone | None = None) -> dict[str, dict[str, float]]:
    """The metrics of split `name` over all its rows: from memory when its sample is complete (on
    rank 0 under DDP), else streamed, each rank its share of the rows, merged on rank 0; the result
    is the same on every rank."""
    split = data.evals[name]
    if split.reader is None or (split.complete and not context.active):
        result = evaluate_split(model, split.sample, data.encoder, batch_size, precision, on_rows) \
            if split.sample is not None else None
        return context.broadcast(result)
    assert split.chunk_rows is not None
    order = EpochOrder.of(split.chunk_rows, None, 0)
    start, end = split.rows * context.rank // context.world_size, split.rows * (context.rank + 1) // context.world_size
    pieces = (piece for chunk, first, last in order.spans(start, end)
              for piece in split.reader.pieces(chunk, first, last))
    tasks = tuple(data.encoder.labels)
    state = metrics_state(accumulate(model, pieces, data.encoder, tasks, batch_size, precision, on_rows))
    states = context.gather(state)
    result = merge_states(data.encoder, tasks, states).compute() if states is not None else None
    return context.broadcast(result)


def log_vocabulary(encoder: FeatureEncoder, valid: EncodedData | None) -> None:
    """One line per categorical column: vocabulary size, distinct ids, coverage of the training rows,
    out-of-vocabulary rate on valid, and the hash-collision rate when the tail is hashed."""
    oov = valid.oov_rates([len(v) for v in encoder.vocabs.values()]) if valid is not None and valid.num_rows else None
    for i, (column, vocab) in enumerate(encoder.vocabs.items()):
        stats = encoder.column_stats.get(column, {})
        parts = [f"vocabulary {column!r}: {len(vocab):,} ids of {'' if stats.get('exact', 1.0) else '~'}"
                 f"{stats.get('distinct', math.nan):,.0f} distinct",
                 f"covering {stats.get('train_coverage', math.nan):.2%} of train rows"]
        if oov is not None:
            parts.append(f"valid OOV {oov[i]:.2%}")
        if "hash_collision_rate" in stats:
            rate = stats["hash_collision_rate"]
            parts.append(f"{int(stats['hash_buckets']):,} hash buckets, " + (
                "no train id hashed" if math.isnan(rate) else f"collisions {rate:.2%} of hashed rows"))
        logger.info(", ".join(parts))
