"""The report of a `multikpi compare` directory (compare.json): per task, each arch's main metric
as mean ± std over the seeds; the gain over single_task with negative transfer flagged; and, for
archs with gates, the mean gate usage over the seeds."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multikpi.errors import ArtifactError
from multikpi.report.figures import Figure, Margins, finish, new_figure
from multikpi.report.tables import render_table

ARCH_COLORS = {"single_task": "0.55", "shared_bottom": "tab:blue", "mmoe": "tab:orange", "ple": "tab:green",
               "esmm": "tab:purple"}


@dataclass(frozen=True)
class Comparison:
    directory: Path
    result: dict[str, Any]  # compare.json

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(row["task"] for row in self.result["rows"]))

    def rows_of(self, task: str) -> list[dict[str, Any]]:
        return [row for row in self.result["rows"] if row["task"] == task]


def load_compare(directory: Path) -> Comparison:
    path = directory / "compare.json"
    try:
        result = json.loads(path.read_text())
        if not isinstance(result, dict) or not isinstance(result.get("rows"), list) or "archs" not in result:
            raise ValueError("no rows or archs")
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{str(path)!r} is not a compare result: {err}") from None
    return Comparison(directory, result)


def metric_bars_figure(comparison: Comparison) -> Figure:
    """One panel per task: each arch's mean (bar) ± sample std over seeds (error bar), the seeds as dots."""
    tasks = comparison.tasks
    fig, axes = new_figure(1, len(tasks), panel_height=3.4, margins=Margins(bottom=1.0))
    for ax, task in zip(axes[0], tasks):
        rows = comparison.rows_of(task)
        x = np.arange(len(rows))
        means = np.array([r["mean"] for r in rows])
        stds = np.nan_to_num(np.array([r["std"] for r in rows], dtype=np.float64))
        ax.bar(x, means, yerr=stds, capsize=4, color=[ARCH_COLORS.get(r["arch"], "tab:gray") for r in rows], alpha=0.85)
        for i, row in enumerate(rows):
            ax.plot([i] * len(row["values"]), row["values"], "o", color="black", ms=3, alpha=0.7)
        low = float(np.nanmin([v for r in rows for v in r["values"]] + list(means - stds)))
        high = float(np.nanmax([v for r in rows for v in r["values"]] + list(means + stds)))
        pad = max(high - low, 1e-3) * 0.6
        ax.set_ylim(low - pad, high + pad)
        ax.set_xticks(x, [r["arch"] for r in rows], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{task}: {rows[0]['metric']}", fontsize=10)
        ax.set_ylabel(f"{comparison.result['split']} {rows[0]['metric']} (higher is better)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    seeds = comparison.result["seeds"]
    return finish(fig, "compare-metrics", "Main metric per task and architecture",
                  f"Bars: mean over {len(seeds)} seed(s) {seeds}; error bars: sample std over the seeds; "
                  f"dots: each seed's run.")


def gain_figure(comparison: Comparison) -> Figure | None:
    """One panel per task: each arch's gain over single_task (mean ± std of the per-seed gains);
    red bars and a label where negative transfer is flagged."""
    if comparison.result.get("baseline") is None:
        return None
    tasks = comparison.tasks
    fig, axes = new_figure(1, len(tasks), panel_height=3.0, margins=Margins(left=1.1, between_columns=1.3))
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in comparison.rows_of(task) if "gain" in r]
        y = np.arange(len(rows))
        gains = np.array([r["gain"] for r in rows])
        errors = np.nan_to_num(np.array([r["gain_std"] for r in rows], dtype=np.float64))
        colors = ["tab:red" if r["negative_transfer"] else "tab:green" for r in rows]
        ax.barh(y, gains, xerr=errors, capsize=4, color=colors, alpha=0.85)
        for i, row in enumerate(rows):
            note = f"{row['gain_pct']:+.2f}%" + ("  negative transfer" if row["negative_transfer"] else "")
            ax.annotate(note, (0, i), xytext=(4, 9), textcoords="offset points", fontsize=7,
                        color="tab:red" if row["negative_transfer"] else "black")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, [r["arch"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{task}: gain vs single_task", fontsize=10)
        ax.set_xlabel(f"Δ {rows[0]['metric'] if rows else ''} (arch − single_task)", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    return finish(fig, "compare-gain", "Multi-task gain over single-task training",
                  "Per seed, gain = metric(arch) − metric(single_task) on the same data and seed; bars: the mean "
                  "gain, error bars: its std. Red: negative transfer (the mean gain is below 0 by more than one std).")


def compare_gates_figure(comparison: Comparison) -> Figure | None:
    """Per arch with gates: task × expert mean gate weight, averaged over the seeds."""
    usage = comparison.result.get("gate_usage") or {}
    if not usage:
        return None
    fig, axes = new_figure(1, len(usage), panel_height=0.45 * len(comparison.tasks) + 2.2,
                           width=min(11.0, 4.6 * len(usage)), margins=Margins(left=1.0, between_columns=1.4))
    for ax, (arch, per_seed) in zip(axes[0], usage.items()):
        tasks = list(per_seed[0])
        weights = np.mean([[seed[t] for t in tasks] for seed in per_seed], axis=0)
        image = ax.imshow(weights, cmap="viridis", vmin=0, aspect="auto")
        for (i, j), value in np.ndenumerate(weights):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 * weights.max() else "black")
        ax.set_xticks(range(weights.shape[1]), [str(j + 1) for j in range(weights.shape[1])])
        ax.set_xlabel("expert")
        ax.set_yticks(range(len(tasks)), tasks)
        ax.set_title(f"{arch}: mean gate weight ({len(per_seed)} seeds)", fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return finish(fig, "compare-gates", "Gate usage of the gated architectures",
                  "Mean over the seeds of each task's mean gate weight per expert in the last epoch.")


def compare_page(comparison: Comparison) -> dict[str, Any]:
    """The template context of a compare report."""
    result = comparison.result
    figures = [metric_bars_figure(comparison), gain_figure(comparison), compare_gates_figure(comparison)]
    with_gain = result.get("baseline") is not None
    header = ["arch", "task", "metric", "mean", "std", "seeds"] + (["gain", "gain std", "gain %", "negative transfer"]
                                                                   if with_gain else [])
    rows = []
    for row in result["rows"]:
        cells = [row["arch"], row["task"], row["metric"], row["mean"], _none_if_nan(row["std"]),
                 ", ".join(f"{v:.4f}" for v in row["values"])]
        if with_gain:
            cells += [row.get("gain"), _none_if_nan(row.get("gain_std")), row.get("gain_pct"),
                      "yes" if row.get("negative_transfer") else ""]
        rows.append(cells)
    return {"title": f"Compare report: {comparison.directory}", "directory": str(comparison.directory),
            "split": result["split"], "seeds": result["seeds"], "archs": result["archs"],
            "baseline": result.get("baseline"), "figures": {f.key: f for f in figures if f is not None},
            "table": render_table(header, rows, style="html"),
            "negative": [f"{r['arch']} on {r['task']}" for r in result["rows"] if r.get("negative_transfer")]}


def _none_if_nan(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
