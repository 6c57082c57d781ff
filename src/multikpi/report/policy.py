"""The tables of `multikpi evaluate-policy`: every estimator's estimate of the target's KPIs@k,
the lift against the baseline, and the importance weights' diagnostics."""
from __future__ import annotations

import math
from typing import Any

from multikpi.report.tables import render_table

LABELS = {"naive": "naive (biased)", "ips": "ips", "snips": "snips", "dm": "dm", "dr": "dr"}


def _cell(interval: dict[str, float], percent: bool = False) -> str:
    value, low, high = interval["value"], interval["low"], interval["high"]
    if not math.isfinite(value):
        return "–"
    if percent:
        return f"{100 * value:+.1f}% [{100 * low:+.1f}%, {100 * high:+.1f}%]"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"


def estimates_table(report: dict[str, Any]) -> str:
    """kpi, the logging policy's value, then each estimator's estimate for the target [interval]."""
    estimators = report["estimators"]
    header = ["kpi", "logged"] + [LABELS[e] for e in estimators]
    rows = [[kpi, _cell(entry["logged"])] + [_cell(entry["target"][e]) for e in estimators]
            for kpi, entry in report["kpis"].items()]
    return render_table(header, rows)


def lift_table(report: dict[str, Any]) -> str:
    """kpi, the baseline's and the target's value by the chosen estimator, and the lift."""
    estimator = report["estimator"]
    rows = []
    for kpi, entry in report["kpis"].items():
        baseline = entry["baseline"][estimator] if "baseline" in entry else entry["logged"]
        rows.append([kpi, _cell(baseline), _cell(entry["target"][estimator]), _cell(entry["lift"][estimator], True)])
    return render_table(["kpi", "baseline", "target", "lift"], rows)


def weights_table(report: dict[str, Any]) -> str:
    """The importance weights of the target (and the baseline ranking): pairs, support, ESS, max, mean."""
    rows = [[name, w["pairs"], f"{100 * w['support']:.1f}%", round(w["ess"]), w["max_weight"], w["mean_weight"]]
            for name, w in report["weights"].items()]
    return render_table(["ranking", "top-k pairs", "support", "ess", "max weight", "mean weight"], rows)


def policy_text(report: dict[str, Any], target: str, baseline: str, source: str) -> str:
    """The three tables with their headings, for the terminal."""
    level = f"{100 * report['level']:g}%"
    lines = [f"target {target!r} on {source}: {report['requests']:,} requests, {report['rows']:,} rows, "
             f"k = {report['k']}; {level} intervals from {report['resamples']:,} bootstrap resamples of the requests",
             estimates_table(report),
             "(naive: the logged labels re-sorted by the target score; biased toward the logging policy)",
             "", f"lift vs {baseline} ({report['estimator']}):", lift_table(report)]
    if report["weights"]:
        lines += ["", "importance weights (target / logger examination):", weights_table(report)]
    return "\n".join(lines)
