"""The report's figures, drawn with matplotlib's object-oriented API (no pyplot state) into PNG
bytes: the plumbing, and the figures of training (losses, valid metrics, combiner weights).
The evaluation figures are in eval_figures.py.

Every figure is at most 11 inches wide at 100 dpi (1,100 px: a laptop screen), names the tasks
as the config does, and colours each task the same everywhere.
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from multikpi.extras import import_extra
from multikpi.report.run_report import RunReport

DPI = 100
WIDTH = 11.0  # inches
PANEL_HEIGHT = 2.9
MAX_COLUMNS = 4
COMBINER_NOTES = {
    "sum": "sum: every weight is 1",
    "weighted": "weighted: the fixed loss.weights",
    "uncertainty": "uncertainty (Kendall et al. 2018): weight = exp(−s), ½·exp(−s) for regression; σ² = exp(s)",
    "gradnorm": "GradNorm (Chen et al. 2018): the learned weight w",
    "dwa": "DWA (Liu et al. 2019): λ, from the ratio of the last two periods' losses",
}

WEIGHT_TITLES = {"gradnorm": "GradNorm weight w per task", "dwa": "DWA weight λ per task"}


@dataclass(frozen=True)
class Figure:
    """One PNG of the report: `key` is its HTML id, `width` × `height` its size in pixels."""

    key: str
    title: str
    caption: str
    png: bytes
    width: int
    height: int

    @property
    def src(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class Margins:
    """Space around and between the panels, in inches (a fixed layout: matplotlib's constrained
    layout costs about 40 % more time per figure, and the report has a time budget)."""

    left: float = 0.75
    right: float = 0.2
    top: float = 0.45
    bottom: float = 0.55
    between_columns: float = 0.85
    between_rows: float = 0.8


def new_figure(rows: int, cols: int, panel_height: float = PANEL_HEIGHT, width: float = WIDTH,
               margins: Margins = Margins()) -> tuple[Any, Any]:
    """A matplotlib Figure (width × rows·panel_height + 0.4 inches) with a rows × cols grid of axes
    (always a 2-D array)."""
    matplotlib = import_extra("matplotlib", "multikpi report")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure as MplFigure

    height = panel_height * rows + 0.4
    fig = MplFigure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False)
    axes_width = (width - margins.left - margins.right - (cols - 1) * margins.between_columns) / cols
    axes_height = (height - margins.top - margins.bottom - (rows - 1) * margins.between_rows) / rows
    fig.subplots_adjust(left=margins.left / width, right=1 - margins.right / width, bottom=margins.bottom / height,
                        top=1 - margins.top / height, wspace=margins.between_columns / axes_width,
                        hspace=margins.between_rows / axes_height)
    return fig, axes


def finish(fig: Any, key: str, title: str, caption: str) -> Figure:
    """Render `fig` to PNG bytes."""
    sink = io.BytesIO()
    fig.savefig(sink, format="png", dpi=DPI)
    width, height = (int(round(v)) for v in fig.get_size_inches() * DPI)
    return Figure(key=key, title=title, caption=caption, png=sink.getvalue(), width=width, height=height)


def figure_legend(fig: Any, ax: Any) -> None:
    """One legend above the panels, from the entries of `ax` (task colours aside, the panels share them)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncols=len(handles), fontsize=8, frameon=False)


def task_colors(tasks: list[str]) -> dict[str, str]:
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    return {task: palette[i % len(palette)] for i, task in enumerate(tasks)}


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average that skips NaN (a step without a label of the task)."""
    if window <= 1 or values.size == 0:
        return values
    finite = np.isfinite(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
    counts = np.convolve(finite.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def step_axis(ax: Any, report: RunReport, with_label: bool) -> None:
    """An x axis of global steps (integer ticks) with dotted lines at the epoch boundaries and a
    green line at the end of the kept epoch."""
    ax.set_xlabel("step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ends = report.epoch_end_steps()
    for epoch, step in ends.items():
        if epoch != max(ends):
            ax.axvline(step, color="0.7", lw=0.8, ls=":")
    if report.kept_epoch in ends:
        ax.axvline(ends[report.kept_epoch], color="tab:green", lw=1.2, ls="--",
                   label=f"kept: epoch {report.kept_epoch}" if with_label else None)


def loss_unit(report: RunReport, task: str) -> str:
    stats = report.label_stats[task]
    if stats["kind"] == "binary":
        return "BCE (log loss)"
    return "MSE, standardized" + ("" if stats["transform"] == "none" else f" {stats['transform']}") + " target"


def loss_figure(report: RunReport) -> Figure:
    """Row 1: raw per-task loss; row 2: weighted by the combiner. Train per step (faint) and
    smoothed, valid at each epoch end, on the global-step axis."""
    tasks = list(report.tasks)
    colors = task_colors(tasks)
    fig, axes = new_figure(2, len(tasks), margins=Margins(top=0.65))
    steps = report.steps()
    ends = report.epoch_end_steps()
    weight_at_step = {task: dict(zip(steps.tolist(), report.step_weights(task, "weight"))) for task in tasks}
    for col, task in enumerate(tasks):
        raw, weighted = report.step_losses(task)
        epochs, valid = report.valid_loss(task)
        valid_steps = np.array([ends.get(int(e), 0) for e in epochs])
        valid_weighted = valid * np.array([weight_at_step[task].get(int(s), math.nan) for s in valid_steps])
        unit = loss_unit(report, task)
        _loss_panel(axes[0, col], report, (steps, raw), (valid_steps, valid), colors[task])
        _label(axes[0, col], f"{task}: raw loss", "step", unit)
        _loss_panel(axes[1, col], report, (steps, weighted), (valid_steps, valid_weighted), colors[task])
        _label(axes[1, col], f"{task}: weight × loss", "step", "weight × loss")
    figure_legend(fig, axes[0, 0])
    combine = report.config.get("loss", {}).get("combine", "sum")
    return finish(fig, "losses", "Losses per task",
                  f"Top: each task's raw training loss; bottom: the same weighted by the combiner "
                  f"({COMBINER_NOTES.get(combine, combine)}). Valid points are the loss of the valid split "
                  f"at each epoch end; dotted lines are epoch boundaries.")


def _loss_panel(ax: Any, report: RunReport, train: tuple[np.ndarray, np.ndarray],
                valid: tuple[np.ndarray, np.ndarray], color: str) -> None:
    steps, values = train
    window = max(1, steps.size // 40)
    if window > 1:
        ax.plot(steps, values, color=color, alpha=0.25, lw=0.7, label="train, per step")
    ax.plot(steps, smooth(values, window), color=color, lw=1.6,
            label=f"train, moving mean of {window} steps" if window > 1 else "train, per step")
    if valid[1].size:
        ax.plot(valid[0], valid[1], "o--", color="black", ms=4, lw=1, label="valid, at epoch end")
    step_axis(ax, report, with_label=True)
    ax.grid(alpha=0.3)


def _label(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel, fontsize=8)


def metric_names(report: RunReport, task: str) -> list[tuple[str, str]]:
    """(metric key, axis label) pairs of a task's valid-metric panels: AUC and log loss for binary
    tasks; RMSE in label units and Pearson (on the transformed scale when there is one) for regression."""
    stats = report.label_stats[task]
    if stats["kind"] == "binary":
        return [("auc", "AUC"), ("logloss", "log loss")]
    pearson = "pearson" if stats["transform"] == "none" else f"pearson_{stats['transform']}"
    return [("rmse", f"RMSE ({stats['label']} units)"), (pearson, "Pearson r")]


LOWER_IS_BETTER = ("logloss", "rmse")


def metric_figure(report: RunReport) -> Figure:
    """Per task, the valid metrics over the epochs, with the kept epoch (and each task's own best
    epoch, when early stopping recorded it) marked."""
    tasks = list(report.tasks)
    colors = task_colors(tasks)
    fig, axes = new_figure(2, len(tasks), panel_height=2.6, margins=Margins(left=0.85, between_columns=1.0))
    for col, task in enumerate(tasks):
        for row, (metric, label) in enumerate(metric_names(report, task)):
            _metric_panel(axes[row, col], report, task, metric, label, colors[task])
    return finish(fig, "valid-metrics", "Valid metrics per epoch",
                  "Each task's metrics on the valid split at the end of every epoch. The star marks the "
                  "epoch whose model the run kept.")


def _metric_panel(ax: Any, report: RunReport, task: str, metric: str, label: str, color: str) -> None:
    best = (report.metrics.selection or {}).get("per_task_best_epoch", {})
    epochs, values = report.valid_metric(task, metric)
    ax.plot(epochs, values, "o-", color=color, ms=4)
    kept = epochs == report.kept_epoch
    if kept.any():
        ax.plot(epochs[kept], values[kept], "*", color="tab:green", ms=14, label=f"kept: epoch {report.kept_epoch}")
    if task in best and (epochs == best[task]).any():
        own = epochs == best[task]
        ax.plot(epochs[own], values[own], "o", mfc="none", mec="tab:red", ms=11,
                label=f"{task}'s best: epoch {best[task]}")
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    _label(ax, f"{task}: valid {metric} ({better} is better)", "epoch", label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if kept.any() or task in best:
        ax.legend(fontsize=7, loc="best")


def weights_figure(report: RunReport) -> Figure:
    """The combiner's effective weight per task over the steps; for uncertainty weighting also
    σ² = exp(log_var); and the learning rate of every optimizer group."""
    tasks = list(report.tasks)
    colors = task_colors(tasks)
    combine = report.config.get("loss", {}).get("combine", "sum")
    panels = ["weight"] + (["sigma2"] if combine == "uncertainty" else []) + ["lr"]
    fig, axes = new_figure(1, len(panels), panel_height=3.0)
    steps = report.steps()
    for ax, panel in zip(axes[0], panels):
        if panel == "lr":
            for group, lrs in report.step_learning_rates().items():
                ax.plot(steps, lrs, lw=1.2, label=group)
            ax.set_title("learning rate per optimizer group", fontsize=10)
            ax.set_ylabel("learning rate")
            ax.set_yscale("log")
        else:
            for task in tasks:
                values = report.step_weights(task, "weight") if panel == "weight" else \
                    np.exp(report.step_weights(task, "log_var"))
                ax.plot(steps, values, color=colors[task], lw=1.4, label=task)
            ax.set_title(WEIGHT_TITLES.get(combine, "effective loss weight") if panel == "weight"
                         else "uncertainty σ² = exp(log_var)", fontsize=10)
            ax.set_ylabel("weight" if panel == "weight" else "σ² (standardized units)")
        step_axis(ax, report, with_label=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return finish(fig, "weights", f"Loss combiner: {combine}",
                  f"{COMBINER_NOTES.get(combine, combine)}. Weights as the combiner reported them after each step.")
