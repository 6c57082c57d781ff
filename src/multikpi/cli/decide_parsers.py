"""The argument parsers of `rank`, `tune-decision` (their commands are in decide_commands.py) and
`evaluate-policy` (policy_commands.py)."""
from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    _add_null_group(p)

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
    _add_null_group(p)
    p.add_argument("--estimator", default="naive", choices=["naive", "ips", "snips", "dm", "dr"],
                   help="how the metrics are computed: naive = the labels re-sorted (biased toward the logging "
                        "policy); ips, snips, dm, dr = off-policy estimates of <task>@k with <task>@k.lcb/.ucb "
                        "(needs the logging columns, see evaluate-policy)")
    _add_logging_columns(p)

    p = sub.add_parser("evaluate-policy", help="estimate each KPI@k of a ranking by a formula from logged data "
                                               "(off-policy: IPS, SNIPS, DM, DR), with confidence intervals")
    p.add_argument("run_dir")
    p.add_argument("logs", help="logged data: every candidate of each request with its labels, the position it "
                                "was shown at, the examination curve and the logging propensities")
    p.add_argument("--group", required=True, help="column holding the request (page-view) id")
    p.add_argument("--score", default=None, help="the target ranking's formula (default: decide.score)")
    p.add_argument("--baseline", default=None, help="formula to compare with (default: the logging policy)")
    p.add_argument("--k", type=int, default=10, help="cut-off: KPIs over the top k positions (default 10)")
    p.add_argument("--estimator", default="dr", choices=["naive", "ips", "snips", "dm", "dr"],
                   help="estimator of the lift table (default dr); the estimates table shows them all")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    _add_logging_columns(p)
    p.add_argument("--config", default=None, help="take the decide section from this config")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")


def _add_logging_columns(p: argparse.ArgumentParser) -> None:
    """The options of the off-policy estimators: the click task, the bootstrap, the logging columns."""
    p.add_argument("--click", default=None, help="the click task (default: the first binary task); the other "
                                                 "tasks count after a click")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the requests (default 1000)")
    p.add_argument("--position", default="position", help="column of the logged position (default position)")
    p.add_argument("--examination", default="examination",
                   help="column of the examination probability of the row's position (default examination)")
    p.add_argument("--propensity", default="exam_propensity",
                   help="column of the item's examination propensity under the logger (default exam_propensity)")


def _add_null_group(p: argparse.ArgumentParser) -> None:
    p.add_argument("--null-group", default="error", choices=["error", "own", "drop"],
                   help="rows whose group is null: an error (default), one group of their own, or left out")
