"""The `rank` and `tune-decision` subcommands (docs/deciding.md; their parsers are in
decide_parsers.py); each command returns an exit code (None = 0). Everything is computed before
the first file is written, so a failing command leaves no output behind."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from multikpi.artifacts.files import nan_to_null, write_atomic, write_json
from multikpi.artifacts.outputs import check_output_path
from multikpi.config.load import config_from_dict
from multikpi.data.tabular import file_format, write_table
from multikpi.decide.policy_eval import LogColumns, PolicyMetrics, click_task, estimator_inputs
from multikpi.decide.ranking import ranking_metrics
from multikpi.decide.score import decide_spec, evaluate_scores, load_candidates, ranked_table, score_formula
from multikpi.decide.tune import TuneResult, default_template, parse_constraint, parse_template, tune_decision
from multikpi.errors import DataError
from multikpi.eval.calibration import resolve_method
from multikpi.formula import parse_formula
from multikpi.report.decision import decide_config, pareto_png, summary, tradeoff_table, trials_csv
from multikpi.report.tables import render_table
from multikpi.serve.predictor import Predictor


def rank(args: argparse.Namespace) -> None:
    file_format(args.out)
    check_output_path(args.out, "--out", [args.data], [args.run_dir])
    if args.metrics:
        check_output_path(args.metrics, "--metrics", [args.data, args.out], [args.run_dir])
    if args.top_k is not None and args.top_k < 1:
        raise DataError(f"--top-k must be a positive integer. Got {args.top_k}")
    predictor = Predictor.load(args.run_dir)
    decide = decide_spec(predictor, args.config)
    formula = score_formula(decide, predictor.tasks, args.score)
    top_k = args.top_k or decide.top_k
    candidates = load_candidates(predictor, args.data, args.group, decide.calibration, with_labels=bool(args.metrics),
                                 null_group=args.null_group)
    scores = evaluate_scores(formula, candidates)
    ids = [c for c in predictor.serving.id_columns if c in candidates.table.column_names]
    table = ranked_table(candidates, scores, args.group, top_k, ids)
    metrics = None
    if args.metrics:
        assert candidates.labels is not None  # read with_labels
        kinds = {t: s.kind for t, s in predictor.config.tasks.items()}
        metrics = {"score": formula.text, "calibration": resolve_method(decide.calibration, predictor.calibrators),
                   "group": args.group, **ranking_metrics(candidates.rank(scores), scores, candidates.labels,
                                                          kinds, top_k)}
    write_table(table, args.out)
    if metrics is not None:
        write_json(Path(args.metrics), metrics)
        print(_format_ranking_metrics(metrics, list(kinds)))
    print(f"ranked {table.num_rows:,} rows in {candidates.num_groups:,} groups of {args.group!r} by "
          f"{formula.text!r} (top {top_k} flagged); wrote {args.out}")


def _format_ranking_metrics(metrics: dict[str, Any], tasks: list[str]) -> str:
    k = metrics["k"]
    header = ["task", f"sum@{k}", f"ndcg@{k}", "gauc", "gauc_unw"]
    rows = [[task, metrics[f"{task}@{k}"], metrics[f"ndcg_{task}@{k}"], metrics.get(f"gauc_{task}"),
             metrics.get(f"gauc_{task}_unweighted")] for task in tasks]
    return render_table(header, rows) + f"\n({metrics['groups']:,} groups, {metrics['rows']:,} rows)"


def tune(args: argparse.Namespace) -> None:
    if args.trials < 1:
        raise DataError(f"--trials must be a positive integer. Got {args.trials}")
    if args.resamples < 10:
        raise DataError(f"--resamples must be at least 10. Got {args.resamples}")
    predictor = Predictor.load(args.run_dir)
    kinds = {t: s.kind for t, s in predictor.config.tasks.items()}
    tasks = list(kinds)
    template = parse_template(args.template or default_template(kinds), tasks, args.range)
    constraints = [parse_constraint(c) for c in args.constraint]
    baseline_text = args.baseline or predictor.config.decide.score or next(
        (t for t in tasks if kinds[t] == "binary"), tasks[0])
    baseline = parse_formula(baseline_text, tasks, what="--baseline", source="tune-decision", kind="tasks")
    columns = LogColumns(args.position, args.examination, args.propensity)
    keep = None if args.estimator == "naive" else \
        list(predictor.serving.id_columns) + [columns.position, columns.examination, columns.exam_propensity]
    candidates = load_candidates(predictor, args.data, args.group, predictor.config.decide.calibration,
                                 with_labels=True, keep=keep, null_group=args.null_group)
    policy = None
    if args.estimator != "naive":
        rows, rewards = estimator_inputs(predictor, candidates, click_task(kinds, args.click, "tune-decision"),
                                         columns, str(args.data))
        policy = PolicyMetrics(logs=rows, rewards_hat=rewards, estimator=args.estimator, resamples=args.resamples,
                               seed=args.seed)
    result = tune_decision(candidates, kinds, template, args.objective, constraints, baseline, args.trials, args.seed,
                           policy)

    run_config = predictor.config.model_dump(mode="json")
    config_bytes = decide_config(run_config, result)
    config_from_dict(yaml.safe_load(config_bytes), source="decide.yaml")  # what rank --config will read
    table = tradeoff_table(result)
    files = {"tradeoff.md": table.encode(), "trials.csv": trials_csv(result), "pareto.png": pareto_png(result),
             "result.json": json.dumps(nan_to_null(summary(result)), indent=1, allow_nan=False).encode(),
             "decide.yaml": config_bytes}
    # The default output lives in the run directory, outside its manifest: a retrain replaces the
    # whole directory, so a decision can never describe an older model than the run's.
    out = check_tune_output(args)
    for name, data in files.items():  # decide.yaml last: its presence means the others are complete
        write_atomic(out / name, data)
    print(table)
    print(_format_choice(result))
    print(f"wrote {', '.join(files)} to {out}")


def check_tune_output(args: argparse.Namespace) -> Path:
    if args.out is None:
        return Path(args.run_dir) / "tune-decision"
    out = Path(args.out)
    if out.resolve() == Path(args.run_dir).resolve() or (out.exists() and not out.is_dir()):
        raise DataError(f"--out {str(out)!r} must be a directory for the tune-decision files, not the run "
                        f"directory or a file")
    check_output_path(out / "result.json", "--out", [args.data], [args.run_dir])
    return out


def _format_choice(result: TuneResult) -> str:
    objective, chosen, base = result.objective, result.chosen_metrics, result.baseline
    change = f" ({100 * (chosen[objective] / base[objective] - 1):+.1f}%)" if base[objective] else ""
    lines = [f"chosen (trial {result.chosen.number} of {len(result.trials)}): {result.chosen_formula}",
             f"  {objective}: {chosen[objective]:.4f} vs baseline {base[objective]:.4f}{change} "
             f"[baseline score {result.baseline_formula!r}; estimator {result.estimator}]"]
    for c in result.constraints:
        met = "met" if c.violation(chosen, base) <= 0 else "NOT met"
        lines.append(f"  {c.text}: {chosen[c.metric]:.4f} {c.op} {c.threshold(base):.4f} ({met})")
    return "\n".join(lines)
