"""`multikpi report`: one self-contained HTML file (PNG figures embedded as data: URIs, CSS inline,
no script, no network) of a finished run directory or of a `compare` directory, rendered with the
Jinja2 templates in report/templates/."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import yaml

from multikpi._version import __version__
from multikpi.artifacts.files import write_atomic
from multikpi.errors import ArtifactError, ReportError
from multikpi.extras import import_extra
from multikpi.report.compare_report import compare_page, load_compare
from multikpi.report.eval_figures import (
    calibration_figure,
    calibration_split,
    coverage_figure,
    gates_figure,
    gates_over_steps_figure,
    regression_figure,
)
from multikpi.report.figures import Figure, loss_figure, metric_figure, weights_figure
from multikpi.report.run_report import RunReport, load_run_report
from multikpi.report.run_tables import (
    calibration_table,
    coverage_table,
    data_tables,
    decision_summary,
    headline_metrics,
    metrics_table,
    task_table,
    timing_table,
)
from multikpi.report.tables import render_table

REPORT_NAME = "report.html"


def write_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of `directory` (a run directory, or a directory written by `compare`) to
    `out` (default: DIRECTORY/report.html), atomically. Returns the path written."""
    directory = Path(directory)
    target = Path(out) if out is not None else directory / REPORT_NAME
    if target.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"--out must name an .html file. Got {str(target)!r}")
    if (directory / "compare.json").is_file():
        page = render_page("compare.html.j2", compare_page(load_compare(directory)))
    elif (directory / "metrics.json").is_file():
        page = render_page("run.html.j2", run_page(load_run_report(directory)))
    elif not directory.is_dir():
        raise ArtifactError(f"run directory {str(directory)!r} does not exist")
    else:
        raise ReportError(f"{str(directory)!r} must be a finished run directory (with metrics.json) or a "
                          f"directory written by `multikpi compare` (with compare.json). Got neither")
    write_atomic(target, page.encode("utf-8"))
    return target


def render_page(template: str, context: dict[str, Any]) -> str:
    jinja2 = import_extra("jinja2", "multikpi report")
    env = jinja2.Environment(loader=jinja2.PackageLoader("multikpi.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return env.get_template(template).render(version=__version__, generated=stamp, **context)


def run_figures(report: RunReport) -> list[Figure]:
    """Every figure the run has data for, in the order of the page."""
    figures = [loss_figure(report), metric_figure(report), weights_figure(report), calibration_figure(report),
               regression_figure(report), gates_figure(report), gates_over_steps_figure(report),
               coverage_figure(report)]
    if report.decision is not None:
        png = report.decision.pareto_png
        figures.append(Figure(key="pareto", title="tune-decision: Pareto front", png=png,
                              caption="Every trial of the fusion-weight search; the front, the baseline and the "
                                      "chosen trial (from tune-decision/pareto.png).",
                              width=int.from_bytes(png[16:20], "big"), height=int.from_bytes(png[20:24], "big")))
    return [f for f in figures if f is not None]


def run_page(report: RunReport) -> dict[str, Any]:
    """The template context of a run's report."""
    figures = {f.key: f for f in run_figures(report)}
    model = report.config.get("model", {})
    decision = report.decision
    return {
        "title": f"Run report: {report.run_dir}",
        "headline_metrics": headline_metrics(report),
        "run_dir": str(report.run_dir.resolve()),
        "headline": {"arch": model.get("arch", "shared_bottom"), "combine": report.config.get("loss", {}).get(
            "combine", "sum"), "epochs": len(report.epochs), "kept_epoch": report.kept_epoch,
            "steps": report.history[-1]["step"] if report.history else 0,
            "seconds": report.metrics.timing.get("total_seconds")},
        "figures": figures,
        "tasks_table": task_table(report),
        "metrics_table": metrics_table(report),
        "calibration_table": calibration_table(report, calibration_split(report)),
        "coverage_table": coverage_table(report),
        "data_tables": data_tables(report),
        "timing_table": timing_table(report),
        "decision": None if decision is None else {
            "summary": decision_summary(decision.summary),
            "tradeoff_table": render_table(decision.header, decision.rows, style="html")},
        "config_yaml": yaml.safe_dump(report.config, sort_keys=False),
    }
