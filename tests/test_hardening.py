"""Hostile inputs, faults of the disk and of the process, and tampered artifacts (issue 13): each
case exits 2 (130/143 for signals) with one line naming the problem, writes nothing under a final
name, loses no data, and never prints a traceback. Case ids match rows of docs/errors.md."""
from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from safetensors.torch import load_file, save_file

from conftest import TINY_CONFIG
from multikpi.cli.main import main

REPO = Path(__file__).resolve().parent.parent


def _config(feed_files, tmp_path: Path, **train) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["data"].update({k: str(v) for k, v in feed_files.items()})
    config["out_dir"] = str(tmp_path / "run")
    config["train"].update(train)
    return config


def _write(tmp_path: Path, config: dict, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def _fails(capsys, argv: list[str], expected: str, code: int = 2) -> str:
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == code, err
    last = err.splitlines()[-1] if err else ""
    assert "Traceback" not in err and last.startswith("multikpi "), err
    assert expected in last, f"{expected!r} not in {last!r}"
    return last


def _md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def run_dir(feed_files, tmp_path_factory):
    from multikpi import train

    config = copy.deepcopy(TINY_CONFIG)
    config["data"].update({k: str(v) for k, v in feed_files.items()})
    config["data"]["id_columns"] = ["request_id"]
    return train(config, out_dir=tmp_path_factory.mktemp("hardening") / "run").run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return target


def _rehash(run: Path, name: str) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((run / name).read_bytes()).hexdigest()
    (run / "manifest.json").write_text(json.dumps(manifest))


# --- 1. outputs that would overwrite inputs ----------------------------------------------------


@pytest.mark.parametrize("command", ["predict", "rank"])
def test_out_equal_to_the_input_is_refused_and_the_input_kept(run_dir, feed_files, tmp_path, capsys, command):
    data = tmp_path / "in.parquet"
    shutil.copy(feed_files["test"], data)
    before = _md5(data)
    extra = ["--group", "request_id", "--score", "click"] if command == "rank" else []
    _fails(capsys, [command, str(run_dir), str(data), "--out", str(data), *extra], "is the input file")
    assert _md5(data) == before


def test_out_inside_the_run_directory_is_refused(run_dir, feed_files, capsys):
    before = _md5(run_dir / "encoders" / "vocab_000.parquet")
    _fails(capsys, ["predict", str(run_dir), str(feed_files["test"]), "--out",
                    str(run_dir / "encoders" / "vocab_000.parquet")], "is inside the run directory")
    assert _md5(run_dir / "encoders" / "vocab_000.parquet") == before


def test_rank_metrics_equal_to_out_or_json_equal_to_data_are_refused(run_dir, feed_files, tmp_path, capsys):
    out = tmp_path / "ranked.parquet"
    _fails(capsys, ["rank", str(run_dir), str(feed_files["test"]), "--group", "request_id", "--score", "click",
                    "--out", str(out), "--metrics", str(out)], "is the input file")
    assert not out.exists()
    _fails(capsys, ["evaluate", str(run_dir), str(feed_files["test"]), "--json", str(feed_files["test"])],
           "is the input file")


def test_keep_column_named_like_a_task_is_refused(run_dir, feed_files, tmp_path, capsys):
    _fails(capsys, ["predict", str(run_dir), str(feed_files["test"]), "--out", str(tmp_path / "p.parquet"),
                    "--keep", "request_id,click"], "would be written twice")
    assert not (tmp_path / "p.parquet").exists()


def test_group_column_named_like_an_output_is_refused(run_dir, feed_files, tmp_path, capsys):
    _fails(capsys, ["rank", str(run_dir), str(feed_files["test"]), "--group", "click", "--score", "click",
                    "--out", str(tmp_path / "r.parquet")], "is also an output column of rank")


@pytest.mark.parametrize("name,expected", [("score", "task names must not be one of"),
                                           ("in_top_k", "task names must not be one of"),
                                           ("log", "task names must not be one of"),
                                           ("request_id", "task names must differ from `data.id_columns`")])
def test_task_names_that_would_clash_are_config_errors(feed_files, tmp_path, capsys, name, expected):
    config = _config(feed_files, tmp_path)
    config["data"]["id_columns"] = ["request_id"]
    config["tasks"][name] = config["tasks"].pop("convert")
    _fails(capsys, ["validate", _write(tmp_path, config)], expected)


# --- 2. run directories ------------------------------------------------------------------------


def test_retraining_into_a_finished_run_needs_overwrite_and_keeps_the_old_run(feed_files, tmp_path, capsys):
    from multikpi import Predictor

    config = _config(feed_files, tmp_path)
    path = _write(tmp_path, config)
    assert main(["train", path]) == 0
    manifest = _md5(tmp_path / "run" / "manifest.json")
    _fails(capsys, ["train", path], "holds a finished run; pass --overwrite")
    assert _md5(tmp_path / "run" / "manifest.json") == manifest
    # A retrain that fails (the loss diverges) leaves the old run in place and loadable.
    config["optim"] = {"default": {"name": "sgd", "lr": 1e12}}
    _fails(capsys, ["train", _write(tmp_path, config, "bad.yaml"), "--overwrite"], "non-finite loss")
    assert _md5(tmp_path / "run" / "manifest.json") == manifest
    Predictor.load(tmp_path / "run")
    # A retrain that succeeds replaces it.
    config["optim"] = {}
    config["train"]["seed"] = 5
    assert main(["train", _write(tmp_path, config, "new.yaml"), "--overwrite"]) == 0
    assert _md5(tmp_path / "run" / "manifest.json") != manifest
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["seed"] == 5
    assert not (tmp_path / ".run.staging").exists()


@pytest.mark.parametrize("make_dir", ["user_files", "root"])
def test_a_directory_that_is_not_a_run_is_never_written_into(feed_files, tmp_path, capsys, make_dir):
    config = _config(feed_files, tmp_path)
    if make_dir == "root":
        config["out_dir"] = "/"
        _fails(capsys, ["train", _write(tmp_path, config)], "is not a multikpi run directory")
        return
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    config["out_dir"] = str(target)
    _fails(capsys, ["train", _write(tmp_path, config)], "is not a multikpi run directory")
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_artifacts_replace_symlinks_instead_of_following_them(feed_files, tmp_path):
    from multikpi import train

    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    run = tmp_path / "run"
    (run / "encoders").mkdir(parents=True)
    (run / ".multikpi-run").touch()
    (run / "encoders" / "encoders.json").symlink_to(victim)
    (run / "metrics.json").symlink_to(victim)
    train(_config(feed_files, tmp_path))
    assert victim.read_text() == "precious"
    assert not (run / "encoders" / "encoders.json").is_symlink() and not (run / "metrics.json").is_symlink()


def test_a_live_lock_refuses_a_second_training_and_a_stale_one_is_taken_over(feed_files, tmp_path, capsys):
    config = _config(feed_files, tmp_path)
    run = Path(config["out_dir"])
    run.mkdir()
    (run / ".multikpi-run").touch()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(str(holder.pid))
        _fails(capsys, ["train", _write(tmp_path, config)], f"locked by another training (pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", _write(tmp_path, config)]) == 0  # the holder is gone: a stale lock
    assert not (run / ".lock").exists()


# --- 3. I/O errors ------------------------------------------------------------------------------


def test_output_whose_parent_is_a_file(run_dir, feed_files, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _fails(capsys, ["predict", str(run_dir), str(feed_files["test"]), "--out", str(tmp_path / "file" / "p.parquet")],
           "is a file, not a directory")


def test_unwritable_output_is_one_line(run_dir, feed_files, capsys):
    _fails(capsys, ["predict", str(run_dir), str(feed_files["test"]), "--out", "/proc/multikpi/p.parquet"], "'/proc")


def test_a_directory_given_as_data_file(run_dir, tmp_path, capsys):
    (tmp_path / "d.parquet").mkdir()
    _fails(capsys, ["predict", str(run_dir), str(tmp_path / "d.parquet"), "--out", str(tmp_path / "p.parquet")],
           "is a directory")


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(feed_files, tmp_path, capsys, monkeypatch):
    import torch

    import multikpi.artifacts.files as files

    real_fsync, calls = os.fsync, {"n": 0}

    def full_disk(fd: int) -> None:
        if "checkpoint" in os.readlink(f"/proc/self/fd/{fd}"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device", os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full_disk)
    config = _config(feed_files, tmp_path, checkpoint_every=1, epochs=2)
    _fails(capsys, ["train", _write(tmp_path, config)], "No space left on device")
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 2  # the last good one, from before the failed write
    assert _no_temp_files(tmp_path / "run") and not (tmp_path / "run" / "manifest.json").exists()


# --- 4. YAML that attacks the loader ------------------------------------------------------------


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))


@pytest.mark.parametrize("text,expected", [
    (BOMB, "aliases and anchors are not allowed"),
    ("data: &d {train: *d}\n", "aliases and anchors are not allowed"),
    ("data: {train: t.parquet, dense: [x]}\ntasks:\n  click: {kind: binary, label: y}\n  click: {kind: binary, "
     "label: z}\n", "has the key 'click' twice (lines 3 and 4)"),
])
def test_yaml_attacks_are_refused(tmp_path, capsys, text, expected):
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    started = time.perf_counter()
    _fails(capsys, ["validate", str(path)], expected)
    assert time.perf_counter() - started < 5


def test_messages_quote_at_most_a_short_value(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "t.parquet", "dense": ["x"]},
                                    "tasks": {"click": {"kind": "x" * 100_000, "label": "y"}}}))
    line = _fails(capsys, ["validate", str(path)], "`tasks.click.kind` must be one of binary, regression")
    assert len(line) < 600


# --- 5. bad numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("override,expected", [
    ("optim.default.betas=[0.9, 1.0]", "`optim.default.betas.1`: input should be less than 1"),
    ("loss.uncertainty.init=.nan", "`loss.uncertainty.init`"),
    ("loss.weights={click: .inf, dwell: 1, convert: 1}", "`loss.weights.click`"),
    ("train.seed=-1", "`train.seed`: input should be greater than or equal to 0"),
    ("train.seed=99999999999", "`train.seed`: input should be less than 4294967296"),
    ("train.batch_size=1000000000000000000000000000000", "`train.batch_size`"),
    ("model.embedding_dim=1000000", "`model.embedding_dim`: input should be less than or equal to 1024"),
])
def test_bad_numbers_are_config_errors(feed_files, tmp_path, capsys, override, expected):
    config = _config(feed_files, tmp_path)
    if "loss.weights" in override:
        config["loss"] = {"combine": "weighted"}
    _fails(capsys, ["validate", _write(tmp_path, config), override], expected)


def test_a_regression_label_whose_statistics_overflow(feed_files, tmp_path, capsys):
    table = pq.read_table(feed_files["train"])
    table = table.set_column(table.column_names.index("dwell"), "dwell",
                             pa.array(np.full(table.num_rows, 1e300) * np.arange(table.num_rows)))
    pq.write_table(table, tmp_path / "huge.parquet")
    config = _config(feed_files, tmp_path)
    config["data"]["train"] = str(tmp_path / "huge.parquet")
    config["tasks"]["dwell"]["transform"] = "none"
    _fails(capsys, ["train", _write(tmp_path, config)], "its mean or std overflows float64")
    assert not (tmp_path / "run").exists()


def test_an_embedding_table_too_large_is_blamed_on_its_size(feed_files, tmp_path, capsys, monkeypatch):
    import multikpi.training.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 10 * 2**20)  # 10 MiB
    config = _config(feed_files, tmp_path)
    config["model"]["embedding_dim"] = 1024
    _fails(capsys, ["train", _write(tmp_path, config)], "x 1024 values (`model.embedding_dim`)")


# --- 6. silent wrong results -------------------------------------------------------------------------


def test_ids_of_another_kind_at_predict_time(run_dir, feed_files, tmp_path, capsys):
    table = pq.read_table(feed_files["test"])
    table = table.set_column(table.column_names.index("item_category"), "item_category",
                             pa.array(np.arange(table.num_rows)))
    pq.write_table(table, tmp_path / "ints.parquet")
    _fails(capsys, ["predict", str(run_dir), str(tmp_path / "ints.parquet"), "--out", str(tmp_path / "p.parquet")],
           "categorical column 'item_category' holds integer ids (int64); the model was trained on string ids")


def test_circular_train_on(feed_files, tmp_path, capsys):
    config = _config(feed_files, tmp_path)
    config["tasks"]["click"]["train_on"] = "convert"
    config["tasks"]["convert"]["train_on"] = "click"
    _fails(capsys, ["validate", _write(tmp_path, config)], "`train_on` must not form a cycle")


def test_resume_after_the_training_file_changed(feed_files, tmp_path, capsys):
    shutil.copy(feed_files["train"], tmp_path / "train.parquet")
    config = _config(feed_files, tmp_path, checkpoint_every=1, epochs=3)
    config["data"]["train"] = str(tmp_path / "train.parquet")
    config["optim"] = {"default": {"name": "sgd", "lr": 1e12}}  # stops with a checkpoint
    path = _write(tmp_path, config)
    _fails(capsys, ["train", path], "non-finite loss")
    table = pq.read_table(tmp_path / "train.parquet")
    pq.write_table(table.slice(0, 3000), tmp_path / "train.parquet")
    _fails(capsys, ["train", path, "--resume", config["out_dir"]], "the train file")


def test_tampered_weights_give_no_non_finite_estimates(run_dir, feed_files, tmp_path, capsys):
    run = _copy(run_dir, tmp_path)
    weights = load_file(run / "model.safetensors")
    first = next(k for k in weights if k.startswith("heads.click.out.bias"))
    weights[first] = weights[first] * float("inf")
    save_file(weights, str(run / "model.safetensors"))
    _rehash(run, "model.safetensors")
    _fails(capsys, ["predict", str(run), str(feed_files["test"]), "--out", str(tmp_path / "p.parquet")],
           "the model produced non-finite outputs for task 'click'")
    assert not (tmp_path / "p.parquet").exists()


# --- 7. a flat formula chain ---------------------------------------------------------------------------


def test_a_long_flat_formula_ranks(run_dir, feed_files, tmp_path):
    formula = "1+" * 990 + "click"
    out = tmp_path / "r.parquet"
    assert main(["rank", str(run_dir), str(feed_files["test"]), "--group", "request_id", "--score", formula,
                 "--out", str(out)]) == 0
    ranked = pq.read_table(out)
    np.testing.assert_allclose(ranked.column("score").to_numpy(), ranked.column("click").to_numpy() + 990)


# --- 8. artifacts -----------------------------------------------------------------------------------------


def test_a_pickle_smuggled_in_as_a_checkpoint(feed_files, tmp_path, capsys):
    import pickle

    config = _config(feed_files, tmp_path, checkpoint_every=1, epochs=3)
    config["optim"] = {"default": {"name": "sgd", "lr": 1e12}}
    path = _write(tmp_path, config)
    _fails(capsys, ["train", path], "non-finite loss")
    (tmp_path / "run" / "checkpoint.pt").write_bytes(pickle.dumps({"format": 2, "x": print}))
    line = _fails(capsys, ["train", path, "--resume", config["out_dir"]], "is not a valid multikpi checkpoint")
    assert "weights_only" not in line


@pytest.mark.parametrize("tamper,expected", [
    (lambda m: m.update(files={}), "does not list the run's core files"),
    (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), "which is not a file inside the run directory"),
    (lambda m: m["files"].update({"/etc/hostname": "0" * 64}), "which is not a file inside the run directory"),
    (lambda m: m.update(files=["config.yaml"]), "is not a valid manifest"),
])
def test_tampered_manifests(run_dir, feed_files, tmp_path, capsys, tamper, expected):
    run = _copy(run_dir, tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    tamper(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))
    _fails(capsys, ["evaluate", str(run), str(feed_files["test"])], expected)


@pytest.mark.parametrize("content,expected", [
    ("{not json", "cannot be read"),
    (json.dumps({"categorical": 3, "dense": {}, "labels": {}}), "is not a valid encoders file"),
    (json.dumps({"categorical": [], "dense": {"x": {"mean": 0, "std": -1, "log1p": False, "indicator": False}},
                 "labels": {"t": {"kind": "binary", "label": "y", "transform": "none", "mean": 0.1, "std": 1,
                                  "train_on": None}}}), "`dense.x.std`"),
])
def test_malformed_encoders_json(run_dir, feed_files, tmp_path, capsys, content, expected):
    run = _copy(run_dir, tmp_path)
    (run / "encoders" / "encoders.json").write_text(content)
    _rehash(run, "encoders/encoders.json")
    _fails(capsys, ["evaluate", str(run), str(feed_files["test"])], expected)


# --- 9. signals -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum,code,name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_stops_with_one_line_saying_how_to_resume(feed_files, tmp_path, signum, code, name):
    config = _config(feed_files, tmp_path, checkpoint_every=1, epochs=100, patience=100, batch_size=64)
    path = _write(tmp_path, config)
    # SIGINT back to its default in the child: a suite started in the background (`make test &`)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    process = subprocess.Popen([sys.executable, "-m", "multikpi.cli.main", "train", path],
                               stderr=subprocess.PIPE, text=True, cwd=REPO,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = Path(config["out_dir"])
    try:
        deadline = time.time() + 120
        while not (run / "checkpoint.pt").exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:  # a failing test leaves no training process behind
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and f"interrupted ({name}); the last checkpoint is" in last
    assert f"--resume {run}" in last
    assert _no_temp_files(run) and not (run / ".lock").exists()


def test_orphaned_temporary_files_are_removed_at_the_next_start(feed_files, tmp_path):
    from multikpi import TrainingError, train

    config = _config(feed_files, tmp_path, checkpoint_every=1, epochs=3)
    config["optim"] = {"default": {"name": "sgd", "lr": 1e12}}
    with pytest.raises(TrainingError):
        train(config)
    run = Path(config["out_dir"])
    orphan = run / ".checkpoint.pt.tmp-999999999"  # the pid of no process: left by a SIGKILL
    orphan.write_bytes(b"half")
    config["optim"] = {}
    train(config, overwrite=True)
    assert not orphan.exists()


class _Stopped(Exception):
    pass


def test_a_signal_during_a_checkpoint_write_waits_for_the_write(tmp_path):
    """The race CI once hit: SIGINT inside `torch.save` turned into torch's RuntimeError ("unexpected
    pos"). Deferred, the signal arrives as itself after the file is complete and readable."""
    import torch

    from multikpi.artifacts.files import write_atomic_with

    class SignalledMidway:  # the file torch.save writes to; the signal lands at its 3rd write
        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

    def save_interrupted(handle):
        writer = SignalledMidway(handle)
        torch.save({"a": torch.zeros(10), "b": torch.arange(1000)}, writer)
        assert writer.writes > 3  # the save went on after the signal

    def stop(signum, frame):
        raise _Stopped()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(_Stopped):
            write_atomic_with(tmp_path / "checkpoint.pt", save_interrupted)
    finally:
        signal.signal(signal.SIGTERM, previous)
    with open(tmp_path / "checkpoint.pt", "rb") as handle:
        assert torch.load(handle)["a"].shape == (10,)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# --- 10. the command line -------------------------------------------------------------------------------------------------


def test_overrides_are_accepted_after_options(feed_files, tmp_path):
    config = _config(feed_files, tmp_path)
    out = tmp_path / "elsewhere"
    assert main(["train", _write(tmp_path, config), "--out-dir", str(out), "train.epochs=1",
                 "model.dropout=0.1"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["dropout"] == 0.1


def test_cuda_on_a_cpu_only_torch(feed_files, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _fails(capsys, ["train", _write(tmp_path, _config(feed_files, tmp_path)), "train.device=cuda"],
           "`train.device` is 'cuda' but this torch")
    assert not (tmp_path / "run").exists()


def test_resume_of_a_finished_run(run_dir, tmp_path, capsys):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    _fails(capsys, ["train", _write(tmp_path, config), "--resume", str(run_dir)], "that run finished")


def test_every_case_has_a_row_in_the_catalogue():
    import inspect

    ids = [name[len("test_"):].replace("_", "-") for name, _ in inspect.getmembers(sys.modules[__name__])
           if name.startswith("test_") and name != "test_every_case_has_a_row_in_the_catalogue"]
    text = (REPO / "docs" / "errors.md").read_text()
    assert not [i for i in ids if f"`{i}`" not in text]
    assert len(ids) >= 30
