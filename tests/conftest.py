"""Shared fixtures: a tiny synthetic feed on disk and a config dict that trains on it in seconds."""
from __future__ import annotations

import copy
import gc
import os
from pathlib import Path

import pytest

from multikpi.data.tabular import write_table
from multikpi.synthetic.feed import make_feed

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _unfreeze_gc():
    """The service freezes the loaded process out of the cyclic collector (service/state.py); the
    test process goes on creating and dropping services, so it unfreezes after every test."""
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True, scope="session")
def _precision_cache(tmp_path_factory):
    """The precision probe's cache goes to a temporary directory, not the user's ~/.cache."""
    os.environ["MULTIKPI_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))

TINY_CONFIG = {
    "data": {
        "categorical": ["user_id", "item_id", "item_category", "device", "position"],
        "dense": ["price", "item_age_h", "affinity"],
        "log1p": ["price", "item_age_h"],
    },
    "tasks": {
        "click": {"kind": "binary", "label": "click"},
        "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"},
        "convert": {"kind": "binary", "label": "convert"},
    },
    "model": {"embedding_dim": 4, "shared": [32, 16], "tower": [8]},
    # fp32: the precision probe (tests/test_precision.py) would pick by timing, which varies by machine
    "train": {"epochs": 1, "batch_size": 512, "seed": 0, "threads": 1, "progress": "off", "precision": "fp32"},
}


@pytest.fixture(scope="session")
def feed_files(tmp_path_factory) -> dict[str, Path]:
    """train (4000 rows), valid and test (1500 rows each) Parquet files of the synthetic feed."""
    root = tmp_path_factory.mktemp("feed")
    files = {}
    for split, rows, seed in (("train", 4000, 0), ("valid", 1500, 1), ("test", 1500, 2)):
        files[split] = root / f"{split}.parquet"
        write_table(make_feed(rows, seed=seed), files[split])
    return files


@pytest.fixture
def tiny_config(feed_files, tmp_path) -> dict:
    """A fresh config dict (safe to mutate) on the tiny feed, writing to tmp_path/run."""
    config = copy.deepcopy(TINY_CONFIG)
    config["data"].update({k: str(v) for k, v in feed_files.items()})
    config["out_dir"] = str(tmp_path / "run")
    return config


@pytest.fixture(scope="session")
def report_run(feed_files, tmp_path_factory) -> Path:
    """A finished run with everything the report draws: mmoe (gates), uncertainty weighting, a
    regression task, `train_on`, valid and test, 2 epochs, TensorBoard scalars, and a tune-decision
    directory (a few trials) inside it."""
    from multikpi import train
    from multikpi.cli.main import main

    config = copy.deepcopy(TINY_CONFIG)
    config["data"].update({k: str(v) for k, v in feed_files.items()})
    config["model"].update({"arch": "mmoe", "num_experts": 3})
    config["loss"] = {"combine": "uncertainty"}
    config["tasks"]["convert"]["train_on"] = "click"
    config["train"].update({"epochs": 2, "tensorboard": True, "precision": "fp32"})
    run_dir = train(config, out_dir=tmp_path_factory.mktemp("report") / "run").run_dir
    assert main(["tune-decision", str(run_dir), str(feed_files["valid"]), "--group", "request_id",
                 "--objective", "convert@5", "--constraint", "click@5 >= 0.9*baseline", "--trials", "6"]) == 0
    return run_dir


SERVING_SCORE = "click * (1 + 0.01 * dwell)"


def _serving_run(feed_files, root: Path, seed: int, score: str) -> Path:
    from multikpi import train

    config = copy.deepcopy(TINY_CONFIG)
    config["data"].update({k: str(v) for k, v in feed_files.items()})
    config["data"].update({"id_columns": ["request_id", "item_id"], "group": "request_id"})
    config["decide"] = {"score": score, "top_k": 5}
    config["train"].update({"precision": "fp32", "seed": seed})
    return train(config, out_dir=root / "run").run_dir


@pytest.fixture(scope="session")
def serving_run(feed_files, tmp_path_factory) -> Path:
    """A finished fp32 run with id columns, a group (request_id), decide.score and top_k 5."""
    return _serving_run(feed_files, tmp_path_factory.mktemp("serving"), 0, SERVING_SCORE)


@pytest.fixture(scope="session")
def serving_run_b(feed_files, tmp_path_factory) -> Path:
    """Another run of the same schema (seed 1, score `click`): what a reload swaps in."""
    return _serving_run(feed_files, tmp_path_factory.mktemp("serving_b"), 1, "click")
