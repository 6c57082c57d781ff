"""One function per subcommand. Each returns an exit code (None = 0)."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from multikpi import api
from multikpi.api.compare import compare as run_compare
from multikpi.api.compare import parse_archs
from multikpi.artifacts.files import write_json
from multikpi.artifacts.outputs import check_output_path
from multikpi.artifacts.workspace import staging_dir
from multikpi.config.load import load_config, load_raw_config
from multikpi.data.tabular import file_format, write_table
from multikpi.errors import ConfigError, DataError, Interrupted, Terminated
from multikpi.report.compare import render_markdown
from multikpi.report.tables import render_table
from multikpi.synthetic.feed import LOGGING_TEMPERATURE, make_feed
from multikpi.synthetic.mmoe import make_mmoe_synthetic

# (rows, seed, world_seed, correlation, temperature) -> table; `correlation` (--correlation) and
# `temperature` (--temperature) are None unless given.
DATASETS: dict[str, Callable[[int, int, int, float | None, float | None], pa.Table]] = {
    "feed": lambda rows, seed, world_seed, correlation, temperature: make_feed(
        rows, seed=seed, world_seed=world_seed,
        temperature=temperature if temperature is not None else LOGGING_TEMPERATURE),
    "mmoe-synthetic": lambda rows, seed, world_seed, correlation, temperature: make_mmoe_synthetic(
        rows, correlation if correlation is not None else 0.0, seed=seed, world_seed=world_seed),
}
CORRELATED_DATASETS = ("mmoe-synthetic",)


def make_data(args: argparse.Namespace) -> None:
    if args.rows <= 0:
        raise DataError(f"--rows must be a positive integer. Got {args.rows}")
    file_format(args.out)
    check_output_path(args.out, "--out")
    if args.seed < 0 or args.world_seed < 0:
        raise DataError(f"--seed and --world-seed must be >= 0. Got {args.seed} and {args.world_seed}")
    _check_correlation(args.kind, args.correlation)
    _check_temperature(args.kind, args.temperature)
    table = DATASETS[args.kind](args.rows, args.seed, args.world_seed, args.correlation, args.temperature)
    write_table(table, args.out)
    print(f"wrote {table.num_rows:,} rows x {table.num_columns} columns to {args.out}")


def _check_correlation(kind: str, correlation: float | None) -> None:
    if kind not in CORRELATED_DATASETS:
        if correlation is not None:
            raise DataError(f"--correlation is only used by {', '.join(CORRELATED_DATASETS)}. Got kind {kind!r}")
        return
    if correlation is None:
        raise DataError(f"--correlation is required for {kind}: the cosine p between the two tasks' weight "
                        f"vectors, in [-1, 1]")
    if not -1.0 <= correlation <= 1.0:  # also rejects nan
        raise DataError(f"--correlation must be in [-1, 1]. Got {correlation}")


def _check_temperature(kind: str, temperature: float | None) -> None:
    if temperature is None:
        return
    if kind != "feed":
        raise DataError(f"--temperature is only used by feed. Got kind {kind!r}")
    if not temperature > 0:  # also rejects nan
        raise DataError(f"--temperature must be > 0 (inf: a uniformly random order). Got {temperature}")


def validate(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)
    print(f"{args.config}: valid ({len(config.tasks)} tasks: {', '.join(config.tasks)})")


def train(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)
    if args.resume and args.out_dir and Path(args.resume) != Path(args.out_dir):
        raise ConfigError([f"--resume and --out-dir must name the same directory. Got {args.resume!r} "
                           f"and {args.out_dir!r}"], source="train")
    run_dir = Path(args.resume or args.out_dir or config.out_dir)
    try:
        run = api.train(config, out_dir=run_dir, resume=args.resume is not None, overwrite=args.overwrite)
    except (KeyboardInterrupt, Terminated) as err:
        raise _interrupted(err, run_dir, args.config) from None
    print(format_metrics(run.metrics.splits))
    print(f"run written to {run.run_dir}")


def _interrupted(err: BaseException, run_dir: Path, config: str) -> Interrupted:
    """The one line after Ctrl-C / SIGTERM: where the last checkpoint is and how to resume."""
    name, code = ("SIGTERM", 143) if isinstance(err, Terminated) else ("SIGINT", 130)
    found = [d / "checkpoint.pt" for d in (staging_dir(run_dir), run_dir) if (d / "checkpoint.pt").is_file()]
    if not found:
        return Interrupted(f"interrupted ({name}) before the first checkpoint; nothing to resume", code)
    return Interrupted(f"interrupted ({name}); the last checkpoint is {str(found[0])!r}: resume with "
                       f"`multikpi train {config} --resume {run_dir}`", code)


def evaluate(args: argparse.Namespace) -> None:
    if args.json:
        check_output_path(args.json, "--json", [args.data], [args.run_dir])
    metrics = api.evaluate(args.run_dir, args.data)
    if args.json:
        write_json(Path(args.json), metrics)
    print(f"metrics on {args.data}:")
    print(format_metrics({"": metrics}))


def predict(args: argparse.Namespace) -> None:
    file_format(args.out)
    check_output_path(args.out, "--out", [args.data], [args.run_dir])
    keep = [c for c in args.keep.split(",") if c] if args.keep is not None else None
    table = api.predict(args.run_dir, args.data, keep, calibrated=not args.raw)
    write_table(table, args.out)
    print(f"wrote {table.num_rows:,} predictions ({', '.join(table.column_names)}) to {args.out}")


def compare(args: argparse.Namespace) -> None:
    archs = parse_archs(args.archs)
    if args.seeds < 1:
        raise ConfigError([f"`--seeds` must be a positive integer. Got {args.seeds}"], source="compare")
    raw = load_raw_config(args.config, args.overrides)  # each arch's config is derived from it, then validated
    result = run_compare(raw, archs, args.seeds, Path(args.out))
    print(render_markdown(result), end="")
    print(f"table written to {Path(args.out) / 'compare.md'} and compare.json")


BINARY_COLUMNS = ("auc", "logloss", "calibration", "pos_rate", "cvr_auc_on_clicked")
REGRESSION_COLUMNS = ("rmse", "mae", "pearson", "pearson_log1p", "rmse_log1p")


def format_metrics(metrics: dict[str, dict[str, dict[str, float]]]) -> str:
    """split -> task -> metric -> value, as an aligned text table, one row per split and task, tasks
    in config order. A split named "" gets no split column (evaluate names its file above)."""
    present = {name for tasks in metrics.values() for values in tasks.values() for name in values}
    columns = [c for c in BINARY_COLUMNS + REGRESSION_COLUMNS if c in present] + ["count"]
    with_split = any(split for split in metrics)
    header = (["split"] if with_split else []) + ["task"] + columns
    rows = [([split] if with_split else []) + [task] + [values.get(c) for c in columns]
            for split, tasks in metrics.items() for task, values in tasks.items()]
    return render_table(header, rows)
