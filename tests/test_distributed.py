"""Training on 2 processes (torchrun, gloo on loopback, started here and cleaned up after) against
1 process on the same data and the same global batches (data/streaming.py): losses, final
parameters and metrics agree within float32 summation-order tolerance (the global batch's sums
are split between ranks and all-reduced, so they are added in another order), for sum,
uncertainty, gradnorm and dwa; the learned loss weights and parameters are identical on both
ranks; a SIGKILLed 2-process run resumes with 2 processes to bitwise the same model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from multikpi.data.encoders import EncodedData
from multikpi.data.stream_source import ShardedMemorySource
from multikpi.synthetic.feed import make_feed

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="torchrun on loopback, SIGKILL")]

PARAM_TOLERANCE = 2e-5   # float32 parameters after ~80 Adam steps, sums in another order
METRIC_TOLERANCE = 1e-4  # AUC / logloss / RMSE of models that differ by PARAM_TOLERANCE


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A dataset of 3 uneven files (3999 rows: the last batch is short) and a valid file."""
    root = tmp_path_factory.mktemp("ddp")
    table = make_feed(3999, seed=0)
    (root / "train").mkdir()
    for i, (start, size) in enumerate(((0, 1700), (1700, 1100), (2800, 1199))):
        pq.write_table(table.slice(start, size), root / "train" / f"part-{i}.parquet", row_group_size=300)
    pq.write_table(make_feed(1500, seed=1), root / "valid.parquet")
    return {"train": root / "train", "valid": root / "valid.parquet"}


def _config(files: dict[str, Path], combine: str, **train) -> dict:
    return {
        "data": {"train": str(files["train"]), "valid": str(files["valid"]), "streaming": "on",
                 "categorical": ["user_id", "item_id", "item_category", "device"], "dense": ["price", "affinity"],
                 "log1p": ["price"], "numeric_bins": 0, "shuffle_buffer": 2000},
        "tasks": {"click": {"kind": "binary", "label": "click"},
                  "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"},
                  "convert": {"kind": "binary", "label": "convert", "train_on": "click"}},
        "model": {"embedding_dim": 4, "shared": [32, 16], "tower": [8]},
        "loss": {"combine": combine},
        "train": {"epochs": 2, "batch_size": 100, "seed": 4, "threads": 1, "progress": "off", "precision": "fp32",
                  "deterministic": True, **train},
    }


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def _descendants(pid: int) -> list[int]:
    """`pid`'s child processes, recursively (torchrun starts each rank in a session of its own, so
    killing torchrun's process group would leave the ranks running)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [p for c in children for p in (c, *_descendants(c))]


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and every rank: what a machine failure does."""
    for pid in [*_descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run torchrun; if it overruns, kill it and its ranks (no stray process left behind)."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(process)
        out, err = process.communicate()
        raise AssertionError(f"torchrun timed out: {err[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, process.returncode, out, err)


def _yaml(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _compare_runs(one: Path, two: Path) -> None:
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < PARAM_TOLERANCE, worst
    la, lb = load_file(one / "loss.safetensors"), load_file(two / "loss.safetensors")
    assert all(torch.allclose(la[k], lb[k], atol=PARAM_TOLERANCE) for k in la)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    for split in ("train", "valid"):
        for task, values in ma["splits"][split].items():
            for key, value in values.items():
                assert mb["splits"][split][task][key] == pytest.approx(value, abs=METRIC_TOLERANCE), (split, task, key)
    steps_a, steps_b = ([json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()]
                        for d in (one, two))
    assert len(steps_a) == len(steps_b) == 80
    for ra, rb in zip(steps_a, steps_b):
        for task, loss in ra["losses"].items():
            assert rb["losses"][task] == pytest.approx(loss, abs=1e-5)


# One combiner per test keeps `make test` within its time budget: uncertainty (learned weights inside
# the DDP module) through the CLI, gradnorm (its own gradient all-reduce) with both ranks' state
# compared. MULTIKPI_TEST_ALL_COMBINERS=1 adds sum and dwa (run it when changing distributed.py).
ALL_COMBINERS = os.environ.get("MULTIKPI_TEST_ALL_COMBINERS") == "1"


@pytest.mark.parametrize("combine", ["uncertainty", "sum"] if ALL_COMBINERS else ["uncertainty"])
def test_torchrun_two_processes_train_the_one_process_model(files, tmp_path, combine):
    from multikpi import train

    config = _config(files, combine)
    one = train(config, out_dir=tmp_path / "one").run_dir
    result = _run(_torchrun("-m", "multikpi", "train", str(_yaml(config, tmp_path / "c.yaml")), "--out-dir",
                            str(tmp_path / "two")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr and result.stdout.count("trained") <= 1  # rank 0 alone prints
    _compare_runs(one, tmp_path / "two")


RANK_SCRIPT = """
import os, sys, torch, yaml
from multikpi import train
config = yaml.safe_load(open(sys.argv[1]))
run = train(config, out_dir=sys.argv[2])
torch.save({"model": run.model.state_dict(), "combiner": run.combiner.state_dict(),
            "weights": run.combiner.weights()}, os.path.join(sys.argv[3], f"rank{os.environ['RANK']}.pt"))
"""


@pytest.mark.parametrize("combine", ["gradnorm", "dwa"] if ALL_COMBINERS else ["gradnorm"])
def test_gradnorm_and_dwa_hold_the_same_weights_on_every_rank_and_match_one_process(files, tmp_path, combine):
    from multikpi import train

    config = _config(files, combine)
    one = train(config, out_dir=tmp_path / "one")
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    result = _run(_torchrun(str(script), str(_yaml(config, tmp_path / "c.yaml")), str(tmp_path / "two"),
                            str(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["weights"] == rank1["weights"]  # bitwise: every rank computed them from the same numbers
    assert all(torch.equal(rank0["model"][k], rank1["model"][k]) for k in rank0["model"])
    assert all(torch.equal(rank0["combiner"][k], rank1["combiner"][k]) for k in rank0["combiner"])
    for task, weight in one.combiner.weights().items():
        assert rank0["weights"][task] == pytest.approx(weight, abs=1e-4)
    _compare_runs(one.run_dir, tmp_path / "two")


def test_shards_not_a_multiple_of_the_processes_is_one_line_on_exit_2(files, tmp_path):
    config = _config(files, "sum")
    config["data"]["shards"] = 3
    result = _run(_torchrun("-m", "multikpi", "train", str(_yaml(config, tmp_path / "c.yaml")), "--out-dir",
                            str(tmp_path / "run")))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "`data.shards` must be a multiple" in line]
    assert len(lines) == 2 and all(line.startswith("multikpi train: error: distributed:") for line in lines)
    assert "exitcode  : 2" in result.stderr  # torchrun's own report: a rank exited with the CLI's code 2
    assert not [line for line in result.stderr.splitlines() if line.strip().startswith("File ") and "multikpi" in line]
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_sigkill_of_a_two_process_run_then_resume_with_two_is_bitwise_identical(files, tmp_path):
    config = _config(files, "uncertainty", epochs=4, batch_size=50, checkpoint_every=20)  # 80 steps an epoch
    path = _yaml(config, tmp_path / "c.yaml")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    done = _run(_torchrun("-m", "multikpi", "train", str(path), "--out-dir", str(reference)))
    assert done.returncode == 0, done.stderr[-3000:]

    process = subprocess.Popen(_torchrun("-m", "multikpi", "train", str(path), "--out-dir", str(resumed)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    checkpoint, deadline = resumed / "checkpoint.pt", time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.exists() and _steps_in(checkpoint) >= 100:  # epoch 2
                break
            time.sleep(0.005)
    finally:
        ranks = _descendants(process.pid)
        _kill_tree(process)
    assert process.returncode == -signal.SIGKILL and len(ranks) >= 2, "training finished before it could be killed"
    assert not (resumed / "manifest.json").exists()
    state = torch.load(checkpoint, weights_only=True)
    # usually mid-epoch 2; a slow poll may see a later checkpoint, but not the finished run
    assert state["world_size"] == 2 and 100 <= state["step"] < 320
    result = _run(_torchrun("-m", "multikpi", "train", str(path), "--out-dir", str(resumed), "--resume",
                            str(resumed)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stderr
    expected, actual = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert not checkpoint.exists()


def _steps_in(checkpoint: Path) -> int:
    try:
        return int(torch.load(checkpoint, weights_only=True)["step"])
    except (RuntimeError, EOFError, OSError, KeyError):
        return 0


def test_sharded_memory_ranks_add_up_to_the_one_process_batches():
    """`data.streaming: off` under torchrun: each rank holds its intervals; together they take the
    batches one process holding every interval would (no row twice, none missing)."""
    rows = 1003
    data = EncodedData(torch.arange(rows, dtype=torch.int32)[:, None], torch.zeros(rows, 1),
                       torch.zeros(rows, 1), ("t",))
    bounds = [0, 501, 1003]  # intervals 0-3 of 4: ranks own [0, 501) and [501, 1003)
    one = ShardedMemorySource(data, rows, 0, 64, seed=2, shards=4)
    ranks = [ShardedMemorySource(EncodedData(data.categorical[bounds[r]:bounds[r + 1]], data.dense[bounds[r]:bounds[r + 1]],
                                             data.labels[bounds[r]:bounds[r + 1]], ("t",)),
                                 rows, bounds[r], 64, seed=2, shards=4, rank=r, world_size=2) for r in range(2)]
    seen = []
    for whole, *parts in zip(one.epoch(1), *(r.epoch(1) for r in ranks)):
        joined = torch.cat([p.categorical for p in parts])
        assert torch.equal(whole.categorical, joined)
        seen.append(joined[:, 0].numpy())
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(rows))
