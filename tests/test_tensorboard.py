"""`train.tensorboard`: the event files hold the scalars of history.jsonl and train_log.jsonl, read
back with TensorBoard's own EventAccumulator."""
from __future__ import annotations

import json
import sys

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from multikpi.cli.main import main
from multikpi.extras import MissingExtraError
from multikpi.training.scalars import ScalarLog


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every scalar in the event files under `log_dir`."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _record(step: int, loss: float) -> dict:
    return {"step": step, "epoch": 1, "losses": {"click": loss, "dwell": 2 * loss}, "total": 3 * loss,
            "weights": {"click": {"weight": 0.5, "log_var": 0.7}, "dwell": {"weight": 2.0}},
            "lr": {"shared": 1e-3, "loss": 1e-2}}


def test_step_and_epoch_scalars_under_their_tags(tmp_path):
    log = ScalarLog(tmp_path / "tb", enabled=True)
    for step in (1, 2, 3):
        log.log_step(_record(step, 0.1 * step))
    log.log_epoch({"epoch": 1, "seconds": 2.0, "examples_per_second": 500.0, "train_loss": {"click": 0.2},
                   "valid": {"click": {"auc": 0.75, "count": 100}, "dwell": {"rmse": 1.5, "pearson": float("nan")}}}, 3)
    log.close()
    scalars = _scalars(tmp_path / "tb")
    assert scalars["loss/click"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2)), (3, pytest.approx(0.3))]
    assert scalars["weighted_loss/dwell"][1] == (2, pytest.approx(2.0 * 0.4))
    assert scalars["loss/total"][2] == (3, pytest.approx(0.9))
    assert scalars["weight/click"][0] == (1, 0.5) and scalars["weight/click/log_var"][0] == (1, pytest.approx(0.7))
    assert scalars["lr/loss"][0] == (1, pytest.approx(1e-2))
    assert scalars["valid/click/auc"] == [(3, 0.75)]
    assert scalars["epoch/train_loss/click"] == [(3, pytest.approx(0.2))]
    assert scalars["epoch/examples_per_second"] == [(3, 500.0)]
    assert "valid/dwell/pearson" not in scalars  # NaN metrics are left out


def test_resumed_log_replaces_the_steps_it_repeats_and_fresh_log_starts_empty(tmp_path):
    first = ScalarLog(tmp_path / "tb", enabled=True)
    for step in range(1, 6):
        first.log_step(_record(step, 1.0))
    first.close()
    resumed = ScalarLog(tmp_path / "tb", enabled=True, fresh=False)  # resumed from a checkpoint at step 3
    for step in range(4, 7):
        resumed.log_step(_record(step, 2.0))
    resumed.close()
    assert _scalars(tmp_path / "tb")["loss/click"] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0), (6, 2.0)]
    fresh = ScalarLog(tmp_path / "tb", enabled=True)
    fresh.log_step(_record(1, 3.0))
    fresh.close()
    assert _scalars(tmp_path / "tb")["loss/click"] == [(1, 3.0)]


def test_disabled_log_writes_nothing(tmp_path):
    log = ScalarLog(tmp_path / "tb", enabled=False)
    log.log_step(_record(1, 1.0))
    log.log_epoch({"epoch": 1, "seconds": 1.0, "examples_per_second": 1.0, "train_loss": {}}, 1)
    log.close()
    assert not (tmp_path / "tb").exists()


def test_missing_tensorboard_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingExtraError, match=r"^train.tensorboard needs the 'tensorboard' package, which is not "
                                                r"installed: pip install 'multikpi\[tensorboard\]'$"):
        ScalarLog(tmp_path / "tb", enabled=True)


def test_bad_tensorboard_value_is_a_config_error(tmp_path, tiny_config, capsys):
    tiny_config["train"]["tensorboard"] = "maybe"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert main(["validate", str(path)]) == 2
    assert "`train.tensorboard`: input should be a valid boolean" in capsys.readouterr().err


@pytest.mark.slow
def test_a_training_run_logs_what_history_and_train_log_hold(report_run):
    scalars = _scalars(report_run / "tensorboard")
    history = [json.loads(line) for line in (report_run / "history.jsonl").read_text().splitlines()]
    epochs = [json.loads(line) for line in (report_run / "train_log.jsonl").read_text().splitlines()]
    for task in ("click", "dwell", "convert"):
        logged = dict(scalars[f"loss/{task}"])
        expected = {r["step"]: r["losses"][task] for r in history if task in r["losses"]}
        assert logged.keys() == expected.keys()
        assert list(logged.values()) == pytest.approx(list(expected.values()), rel=1e-6)
        assert dict(scalars[f"weight/{task}/log_var"])[history[-1]["step"]] == pytest.approx(
            history[-1]["weights"][task]["log_var"], rel=1e-6)
    ends = {r["epoch"]: r["step"] for r in history}
    assert scalars["valid/click/auc"] == [(ends[e["epoch"]], pytest.approx(e["valid"]["click"]["auc"], rel=1e-6))
                                          for e in epochs]
    assert {f"lr/{group}" for group in history[0]["lr"]} <= set(scalars)
