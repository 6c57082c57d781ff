"""`multikpi` command line: parses arguments and dispatches to one function per subcommand.

Any MultiKPIError (bad config, bad data, bad run directory) is printed as one line and exits 2;
other exceptions are bugs and keep their traceback."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable

from multikpi.cli.decide_parsers import add_parsers as add_decide_parsers
from multikpi.cli.report_commands import add_parser as add_report_parser
from multikpi.cli.serve_commands import add_parsers as add_serve_parsers
from multikpi.errors import MultiKPIError, PeerFailed, Terminated

DATASETS = ("feed", "mmoe-synthetic")  # `make-data` kinds; the generators are in commands.DATASETS
Command = Callable[[argparse.Namespace], int | None]


def _commands() -> dict[str, Command]:
    """Subcommand -> function, imported on first use: `multikpi --help` and argument errors must
    answer without loading torch."""
    from multikpi.cli import commands, decide_commands, policy_commands, serve_commands

    return {"serve": serve_commands.serve, "export": serve_commands.export,
            "make-data": commands.make_data, "validate": commands.validate, "train": commands.train,
            "evaluate": commands.evaluate, "predict": commands.predict, "compare": commands.compare,
            "rank": decide_commands.rank, "tune-decision": decide_commands.tune,
            "evaluate-policy": policy_commands.evaluate_policy}


def _command(name: str) -> Command:
    """The function of subcommand `name`. `report` only reads files: it is imported alone, so that
    it never loads torch."""
    if name == "report":
        from multikpi.cli.report_commands import report

        return report
    return _commands()[name]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multikpi", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-data", help="write a built-in synthetic dataset")
    p.add_argument("kind", choices=DATASETS)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--out", required=True, help="output .parquet or .csv, or a directory: a dataset of Parquet parts")
    p.add_argument("--part-rows", type=int, default=None,
                   help="rows per Parquet part when --out is a directory (default 500000); made one at a time")
    p.add_argument("--seed", type=int, default=0, help="row seed (files with different seeds share one world)")
    p.add_argument("--world-seed", type=int, default=2024)
    p.add_argument("--correlation", type=float, default=None,
                   help="mmoe-synthetic: cosine p between the two tasks' weight vectors, in [-1, 1]")
    p.add_argument("--temperature", type=float, default=None,
                   help="feed: the logging policy's Plackett-Luce temperature (default 0.5; inf: a uniformly "
                        "random order, a position-randomised slice)")

    p = sub.add_parser("validate", help="check a config and report every problem")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")

    p = sub.add_parser("train", help="train a model and write a run directory")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--out-dir", help="run directory (default: out_dir of the config)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this interrupted run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in the run directory (the old one stays until the new one is complete)")

    p = sub.add_parser("evaluate", help="per-task metrics of a run on a labelled file")
    p.add_argument("run_dir")
    p.add_argument("data")
    p.add_argument("--json", help="also write the metrics to this JSON file")

    p = sub.add_parser("predict", help="write one estimate column per task")
    p.add_argument("run_dir")
    p.add_argument("data")
    p.add_argument("--out", required=True, help="output .parquet or .csv")
    p.add_argument("--keep", default=None,
                   help="comma-separated id columns to pass through (default: data.id_columns of the config)")
    p.add_argument("--raw", action="store_true",
                   help="write the model's raw probabilities, not the calibrated ones (decide.calibration)")

    p = sub.add_parser("compare", help="train one config under several architectures and seeds; per-task table "
                                       "with the MTL gain over single_task")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--archs", required=True, help="comma-separated, e.g. single_task,shared_bottom,mmoe,ple")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arch: train.seed, train.seed + 1, ... (default 3)")
    p.add_argument("--out", default="runs/compare", help="directory of the runs and of compare.md/json")

    add_decide_parsers(sub)  # rank, tune-decision, evaluate-policy
    add_report_parser(sub)
    add_serve_parsers(sub)  # serve, export
    return parser


def _use_returning_allocator() -> None:
    """Give Arrow the jemalloc pool when this build has it. The CLI owns its process, so it may
    choose: mimalloc (Arrow's default here) keeps the pages of decoded and released Parquet columns,
    about 70 MB of resident memory on the 1M-row benchmark; jemalloc hands them back."""
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)  # and at once, not after jemalloc's default 10 s of decay
    except (NotImplementedError, pa.ArrowNotImplementedError):
        pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv`, accepting `key.path=value` overrides anywhere on the line (also after options:
    `multikpi train CFG --out-dir X train.epochs=3`). Anything else unknown is an argparse error (exit 2)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = list(args.overrides) + overrides
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _use_returning_allocator()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _command(args.command)(args) or 0
    except PeerFailed as err:  # another torchrun process failed and printed why
        return err.exit_code
    except MultiKPIError as err:
        print(f"multikpi {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"multikpi {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as err:
        name, code = ("SIGTERM", 143) if isinstance(err, Terminated) else ("SIGINT", 130)
        print(f"multikpi {args.command}: interrupted ({name}); nothing more was written", file=sys.stderr)
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe_os_error(err: OSError) -> str:
    """One line: what failed on which path, e.g. "cannot write '/x/y': No space left on device"."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.filename is None:
        return reason
    target = f"{str(err.filename)!r}" + (f" -> {str(err.filename2)!r}" if err.filename2 else "")
    return f"{reason}: {target}"


if __name__ == "__main__":
    sys.exit(main())
