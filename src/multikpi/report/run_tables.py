"""The tables of a run's report, as HTML through the one table renderer (report/tables.py)."""
from __future__ import annotations

from typing import Any

from multikpi.report.run_report import RunReport
from multikpi.report.tables import format_value, render_table

METRIC_ORDER = ("auc", "logloss", "calibration", "pos_rate", "mean_pred", "cvr_auc_on_clicked",
                "cvr_logloss_on_clicked", "rmse", "mae", "pearson")


def headline_metrics(report: RunReport) -> list[str]:
    """Per task its main metric on test (else valid), e.g. "click auc 0.7412 (test)": AUC for binary
    tasks, Pearson (on the transformed scale when there is one) for regression tasks."""
    splits = report.metrics.splits
    split = next((s for s in ("test", "valid", "train") if s in splits), None)
    if split is None:
        return []
    facts = []
    for task, kind in report.tasks.items():
        values = splits[split].get(task, {})
        transform = report.label_stats[task]["transform"]
        metric = "auc" if kind == "binary" else ("pearson" if transform == "none" else f"pearson_{transform}")
        if metric in values:
            facts.append(f"{task} {metric} {format_value(values[metric])}")
    return [f"{fact} ({split})" for fact in facts]


def task_table(report: RunReport) -> str:
    header = ["task", "kind", "label", "transform", "train_on", "inputs_from"]
    rows = [[task, spec["kind"], spec["label"], spec.get("transform", "none"), spec.get("train_on") or "",
             ", ".join(spec.get("inputs_from", []))] for task, spec in report.config["tasks"].items()]
    return render_table(header, rows, style="html")


def metrics_table(report: RunReport) -> str:
    """One row per split and task; the metric columns any task has, in a fixed order, then count."""
    splits = report.metrics.splits
    present = {m for tasks in splits.values() for values in tasks.values() for m in values}
    columns = [m for m in METRIC_ORDER if m in present]
    columns += sorted(m for m in present if m not in columns and m != "count") + ["count"]
    rows = [[split, task] + [values.get(c) for c in columns]
            for split in ("train", "valid", "test") if split in splits
            for task, values in splits[split].items()]
    return render_table(["split", "task"] + columns, rows, style="html")


def calibration_table(report: RunReport, split: str | None) -> str | None:
    if split is None:
        return None
    block = (report.metrics.calibration or {})[split]
    rows = [[task, entry["count"], entry.get("ece_raw"), entry.get("ece_isotonic"), entry.get("ece_platt"),
             report.metrics.splits.get(split, {}).get(task, {}).get("calibration")]
            for task, entry in block.items()]
    header = ["task", "rows", "ECE raw", "ECE isotonic", "ECE platt", "calibration ratio (raw)"]
    return render_table(header, rows, style="html")


def coverage_table(report: RunReport) -> str | None:
    coverage = report.metrics.label_coverage
    if not coverage:
        return None
    rows = []
    for split, tasks in coverage.items():
        for task, c in tasks.items():
            positives = c["positives"] if report.tasks.get(task) == "binary" else None
            rows.append([split, task, c["rows"], c["labelled"], c["masked_by_train_on"], c["missing"], positives,
                         f"{100 * c['labelled'] / max(c['rows'], 1):.1f}%"])
    header = ["split", "task", "rows", "with a label", "masked by train_on", "no label", "positives", "share labelled"]
    return render_table(header, rows, style="html")


def data_tables(report: RunReport) -> dict[str, Any] | None:
    """{"rows": rows per split, "vocabulary": per categorical column, "dense": [...]} or None."""
    summary = report.metrics.data_summary
    if not summary:
        return None
    splits = list(summary["rows"])
    vocab_rows = [[column, entry["size"]] + [_percent(entry["oov_rate"].get(s)) for s in splits]
                  for column, entry in summary["vocabulary"].items()]
    data = report.config.get("data", {})
    return {
        "rows": render_table(["split", "rows", "file"], [[s, n, data.get(s, "")] for s, n in summary["rows"].items()],
                             style="html"),
        "vocabulary": render_table(["categorical column", "vocabulary (ids)"] + [f"out-of-vocabulary, {s}"
                                                                                 for s in splits],
                                   vocab_rows, style="html"),
        "dense": ", ".join(summary["dense"]) or "none",
        "log1p": ", ".join(data.get("log1p", [])) or "none",
        "missing_indicators": ", ".join(summary["missing_indicators"]) or "none",
        "min_frequency": data.get("min_frequency", 1),
    }


def timing_table(report: RunReport) -> str:
    rows: list[list[Any]] = [[e["epoch"], e["seconds"], e["examples_per_second"]] for e in report.epochs]
    timing = report.metrics.timing
    rows.append(["whole run (data, training, metrics, calibration)", timing.get("total_seconds"), None])
    return render_table(["epoch", "seconds", "training examples / s"], rows, style="html")


def decision_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """What the page says about tune-decision's choice: formulas, objective and constraints."""
    objective = summary["objective"]
    constraints = [f"{c['constraint']}: {format_value(c['chosen'])} (threshold {format_value(c['threshold'])}, "
                   f"{'met' if c['met'] else 'NOT met'})" for c in summary.get("constraints", [])]
    return {"template": summary["template"], "chosen_score": summary["chosen"]["score"],
            "baseline_score": summary["baseline"]["score"], "objective": objective["metric"],
            "objective_chosen": format_value(objective["chosen"]),
            "objective_baseline": format_value(objective["baseline"]),
            "constraints": constraints, "trials": summary["trials"], "feasible": summary["feasible_trials"]}


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"
