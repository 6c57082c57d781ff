"""Calibration: isotonic and Platt against scikit-learn fitted directly, ECE and the reliability
curve on hand-made examples, and the calibrators' round trip through the run directory."""
from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from conftest import TINY_CONFIG
from multikpi import ArtifactError, Predictor, train
from multikpi.api import predictor_of
from multikpi.eval.calibration import (
    TaskCalibrator,
    apply_calibration,
    expected_calibration_error,
    fit_calibrators,
    fit_task_calibrator,
    reliability,
    resolve_method,
)


def _noisy(seed: int, n: int = 2000):
    rng = np.random.default_rng(seed)
    probs = rng.beta(1.0, 12.0, n)
    labels = (rng.random(n) < np.clip(1.6 * probs + 0.01, 0, 1)).astype(float)  # under-confident model
    return labels, probs


def test_isotonic_matches_sklearn():
    labels, probs = _noisy(0)
    calibrator = fit_task_calibrator(labels, probs)
    reference = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(probs, labels)
    grid = np.concatenate([probs[:200], [-0.5, 0.0, 0.999, 1.5]])  # includes out-of-range values
    assert calibrator.apply(grid, "isotonic") == pytest.approx(reference.predict(grid), abs=1e-12)


def test_platt_matches_sklearn_on_the_logit():
    labels, probs = _noisy(1)
    calibrator = fit_task_calibrator(labels, probs)
    logit = np.log(probs / (1 - probs))[:, None]
    reference = LogisticRegression(C=np.inf).fit(logit, labels)
    assert calibrator.platt_a == pytest.approx(reference.coef_[0, 0], rel=1e-6)
    assert calibrator.platt_b == pytest.approx(reference.intercept_[0], rel=1e-6)
    assert calibrator.apply(probs, "platt") == pytest.approx(reference.predict_proba(logit)[:, 1], abs=1e-9)
    assert np.array_equal(calibrator.apply(probs, "none"), probs)


def test_calibration_lowers_the_ece_of_a_miscalibrated_model():
    labels, probs = _noisy(2, 20000)
    calibrator = fit_task_calibrator(labels, probs)
    raw = expected_calibration_error(labels, probs)
    assert expected_calibration_error(labels, calibrator.apply(probs, "platt")) < raw / 2
    assert expected_calibration_error(labels, calibrator.apply(probs, "isotonic")) < raw / 2


def test_ece_and_reliability_by_hand():
    probs = np.array([0.4, 0.1, 0.3, 0.2])
    labels = np.array([1, 0, 1, 0])
    curve = reliability(labels, probs, bins=2)  # equal mass: {0.1, 0.2} and {0.3, 0.4}
    assert curve == {"bin_mean_pred": pytest.approx([0.15, 0.35]), "bin_mean_label": [0.0, 1.0], "bin_count": [2, 2]}
    assert expected_calibration_error(labels, probs, bins=2) == pytest.approx(0.5 * 0.15 + 0.5 * 0.65)
    # five rows in two bins: sizes 3 and 2; |0.2 - 1/3| * 3/5 + |0.45 - 1/2| * 2/5
    probs5, labels5 = np.array([0.1, 0.2, 0.3, 0.4, 0.5]), np.array([0, 1, 0, 0, 1])
    assert reliability(labels5, probs5, bins=2)["bin_count"] == [3, 2]
    assert expected_calibration_error(labels5, probs5, bins=2) == pytest.approx(abs(0.2 - 1 / 3) * 0.6 + 0.05 * 0.4)
    assert np.isnan(expected_calibration_error(np.array([]), np.array([])))


def test_one_class_task_is_skipped():
    labels, probs = _noisy(3, 100)
    calibrators, skipped = fit_calibrators({"click": (labels, probs), "convert": (np.zeros(100), probs)})
    assert list(calibrators) == ["click"]
    assert skipped == {"convert": "the valid split has only one class"}


def test_method_resolution():
    calibrator = fit_task_calibrator(*_noisy(4, 300))
    assert resolve_method("auto", {"click": calibrator}) == "platt"
    assert resolve_method("auto", None) == "none"
    assert resolve_method("isotonic", {"click": calibrator}) == "isotonic"
    with pytest.raises(ArtifactError, match=r"decide.calibration is 'platt' but the run has no calibrators"):
        resolve_method("platt", None)
    values = {"click": np.array([0.1]), "dwell": np.array([3.0])}
    calibrated = apply_calibration(values, {"click": calibrator}, "platt")
    assert calibrated["dwell"] is values["dwell"] and calibrated["click"] != pytest.approx(values["click"])


@pytest.fixture(scope="module")
def calibrated_run(feed_files, tmp_path_factory):
    config = copy.deepcopy(TINY_CONFIG)
    config["data"].update({k: str(v) for k, v in feed_files.items()})
    config["out_dir"] = str(tmp_path_factory.mktemp("calibrated") / "run")
    return train(config)


def test_calibrators_round_trip_through_the_run_dir(calibrated_run, feed_files):
    run_dir = calibrated_run.run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "calibration.json" in manifest["files"]
    stored = json.loads((run_dir / "calibration.json").read_text())
    assert set(stored["tasks"]) | set(stored["skipped"]) == {"click", "convert"}  # binary tasks only

    predictor = Predictor.load(run_dir)
    assert predictor.calibration == "platt"  # decide.calibration: auto
    assert set(predictor.calibrators) == set(stored["tasks"])
    for task, calibrator in predictor.calibrators.items():
        assert calibrator.to_json() == TaskCalibrator.from_json(stored["tasks"][task]).to_json()
    # Refit with scikit-learn on the run's own raw valid probabilities: the stored calibrators agree.
    valid = pq.read_table(feed_files["valid"])
    raw_valid = predictor.predict(valid, keep=[], calibrated=False)
    raw_test = predictor.predict(feed_files["test"], keep=[], calibrated=False)
    click_valid, click_test = raw_valid.column("click").to_numpy(), raw_test.column("click").to_numpy()
    labels = valid.column("click").to_numpy().astype(float)
    reference = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(click_valid, labels)
    ours = predictor.calibrators["click"].apply(click_test, "isotonic")
    assert ours == pytest.approx(reference.predict(click_test), abs=1e-6)
    calibrated = predictor.predict(feed_files["test"], keep=[]).column("click").to_numpy()
    assert calibrated == pytest.approx(predictor.calibrators["click"].apply(click_test, "platt"))
    assert raw_test.column("dwell").equals(predictor.predict(feed_files["test"], keep=[]).column("dwell"))
    # The Run in memory predicts the same as the run loaded from disk.
    in_memory = predictor_of(calibrated_run).predict(feed_files["test"], keep=[]).column("click").to_numpy()
    assert in_memory == pytest.approx(calibrated)


def test_metrics_hold_ece_and_reliability_per_split(calibrated_run):
    block = json.loads((calibrated_run.run_dir / "metrics.json").read_text())["calibration"]
    assert block["bins"] == {"count": 10, "kind": "equal-mass"} and block["fitted_on"] == "valid"
    for split in ("valid", "test"):
        click = block[split]["click"]
        assert set(click) >= {"ece_raw", "ece_isotonic", "ece_platt", "reliability", "reliability_isotonic"}
        assert sum(click["reliability"]["bin_count"]) == click["count"] == 1500
        assert len(click["reliability"]["bin_mean_pred"]) == 10
        assert 0 <= click["ece_raw"] < 1
    assert "calibration" not in block["valid"]["click"].get("reliability", {})
    assert "dwell" not in block["valid"]  # regression tasks are not calibrated


def test_tampered_calibration_is_refused(calibrated_run, tmp_path):
    import shutil

    copy_dir = tmp_path / "run"
    shutil.copytree(calibrated_run.run_dir, copy_dir)
    path = copy_dir / "calibration.json"
    path.write_text(path.read_text().replace('"a": ', '"a": 1'))
    with pytest.raises(ArtifactError, match=r"'calibration.json' was modified after training"):
        Predictor.load(copy_dir)


def test_run_without_valid_has_no_calibrators(tiny_config):
    del tiny_config["data"]["valid"]
    tiny_config["data"]["valid_fraction"] = 0.0  # no split held out of train either
    run = train(tiny_config)
    assert run.calibration is None and not (run.run_dir / "calibration.json").exists()
    assert run.metrics.calibration is None
    assert Predictor.load(run.run_dir).calibration == "none"
