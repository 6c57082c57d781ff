"""The worked example of docs/deciding.md: for a few formulas, the true KPIs@k on the demo feed's
test file (from the generator's oracle) beside the naive count and the off-policy estimates, with
their 95% intervals; and how long the estimates take.

    python benchmarks/ope_demo.py demo/decide_run demo/test.parquet --rows 60000 --seed 2 \
        --formula click --formula "click * convert^0.5" --formula "click * (1 + 0.02 * dwell) + 5 * convert"

`--rows` and `--seed` must be those the file was made with (make-data feed), so that the oracle
describes the same rows; the script checks it.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow.parquet as pq

from multikpi import Predictor
from multikpi.decide.policy_eval import LogColumns, PolicyEvaluator, click_task, estimator_inputs
from multikpi.decide.score import evaluate_scores, load_candidates
from multikpi.formula import parse_formula
from multikpi.report.tables import render_table
from multikpi.synthetic.feed import feed_oracle, feed_policy_value, make_feed

ESTIMATORS = ("naive", "ips", "snips", "dm", "dr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("logs")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--formula", action="append", required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()

    logs = pq.read_table(args.logs)
    if not np.array_equal(logs["item_id"].to_numpy(), make_feed(args.rows, seed=args.seed)["item_id"].to_numpy()):
        raise SystemExit(f"{args.logs} is not make-data feed --rows {args.rows} --seed {args.seed}")
    oracle = feed_oracle(args.rows, seed=args.seed)
    predictor = Predictor.load(args.run_dir)
    kinds = {t: s.kind for t, s in predictor.config.tasks.items()}
    columns = LogColumns()
    candidates = load_candidates(predictor, args.logs, "request_id", predictor.config.decide.calibration,
                                 with_labels=True, keep=[columns.position, columns.examination,
                                                         columns.exam_propensity])
    rows, rewards = estimator_inputs(predictor, candidates, click_task(kinds, None, "ope_demo"), columns, args.logs)
    started = time.perf_counter()
    evaluator = PolicyEvaluator(logs=rows, rewards_hat=rewards, k=args.k, resamples=args.resamples)
    setup = time.perf_counter() - started
    table, timings = [], []
    for text in args.formula:
        formula = parse_formula(text, predictor.tasks, what="--formula", kind="tasks")
        ranks = candidates.rank(evaluate_scores(formula, candidates)).ranks
        started = time.perf_counter()
        value = evaluator.estimate(ranks)
        cells = {kpi: {e: value.interval(e, kpi, 0.95) for e in ESTIMATORS} for kpi in value.point["dr"]}
        timings.append(time.perf_counter() - started)
        truth = feed_policy_value(oracle, candidates.table["request_id"].to_numpy(), ranks, args.k)
        for kpi in ("click", "convert", "dwell"):
            name = f"{kpi}@{args.k}"
            row = [f"`{text}`", name, f"{truth[name]:.4f}"]
            for e in ESTIMATORS:
                iv = cells[name][e]
                hit = "" if iv.low <= truth[name] <= iv.high else " ✗"
                row.append(f"{iv.value:.4f} [{iv.low:.4f}, {iv.high:.4f}]{hit}")
            table.append(row)
    header = ["formula", "kpi", "true"] + [f"{e} [95% CI]" for e in ESTIMATORS]
    print(render_table(header, table, style="markdown"))
    print(f"\n{rows.num_groups:,} requests, {rows.codes.size:,} rows; {args.resamples} bootstrap resamples: "
          f"resamples drawn in {setup:.2f}s, every estimator of one ranking with its intervals in "
          f"{np.mean(timings):.2f}s (mean of {len(timings)})")


if __name__ == "__main__":
    main()
