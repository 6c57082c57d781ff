"""Where a training step's time goes: batch gather, forward (+losses), backward, optimizer.

    python benchmarks/profile_step.py [configs/feed_benchmark.yaml] [--steps 60] [key=value ...]

Uses the library's own model, combiner and optimizers on the configured training file; prints
milliseconds per step for each phase and the resulting examples/s."""
from __future__ import annotations

import argparse
import time

import torch

from multikpi.config import load_config
from multikpi.data import InMemorySource
from multikpi.optim import build_optimizers, build_param_groups
from multikpi.training import build_training
from multikpi.training.setup import load_splits, seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/feed_benchmark.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    config = load_config(args.config, ["data.valid=null", "data.test=null", *args.overrides])
    seed_everything(config.train.seed, config.train.threads)
    started = time.perf_counter()
    encoder, splits = load_splits(config)
    print(f"load + encode: {time.perf_counter() - started:.3f}s for {splits['train'].num_rows:,} rows")
    training = build_training(config, encoder)
    optimizers = build_optimizers(build_param_groups(config, training.model, training.combiner), 10_000)
    batches = InMemorySource(splits["train"], config.train.batch_size, config.train.seed).epoch(1)
    phases = {"gather": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for step in range(10 + args.steps):  # 10 warm-up steps
        marks = [time.perf_counter()]
        batch = next(batches)
        marks.append(time.perf_counter())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            total = training(batch).total  # the phases of train_step, timed one by one
        assert total is not None
        marks.append(time.perf_counter())
        optimizers.zero_grad()
        total.backward()
        marks.append(time.perf_counter())
        optimizers.step()
        marks.append(time.perf_counter())
        if step >= 10:
            for name, a, b in zip(phases, marks, marks[1:]):
                phases[name] += b - a
    per_step = {k: 1000 * v / args.steps for k, v in phases.items()}
    total_ms = sum(per_step.values())
    print(" ".join(f"{k}={v:.2f}ms" for k, v in per_step.items()),
          f"| {total_ms:.2f} ms/step, {config.train.batch_size / total_ms * 1000:,.0f} ex/s")


if __name__ == "__main__":
    main()
