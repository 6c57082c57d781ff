"""`multikpi report`: the data model against the run's own files and the losses' definitions, the
HTML (every figure embedded, nothing fetched, under 2 MB), compare reports, and the one-line errors.
The browser test is test_report_browser.py."""
from __future__ import annotations

import base64
import copy
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from multikpi.api.compare import summarize
from multikpi.artifacts.files import write_json, write_jsonl, write_yaml
from multikpi.artifacts.manifest import write_manifest
from multikpi.artifacts.metrics import RunMetrics
from multikpi.cli.main import main
from multikpi.config.load import config_from_dict
from multikpi.report.html_report import write_report
from multikpi.report.run_report import load_run_report
from multikpi.report.tables import format_value

RUN_FIGURES = {"losses", "valid-metrics", "weights", "calibration", "regression", "gates", "gates-over-steps",
               "coverage", "pareto"}
ERRORS_DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


class _Figures(HTMLParser):
    """The report-figure <img> tags (their attributes) and every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.add(tag)
        self.urls += [v for k, v in attributes.items() if k in ("src", "href") and v]
        if tag == "img" and "report-figure" in attributes.get("class", ""):
            self.images.append(attributes)


def _parse(path: Path) -> _Figures:
    parser = _Figures()
    parser.feed(path.read_text())
    return parser


def _png_size(data_uri: str) -> tuple[int, int]:
    png = base64.b64decode(data_uri.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


# --- a hand-written run directory: known losses, weights and metrics -------------------------------
TASKS = {"click": {"kind": "binary", "label": "click"},
         "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"}}


def _written_run(tmp_path: Path, selection: dict | None = None, optional: bool = True) -> Path:
    """3 epochs of 4 steps; dwell's loss weight doubles each epoch; the valid metrics are given."""
    run = tmp_path / "run"
    history = [{"step": 4 * (e - 1) + k, "epoch": e, "losses": {"click": 0.5 / e, "dwell": 1.0 / e},
                "total": 0.0, "weights": {"click": {"weight": 1.0, "log_var": 0.0},
                                          "dwell": {"weight": 0.5 * 2 ** (e - 1), "log_var": -0.1 * e}},
                "lr": {"shared": 1e-3}} for e in (1, 2, 3) for k in (1, 2, 3, 4)]
    epochs = [{"epoch": e, "seconds": 1.0, "examples_per_second": 1000.0, "train_loss": {"click": 0.5 / e},
               "valid": {"click": {"auc": 0.6 + 0.05 * e, "logloss": 0.5 - 0.05 * e},
                         "dwell": {"rmse": 10.0 - e, "rmse_log1p": 0.5 + 0.1 * e, "pearson_log1p": 0.3}}}
              for e in (1, 2, 3)]
    metrics = RunMetrics(splits={"test": {"click": {"auc": 0.71, "logloss": 0.4, "count": 100},
                                          "dwell": {"rmse": 8.0, "count": 50}}}, timing={"total_seconds": 3.0},
                         selection=selection)
    if optional:
        metrics.label_coverage = {"train": {"click": {"rows": 10, "labelled": 10, "masked_by_train_on": 0,
                                                      "missing": 0, "positives": 3},
                                            "dwell": {"rows": 10, "labelled": 6, "masked_by_train_on": 0,
                                                      "missing": 4, "positives": 0}}}
    config = {"data": {"train": "t.parquet"}, "tasks": TASKS, "loss": {"combine": "uncertainty"}}
    labels = {"click": {"kind": "binary", "label": "click", "transform": "none", "mean": 0.3, "std": 1.0,
                        "train_on": None},
              "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p", "mean": 1.0, "std": 0.5,
                        "train_on": None}}
    write_yaml(run / "config.yaml", config)
    metrics.save(run / "metrics.json")
    write_jsonl(run / "history.jsonl", history)
    write_jsonl(run / "train_log.jsonl", epochs)
    write_json(run / "encoders" / "encoders.json", {"categorical": [], "dense": {}, "labels": labels})
    write_manifest(run, [run / n for n in ("config.yaml", "metrics.json", "history.jsonl", "train_log.jsonl",
                                           "encoders/encoders.json")])
    return run


def test_series_of_a_written_run(tmp_path):
    report = load_run_report(_written_run(tmp_path))
    raw, weighted = report.step_losses("dwell")
    np.testing.assert_allclose(raw, np.repeat([1.0, 1 / 2, 1 / 3], 4))
    np.testing.assert_allclose(weighted, raw * np.repeat([0.5, 1.0, 2.0], 4))
    assert report.epoch_end_steps() == {1: 4, 2: 8, 3: 12}
    # the MSE on the standardized log1p target: (RMSE on the log1p scale / std)²
    epochs, valid = report.valid_loss("dwell")
    np.testing.assert_allclose(valid, ((0.5 + 0.1 * epochs) / 0.5) ** 2)
    np.testing.assert_allclose(report.valid_loss("click")[1], 0.5 - 0.05 * np.arange(1, 4))
    assert report.kept_epoch == 3  # no selection: the last epoch


def test_kept_epoch_comes_from_the_selection(tmp_path):
    selection = {"monitor": "valid.click.auc", "epoch": 2, "step": 8, "per_task_best_epoch": {"click": 3, "dwell": 1}}
    run = _written_run(tmp_path, selection=selection)
    assert load_run_report(run).kept_epoch == 2
    text = write_report(run).read_text()
    assert "kept <b>epoch 2</b>" in text


def test_expert_names_follow_the_gate_usage_order(tmp_path):
    from dataclasses import replace

    from multikpi.report.eval_figures import expert_names

    report = load_run_report(_written_run(tmp_path))
    ple = replace(report, config={**report.config, "model": {"arch": "ple", "num_specific_experts": 1}})
    assert expert_names(ple, 3) == ["own 1", "shared 1", "shared 2"]  # PLE.gate_usage: task-specific, then shared
    assert expert_names(report, 2) == ["expert 1", "expert 2"]


def test_a_run_written_before_the_optional_sections_still_has_a_report(tmp_path):
    from multikpi.api import report

    out = report(_written_run(tmp_path, optional=False), tmp_path / "old.html")
    assert out == tmp_path / "old.html"
    keys = {img["data-figure"] for img in _parse(out).images}
    assert keys == {"losses", "valid-metrics", "weights"}
    assert "has no data summary" in out.read_text()


def test_compare_report_bars_gain_and_negative_transfer(tmp_path):
    def metrics(click_auc: float, dwell_pearson: float) -> RunMetrics:
        return RunMetrics(splits={"test": {"click": {"auc": click_auc}, "dwell": {"pearson_log1p": dwell_pearson}}})

    config = config_from_dict({"data": {"train": "t.parquet", "dense": ["price"]}, "tasks": TASKS})
    runs = {"single_task": [metrics(0.70, 0.50), metrics(0.71, 0.51), metrics(0.72, 0.49)],
            "mmoe": [metrics(0.73, 0.40), metrics(0.74, 0.41), metrics(0.75, 0.39)]}
    result = summarize(config, runs, [0, 1, 2])
    write_json(tmp_path / "compare.json", result)
    out = write_report(tmp_path)
    parsed = _parse(out)
    assert {img["data-figure"] for img in parsed.images} == {"compare-metrics", "compare-gain"}
    text = out.read_text()
    assert "Negative transfer: mmoe on dwell." in text  # -0.10 ± 0.00 over 3 seeds; click gains +0.03
    assert re.search(r"<td>mmoe</td><td>click</td><td>auc</td><td class=\"num\">0\.7400</td>", text)


@pytest.mark.parametrize("case, target, out, expected", [
    ("report-no-run", "absent", None, r"run directory '.*absent' does not exist"),
    ("report-not-a-run", "empty", None, r"'.*empty' must be a finished run directory \(with metrics.json\) or a "
                                        r"directory written by `multikpi compare` \(with compare.json\). Got neither"),
    ("report-out-not-html", "empty", "report.png", r"--out must name an .html file. Got '.*report.png'"),
    ("report-incomplete-run", "incomplete", None, r"run directory '.*incomplete' has no manifest.json: the run did "
                                                  r"not finish"),
])
def test_report_errors_are_one_line(case, target, out, expected, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "incomplete").mkdir()
    (tmp_path / "incomplete" / "metrics.json").write_text("{}")
    argv = ["report", str(tmp_path / target)] + (["--out", str(tmp_path / out)] if out else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(expected, err), err
    assert not list(tmp_path.glob("**/*.html")) and not list(tmp_path.glob("**/*.png"))
    assert f"`{case}`" in ERRORS_DOC.read_text()


# --- a trained run (conftest.report_run: mmoe, uncertainty, train_on, tune-decision) ----------------
@pytest.mark.slow
def test_report_of_a_trained_run_embeds_every_figure_and_fetches_nothing(report_run, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(report_run), "--out", str(out)]) == 0
    assert f"report written to {out}" in capsys.readouterr().out
    parsed = _parse(out)
    assert {img["data-figure"] for img in parsed.images} == RUN_FIGURES
    for img in parsed.images:
        width, height = _png_size(img["src"])
        assert (width, height) == (int(img["width"]), int(img["height"]))
        assert 300 <= width <= 1280 and 200 <= height <= 1000, (img["data-figure"], width, height)
    assert all(url.startswith(("data:image/png;base64,", "#")) for url in parsed.urls)
    assert not parsed.tags & {"script", "link", "iframe"} and "url(" not in out.read_text()
    assert out.stat().st_size < 2_000_000
    text = out.read_text()
    metrics = json.loads((report_run / "metrics.json").read_text())
    assert f'<td>test</td><td>click</td><td class="num">{format_value(metrics["splits"]["test"]["click"]["auc"])}' in text
    decision = json.loads((report_run / "tune-decision" / "result.json").read_text())
    assert decision["chosen"]["score"] in text and "<td>chosen</td>" in text


@pytest.mark.slow
def test_valid_loss_is_the_training_loss_on_the_valid_split(report_run, feed_files):
    from multikpi.artifacts.run_dir import load_run
    from multikpi.data.tabular import open_columns
    from multikpi.losses.task_losses import task_losses

    run = load_run(report_run)
    data = run.encoder.encode(open_columns(feed_files["valid"], run.encoder.needed_columns()))
    # the history records the trained network; centring (training/centering.py) then shifts the
    # saved model's logits, so compare with those offsets taken out again
    assert torch.count_nonzero(run.model.output_offsets) > 0
    run.model.output_offsets.zero_()
    with torch.inference_mode():
        outputs = run.model.forward_features(data.categorical, data.dense)
    losses = task_losses(outputs, data.labels, {t: s.kind for t, s in run.config.tasks.items()})
    report = load_run_report(report_run)
    for task, loss in losses.items():  # the last epoch's network is the saved one
        assert report.valid_loss(task)[1][-1] == pytest.approx(float(loss), rel=1e-4)


@pytest.mark.slow
def test_stored_diagnostics_match_the_data_files(report_run, feed_files):
    from multikpi import Predictor

    metrics = RunMetrics.load(report_run / "metrics.json")
    valid = pq.read_table(feed_files["valid"]).to_pydict()
    click, convert = np.array(valid["click"], dtype=float), np.array(valid["convert"], dtype=float)
    coverage = metrics.label_coverage["valid"]["convert"]  # type: ignore[index]
    assert coverage["masked_by_train_on"] == int(np.sum(click != 1))
    assert coverage["labelled"] == int(np.sum((click == 1) & ~np.isnan(convert)))
    assert coverage["positives"] == int(np.sum((click == 1) & (convert == 1)))

    train_items = set(pq.read_table(feed_files["train"]).column("item_id").to_pylist())
    test_items = pq.read_table(feed_files["test"]).column("item_id").to_pylist()
    expected_oov = np.mean([item not in train_items for item in test_items])
    assert metrics.data_summary["vocabulary"]["item_id"]["oov_rate"]["test"] == pytest.approx(expected_oov)

    dwell = Predictor.load(report_run).predict(str(feed_files["test"])).column("dwell").to_numpy()
    label = np.array(pq.read_table(feed_files["test"]).column("dwell").to_pylist(), dtype=float)
    keep = ~np.isnan(label)
    order = np.argsort(dwell[keep], kind="stable")
    first_bin = np.array_split(order, 20)[0]
    stored = metrics.regression_bins["tasks"]["dwell"]  # type: ignore[index]
    assert stored["bin_mean_pred"][0] == pytest.approx(dwell[keep][first_bin].mean(), rel=1e-4)
    assert stored["bin_mean_label"][0] == pytest.approx(label[keep][first_bin].mean(), rel=1e-4)
    assert math.isclose(sum(stored["bin_count"]), keep.sum())


@pytest.mark.slow
def test_report_of_a_compare_directory_from_real_runs(tiny_config, tmp_path):
    from multikpi.api.compare import compare

    config = copy.deepcopy(tiny_config)
    config["model"]["num_experts"] = 2
    compare(config, ["single_task", "mmoe"], 2, tmp_path / "cmp")
    out = write_report(tmp_path / "cmp")
    assert {img["data-figure"] for img in _parse(out).images} == {"compare-metrics", "compare-gain", "compare-gates"}
    result = yaml.safe_load((tmp_path / "cmp" / "compare.json").read_text())
    for row in result["rows"]:
        assert f"<td>{row['arch']}</td><td>{row['task']}</td><td>{row['metric']}</td>" in out.read_text()


def test_the_report_command_loads_no_torch(tmp_path):
    """The report reads files only: `multikpi report` never imports torch (about 2 s of its budget)."""
    import subprocess
    import sys

    run = _written_run(tmp_path)
    code = (f"import sys; from multikpi.cli.main import main; assert main(['report', {str(run)!r}]) == 0; "
            f"print('torch' in sys.modules, 'matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split()[-2:] == ["False", "True"]
