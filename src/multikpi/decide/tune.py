"""tune-decision: search the weights of a fusion formula on labelled (validation) data.

A *template* is a formula whose names are task names and weights; a weight is any name that
starts with `w_` (so that a misspelt task name is still an error, not a new weight). The default
template is a product of powers anchored on the first binary task:

    click * dwell^w_dwell * convert^w_convert

Ranking by a product of powers is the same as ranking by sum_k w_k log p_k, and multiplying all
exponents by one positive number leaves the ranking unchanged; fixing the anchor's exponent at 1
removes that redundant direction. Each weight is searched on [0, 3] in steps of 0.01 (`--range
w_dwell=0:5` changes one), with Optuna's TPE sampler (multivariate, seeded: a fixed --seed gives
the same trials). When 0 lies in every range, the first trial is all weights at 0 (for the
default template: rank by the anchor alone, the usual baseline).

The objective (maximised) and the constraints name ranking metrics (multikpi.decide.ranking):
`convert@10`, `ndcg_click@10`, `gauc_click`, ... A constraint reads `METRIC >= BOUND` or
`METRIC <= BOUND`, where BOUND is a formula of numbers and `baseline`, the metric's value when
ranking by the baseline score (the run's `decide.score`, else the first binary task):
`click@10 >= 0.98*baseline`. The chosen trial is the feasible one with the highest objective;
among equals, the one best on the constrained metrics in turn, then the earliest. Constraints also
steer the sampler (constrained TPE).

With an off-policy estimator (`PolicyMetrics`: ips, snips, dm, dr) the metrics are instead that
estimator's `<task>@k`, the bounds of its interval `<task>@k.lcb` / `<task>@k.ucb`, and the
weights' `support@k` and `ess@k`: `click@10.lcb >= 0.98*baseline` asks that the lower bound of the
click estimate clear 98% of the baseline's estimate.
"""
from __future__ import annotations

import difflib
import logging
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from multikpi.decide.policy_eval import PolicyMetrics
from multikpi.decide.ranking import ranking_metrics
from multikpi.decide.score import Candidates, evaluate_scores
from multikpi.errors import ConfigError, DataError
from multikpi.extras import import_extra
from multikpi.formula import Formula, FormulaError, parse_formula

logger = logging.getLogger("multikpi")

DEFAULT_RANGE = (0.0, 3.0)
STEP = 0.01
WEIGHT_PREFIX = "w_"
_METRIC = r"[A-Za-z_][A-Za-z0-9_]*(?:@\d+)?(?:\.(?:lcb|ucb))?"
_CONSTRAINT = re.compile(rf"^\s*(?P<metric>{_METRIC})\s*(?P<op>>=|<=|≥|≤)\s*(?P<bound>.*?)\s*$")
_RANGE = re.compile(r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<low>[^:]+):(?P<high>.+?)\s*$")
_COUNTS = ("groups", "rows", "k")


@dataclass(frozen=True)
class Template:
    """A formula with weights, and each weight's search range (low, high)."""

    formula: Formula
    ranges: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Constraint:
    """`metric op bound`, with `bound` a formula of numbers and `baseline`."""

    text: str
    metric: str
    op: str  # ">=" or "<="
    bound: Formula

    def threshold(self, baseline: dict[str, float]) -> float:
        """The bound, with `baseline` the baseline's value of the metric; for an interval bound
        (`click@10.lcb`) the baseline's estimate itself (`click@10`)."""
        return float(self.bound.evaluate({"baseline": baseline[point_metric(self.metric)]}, rows=1)[0])

    def violation(self, metrics: dict[str, float], baseline: dict[str, float]) -> float:
        """How far `metrics` is from meeting the constraint: <= 0 when it is met."""
        gap = self.threshold(baseline) - metrics[self.metric]
        return gap if self.op == ">=" else -gap


@dataclass(frozen=True)
class Trial:
    number: int
    params: dict[str, float]
    metrics: dict[str, float]
    violations: tuple[float, ...]

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.violations)


@dataclass(frozen=True)
class TuneResult:
    """Everything tune-decision reports. `front`: trial numbers on the Pareto front of
    `front_metrics` (maximising the objective and `>=` metrics, minimising `<=` metrics)."""

    template: str
    objective: str
    constraints: tuple[Constraint, ...]
    k: int
    baseline_formula: str
    baseline: dict[str, float]
    trials: tuple[Trial, ...]
    chosen: Trial
    chosen_formula: str
    chosen_metrics: dict[str, float]
    front_metrics: tuple[str, ...]
    front_directions: tuple[int, ...]
    front: tuple[int, ...]
    estimator: str = "naive"


def default_template(kinds: Mapping[str, str]) -> str:
    """`anchor * task^w_task * ...` with the first binary task (else the first task) as anchor."""
    tasks = list(kinds)
    anchor = next((t for t in tasks if kinds[t] == "binary"), tasks[0])
    return " * ".join([anchor] + [f"{t}^{WEIGHT_PREFIX}{t}" for t in tasks if t != anchor])


def parse_template(text: str, tasks: list[str], ranges: list[str] | tuple[str, ...] = ()) -> Template:
    """Parse a template (weights = names starting with `w_`) and its `NAME=LOW:HIGH` ranges."""
    weights = sorted({n for n in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)
                      if n.startswith(WEIGHT_PREFIX) and n not in tasks})
    try:
        formula = parse_formula(text, tasks + weights, what="--template", source="tune-decision", kind="names")
    except FormulaError as err:
        hint = f" (a weight's name starts with {WEIGHT_PREFIX})" if "unknown name" in err.detail else ""
        raise FormulaError(err.detail + hint, what="--template", source="tune-decision") from None
    if not weights:
        raise ConfigError([f"--template has no weight to search: name each one {WEIGHT_PREFIX}<something>, e.g. "
                           f"'{tasks[0]} * {tasks[-1]}^{WEIGHT_PREFIX}{tasks[-1]}'. Got {text!r}"],
                          source="tune-decision")
    bounds = {w: DEFAULT_RANGE for w in weights}
    for item in ranges:
        name, low, high = _parse_range(item, weights)
        bounds[name] = (low, high)
    return Template(formula, bounds)


def _parse_range(item: str, weights: list[str]) -> tuple[str, float, float]:
    match = _RANGE.match(item)
    problem = None
    if match is None:
        problem = f"--range must look like NAME=LOW:HIGH, e.g. {weights[0]}=0:5. Got {item!r}"
    elif match["name"] not in weights:
        problem = f"--range must name a weight of the template {weights}. Got {match['name']!r}"
    else:
        try:
            low, high = float(match["low"]), float(match["high"])
        except ValueError:
            low = high = math.nan
        if not (math.isfinite(low) and math.isfinite(high) and low + STEP <= high):
            problem = f"--range {match['name']}: LOW and HIGH must be numbers with LOW + {STEP} <= HIGH. Got {item!r}"
    if problem:
        raise ConfigError([problem], source="tune-decision")
    assert match is not None  # a None match set `problem` above
    return match["name"], low, high


def parse_constraint(text: str) -> Constraint:
    """`click@10 >= 0.98*baseline` -> Constraint. The metric name is checked later, against the data."""
    match = _CONSTRAINT.match(text)
    if match is None or not match["bound"]:
        raise ConfigError([f"--constraint must look like METRIC >= BOUND or METRIC <= BOUND, e.g. "
                           f"'click@10 >= 0.98*baseline'. Got {text!r}"], source="tune-decision")
    op = {"≥": ">=", "≤": "<="}.get(match["op"], match["op"])
    bound = parse_formula(match["bound"], ["baseline"], what=f"--constraint {text!r}: the bound",
                          source="tune-decision", kind="names")
    return Constraint(text, match["metric"], op, bound)


def point_metric(name: str) -> str:
    """The estimate an interval bound belongs to: `click@10.lcb` -> `click@10`; others unchanged."""
    return name.rsplit(".", 1)[0] if name.endswith((".lcb", ".ucb")) else name


def metric_k(name: str) -> int | None:
    """The cut-off of a metric name (`click@10` -> 10, `click@10.lcb` -> 10), or None (`gauc_click`)."""
    _, at, k = name.partition("@")
    return int(k.partition(".")[0]) if at else None


def candidate_metrics(candidates: Candidates, scores: np.ndarray, kinds: Mapping[str, str],
                      ks: list[int], policy: PolicyMetrics | None = None) -> dict[str, float]:
    """Every metric of `scores` at each cut-off in `ks`, in one flat dict: the ranking metrics of
    the re-sorted labels, or with `policy` its off-policy estimates."""
    if policy is not None:
        return policy.metrics(candidates.rank(scores).ranks, ks)
    if candidates.labels is None:
        raise DataError("ranking metrics need the label columns of the tasks in the data file")
    ranking = candidates.rank(scores)
    out: dict[str, float] = {}
    for k in ks:
        metrics = ranking_metrics(ranking, scores, candidates.labels, kinds, k)
        out.update({n: v for n, v in metrics.items() if n not in _COUNTS and not n.startswith("skipped_")})
    return out


def check_metrics(names: list[str], available: dict[str, float]) -> None:
    """ConfigError for a metric name that the ranking metrics do not have, with a suggestion."""
    problems = []
    for name in dict.fromkeys(names):
        if name in available:
            if not math.isfinite(available[name]):
                problems.append(f"metric {name!r} is undefined on this data (no group has a positive label)")
            continue
        hint = difflib.get_close_matches(name, list(available), n=1)
        choices = f"did you mean {hint[0]!r}? " if hint else ""
        problems.append(f"unknown metric {name!r}; {choices}metrics are {', '.join(sorted(available))}")
    if problems:
        raise ConfigError(problems, source="tune-decision")


def tune_decision(candidates: Candidates, kinds: Mapping[str, str], template: Template, objective: str,
                  constraints: list[Constraint], baseline_formula: Formula, trials: int, seed: int,
                  policy: PolicyMetrics | None = None) -> TuneResult:
    """Search the template's weights with TPE; see the module docstring. The metrics are the
    re-sorted labels' ranking metrics, or with `policy` its off-policy estimates. Raises DataError
    when no trial meets the constraints."""
    if candidates.labels is None:
        raise DataError("tune-decision needs the label columns of the tasks in the data file")
    zero = [n for n in [objective] + [c.metric for c in constraints] if metric_k(n) == 0]
    if zero:
        raise ConfigError([f"a metric's cut-off k must be >= 1. Got {zero}"], source="tune-decision")
    constraint_ks = [k for c in constraints if (k := metric_k(c.metric))]
    k = metric_k(objective) or next(iter(constraint_ks), 10)
    ks = sorted({k, *constraint_ks})
    baseline = candidate_metrics(candidates, evaluate_scores(baseline_formula, candidates), kinds, ks, policy)
    check_metrics([objective] + [c.metric for c in constraints], baseline)
    for constraint in constraints:
        if not math.isfinite(constraint.threshold(baseline)):
            raise ConfigError([f"--constraint {constraint.text!r}: the bound is not a finite number"],
                              source="tune-decision")

    def evaluate(params: dict[str, float]) -> tuple[dict[str, float], tuple[float, ...]]:
        metrics = candidate_metrics(candidates, evaluate_scores(template.formula, candidates, params), kinds, ks,
                                    policy)
        return metrics, tuple(c.violation(metrics, baseline) for c in constraints)

    done = _search(template, objective, evaluate, trials, seed, bool(constraints))
    feasible = [t for t in done if t.feasible]
    if not feasible:
        closest = min(done, key=lambda t: max(t.violations))
        raise DataError(f"no trial of {len(done)} met the constraints {[c.text for c in constraints]}; the closest "
                        f"(trial {closest.number}) missed by {max(closest.violations):.4g}: loosen them or raise "
                        f"--trials")
    names, directions = _front_metrics(objective, constraints, kinds, k)
    chosen = max(feasible, key=lambda t: tuple(t.metrics[n] * d for n, d in zip(names, directions)) + (-t.number,))
    chosen_text = template.formula.substitute(chosen.params)
    chosen_formula = parse_formula(chosen_text, list(kinds), what="the chosen score", source="tune-decision")
    return TuneResult(
        template=template.formula.text, objective=objective, constraints=tuple(constraints), k=k,
        baseline_formula=baseline_formula.text, baseline=baseline, trials=tuple(done), chosen=chosen,
        chosen_formula=chosen_text,
        chosen_metrics=candidate_metrics(candidates, evaluate_scores(chosen_formula, candidates), kinds, ks, policy),
        front_metrics=names, front_directions=directions, front=pareto_front(done, names, directions),
        estimator=policy.estimator if policy is not None else "naive")


def _search(template: Template, objective: str, evaluate, trials: int, seed: int,
            constrained: bool) -> list[Trial]:
    """Run the Optuna study; one Trial per finished trial, in order. The constraint violations
    reach TPE through `Trial.set_constraint` (Optuna >= 5) or `constraints_func` (older)."""
    optuna = import_extra("optuna", "tune-decision")

    results: list[Trial] = []
    set_constraint = hasattr(optuna.trial.Trial, "set_constraint")

    def run_trial(trial: Any) -> float:  # an optuna.Trial
        params = {}
        for name, (low, high) in template.ranges.items():
            steps = math.floor((high - low) / STEP + 1e-9)
            params[name] = round(trial.suggest_float(name, low, low + steps * STEP, step=STEP), 6)
        metrics, violations = evaluate(params)
        if set_constraint:
            for i, violation in enumerate(violations):
                trial.set_constraint(f"constraint_{i}", violation)
        trial.set_user_attr("violations", list(violations))
        results.append(Trial(trial.number, params, metrics, violations))
        return metrics[objective]

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            extra = {} if set_constraint or not constrained else \
                {"constraints_func": lambda t: t.user_attrs["violations"]}
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, **extra)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            if all(low <= 0 <= high and abs(low / STEP - round(low / STEP)) < 1e-9
                   for low, high in template.ranges.values()):
                study.enqueue_trial({name: 0.0 for name in template.ranges})
            study.optimize(run_trial, n_trials=trials)
    finally:
        optuna.logging.set_verbosity(previous)
    return results


def _front_metrics(objective: str, constraints: list[Constraint], kinds: Mapping[str, str],
                   k: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The metrics of the trade-off: the objective and the constrained metrics; when there is no
    constraint, the objective and every task's `<task>@k`. Direction +1 = higher is better."""
    names = {objective: 1}
    for constraint in constraints:
        names.setdefault(constraint.metric, 1 if constraint.op == ">=" else -1)
    if len(names) == 1:
        for task in kinds:
            names.setdefault(f"{task}@{k}", 1)
    return tuple(names), tuple(names.values())


def pareto_front(trials: list[Trial] | tuple[Trial, ...], names: tuple[str, ...],
                 directions: tuple[int, ...]) -> tuple[int, ...]:
    """Numbers of the trials that no other trial dominates (at least as good on every metric and
    better on one). Of trials with identical metrics only the earliest is kept."""
    if not trials:
        return ()
    values = np.array([[t.metrics[n] * d for n, d in zip(names, directions)] for t in trials])
    front, seen = [], set()
    for i, trial in enumerate(trials):
        row = values[i]
        dominated = np.any(np.all(values >= row, axis=1) & np.any(values > row, axis=1))
        key = tuple(row)
        if not dominated and key not in seen:
            seen.add(key)
            front.append(trial.number)
    return tuple(front)
