"""The `report` subcommand: parser and command (docs/report.md)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report (figures embedded) of a run directory "
                                      "or of a compare directory")
    p.add_argument("directory", metavar="RUN_DIR", help="a finished run directory, or the --out of `compare`")
    p.add_argument("--out", default=None, help="the .html file to write (default: RUN_DIR/report.html)")


def report(args: argparse.Namespace) -> None:
    from multikpi.report.html_report import write_report

    path = write_report(args.directory, args.out)
    print(f"report written to {path} ({path.stat().st_size / 1e6:.2f} MB)")
