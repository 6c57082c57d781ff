"""Train multikpi on the feed benchmark for one epoch in this process and report, as JSON, the
same figures as the peers' runners (../shared/bench/run_deepctr.py): train examples/s, peak RSS,
test metrics, batch predict rows/s; plus the load + encode time of the training file.

    python benchmarks/run_multikpi.py --model sharedbottom --out benchmarks/results/x.json
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

import multikpi.cli  # noqa: F401,I001 - first: picks Arrow's allocator before pyarrow loads, as the command does
from multikpi.api import predictor_of
from multikpi.cli.main import _use_returning_allocator
from multikpi.config import load_config
from multikpi.data import FeatureEncoder, read_table
from multikpi.eval import model_outputs
from multikpi.training import train
from multikpi.training.setup import encoder_specs, needed_columns

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"sharedbottom": ["model.arch=shared_bottom"], "mmoe": ["model.arch=mmoe", "model.num_experts=4"]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_load_encode(config) -> float:
    """Seconds to read the training Parquet file and fit + encode it (the first thing train does)."""
    started = time.perf_counter()
    table = read_table(config.data.train, needed_columns(config))
    FeatureEncoder.fit_encode(table, *encoder_specs(config, table.num_rows))
    return time.perf_counter() - started


def embeddings_optimizer(config) -> str:
    group = config.optim.groups.get("embeddings")
    return group.name if group is not None and group.name else config.optim.default.name


def time_predict(run, test_path: str, batch: int) -> tuple[float, float, str]:
    """(model-only rows/s on encoded test rows at `batch`, end-to-end rows/s from the Parquet file,
    the precision the inference probe chose)."""
    predictor = predictor_of(run)
    encoded = predictor.encoder.encode(read_table(test_path, needed_columns(run.config)), with_labels=False)
    precision = predictor.precision  # decided by the inference probe, as predict and serving do
    model_outputs(predictor.model, encoded, batch, precision)  # warm-up
    started = time.perf_counter()
    model_outputs(predictor.model, encoded, batch, precision)
    model_rows = encoded.num_rows / (time.perf_counter() - started)
    started = time.perf_counter()
    predictor.predict(test_path, keep=[])
    chosen = "bf16" if precision is torch.bfloat16 else "fp32"
    return model_rows, encoded.num_rows / (time.perf_counter() - started), chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="sharedbottom")
    parser.add_argument("--config", default=str(ROOT / "configs/feed_benchmark.yaml"))
    parser.add_argument("--train", default=str(ROOT / "bench-data/train.parquet"))
    parser.add_argument("--test", default=str(ROOT / "bench-data/test.parquet"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--predict-batch", type=int, default=4096)
    parser.add_argument("--out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    # As the peers: one epoch over all 1M training rows (no held-out valid split), batch 4096.
    overrides = [f"data.train={args.train}", f"data.test={args.test}", "data.valid=null", "data.valid_fraction=0",
                 "train.epochs=1", f"train.threads={args.threads}", "train.progress=off", *MODELS[args.model],
                 *args.overrides]
    config = load_config(args.config, overrides)
    torch.set_num_threads(args.threads)
    _use_returning_allocator()  # as the `multikpi` command does
    started = time.perf_counter()
    run = train(config, out_dir=ROOT / f"runs/bench_{args.model}", overwrite=True)  # each repeat replaces the last
    train_wall = time.perf_counter() - started
    train_peak_rss = peak_rss_mb()  # the training process's peak; the timings below come after it
    load_s = time_load_encode(config)
    model_rows, e2e_rows, predict_precision = time_predict(run, args.test, args.predict_batch)
    test = run.metrics.splits["test"]
    result = {
        "system": "multikpi", "model": args.model, "tasks": list(config.tasks), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
        "precision": config.train.precision, "train_precision": run.metrics.training["precision"],
        "predict_precision": predict_precision, "numeric_bins": config.data.numeric_bins,
        "embeddings_optimizer": embeddings_optimizer(config), "load_encode_s": round(load_s, 3),
        "train_ex_per_s": round(run.metrics.timing["train_examples_per_second"], 1),
        "train_wall_s": round(train_wall, 2), "peak_rss_mb": round(train_peak_rss, 1),
        "peak_rss_with_timings_mb": round(peak_rss_mb(), 1),
        "predict_batch": args.predict_batch, "predict_rows_per_s": round(model_rows, 1),
        "predict_end_to_end_rows_per_s": round(e2e_rows, 1),
        "auc_click": round(test["click"]["auc"], 4), "auc_convert": round(test["convert"]["auc"], 4),
        "corr_dwell": round(test["dwell"]["pearson_log1p"], 4),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
