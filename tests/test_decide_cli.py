"""End to end through `multikpi rank` and `multikpi tune-decision` on the tiny feed, and their
one-line errors (exit 2) that leave no output behind."""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import TINY_CONFIG
from multikpi import Predictor, load_config, train
from multikpi.cli.main import main
from multikpi.decide.ranking import rank_groups, ranking_metrics

SCORE = "click * (1 + 0.01 * dwell)"


@pytest.fixture(scope="module")
def run_dir(feed_files, tmp_path_factory):
    config = copy.deepcopy(TINY_CONFIG)
    config["data"].update({k: str(v) for k, v in feed_files.items()})
    config["data"]["id_columns"] = ["request_id", "item_id"]
    config["decide"] = {"score": SCORE, "top_k": 5}
    config["out_dir"] = str(tmp_path_factory.mktemp("decide") / "run")
    return train(config).run_dir


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_rank_orders_rows_within_groups(run_dir, feed_files, tmp_path):
    out = tmp_path / "ranked.parquet"
    assert main(["rank", str(run_dir), str(feed_files["test"]), "--group", "request_id", "--out", str(out)]) == 0
    ranked = pq.read_table(out)
    assert ranked.column_names == ["request_id", "item_id", "score", "rank", "in_top_k", "click", "dwell", "convert"]
    assert ranked.num_rows == 1500
    groups, ranks = ranked.column("request_id").to_numpy(), ranked.column("rank").to_numpy()
    scores = ranked.column("score").to_numpy()
    assert np.all(np.diff(groups) >= 0)  # ordered by group ...
    for g in np.unique(groups):
        rows = groups == g
        assert ranks[rows].tolist() == list(range(1, rows.sum() + 1))  # ... then rank
        assert np.all(np.diff(scores[rows]) <= 0)
    assert np.array_equal(ranked.column("in_top_k").to_numpy(zero_copy_only=False), ranks <= 5)  # decide.top_k
    click, dwell = ranked.column("click").to_numpy(), ranked.column("dwell").to_numpy()
    assert scores == pytest.approx(click * (1 + 0.01 * dwell))
    # The estimates are the calibrated ones Predictor.predict gives (same rows, in another order).
    predicted = Predictor.load(run_dir).predict(feed_files["test"])
    assert np.sort(click) == pytest.approx(np.sort(predicted.column("click").to_numpy()))


def test_rank_with_score_and_metrics(run_dir, feed_files, tmp_path, capsys):
    out, metrics_path = tmp_path / "ranked.csv", tmp_path / "metrics.json"
    args = ["rank", str(run_dir), str(feed_files["valid"]), "--group", "request_id", "--out", str(out),
            "--score", "click * convert^0.5", "--top-k", "3", "--metrics", str(metrics_path)]
    assert main(args) == 0
    assert "click * convert^0.5" in capsys.readouterr().out
    metrics = json.loads(metrics_path.read_text())
    assert metrics["score"] == "click * convert^0.5" and metrics["k"] == 3 and metrics["calibration"] == "platt"
    table = pq.read_table(feed_files["valid"])
    estimates = Predictor.load(run_dir).predict(table, keep=[])
    scores = estimates.column("click").to_numpy() * estimates.column("convert").to_numpy() ** 0.5
    labels = {t: table.column(t).to_numpy().astype(float) for t in ("click", "dwell", "convert")}
    kinds = {"click": "binary", "dwell": "regression", "convert": "binary"}
    expected = ranking_metrics(rank_groups(table.column("request_id").to_numpy(), scores), scores, labels, kinds, 3)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, nan_ok=True), name
    assert len(out.read_text().splitlines()) == 1501


@pytest.mark.parametrize("extra, message", [
    (["--group", "page"], r"has no group column 'page'"),
    (["--group", "request_id", "--score", "clik"], r"--score: unknown name 'clik' at position 0; did you mean 'click'"),
    (["--group", "request_id", "--score", "click +"], r"--score: ends after '\+'"),
    (["--group", "request_id", "--top-k", "0"], r"--top-k must be a positive integer. Got 0"),
])
def test_rank_errors_are_one_line_and_write_nothing(run_dir, feed_files, tmp_path, capsys, extra, message):
    out = tmp_path / "ranked.parquet"
    assert main(["rank", str(run_dir), str(feed_files["test"]), "--out", str(out)] + extra) == 2
    assert re.search(message, _error_line(capsys))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_rank_config_must_match_the_run(run_dir, feed_files, tmp_path, capsys):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    del config["tasks"]["convert"]
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["rank", str(run_dir), str(feed_files["test"]), "--group", "request_id",
                 "--out", str(tmp_path / "r.parquet"), "--config", str(path)]) == 2
    assert "`tasks` must be those of the run" in _error_line(capsys)


def _tune(run_dir, data, out, *extra) -> list[str]:
    return ["tune-decision", str(run_dir), str(data), "--group", "request_id", "--objective", "convert@10",
            "--constraint", "click@10 >= 0.98*baseline", "--trials", "15", "--seed", "3", "--out", str(out), *extra]


def test_tune_decision_end_to_end(run_dir, feed_files, tmp_path, capsys):
    out = tmp_path / "tuned"
    assert main(_tune(run_dir, feed_files["valid"], out, "--baseline", "click")) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["decide.yaml", "pareto.png", "result.json", "tradeoff.md",
                                                     "trials.csv"]
    result = json.loads((out / "result.json").read_text())
    assert result["trials"] == 15 and result["baseline"]["score"] == "click"
    assert result["constraints"][0]["met"] and result["constraints"][0]["threshold"] == pytest.approx(
        0.98 * result["baseline"]["metrics"]["click@10"])
    assert result["objective"]["chosen"] >= result["objective"]["baseline"]  # trial 0 is the baseline itself
    assert set(result["chosen"]["weights"]) == {"w_dwell", "w_convert"}
    assert f"chosen (trial {result['chosen']['trial']} of 15): {result['chosen']['score']}" in printed
    table = (out / "tradeoff.md").read_text()
    assert table.startswith("| trial | w_convert | w_dwell | convert@10 | click@10 | feasible |")
    assert "**chosen**" in table and "| baseline |" in table
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "trials.csv").read_text().splitlines()) == 16

    # The written config carries the chosen score; rank accepts it and ranks by it.
    config = load_config(out / "decide.yaml")
    assert config.decide.score == result["chosen"]["score"] and config.decide.top_k == 10
    ranked_path, metrics_path = tmp_path / "ranked.parquet", tmp_path / "m.json"
    assert main(["rank", str(run_dir), str(feed_files["valid"]), "--group", "request_id", "--out", str(ranked_path),
                 "--config", str(out / "decide.yaml"), "--metrics", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics["score"] == result["chosen"]["score"]
    assert metrics["convert@10"] == pytest.approx(result["objective"]["chosen"])

    # Seeded: the same command gives the same search.
    again = tmp_path / "again"
    assert main(_tune(run_dir, feed_files["valid"], again, "--baseline", "click")) == 0
    assert json.loads((again / "result.json").read_text()) == result


def test_tune_decision_with_a_template_and_range(run_dir, feed_files, tmp_path):
    out = tmp_path / "tuned"
    # At w_c = 0 the template is the baseline itself, so the constraint can always be met.
    assert main(_tune(run_dir, feed_files["valid"], out, "--template", f"{SCORE} + w_c * convert",
                      "--range", "w_c=0:20")) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["baseline"]["score"] == SCORE  # the run's decide.score
    assert 0 <= result["chosen"]["weights"]["w_c"] <= 20
    assert result["chosen"]["score"] == f"{SCORE} + {result['chosen']['weights']['w_c']:g} * convert"


@pytest.mark.parametrize("extra, message", [
    (["--objective", "conversions@10"], r"unknown metric 'conversions@10'; did you mean 'convert@10'\?"),
    (["--constraint", "click@10 => baseline"], r"--constraint must look like METRIC >= BOUND"),
    (["--constraint", "click@10 >= 0.98*baselin"], r"unknown name 'baselin' at position 5"),
    (["--constraint", "click@10 >= 2*baseline"], r"no trial of 15 met the constraints"),
    (["--template", "clik * convert^w_c"], r"--template: unknown name 'clik'.*\(a weight's name starts with w_\)"),
    (["--template", "click * convert"], r"--template has no weight to search"),
    (["--range", "w_x=0:1"], r"--range must name a weight of the template \['w_convert', 'w_dwell'\]"),
    (["--range", "w_dwell=2:1"], r"LOW and HIGH must be numbers with LOW \+ 0.01 <= HIGH"),
    (["--trials", "0"], r"--trials must be a positive integer"),
])
def test_tune_decision_errors(run_dir, feed_files, tmp_path, capsys, extra, message):
    out = tmp_path / "tuned"
    assert main(_tune(run_dir, feed_files["valid"], out) + extra) == 2
    assert re.search(message, _error_line(capsys))
    assert not out.exists()


def test_python_rank_matches_the_cli(run_dir, feed_files, tmp_path):
    from multikpi import rank

    out = tmp_path / "ranked.parquet"
    argv = ["rank", str(run_dir), str(feed_files["test"]), "--group", "request_id", "--out", str(out),
            "--top-k", "3", "--score", "click * convert^0.5"]
    assert main(argv) == 0
    table = rank(run_dir, feed_files["test"], "request_id", top_k=3, score="click * convert^0.5")
    assert table.equals(pq.read_table(out))
    assert int(np.sum(table.column("in_top_k").to_numpy(zero_copy_only=False))) > 0


def test_rank_metrics_use_evaluate_s_rows_and_write_strict_json(feed_files, tiny_config, tmp_path):
    """A `train_on` task is scored on its parent's positives, as evaluate does; NaN metrics are null."""
    tiny_config["tasks"]["convert"]["train_on"] = "click"
    run_dir = train(tiny_config).run_dir
    metrics_path, out = tmp_path / "m.json", tmp_path / "r.parquet"
    args = ["rank", str(run_dir), "DATA", "--group", "request_id", "--out", str(out), "--score", "click * convert",
            "--top-k", "3", "--metrics", str(metrics_path)]
    assert main([str(feed_files["valid"]) if a == "DATA" else a for a in args]) == 0
    metrics = json.loads(metrics_path.read_text())
    table = pq.read_table(feed_files["valid"])
    estimates = Predictor.load(run_dir).predict(table, keep=[])
    scores = estimates.column("click").to_numpy() * estimates.column("convert").to_numpy()
    click = table.column("click").to_numpy().astype(float)
    labels = {"click": click, "dwell": table.column("dwell").to_numpy().astype(float),
              "convert": np.where(click == 1, table.column("convert").to_numpy().astype(float), np.nan)}
    kinds = {"click": "binary", "dwell": "regression", "convert": "binary"}
    expected = ranking_metrics(rank_groups(table.column("request_id").to_numpy(), scores), scores, labels, kinds, 3)
    assert metrics["gauc_convert"] == pytest.approx(expected["gauc_convert"])
    assert metrics["skipped_gauc_convert"] == expected["skipped_gauc_convert"]

    unclicked = tmp_path / "unclicked.parquet"  # no click at all: every click / convert gAUC is NaN
    pq.write_table(table.filter(pc.equal(table.column("click"), 0)), unclicked)
    out.unlink()
    metrics_path.unlink()
    assert main([str(unclicked) if a == "DATA" else a for a in args]) == 0

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    metrics = json.loads(metrics_path.read_text(), parse_constant=refuse)
    assert metrics["gauc_click"] is None and metrics["gauc_convert"] is None and metrics["ndcg_click@3"] is None


def test_rank_null_groups_are_an_error_their_own_group_or_dropped(run_dir, feed_files, tmp_path, capsys):
    table = pq.read_table(feed_files["test"])
    groups = table.column("request_id").to_numpy().astype(object)
    groups[:7] = None  # seven rows of unknown request
    data = tmp_path / "nulls.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("request_id"), "request_id",
                                    pa.array(groups.tolist(), pa.int64())), data)
    out = tmp_path / "r.parquet"
    base = ["rank", str(run_dir), str(data), "--group", "request_id", "--out", str(out)]
    assert main(base) == 2
    assert "has 7 null value(s); every row needs a group (--null-group own ranks them as one group" in _error_line(capsys)
    assert not out.exists()

    assert main(base + ["--null-group", "drop"]) == 0
    dropped = pq.read_table(out)
    assert dropped.num_rows == table.num_rows - 7 and dropped.column("request_id").null_count == 0

    assert main(base + ["--null-group", "own"]) == 0
    own = pq.read_table(out)
    assert own.num_rows == table.num_rows
    is_null = own.column("request_id").is_null().to_numpy(zero_copy_only=False)
    assert is_null[-7:].all() and not is_null[:-7].any()  # the null group sorts last ...
    assert own.column("rank").to_numpy()[-7:].tolist() == list(range(1, 8))  # ... ranked among themselves
    scores = own.column("score").to_numpy()[-7:]
    assert np.all(np.diff(scores) <= 0)
    # the other groups are ranked exactly as without the null rows
    assert own.filter(pc.invert(own.column("request_id").is_null())).equals(dropped)


def test_a_retrained_run_never_keeps_the_old_model_s_decision(feed_files, tiny_config, tmp_path):
    """tune-decision's default output is inside the run directory, which a retrain replaces whole."""
    config_path, run = tmp_path / "config.yaml", tmp_path / "run"
    config_path.write_text(yaml.safe_dump(tiny_config))
    assert main(["train", str(config_path), "--out-dir", str(run)]) == 0
    assert main(["tune-decision", str(run), str(feed_files["valid"]), "--group", "request_id",
                 "--objective", "convert@5", "--trials", "3"]) == 0
    assert (run / "tune-decision" / "decide.yaml").is_file()
    assert main(["train", str(config_path), "--out-dir", str(run), "train.seed=1", "--overwrite"]) == 0
    assert not (run / "tune-decision").exists()
    assert (run / "metrics.json").is_file()
