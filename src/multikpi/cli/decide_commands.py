"""The `rank` and `tune-decision` subcommands (docs/deciding.md). `add_parsers` registers them
on the main parser; each command returns an exit code (None = 0). Everything is computed before
the first file is written, so a failing command leaves no output behind."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from multikpi.config.load import config_from_dict
from multikpi.data.tabular import file_format, write_table
from multikpi.decide.calibration import resolve_method
from multikpi.decide.formula import parse_formula
from multikpi.decide.ranking import ranking_metrics
from multikpi.decide.report import decide_config, pareto_png, summary, tradeoff_table, trials_csv
from multikpi.decide.score import decide_spec, evaluate_scores, load_candidates, ranked_table, score_formula
from multikpi.decide.tune import default_template, parse_constraint, parse_template, tune_decision
from multikpi.errors import DataError
from multikpi.serve.artifact import write_atomic, write_json
from multikpi.serve.predictor import Predictor


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rank", help="score every row with decide.score and rank the rows within each group")
    p.add_argument("run_dir")
    p.add_argument("data")
    p.add_argument("--group", required=True, help="column holding the group (request / page-view id)")
    p.add_argument("--top-k", type=int, default=None, help="rows flagged in_top_k and the metrics' k "
                   "(default: decide.top_k)")
    p.add_argument("--out", required=True, help="output .parquet or .csv, ordered by group, then rank")
    p.add_argument("--score", default=None, help="fusion formula (default: decide.score)")
    p.add_argument("--config", default=None, help="take the decide section from this config "
                   "(e.g. the decide.yaml that tune-decision writes)")
    p.add_argument("--metrics", default=None, help="also compute ranking metrics on the labels; write them "
                   "to this JSON file")
    p.set_defaults(run=rank)

    p = sub.add_parser("tune-decision", help="search the weights of the fusion formula on labelled data")
    p.add_argument("run_dir")
    p.add_argument("data", help="labelled data to tune on (the validation split)")
    p.add_argument("--group", required=True, help="column holding the group (request / page-view id)")
    p.add_argument("--objective", required=True, help="ranking metric to maximise, e.g. convert@10")
    p.add_argument("--constraint", action="append", default=[],
                   help="METRIC >= BOUND or METRIC <= BOUND, e.g. 'click@10 >= 0.98*baseline' (repeatable)")
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--template", default=None, help="formula with weights named w_* "
                   "(default: the first binary task times every other task to the power w_<task>)")
    p.add_argument("--range", action="append", default=[], metavar="W=LOW:HIGH",
                   help="search range of one weight (default 0:3; repeatable)")
    p.add_argument("--baseline", default=None, help="score the constraints' `baseline` refers to "
                   "(default: the run's decide.score, else the first binary task)")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/tune-decision)")
    p.set_defaults(run=tune)


def rank(args: argparse.Namespace) -> None:
    file_format(args.out)
    if args.top_k is not None and args.top_k < 1:
        raise DataError(f"--top-k must be a positive integer. Got {args.top_k}")
    predictor = Predictor.load(args.run_dir)
    decide = decide_spec(predictor, args.config)
    formula = score_formula(decide, predictor.tasks, args.score)
    top_k = args.top_k or decide.top_k
    candidates = load_candidates(predictor, args.data, args.group, decide.calibration, with_labels=bool(args.metrics))
    scores = evaluate_scores(formula, candidates)
    ids = [c for c in predictor.config.data.id_columns if c in candidates.table.column_names]
    table = ranked_table(candidates, scores, args.group, top_k, ids)
    metrics = None
    if args.metrics:
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


def _format_ranking_metrics(metrics: dict, tasks: list[str]) -> str:
    k = metrics["k"]
    lines = [f"{'task':<12} {'sum@' + str(k):>10} {'ndcg@' + str(k):>10} {'gauc':>8} {'gauc_unw':>9}"]
    for task in tasks:
        gauc = metrics.get(f"gauc_{task}")
        cells = [f"{metrics[f'{task}@{k}']:>10.4f}", f"{metrics[f'ndcg_{task}@{k}']:>10.4f}",
                 f"{gauc:>8.4f}" if gauc is not None else f"{'-':>8}",
                 f"{metrics[f'gauc_{task}_unweighted']:>9.4f}" if gauc is not None else f"{'-':>9}"]
        lines.append(f"{task:<12} " + " ".join(cells))
    return "\n".join(lines) + f"\n({metrics['groups']:,} groups, {metrics['rows']:,} rows)"


def tune(args: argparse.Namespace) -> None:
    if args.trials < 1:
        raise DataError(f"--trials must be a positive integer. Got {args.trials}")
    predictor = Predictor.load(args.run_dir)
    kinds = {t: s.kind for t, s in predictor.config.tasks.items()}
    tasks = list(kinds)
    template = parse_template(args.template or default_template(kinds), tasks, args.range)
    constraints = [parse_constraint(c) for c in args.constraint]
    baseline_text = args.baseline or predictor.config.decide.score or next(
        (t for t in tasks if kinds[t] == "binary"), tasks[0])
    baseline = parse_formula(baseline_text, tasks, what="--baseline", source="tune-decision", kind="tasks")
    candidates = load_candidates(predictor, args.data, args.group, predictor.config.decide.calibration,
                                 with_labels=True)
    result = tune_decision(candidates, kinds, template, args.objective, constraints, baseline, args.trials, args.seed)

    run_config = predictor.config.model_dump(mode="json")
    config_bytes = decide_config(run_config, result)
    config_from_dict(yaml.safe_load(config_bytes), source="decide.yaml")  # what rank --config will read
    table = tradeoff_table(result)
    files = {"tradeoff.md": table.encode(), "trials.csv": trials_csv(result), "pareto.png": pareto_png(result),
             "result.json": json.dumps(summary(result), indent=1).encode(), "decide.yaml": config_bytes}
    out = Path(args.out) if args.out else Path(args.run_dir) / "tune-decision"
    for name, data in files.items():  # decide.yaml last: its presence means the others are complete
        write_atomic(out / name, data)
    print(table)
    print(_format_choice(result))
    print(f"wrote {', '.join(files)} to {out}")


def _format_choice(result) -> str:
    objective, chosen, base = result.objective, result.chosen_metrics, result.baseline
    change = f" ({100 * (chosen[objective] / base[objective] - 1):+.1f}%)" if base[objective] else ""
    lines = [f"chosen (trial {result.chosen.number} of {len(result.trials)}): {result.chosen_formula}",
             f"  {objective}: {chosen[objective]:.4f} vs baseline {base[objective]:.4f}{change} "
             f"[baseline score {result.baseline_formula!r}]"]
    for c in result.constraints:
        met = "met" if c.violation(chosen, base) <= 0 else "NOT met"
        lines.append(f"  {c.text}: {chosen[c.metric]:.4f} {c.op} {c.threshold(base):.4f} ({met})")
    return "\n".join(lines)
