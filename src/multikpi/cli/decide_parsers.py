"""The argument parsers of `rank` and `tune-decision` (their commands are in decide_commands.py)."""
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


