"""Scale benchmark (docs/scale.md): one epoch on the built-in feed, streamed from a directory of
Parquet parts, against the in-memory path, and 2 processes x 1 thread against 1 process x 2 threads.

    multikpi make-data feed --rows 20000000 --out DATA     # 40 parts of 500k rows, one at a time
    python benchmarks/scale.py --data DATA                 # prints the table (markdown)

Each run is a fresh child process (`multikpi train`, or torchrun for 2 processes); its peak RSS is
the child's ru_maxrss (for torchrun: the largest rank's), its speed the run's own
`timing.train_examples_per_second` (the epoch's rows over the epoch's seconds). Subsets of the
dataset are globs over its first parts: 1M = 2 parts, 2M = 4, 5M = 10, 20M = 40.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PART_ROWS = 500_000  # make-data's default --part-rows
CONFIG = {
    "data": {"categorical": ["user_id", "item_id", "item_category", "device", "user_segment"],
             "dense": ["price", "item_age_h", "user_activity", "affinity"], "log1p": ["price", "item_age_h"],
             "valid_fraction": 0.0},
    "tasks": {"click": {"kind": "binary", "label": "click"},
              "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"},
              "convert": {"kind": "binary", "label": "convert", "train_on": "click"}},
    "model": {"arch": "shared_bottom", "embedding_dim": 16, "shared": [256, 128], "tower": [64]},
    "train": {"epochs": 1, "batch_size": 4096, "seed": 0, "progress": "off", "precision": "fp32",
              "train_metrics_rows": 100_000},
}


def subset(data: Path, rows: int) -> str:
    """`data` itself, or a directory of links to its first rows // PART_ROWS parts."""
    parts = sorted(data.glob("part-*.parquet"))
    count = max(rows // PART_ROWS, 1)
    if count * PART_ROWS != rows or count > len(parts):
        raise SystemExit(f"{data} has {len(parts)} parts of {PART_ROWS:,} rows; {rows:,} rows asked")
    if count == len(parts):
        return str(data)
    linked = Path(tempfile.mkdtemp(prefix=f"scale-{rows}-"))
    for part in parts[:count]:
        (linked / part.name).symlink_to(part)
    return str(linked)


def run(data: str, rows: int, mode: str, threads: int, processes: int, work: Path,
        max_steps: int | None = None) -> dict[str, float]:
    config = json.loads(json.dumps(CONFIG))
    config["data"].update(train=data, streaming=mode)
    config["train"]["threads"] = threads
    if max_steps is not None:
        config["train"]["max_steps"] = max_steps
    path = work / f"{mode}-{processes}x{threads}-{abs(hash(data))}.yaml"
    path.write_text(yaml.safe_dump(config))
    out = work / (path.stem + "-run")
    entry = ["-m", "multikpi", "train", str(path), "--out-dir", str(out), "--overwrite"]
    cmd = [sys.executable, *entry] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *entry]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far (KiB)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"rows": rows, "steps": metrics["training"]["steps"],
            "examples_per_second": metrics["timing"]["train_examples_per_second"],
            "peak_rss_mb": peak / 1024 if peak > before else float("nan"),
            "wall_seconds": time.perf_counter() - started,
            "click_auc_train": metrics["splits"]["train"]["click"]["auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a directory written by make-data (500k-row parts)")
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    parser.add_argument("--growth-only", action="store_true", help="only the --rows runs (RSS as rows grow)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="cap the --rows runs at this many steps (the fit still reads every row)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    one_million = subset(args.data, 1_000_000)
    runs = [] if args.growth_only else [
        ("in memory, 1 process x 2 threads", one_million, 1_000_000, "off", 2, 1, None),
        ("streamed, 1 process x 2 threads", one_million, 1_000_000, "on", 2, 1, None),
        ("streamed, 2 processes x 1 thread", one_million, 1_000_000, "on", 1, 2, None)]
    runs += [(f"streamed, {r // 1_000_000}M rows, 1 process x 2 threads", subset(args.data, r), r, "on", 2, 1,
              args.max_steps) for r in args.rows]
    results = []
    for name, data, rows, mode, threads, processes, max_steps in runs:
        # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: each run gets a fresh parent.
        probe = subprocess.run([sys.executable, __file__, "--child", json.dumps([data, rows, mode, threads,
                                                                                  processes, str(work), max_steps])],
                               capture_output=True, text=True)
        if probe.returncode:
            raise SystemExit(probe.stderr[-3000:])
        result = json.loads(probe.stdout.strip().splitlines()[-1])
        result["name"] = name
        results.append(result)
        print(json.dumps(result), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: list[dict]) -> str:
    base = results[0]["examples_per_second"]
    lines = ["| run | dataset rows | steps | examples/s | vs first row | peak RSS (MB) | wall (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['rows']:,} | {r.get('steps', '')} | {r['examples_per_second']:,.0f} | "
                     f"{r['examples_per_second'] / base:.0%} | {r['peak_rss_mb']:,.0f} | {r['wall_seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        data, rows, mode, threads, processes, work, *cap = json.loads(sys.argv[2])
        print(json.dumps(run(data, rows, mode, threads, processes, Path(work), cap[0] if cap else None)))
    else:
        main()
