"""Streaming training (data/stream_source.py, training/data_plan.py) against the in-memory path:
every row once per epoch, shards that add up to the one-process batches, exact mid-epoch resume,
the same model as an in-memory run fed the same rows in the same order, and main's defaults
(held-out valid by group, early stopping, numeric bins, centring, a position tower) on a dataset."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from multikpi.data.batches import Batch, batch_at
from multikpi.data.datasets import ParquetDataset
from multikpi.data.encoders import FeatureEncoder
from multikpi.data.specs import ColumnSpec, LabelSpec
from multikpi.data.split import HashHoldout
from multikpi.data.stream_fit import chunk_rows, finish, fit_chunks
from multikpi.data.stream_source import StreamingSource
from multikpi.data.streaming import ChunkReader
from multikpi.errors import DataError
from multikpi.synthetic.feed import make_feed

CATEGORICAL = ["user_id", "item_id", "item_category", "device"]
DENSE = ["price", "affinity", "item_age_h"]
COLUMNS = ColumnSpec(tuple(CATEGORICAL), tuple(DENSE), ("price",), 1, None, 0)
LABELS = {"click": LabelSpec("binary", "click"), "dwell": LabelSpec("regression", "dwell", "log1p")}


def write_dataset(table, root: Path, sizes: list[int], row_group: int = 500) -> Path:
    """`table` as uneven files of `sizes` rows with row groups of `row_group` rows."""
    root.mkdir(parents=True)
    start = 0
    for i, size in enumerate(sizes):
        pq.write_table(table.slice(start, size), root / f"part-{i}.parquet", row_group_size=row_group)
        start += size
    return root


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream")
    table = make_feed(6000, seed=0)
    files = {"table": root / "whole.parquet", "train": write_dataset(table, root / "train", [2500, 1700, 1800]),
             "valid": root / "valid.parquet"}
    pq.write_table(table, files["table"])
    pq.write_table(make_feed(1500, seed=1), files["valid"])
    return files


def _source(root: Path, batch_size: int, *, shards: int = 4, buffer: int = 1000, rank: int = 0, world: int = 1,
            holdout: HashHoldout | None = None) -> tuple[StreamingSource, FeatureEncoder]:
    needed = CATEGORICAL + DENSE + ["click", "dwell"] + (["request_id"] if holdout else [])
    dataset = ParquetDataset(str(root), needed)
    state = fit_chunks(dataset, list(range(len(dataset.chunks))), COLUMNS, LABELS, holdout)
    encoder = finish(state, COLUMNS, LABELS)
    rows = chunk_rows(dataset, state if holdout else None)
    source = StreamingSource(ChunkReader(dataset, encoder, holdout), rows, batch_size, seed=7, shuffle_buffer=buffer,
                             shards=shards, rank=rank, world_size=world)
    return source, encoder


def _key(batch: Batch) -> list[tuple]:
    """Rows of a batch as hashable tuples (item, user, price: unique enough on the feed)."""
    return [tuple(r) for r in torch.cat([batch.categorical.double(), batch.dense.double()], 1).tolist()]


def test_every_training_row_is_used_once_per_epoch_in_the_order_epoch_rows_says(dataset_dir):
    source, encoder = _source(dataset_dir["train"], 256)
    in_memory = encoder.encode(pq.read_table(dataset_dir["table"]))
    for epoch in (1, 2):
        batches = list(source.epoch(epoch))
        orders = list(source.epoch_rows(epoch))
        assert len(batches) == source.steps_per_epoch == 24
        assert sum(b.num_rows for b in batches) == 6000 and max(b.num_rows for b in batches) <= 257
        rows = np.concatenate(orders)
        assert np.array_equal(np.sort(rows), np.arange(6000))  # each row once, none repeated
        for batch, order in zip(batches, orders):  # the batch is exactly those rows, in that order
            expected = batch_at(in_memory, torch.from_numpy(order))
            assert torch.equal(batch.categorical, expected.categorical) and torch.equal(batch.dense, expected.dense)
            assert torch.equal(batch.labels.nan_to_num(-1), expected.labels.nan_to_num(-1))
    first, second = (np.concatenate(list(source.epoch_rows(e))) for e in (1, 2))
    assert not np.array_equal(first, second)  # a new order every epoch


def test_two_ranks_together_take_the_one_process_batches(dataset_dir):
    one, _ = _source(dataset_dir["train"], 300)
    ranks = [_source(dataset_dir["train"], 300, rank=r, world=2)[0] for r in range(2)]
    for whole, part0, part1 in zip(one.epoch_rows(3), ranks[0].epoch_rows(3), ranks[1].epoch_rows(3)):
        assert np.array_equal(whole, np.concatenate([part0, part1]))
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == one.steps_per_epoch
    steps = [list(r.epoch(3)) for r in ranks]
    assert sum(b.num_rows for s in steps for b in s) == 6000


def test_resuming_mid_epoch_replays_the_buffers_exactly(dataset_dir):
    source, _ = _source(dataset_dir["train"], 200, buffer=1500)
    full = list(source.epoch(2))
    for skip in (1, 13, len(full) - 1):
        tail = list(source.epoch(2, skip=skip))
        assert len(tail) == len(full) - skip
        assert all(_key(a) == _key(b) for a, b in zip(tail, full[skip:]))


def test_the_training_side_of_a_hash_hold_out_is_streamed(dataset_dir):
    holdout = HashHoldout(0.2, seed=3, group="request_id")
    source, _ = _source(dataset_dir["train"], 256, holdout=holdout)
    table = pq.read_table(dataset_dir["table"])
    held = holdout.held_out(table, np.arange(table.num_rows))
    assert source.num_rows == int((~held).sum())
    assert sum(b.num_rows for b in source.epoch(1)) == source.num_rows


# --- the recipe: streamed against in memory ---------------------------------------------------

def _config(files: dict[str, Path], tmp_path: Path, **data) -> dict:
    return {
        "data": {"train": str(files["train"]), "valid": str(files["valid"]), "categorical": CATEGORICAL,
                 "dense": DENSE, "log1p": ["price"], "numeric_bins": 0, **data},
        "tasks": {"click": {"kind": "binary", "label": "click"},
                  "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"}},
        "model": {"embedding_dim": 4, "shared": [32, 16], "tower": [8]},
        "train": {"epochs": 2, "batch_size": 256, "seed": 5, "threads": 1, "progress": "off", "precision": "fp32",
                  "deterministic": True},
        "out_dir": str(tmp_path / "run"),
    }


class _Replay:
    """An in-memory BatchSource that yields the rows a streamed run would, in its order."""

    def __init__(self, data, orders: dict[int, list[np.ndarray]]):
        self.data, self.orders = data, orders
        self.num_rows = data.num_rows
        self.steps_per_epoch = len(orders[1])

    def epoch(self, epoch: int, skip: int = 0):
        for rows in self.orders[epoch][skip:]:
            yield batch_at(self.data, torch.from_numpy(rows))


def test_streamed_training_equals_in_memory_training_on_the_same_rows_in_the_same_order(dataset_dir, tmp_path,
                                                                                     monkeypatch):
    from multikpi import train
    from multikpi.training import data_plan

    config = _config(dataset_dir, tmp_path, streaming="on", shuffle_buffer=800, shards=4)
    streamed = train(config, out_dir=tmp_path / "streamed")
    dataset = ParquetDataset(str(dataset_dir["train"]), CATEGORICAL + DENSE)
    plan = StreamingSource(None, chunk_rows(dataset, None), 256, 5, shuffle_buffer=800, shards=4)  # type: ignore
    orders = {e: list(plan.epoch_rows(e)) for e in (1, 2)}
    monkeypatch.setattr(data_plan, "InMemorySource", lambda data, batch_size, seed: _Replay(data, orders))
    in_memory = train({**config, "data": {**config["data"], "streaming": "off"}}, out_dir=tmp_path / "memory")

    # The encoders agree up to the summation order of the dense means and stds (merged per row
    # group when streamed): ~1e-16 relative, so the models agree to float32 rounding, not bitwise.
    for column in DENSE:
        assert streamed.encoder.dense_stats[column]["mean"] == pytest.approx(
            in_memory.encoder.dense_stats[column]["mean"], rel=1e-12)
    assert all(streamed.encoder.vocabs[c].equals(in_memory.encoder.vocabs[c]) for c in CATEGORICAL)
    a, b = load_file(streamed.run_dir / "model.safetensors"), load_file(in_memory.run_dir / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    for split in ("train", "valid"):
        for task in ("click", "dwell"):
            for key, value in in_memory.metrics.splits[split][task].items():
                assert streamed.metrics.splits[split][task][key] == pytest.approx(value, rel=1e-4, abs=1e-5), \
                    (split, task, key)
    losses = [(r["losses"]["click"], s["losses"]["click"]) for r, s in zip(in_memory.history, streamed.history)]
    assert len(losses) == 48 and all(x == pytest.approx(y, rel=1e-5) for x, y in losses)


def test_streaming_with_main_defaults_holds_out_by_group_stops_early_and_metrics_cover_every_held_row(
        dataset_dir, tmp_path):
    """No data.valid, epochs auto, numeric bins, centring and a position tower, on a streamed dataset
    whose held-out split is larger than eval_sample_rows: metrics.json's valid metrics are those of
    the saved model on every held-out row (the oracle: api.evaluate on them, in memory)."""
    from multikpi import evaluate, train

    config = _config(dataset_dir, tmp_path, streaming="on", group="request_id", valid_fraction=0.25,
                     eval_sample_rows=400, position="position")
    del config["data"]["valid"], config["data"]["numeric_bins"]
    config["train"].update(epochs="auto", max_epochs=4, patience=1)
    run = train(config)
    assert run.metrics.selection is not None and run.metrics.selection["evaluations"] >= 2
    table = pq.read_table(dataset_dir["table"])
    held = HashHoldout(0.25, config["train"]["seed"], "request_id").held_out(table, np.arange(table.num_rows))
    positions = np.unique(table.column("position").to_numpy()[~held])
    assert run.encoder.position is not None and run.encoder.position[1].to_pylist() == positions.tolist()
    assert all(len(run.encoder.dense_stats[c]["bin_edges"]) > 0 for c in DENSE)  # numeric bins fitted streamed
    valid_file = tmp_path / "held.parquet"
    pq.write_table(table.filter(held), valid_file)
    assert run.metrics.data_summary["rows"]["valid"] == int(held.sum()) > 400
    oracle = evaluate(run.run_dir, str(valid_file))
    for task in ("click", "dwell"):
        for key in ("auc", "logloss", "rmse"):
            if key in oracle[task]:
                assert run.metrics.splits["valid"][task][key] == pytest.approx(oracle[task][key], rel=1e-6), key


def test_streaming_on_a_csv_file_is_a_clear_error(tmp_path, dataset_dir):
    from multikpi import train

    csv = tmp_path / "train.csv"
    make_feed(50, seed=0).to_pandas().to_csv(csv, index=False)
    config = _config(dataset_dir, tmp_path, streaming="on")
    config["data"]["train"] = str(csv)
    with pytest.raises(DataError, match=r"`data.streaming: on` reads Parquet datasets; .* is CSV"):
        train(config)


# --- crash safety: SIGKILL a streamed run mid-epoch ------------------------------------------

def _kill_after_checkpoint(cmd: list[str], run_dir: Path, min_steps: int) -> None:
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = run_dir / "checkpoint.pt"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.exists() and _steps_in(checkpoint) >= min_steps:
                break
            time.sleep(0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # its session: the training process
        process.wait()
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"


def _steps_in(checkpoint: Path) -> int:
    try:
        return int(torch.load(checkpoint, weights_only=True)["step"])
    except (RuntimeError, EOFError, OSError, KeyError):
        return 0


def _write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
@pytest.mark.slow
def test_sigkill_mid_epoch_of_a_streamed_run_then_resume_is_bitwise_identical(dataset_dir, tmp_path):
    config = _config(dataset_dir, tmp_path, streaming="on", shuffle_buffer=700, shards=4)
    config["model"]["dropout"] = 0.1  # the RNG state is part of what must resume exactly
    config["train"].update(epochs=3, batch_size=64, checkpoint_every=7)  # 94 steps an epoch
    path = _write_config(config, tmp_path / "config.yaml")
    cmd = [sys.executable, "-m", "multikpi", "train", str(path), "--out-dir"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    done = subprocess.run([*cmd, str(reference)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _kill_after_checkpoint([*cmd, str(resumed)], resumed, min_steps=120)  # inside epoch 2
    state = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and 0 < state["batches_done"] < 94
    result = subprocess.run([*cmd, str(resumed), "--resume", str(resumed)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    expected, actual = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    metrics = [json.loads((d / "metrics.json").read_text())["splits"] for d in (reference, resumed)]
    assert metrics[0] == metrics[1]


def test_changed_dataset_is_refused_on_resume(dataset_dir, tmp_path):
    from multikpi import ArtifactError, TrainingError, train

    root = tmp_path / "data"
    write_dataset(pq.read_table(dataset_dir["table"]), root, [3000, 3000])
    config = _config({**dataset_dir, "train": root}, tmp_path, streaming="on")
    config["optim"] = {"default": {"name": "sgd", "lr": 1e12}}  # diverges: the run stops with a checkpoint
    config["train"].update(checkpoint_every=1, epochs=3)
    with pytest.raises(TrainingError):
        train(copy.deepcopy(config))
    pq.write_table(make_feed(10, seed=9), root / "part-9.parquet")
    with pytest.raises(ArtifactError, match="data"):
        train(config, out_dir=config["out_dir"], resume=True)


def test_row_sparse_embedding_optimizers_are_refused_under_ddp(tiny_config):
    """Checked before DistributedDataParallel is built: no process group is needed to see it."""
    from multikpi.config.load import config_from_dict
    from multikpi.errors import ConfigError
    from multikpi.optim.build import build_optimizers
    from multikpi.optim.param_groups import build_param_groups
    from multikpi.training.distributed import DistContext, data_parallel
    from multikpi.training.module import build_training
    from multikpi.training.setup import load_splits

    tiny_config["optim"] = {"groups": {"embeddings": {"name": "rowwise_adagrad", "lr": 0.05}}}
    config = config_from_dict(tiny_config, source="test")
    encoder, _ = load_splits(config)
    training = build_training(config, encoder)
    build_optimizers(build_param_groups(config, training.model, training.combiner), 10, training.model.embeddings)
    with pytest.raises(ConfigError, match=r"lazy_adam / rowwise_adagrad / sparse_sgd .* under torchrun use a dense"):
        data_parallel(training, DistContext(rank=0, world_size=2))


def test_streaming_auto_streams_only_when_the_in_memory_estimate_exceeds_half_the_memory(dataset_dir, tmp_path,
                                                                                       monkeypatch):
    from multikpi.config.load import config_from_dict
    from multikpi.training import data_plan
    from multikpi.training.distributed import DistContext

    config = config_from_dict(_config(dataset_dir, tmp_path, streaming="auto"))
    estimate = data_plan._in_memory_bytes(config)
    assert 6000 * 4 * (4 + 2 * 3 + 2) * 2 < estimate < 50 * 2**20  # the encoded rows twice, plus decoded columns
    monkeypatch.setattr(data_plan, "available_bytes", lambda: 2 * estimate + 1)
    assert not data_plan.wants_streaming(config, DistContext())
    monkeypatch.setattr(data_plan, "available_bytes", lambda: 2 * estimate - 1)
    assert data_plan.wants_streaming(config, DistContext())
    on, off = (config_from_dict(_config(dataset_dir, tmp_path, streaming=s)) for s in ("on", "off"))
    assert data_plan.wants_streaming(on, DistContext()) and not data_plan.wants_streaming(off, DistContext())
