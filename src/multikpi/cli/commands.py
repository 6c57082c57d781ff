"""One function per subcommand. Each returns an exit code (None = 0)."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from multikpi import api
from multikpi.api.compare import compare as run_compare
from multikpi.api.compare import parse_archs
from multikpi.artifacts.files import write_json
from multikpi.artifacts.outputs import check_output_path
from multikpi.artifacts.workspace import staging_dir
from multikpi.config.load import load_config, load_raw_config
from multikpi.data.datasets import write_parts
from multikpi.data.tabular import CSV_SUFFIXES, PARQUET_SUFFIXES, file_format, write_table
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


GROUP_COLUMNS = {"feed": "request_id"}  # group ids that must stay distinct across the parts of a dataset
PART_ROWS = 500_000  # --part-rows default: rows per part when --out is a directory
_PART_TAG = 0x9A27


def make_data(args: argparse.Namespace) -> None:
    if args.rows <= 0:
        raise DataError(f"--rows must be a positive integer. Got {args.rows}")
    if args.seed < 0 or args.world_seed < 0:
        raise DataError(f"--seed and --world-seed must be >= 0. Got {args.seed} and {args.world_seed}")
    _check_correlation(args.kind, args.correlation)
    _check_temperature(args.kind, args.temperature)
    if _is_directory_output(args.out) or args.part_rows is not None:
        return _make_parts(args)
    file_format(args.out)
    check_output_path(args.out, "--out")
    table = DATASETS[args.kind](args.rows, args.seed, args.world_seed, args.correlation, args.temperature)
    write_table(table, args.out)
    print(f"wrote {table.num_rows:,} rows x {table.num_columns} columns to {args.out}")


def _is_directory_output(out: str) -> bool:
    """--out names a directory (a dataset of parts): it ends in '/', or exists as a directory, or has
    no data-file suffix."""
    name = out.lower()
    return out.endswith("/") or Path(out).is_dir() or not name.endswith(PARQUET_SUFFIXES + CSV_SUFFIXES)


def _make_parts(args: argparse.Namespace) -> None:
    """A directory of Parquet parts of at most --part-rows rows, each generated and written alone
    (memory holds one part); part i has its own row seed derived from (--seed, i), and group ids
    are offset so that no group spans two parts."""
    part_rows = args.part_rows if args.part_rows is not None else PART_ROWS
    if part_rows <= 0:
        raise DataError(f"--part-rows must be a positive integer. Got {part_rows}")
    if not _is_directory_output(args.out):
        raise DataError(f"--part-rows writes a directory of Parquet parts; give --out a directory. Got {args.out!r}")
    counts = [min(part_rows, args.rows - start) for start in range(0, args.rows, part_rows)]
    group = GROUP_COLUMNS.get(args.kind)

    def parts() -> Iterator[pa.Table]:
        offset = 0
        for index, rows in enumerate(counts):
            seed = int(np.random.SeedSequence([args.seed, index, _PART_TAG]).generate_state(1)[0])
            table = DATASETS[args.kind](rows, seed, args.world_seed, args.correlation, args.temperature)
            if group is not None:
                ids = pc.add(table.column(group), offset)
                offset = int(pc.max(ids).as_py()) + 1
                table = table.set_column(table.column_names.index(group), group, ids)
            yield table

    files = write_parts(parts(), args.out)
    print(f"wrote {args.rows:,} rows in {len(files)} Parquet part(s) to {args.out}")


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
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports for every process
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
