"""End to end through the `multikpi` command: make-data, validate, train, evaluate, predict;
and the one-line errors with exit code 2 that leave nothing behind."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from multikpi.cli.main import main


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multikpi.cli.main", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_end_to_end(tmp_path, tiny_config):
    data = tmp_path / "data"
    for split, seed in (("train", 0), ("valid", 1)):
        result = _cli("make-data", "feed", "--rows", "3000", "--seed", str(seed), "--out", str(data / f"{split}.parquet"))
        assert result.returncode == 0, result.stderr
    tiny_config["data"].update({"train": str(data / "train.parquet"), "valid": str(data / "valid.parquet"),
                                "test": str(data / "valid.parquet")})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config, sort_keys=False))
    run_dir = tmp_path / "run"

    assert _cli("validate", str(config_path)).returncode == 0
    result = _cli("train", str(config_path), "train.epochs=2", "--out-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "epoch 2:" in result.stderr and "valid click auc=" in result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["splits"]["test"]) == {"click", "dwell", "convert"}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 2
    assert len((run_dir / "history.jsonl").read_text().splitlines()) == 2 * 6  # ceil(3000 / 512) steps per epoch

    result = _cli("evaluate", str(run_dir), str(data / "valid.parquet"), "--json", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["click"]["auc"] == pytest.approx(metrics["splits"]["test"]["click"]["auc"])

    out = tmp_path / "preds.csv"
    result = _cli("predict", str(run_dir), str(data / "valid.parquet"), "--out", str(out), "--keep", "request_id")
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert lines[0].replace('"', "") == "request_id,click,dwell,convert"
    assert len(lines) == 3001


def test_bad_config_is_one_line_exit_2(tmp_path, tiny_config, capsys):
    tiny_config["loss"] = {"combine": "uncertanty"}
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config, sort_keys=False))
    assert main(["train", str(config_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "`loss.combine` must be one of sum, weighted, uncertainty, gradnorm, dwa. Got 'uncertanty'." in err
    assert not Path(tiny_config["out_dir"]).exists()


def test_missing_column_is_one_line_exit_2(tmp_path, tiny_config, capsys):
    tiny_config["data"]["dense"] = ["price", "no_such_column"]
    tiny_config["data"]["log1p"] = []
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config, sort_keys=False))
    assert main(["train", str(config_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no column(s) ['no_such_column']" in err
    assert not Path(tiny_config["out_dir"]).exists()


def test_predict_missing_feature_column_exit_2_and_no_output(tmp_path, tiny_config, capsys):
    from multikpi import train
    run = train(tiny_config)
    table = pq.read_table(tiny_config["data"]["valid"]).drop(["price"])
    pq.write_table(table, tmp_path / "noprice.parquet")
    out = tmp_path / "p.parquet"
    assert main(["predict", str(run.run_dir), str(tmp_path / "noprice.parquet"), "--out", str(out)]) == 2
    assert "no column(s) ['price']" in capsys.readouterr().err
    assert not out.exists()


def test_predict_raw_skips_calibration(tmp_path, tiny_config):
    """With a valid split the run is calibrated: --raw gives the model's own probabilities."""
    import numpy as np

    from multikpi import Predictor, train
    run = train(tiny_config)
    test_file = tiny_config["data"]["test"]
    raw_out, calibrated_out = tmp_path / "raw.parquet", tmp_path / "cal.parquet"
    assert main(["predict", str(run.run_dir), test_file, "--out", str(raw_out), "--raw"]) == 0
    assert main(["predict", str(run.run_dir), test_file, "--out", str(calibrated_out)]) == 0
    raw = pq.read_table(raw_out).column("click").to_numpy()
    expected = Predictor.load(run.run_dir).predict(test_file, calibrated=False).column("click").to_numpy()
    assert np.array_equal(raw, expected)
    assert not np.allclose(raw, pq.read_table(calibrated_out).column("click").to_numpy())


def test_evaluate_on_a_file_with_some_labels_evaluates_those_and_names_the_skipped(tmp_path, tiny_config, feed_files,
                                                                                    capsys, caplog):
    from multikpi import evaluate, train

    run = train(tiny_config)
    full = evaluate(run.run_dir, feed_files["valid"])
    partial = tmp_path / "no_dwell.parquet"
    table = pq.read_table(feed_files["valid"])
    pq.write_table(table.drop_columns(["dwell"]), partial)
    assert main(["evaluate", str(run.run_dir), str(partial), "--json", str(tmp_path / "m.json")]) == 0
    assert f"skipped task 'dwell': {partial} has no column 'dwell'" in caplog.text
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert list(metrics) == ["click", "convert"]
    for task in metrics:  # the same numbers as on the full file
        assert metrics[task]["auc"] == pytest.approx(full[task]["auc"], abs=1e-12)

    null_convert = tmp_path / "null_convert.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("convert"), "convert",
                                    pa.nulls(table.num_rows, pa.float64())), null_convert)
    assert main(["evaluate", str(run.run_dir), str(null_convert)]) == 0
    assert f"skipped task 'convert': every 'convert' label in {null_convert} is null" in caplog.text

    labels_gone = tmp_path / "inputs_only.parquet"
    pq.write_table(table.drop_columns(["click", "dwell", "convert"]), labels_gone)
    assert main(["evaluate", str(run.run_dir), str(labels_gone)]) == 2
    assert "has none of the label columns ['click', 'dwell', 'convert']: evaluate needs labels" in capsys.readouterr().err
