"""What tune-decision writes: the trade-off table (Markdown), every trial (CSV), the Pareto plot
(PNG), a summary (JSON) and the config with the chosen score (YAML). Each is built in memory as
bytes first, so that the command writes nothing when anything fails."""
from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import yaml

from multikpi.decide.tune import Trial, TuneResult
from multikpi.extras import import_extra
from multikpi.report.tables import render_table

MAX_TABLE_ROWS = 20
MAX_PANELS = 3


def summary(result: TuneResult) -> dict[str, Any]:
    """result.json: the chosen weights and formula, objective and constraints vs the baseline."""
    constraints = [{"constraint": c.text, "metric": c.metric, "threshold": c.threshold(result.baseline),
                    "baseline": result.baseline[c.metric], "chosen": result.chosen_metrics[c.metric],
                    "met": c.violation(result.chosen_metrics, result.baseline) <= 0} for c in result.constraints]
    return {
        "template": result.template,
        "estimator": result.estimator,
        "objective": {"metric": result.objective, "baseline": result.baseline[result.objective],
                      "chosen": result.chosen_metrics[result.objective]},
        "constraints": constraints,
        "chosen": {"trial": result.chosen.number, "weights": result.chosen.params, "score": result.chosen_formula,
                   "metrics": result.chosen_metrics},
        "baseline": {"score": result.baseline_formula, "metrics": result.baseline},
        "trials": len(result.trials),
        "feasible_trials": sum(t.feasible for t in result.trials),
        "pareto_metrics": list(result.front_metrics),
        "pareto_trials": list(result.front),
    }


def tradeoff_table(result: TuneResult) -> str:
    """Markdown: the baseline, then the Pareto-optimal trials by objective (best first), with the
    change against the baseline in parentheses; the chosen trial is marked."""
    weights = list(result.chosen.params)
    names = list(result.front_metrics)
    header = ["trial"] + weights + names + ["feasible", ""]
    base_cells = ["baseline"] + ["" for _ in weights] + [f"{result.baseline[n]:.4f}" + _bounds(result.baseline, n)
                                                         for n in names]
    table: list[list[str]] = [base_cells + ["yes", f"`{result.baseline_formula}`"]]
    by_number = {t.number: t for t in result.trials}
    rows = [by_number[n] for n in result.front]
    if result.chosen.number not in result.front:
        rows.append(result.chosen)
    rows.sort(key=lambda t: (-t.metrics[result.objective], t.number))
    if len(rows) > MAX_TABLE_ROWS:
        rows = [t for t in rows[:MAX_TABLE_ROWS] if t is not result.chosen] + \
               ([result.chosen] if result.chosen in rows[MAX_TABLE_ROWS:] else [])
    for trial in rows:
        cells = [str(trial.number)] + [f"{trial.params[w]:g}" for w in weights]
        cells += [_with_change(trial.metrics[n], result.baseline[n]) + _bounds(trial.metrics, n) for n in names]
        note = "**chosen**" if trial is result.chosen else ""
        table.append(cells + ["yes" if trial.feasible else "no", note])
    note = "" if result.estimator == "naive" else \
        f"\nMetrics estimated off-policy with {result.estimator}; [lcb, ucb] are 95% bootstrap intervals.\n"
    return render_table(header, table, style="markdown") + "\n" + note


def _bounds(metrics: dict[str, float], name: str) -> str:
    """` [lcb, ucb]` when the metrics hold an interval for `name` (an off-policy estimate)."""
    if f"{name}.lcb" not in metrics:
        return ""
    return f" [{metrics[name + '.lcb']:.4f}, {metrics[name + '.ucb']:.4f}]"


def _with_change(value: float, baseline: float) -> str:
    if baseline == 0:
        return f"{value:.4f}"
    return f"{value:.4f} ({100 * (value / baseline - 1):+.1f}%)"


def trials_csv(result: TuneResult) -> bytes:
    """One row per trial: number, weights, every metric, feasible, on_front."""
    trials = list(result.trials)
    metric_names = list(trials[0].metrics)
    columns: dict[str, list] = {"trial": [t.number for t in trials]}
    for name in result.chosen.params:
        columns[name] = [t.params[name] for t in trials]
    for name in metric_names:
        columns[name] = [t.metrics[name] for t in trials]
    columns["feasible"] = [t.feasible for t in trials]
    columns["on_front"] = [t.number in result.front for t in trials]
    sink = io.BytesIO()
    pacsv.write_csv(pa.table(columns), sink)
    return sink.getvalue()


def decide_config(run_config: dict[str, Any], result: TuneResult) -> bytes:
    """The run's config with `decide.score` set to the chosen formula and `decide.top_k` to k."""
    config = json.loads(json.dumps(run_config))
    config.setdefault("decide", {}).update({"score": result.chosen_formula, "top_k": result.k})
    head = (f"# Written by multikpi tune-decision: the run's config with the chosen decide.score.\n"
            f"# {result.objective}: {result.chosen_metrics[result.objective]:.4f} "
            f"(baseline {result.baseline[result.objective]:.4f}, score {result.baseline_formula!r}); "
            f"constraints: {', '.join(c.text for c in result.constraints) or 'none'}\n")
    return (head + yaml.safe_dump(config, sort_keys=False)).encode()


def pareto_png(result: TuneResult) -> bytes:
    """The objective (y) against each other trade-off metric (x), one panel per pair: every trial
    (feasible dots, infeasible crosses), the 2-D Pareto front of the feasible trials, the baseline,
    the chosen trial, and the constraint thresholds."""
    matplotlib = import_extra("matplotlib", "the Pareto plot of tune-decision")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = list(result.front_metrics[1:MAX_PANELS + 1])
    fig, axes = plt.subplots(1, len(others), figsize=(5.2 * len(others), 4.4), squeeze=False)
    for ax, other in zip(axes[0], others):
        _panel(ax, result, other)
    fig.suptitle(f"tune-decision: {result.template}  ({len(result.trials)} trials)", fontsize=10)
    fig.tight_layout()
    sink = io.BytesIO()
    fig.savefig(sink, format="png", dpi=110)
    plt.close(fig)
    return sink.getvalue()


def _panel(ax, result: TuneResult, other: str) -> None:
    from matplotlib.ticker import MaxNLocator

    objective = result.objective
    direction = result.front_directions[result.front_metrics.index(other)]
    feasible = [t for t in result.trials if t.feasible]
    infeasible = [t for t in result.trials if not t.feasible]
    ax.scatter([t.metrics[other] for t in feasible], [t.metrics[objective] for t in feasible],
               s=16, color="tab:blue", alpha=0.6, label="feasible trial")
    if infeasible:
        ax.scatter([t.metrics[other] for t in infeasible], [t.metrics[objective] for t in infeasible],
                   s=18, marker="x", color="tab:gray", alpha=0.7, label="infeasible trial")
    front = _front_2d(feasible, other, objective, direction)
    ax.plot([t.metrics[other] for t in front], [t.metrics[objective] for t in front], color="tab:orange",
            drawstyle="steps-post" if direction < 0 else "steps-pre", lw=1.5, label="Pareto front (feasible)")
    ax.scatter([result.baseline[other]], [result.baseline[objective]], s=70, marker="D", color="black",
               zorder=5, label=f"baseline: {result.baseline_formula}")
    ax.scatter([result.chosen_metrics[other]], [result.chosen_metrics[objective]], s=180, marker="*",
               color="tab:red", zorder=6, label=f"chosen (trial {result.chosen.number})")
    _interval_bars(ax, [t.metrics for t in result.trials], other, objective, "tab:blue", 0.2)
    _interval_bars(ax, [result.baseline], other, objective, "black", 0.8)
    _interval_bars(ax, [result.chosen_metrics], other, objective, "tab:red", 0.9)
    for constraint in result.constraints:
        if constraint.metric == other:
            ax.axvline(constraint.threshold(result.baseline), color="tab:red", ls="--", lw=1,
                       label=f"constraint {constraint.text}")
        elif constraint.metric == objective:
            ax.axhline(constraint.threshold(result.baseline), color="tab:red", ls="--", lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.ticklabel_format(useOffset=False)
    ax.set_xlabel(other + ("" if direction > 0 else " (lower is better)"))
    ax.set_ylabel(objective)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _interval_bars(ax, points: list[dict[str, float]], x: str, y: str, color: str, alpha: float) -> None:
    """Error bars from each point's interval bounds (`<metric>.lcb` / `.ucb`), on the axes that have them."""
    def errors(name: str) -> list[list[float]] | None:
        if f"{name}.lcb" not in points[0]:
            return None
        return [[p[name] - p[name + ".lcb"] for p in points], [p[name + ".ucb"] - p[name] for p in points]]

    xerr, yerr = errors(x), errors(y)
    if xerr is None and yerr is None:
        return
    ax.errorbar([p[x] for p in points], [p[y] for p in points], xerr=xerr, yerr=yerr, fmt="none",
                ecolor=color, alpha=alpha, lw=0.8, zorder=2)


def _front_2d(trials: list[Trial], x: str, y: str, direction: int) -> list[Trial]:
    """Trials not dominated on (x in `direction`, y up), sorted by x."""
    points = sorted(trials, key=lambda t: (t.metrics[x] * direction, t.metrics[y]), reverse=True)
    front, best_y = [], -float("inf")
    for trial in points:
        if trial.metrics[y] > best_y:
            front.append(trial)
            best_y = trial.metrics[y]
    return sorted(front, key=lambda t: t.metrics[x])
