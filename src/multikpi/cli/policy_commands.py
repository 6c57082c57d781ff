"""The `evaluate-policy` subcommand (docs/deciding.md): what a ranking by a formula would do on
each KPI, estimated from logged data, with confidence intervals. Its parser is in decide_parsers.py."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from multikpi.artifacts.files import write_json
from multikpi.decide.estimators import ESTIMATOR_NAMES
from multikpi.decide.policy_eval import (
    LogColumns,
    PolicyEvaluator,
    click_task,
    estimator_inputs,
    policy_report,
    support_warnings,
)
from multikpi.decide.score import Candidates, decide_spec, evaluate_scores, load_candidates, score_formula
from multikpi.errors import DataError
from multikpi.formula import parse_formula
from multikpi.report.policy import policy_text
from multikpi.serve.predictor import Predictor

logger = logging.getLogger("multikpi")


def evaluate_policy(args: argparse.Namespace) -> None:
    _check_numbers(args)
    predictor = Predictor.load(args.run_dir)
    decide = decide_spec(predictor, args.config)
    formula = score_formula(decide, predictor.tasks, args.score)
    baseline = None
    if args.baseline is not None:
        baseline = parse_formula(args.baseline, predictor.tasks, what="--baseline", source="evaluate-policy",
                                 kind="tasks")
    columns = LogColumns(args.position, args.examination, args.propensity)
    candidates, evaluator = build_evaluator(predictor, args.logs, args.group, args.click, columns, args.k,
                                            args.resamples, args.seed, decide.calibration)
    estimator = _usable_estimator(args.estimator, evaluator.estimators)
    target = evaluator.estimate(candidates.rank(evaluate_scores(formula, candidates)).ranks)
    base = evaluator.logged() if baseline is None else \
        evaluator.estimate(candidates.rank(evaluate_scores(baseline, candidates)).ranks)
    report = policy_report(evaluator, target, base, estimator, args.level)
    problems = support_warnings(target, "the target", args.k)
    if baseline is not None:
        problems += support_warnings(base, "the baseline", args.k)
    report.update(target={"score": formula.text}, warnings=problems,
                  baseline={"score": baseline.text if baseline is not None else None,
                            "policy": "formula" if baseline is not None else "logged"},
                  logs=str(args.logs), group=args.group)
    if args.json:
        write_json(Path(args.json), report)
    for problem in problems:
        logger.warning("evaluate-policy: %s", problem)
    what = f"baseline {baseline.text!r}" if baseline is not None else "the logging policy (its logged value)"
    print(policy_text(report, formula.text, what, str(args.logs)))


def build_evaluator(predictor: Predictor, logs: str, group: str, click: str | None, columns: LogColumns,
                    k: int, resamples: int, seed: int, calibration: str) -> tuple[Candidates, PolicyEvaluator]:
    """Read LOGS (features, labels, logging columns), predict, and build the PolicyEvaluator."""
    task = click_task({t: s.kind for t, s in predictor.config.tasks.items()}, click, "evaluate-policy")
    keep = [columns.position, columns.examination, columns.exam_propensity]
    candidates = load_candidates(predictor, logs, group, calibration, with_labels=True, keep=keep)
    rows, rewards = estimator_inputs(predictor, candidates, task, columns, str(logs))
    return candidates, PolicyEvaluator(logs=rows, rewards_hat=rewards, k=k, resamples=resamples, seed=seed)


def _usable_estimator(name: str, available: tuple[str, ...]) -> str:
    if name in available:
        return name
    logger.warning("evaluate-policy: --estimator %s needs propensities; the lift uses dm instead", name)
    return "dm"


def _check_numbers(args: argparse.Namespace) -> None:
    if args.k < 1:
        raise DataError(f"--k must be a positive integer. Got {args.k}")
    if args.resamples < 10:
        raise DataError(f"--resamples must be at least 10. Got {args.resamples}")
    if not 0.5 <= args.level < 1.0:
        raise DataError(f"--level must be in [0.5, 1). Got {args.level}")
    if args.estimator not in ESTIMATOR_NAMES:  # argparse checks the choices; the API may not
        raise DataError(f"--estimator must be one of {', '.join(ESTIMATOR_NAMES)}. Got {args.estimator!r}")
