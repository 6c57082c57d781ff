"""`multikpi evaluate-policy` and `tune-decision --estimator` end to end on the tiny feed: the
numbers they print and write are those of the estimators computed by hand from the run's
estimates; errors are one line (exit 2) and write nothing."""
from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import TINY_CONFIG
from multikpi import Predictor, train
from multikpi.cli.main import main
from multikpi.decide.ranking import rank_groups

SCORE = "click * convert^0.5"


@pytest.fixture(scope="module")
def run_dir(feed_files, tmp_path_factory):
    """The tiny config without `position` among the features (the estimates are position-free)."""
    config = copy.deepcopy(TINY_CONFIG)
    config["data"].update({k: str(v) for k, v in feed_files.items()})
    config["data"]["categorical"] = [c for c in config["data"]["categorical"] if c != "position"]
    config["data"]["id_columns"] = ["request_id", "item_id"]
    config["decide"] = {"score": SCORE}
    config["out_dir"] = str(tmp_path_factory.mktemp("policy") / "run")
    return train(config).run_dir


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _evaluate(run_dir, logs, *extra) -> list[str]:
    return ["evaluate-policy", str(run_dir), str(logs), "--group", "request_id", "--k", "5", "--resamples", "200",
            *extra]


def test_evaluate_policy_matches_the_estimators_by_hand(run_dir, feed_files, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(_evaluate(run_dir, feed_files["test"], "--json", str(out))) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["k"] == 5 and report["rows"] == 1500 and report["target"]["score"] == SCORE
    assert report["baseline"] == {"score": None, "policy": "logged"}
    assert set(report["kpis"]) == {"click@5", "dwell@5", "convert@5"}
    assert "naive (biased)" in printed and "lift vs the logging policy" in printed

    table = pq.read_table(feed_files["test"])
    estimates = Predictor.load(run_dir).predict(table, keep=[])
    click_hat, convert_hat = (estimates.column(t).to_numpy() for t in ("click", "convert"))
    request = table["request_id"].to_numpy()
    ranks = rank_groups(request, click_hat * convert_hat ** 0.5).ranks
    curve = np.unique(np.c_[table["position"].to_numpy(), table["examination"].to_numpy()], axis=0)[:, 1]
    target_exam = np.where(ranks <= 5, curve[np.minimum(ranks, curve.size) - 1], 0.0)
    weights = target_exam / table["exam_propensity"].to_numpy()
    click, convert = table["click"].to_numpy(), table["convert"].to_numpy()
    groups = np.unique(request).size
    logged_theta = table["examination"].to_numpy()
    by_hand = {
        "click": {"naive": click[ranks <= 5].sum() / groups, "ips": (weights * click).sum() / groups,
                  "dm": (target_exam * click_hat).sum() / groups,
                  "dr": (target_exam * click_hat + weights * (click - logged_theta * click_hat)).sum() / groups},
        "convert": {"ips": (weights * convert).sum() / groups, "dm": (target_exam * convert_hat).sum() / groups},
    }
    snips = by_hand["click"]["ips"] * target_exam.sum() / (weights * logged_theta).sum()
    for task, values in by_hand.items():
        for estimator, value in values.items():
            entry = report["kpis"][f"{task}@5"]["target"][estimator]
            assert entry["value"] == pytest.approx(value), (task, estimator)
            assert entry["low"] <= entry["value"] <= entry["high"]
    assert report["kpis"]["click@5"]["target"]["snips"]["value"] == pytest.approx(snips)
    assert report["kpis"]["click@5"]["logged"]["value"] == pytest.approx(
        click[table["position"].to_numpy() <= 5].sum() / groups)
    dwell_after_click = table["dwell"].to_numpy() * click
    assert report["kpis"]["dwell@5"]["target"]["ips"]["value"] == pytest.approx(
        (weights * dwell_after_click).sum() / groups)
    assert report["weights"]["target"]["support"] == 1.0
    lift = report["kpis"]["click@5"]["lift"]["dr"]
    assert lift["value"] == pytest.approx(by_hand["click"]["dr"] / report["kpis"]["click@5"]["logged"]["value"] - 1)


def test_evaluate_policy_with_a_baseline_and_without_propensities(run_dir, feed_files, tmp_path, caplog):
    out = tmp_path / "report.json"
    assert main(_evaluate(run_dir, feed_files["valid"], "--baseline", "click", "--json", str(out))) == 0
    report = json.loads(out.read_text())
    entry = report["kpis"]["convert@5"]
    assert set(entry) == {"logged", "target", "baseline", "lift"}
    assert entry["lift"]["dr"]["value"] == pytest.approx(entry["target"]["dr"]["value"]
                                                        / entry["baseline"]["dr"]["value"] - 1)
    bare = tmp_path / "bare.parquet"
    pq.write_table(pq.read_table(feed_files["valid"]).drop(["exam_propensity"]), bare)
    caplog.clear()
    assert main(_evaluate(run_dir, bare, "--json", str(out))) == 0
    err = caplog.text
    assert "has no 'exam_propensity' column: IPS, SNIPS and DR need the logging policy's propensities" in err
    assert "--estimator dr needs propensities; the lift uses dm instead" in err
    report = json.loads(out.read_text())
    assert report["estimators"] == ["naive", "dm"] and report["estimator"] == "dm" and report["weights"] == {}


def test_a_model_that_reads_the_position_is_flagged(feed_files, tmp_path, caplog):
    config = copy.deepcopy(TINY_CONFIG)  # position is one of its categorical features
    config["data"].update({k: str(v) for k, v in feed_files.items()})
    config["out_dir"] = str(tmp_path / "run")
    run = train(config).run_dir
    caplog.clear()
    assert main(_evaluate(run, feed_files["test"], "--score", "click")) == 0
    assert "the model reads 'position' as a feature" in caplog.text


@pytest.mark.parametrize("extra, change, message", [
    (["--k", "0"], None, r"--k must be a positive integer. Got 0"),
    (["--resamples", "3"], None, r"--resamples must be at least 10. Got 3"),
    (["--click", "dwell"], None, r"--click must name a binary task among \['click', 'convert'\]. Got 'dwell'"),
    (["--score", "clik"], None, r"--score: unknown name 'clik'"),
    ([], lambda t: t.drop(["position"]), r"has no position column 'position'"),
    ([], lambda t: t.drop(["examination"]), r"has no examination column 'examination'"),
])
def test_evaluate_policy_errors(run_dir, feed_files, tmp_path, capsys, extra, change, message):
    logs = feed_files["test"]
    if change is not None:
        logs = tmp_path / "logs.parquet"
        pq.write_table(change(pq.read_table(feed_files["test"])), logs)
    out = tmp_path / "out" / "report.json"
    assert main(_evaluate(run_dir, logs, "--json", str(out), *extra)) == 2
    assert re.search(message, _error_line(capsys))
    assert not out.parent.exists()


def test_tune_decision_with_an_estimator(run_dir, feed_files, tmp_path, capsys):
    out = tmp_path / "tuned"
    argv = ["tune-decision", str(run_dir), str(feed_files["valid"]), "--group", "request_id", "--objective",
            "convert@10", "--constraint", "click@10.lcb >= 0.5*baseline", "--trials", "8", "--seed", "1",
            "--baseline", "click", "--estimator", "dr", "--resamples", "100", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["estimator"] == "dr" and "estimator dr" in printed
    base = result["baseline"]["metrics"]
    assert {"click@10", "click@10.lcb", "click@10.ucb", "support@10", "ess@10"} <= set(base)
    assert base["click@10.lcb"] < base["click@10"] < base["click@10.ucb"]
    (constraint,) = result["constraints"]
    assert constraint["metric"] == "click@10.lcb"
    assert constraint["threshold"] == pytest.approx(0.5 * base["click@10"])  # `baseline`: the point estimate
    table = (out / "tradeoff.md").read_text()
    assert "Metrics estimated off-policy with dr" in table and "] |" in table
    # the objective is the DR estimate evaluate-policy gives for the chosen score
    report = tmp_path / "chosen.json"
    assert main(["evaluate-policy", str(run_dir), str(feed_files["valid"]), "--group", "request_id", "--score",
                 result["chosen"]["score"], "--resamples", "100", "--seed", "1", "--json", str(report)]) == 0
    chosen = json.loads(report.read_text())["kpis"]["convert@10"]["target"]["dr"]
    assert chosen["value"] == pytest.approx(result["objective"]["chosen"])
    assert math.isclose(chosen["low"], result["chosen"]["metrics"]["convert@10.lcb"], rel_tol=1e-9)


def test_make_data_temperature(tmp_path, capsys):
    out = tmp_path / "random.parquet"
    assert main(["make-data", "feed", "--rows", "300", "--temperature", "inf", "--out", str(out)]) == 0
    table = pq.read_table(out)
    sizes = np.bincount(table["request_id"].to_numpy())
    assert table["propensity"].to_numpy() == pytest.approx(np.repeat(1.0 / sizes, sizes))
    for argv, message in ((["feed", "--temperature", "0"], r"--temperature must be > 0"),
                          (["mmoe-synthetic", "--correlation", "0.5", "--temperature", "1"],
                           r"--temperature is only used by feed")):
        assert main(["make-data", *argv, "--rows", "10", "--out", str(tmp_path / "x.parquet")]) == 2
        assert re.search(message, _error_line(capsys))


def test_catalogue_lists_the_policy_errors():
    """docs/errors.md has a row for each error tested here and in test_policy_eval / test_position_tower."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    ids = ["config-position-as-feature", "data-logs-no-position", "data-logs-bad-position", "data-logs-no-examination",
           "data-logs-bad-examination", "config-click-task", "data-bad-temperature"]
    assert [i for i in ids if f"`{i}`" not in text] == []


def test_pareto_panel_draws_the_intervals():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from multikpi.report.decision import _interval_bars

    points = [{"click@10": 1.0, "click@10.lcb": 0.9, "click@10.ucb": 1.2, "convert@10": 0.1,
               "convert@10.lcb": 0.08, "convert@10.ucb": 0.13}]
    fig, ax = plt.subplots()
    _interval_bars(ax, points, "click@10", "convert@10", "tab:blue", 0.5)
    (bars,) = ax.containers
    x_segments = bars.lines[2][0].get_segments()
    assert np.allclose(x_segments[0], [[0.9, 0.1], [1.2, 0.1]])
    _interval_bars(ax, [{"a": 1.0, "b": 2.0}], "a", "b", "black", 1.0)  # no interval: nothing drawn
    assert len(ax.containers) == 1
    plt.close(fig)
