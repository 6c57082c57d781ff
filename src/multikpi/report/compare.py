"""The `compare` table: per-task mean ± std over seeds, and the gain over single_task."""
from __future__ import annotations

import math
from typing import Any

from multikpi.report.tables import render_table


def render_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table, one row per (arch, task)."""
    seeds = result["seeds"]
    lines = [f"Per-task {result['split']} metrics over {len(seeds)} seed(s) {seeds}: "
             "mean ± std (sample std over seeds).", ""]
    with_gain = result["baseline"] is not None
    header = ["arch", "task", "metric", "mean ± std"]
    if with_gain:
        header += ["gain vs single_task", "gain %", "negative transfer"]
    rows = []
    for row in result["rows"]:
        cells = [row["arch"], row["task"], row["metric"], f"{row['mean']:.4f} ± {_fmt_std(row['std'])}"]
        rows.append(cells + (_gain_cells(row) if with_gain else []))
    lines += [render_table(header, rows, style="markdown"), ""]
    if with_gain:
        lines.append("Gain: paired by seed, arch − single_task. Negative transfer: the gain is below 0 by more "
                     "than one std of the per-seed gains (with one seed: below 0).")
    else:
        lines.append("single_task is not among the archs: no MTL gain columns (add it to --archs to get them).")
    return "\n".join(lines) + "\n"


def _gain_cells(row: dict[str, Any]) -> list[str]:
    if "gain" not in row:
        return ["–", "–", ""]
    flag = "yes" if row["negative_transfer"] else ""
    return [f"{row['gain']:+.4f} ± {_fmt_std(row['gain_std'])}", f"{row['gain_pct']:+.2f}%", flag]


def _fmt_std(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"
