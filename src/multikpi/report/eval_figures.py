"""The report's figures of the trained model: reliability diagrams, regression residuals, MMoE/PLE
gate usage and label coverage. Each returns None when the run has nothing to draw."""
from __future__ import annotations

from typing import Any

import numpy as np

from multikpi.report.figures import Figure, Margins, finish, new_figure, step_axis, task_colors
from multikpi.report.run_report import RunReport

CALIBRATION_CURVES = (("reliability", "raw", "ece_raw", "black"),
                      ("reliability_isotonic", "isotonic", "ece_isotonic", "tab:orange"),
                      ("reliability_platt", "platt", "ece_platt", "tab:blue"))


def calibration_split(report: RunReport) -> str | None:
    block = report.metrics.calibration or {}
    return next((s for s in ("test", "valid") if block.get(s)), None)


def calibration_figure(report: RunReport) -> Figure | None:
    """Per binary task: mean label against mean prediction in equal-mass bins, raw and calibrated
    (isotonic, Platt), with each curve's ECE, and the calibration ratio in the title."""
    split = calibration_split(report)
    if split is None:
        return None
    block = report.metrics.calibration[split]  # type: ignore[index]
    tasks = [t for t in report.tasks if t in block]
    fig, axes = new_figure(1, len(tasks), panel_height=3.6, width=min(11.0, 3.7 * len(tasks)),
                           margins=Margins(top=0.6, between_columns=0.9))
    for ax, task in zip(axes[0], tasks):
        entry = block[task]
        top = 0.0
        for key, name, ece, color in CALIBRATION_CURVES:
            if key in entry:
                pred, label = entry[key]["bin_mean_pred"], entry[key]["bin_mean_label"]
                ax.plot(pred, label, "o-", color=color, ms=3.5, lw=1.2, label=f"{name}: ECE {entry[ece]:.4f}")
                top = max(top, *pred, *label)
        top = top * 1.05 or 1.0
        ax.plot([0, top], [0, top], color="0.6", ls="--", lw=1, label="perfectly calibrated")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_aspect("equal")
        ratio = report.metrics.splits.get(split, {}).get(task, {}).get("calibration")
        ax.set_title(f"{task} ({split}, {entry['count']:,} rows)" +
                     (f"\ncalibration ratio {ratio:.3f}" if ratio is not None else ""), fontsize=10)
        ax.set_xlabel("mean predicted probability (bin)")
        ax.set_ylabel("observed rate (bin)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    bins = (report.metrics.calibration or {}).get("bins", {}).get("count", 10)
    return finish(fig, "calibration", "Reliability of the binary tasks",
                  f"{bins} equal-mass bins of the {split} rows sorted by prediction. Calibrators are fitted on "
                  f"valid. Calibration ratio = mean prediction / mean label (raw); ECE = Σ (n_b/N)·|pred_b − label_b|.")


def regression_figure(report: RunReport) -> Figure | None:
    """Per regression task: mean label against mean prediction per bin of prediction; the
    residual quantiles per bin; the histogram of residuals; all in label units."""
    block = report.metrics.regression_bins
    if not block or not block.get("tasks"):
        return None
    tasks = list(block["tasks"])
    colors = task_colors(list(report.tasks))
    fig, axes = new_figure(len(tasks), 3, panel_height=3.1)
    for row, task in enumerate(tasks):
        entry, unit = block["tasks"][task], f"{report.label_stats[task]['label']} units"
        _predicted_vs_actual(axes[row, 0], task, entry, unit, colors[task])
        _residual_bands(axes[row, 1], task, entry, unit, colors[task])
        _residual_histogram(axes[row, 2], task, entry, unit, colors[task])
    return finish(fig, "regression", "Regression tasks: predicted vs actual and residuals",
                  f"On the {block['split']} split, in label units (standardization and transform undone). "
                  f"Bins: {len(block['tasks'][tasks[0]]['bin_count'])} equal-mass bins of rows sorted by prediction. "
                  f"Residual = label − prediction. With a log1p transform the prediction is expm1 of the "
                  f"predicted log1p value, about the median rather than the mean of the label.")


def _predicted_vs_actual(ax: Any, task: str, entry: dict, unit: str, color: str) -> None:
    pred, label = entry["bin_mean_pred"], entry["bin_mean_label"]
    top = max(*pred, *label) * 1.05
    low = min(0.0, *pred, *label)
    ax.plot([low, top], [low, top], color="0.6", ls="--", lw=1, label="prediction = label")
    ax.plot(pred, label, "o-", color=color, ms=3.5, label="bin means")
    ax.set_title(f"{task}: predicted vs actual ({entry['count']:,} rows)", fontsize=10)
    ax.set_xlabel(f"mean prediction ({unit})")
    ax.set_ylabel(f"mean label ({unit})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def _residual_bands(ax: Any, task: str, entry: dict, unit: str, color: str) -> None:
    pred = np.array(entry["bin_mean_pred"])
    q = dict(zip(entry["quantiles"], np.array(entry["residual_quantiles"])))
    ax.fill_between(pred, q[0.1], q[0.9], color=color, alpha=0.18, label="10–90%")
    ax.fill_between(pred, q[0.25], q[0.75], color=color, alpha=0.35, label="25–75%")
    ax.plot(pred, q[0.5], color=color, lw=1.6, label="median")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_title(f"{task}: residual by prediction", fontsize=10)
    ax.set_xlabel(f"mean prediction ({unit})")
    ax.set_ylabel(f"label − prediction ({unit})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def _residual_histogram(ax: Any, task: str, entry: dict, unit: str, color: str) -> None:
    hist = entry["residual_histogram"]
    edges = np.array(hist["edges"])
    ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color=color, alpha=0.7)
    ax.axvline(0, color="0.4", lw=0.8)
    ax.axvline(entry["residual_mean"], color="black", ls="--", lw=1, label=f"mean {entry['residual_mean']:.3g}")
    ax.set_title(f"{task}: residuals (1st–99th percentile)", fontsize=10)
    ax.set_xlabel(f"label − prediction ({unit})")
    ax.text(0.98, 0.72, f"outside the range:\n{hist['below']:,} below, {hist['above']:,} above", fontsize=7,
            ha="right", va="top", transform=ax.transAxes)
    ax.set_ylabel("rows")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def expert_names(report: RunReport, experts: int) -> list[str]:
    """Column names of gate_usage: mmoe's experts; ple's task-specific experts, then the shared ones."""
    model = report.config.get("model", {})
    if model.get("arch") == "ple":
        own = int(model.get("num_specific_experts", 1))
        return [f"own {i + 1}" for i in range(own)] + [f"shared {i + 1}" for i in range(experts - own)]
    return [f"expert {i + 1}" for i in range(experts)]


def gates_figure(report: RunReport) -> Figure | None:
    """Task × expert heatmap of the mean gate weight over the last epoch, and each expert's load
    (its mean weight over the tasks)."""
    usage = report.metrics.gate_usage
    if not usage:
        return None
    tasks = list(usage)
    weights = np.array([usage[t] for t in tasks])
    names = expert_names(report, weights.shape[1])
    fig, axes = new_figure(1, 2, panel_height=0.35 * len(tasks) + 1.7,
                           margins=Margins(left=1.0, bottom=0.9, between_columns=1.6))
    ax = axes[0, 0]
    image = ax.imshow(weights, cmap="viridis", vmin=0, vmax=max(float(weights.max()), 1e-9), aspect="auto")
    for (i, j), value in np.ndenumerate(weights):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                color="white" if value < 0.6 * weights.max() else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_title("mean gate weight (task × expert), last epoch", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="gate weight")
    load = weights.mean(axis=0)
    bars = axes[0, 1]
    bars.bar(names, load, color="tab:gray")
    bars.axhline(1.0 / len(names), color="tab:red", ls="--", lw=1, label=f"uniform 1/{len(names)}")
    bars.set_title("expert load: mean gate weight over the tasks", fontsize=10)
    bars.set_ylabel("mean gate weight")
    bars.tick_params(axis="x", labelrotation=30, labelsize=8)
    bars.grid(alpha=0.3, axis="y")
    bars.set_ylim(0, 1.3 * max(float(load.max()), 1.0 / len(names)))  # room for the legend above the bars
    bars.legend(fontsize=7, loc="upper right")
    arch = report.config.get("model", {}).get("arch", "")
    return finish(fig, "gates", f"{arch}: gate usage",
                  "Each row sums to 1: how much of the task's tower input comes from each expert "
                  "(batch mean, over the last epoch). An expert with load near 0 is unused."
                  + (" For ple, 'own' experts are each task's own." if arch == "ple" else ""))


def gates_over_steps_figure(report: RunReport) -> Figure | None:
    """Per task, each expert's batch-mean gate weight over the steps: did the gates settle."""
    gates = report.step_gates()
    if not gates:
        return None
    tasks = list(gates)
    steps = report.gate_steps()
    cols = min(len(tasks), 4)
    fig, axes = new_figure((len(tasks) + cols - 1) // cols, cols, panel_height=2.6)
    names = expert_names(report, next(iter(gates.values())).shape[1])
    for k, task in enumerate(tasks):
        ax = axes[k // cols, k % cols]
        for j, name in enumerate(names):
            ax.plot(steps, gates[task][:, j], lw=1.1, label=name)
        step_axis(ax, report, with_label=False)
        ax.set_title(f"{task}: gate weight per expert", fontsize=10)
        ax.set_ylabel("batch-mean gate weight")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7, ncols=2, loc="upper right")
    for k in range(len(tasks), axes.size):
        axes[k // cols, k % cols].set_visible(False)
    return finish(fig, "gates-over-steps", "Gate weights over training", "Each line is one expert's share of "
                  "the task's gate, averaged over the batch, at every step.")


def coverage_figure(report: RunReport, split: str = "train") -> Figure | None:
    """Per task, the rows of `split` with a label, masked by train_on, and without a label."""
    coverage = (report.metrics.label_coverage or {}).get(split)
    if not coverage:
        return None
    tasks = [t for t in report.tasks if t in coverage]
    parts = (("labelled", "with a label", "tab:green"), ("masked_by_train_on", "masked by train_on", "tab:orange"),
             ("missing", "no label", "0.75"))
    fig, axes = new_figure(1, 1, panel_height=0.45 * len(tasks) + 1.5, width=9.0,
                           margins=Margins(left=1.1, top=0.7))
    ax = axes[0, 0]
    left = np.zeros(len(tasks))
    for key, label, color in parts:
        values = np.array([coverage[t][key] / max(coverage[t]["rows"], 1) for t in tasks])
        ax.barh(tasks, values, left=left, color=color, label=label)
        for i, v in enumerate(values):
            if v > 0.06:
                ax.text(left[i] + v / 2, i, f"{100 * v:.1f}%", ha="center", va="center", fontsize=8)
        left += values
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of the {coverage[tasks[0]]['rows']:,} {split} rows")
    ax.set_title(f"label coverage per task ({split})", fontsize=10, loc="left")
    ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3, frameon=False)
    return finish(fig, "coverage", "Label coverage", "Rows that train each task: with a label, rows whose label "
                  "is ignored because the train_on parent is not 1, and rows without a label.")
