"""Where a training step's time goes: data (next batch), gather (embedding lookup, forward),
forward (the rest of the network and the losses), backward, optimizer.

    python benchmarks/profile_step.py [--steps 60] [--precision fp32|bf16] [config] [key=value ...]

Uses the library's own model, combiner, optimizers (including the row-sparse embedding
optimizers) and batch source on the configured training file, with the batch size the recipe
would pick. Prints one table row per phase (ms per step, share of the step) and the examples/s.
The gather is timed with hooks on the embedding module, so the step itself runs as in training.
"""
from __future__ import annotations

import argparse
import time

import torch

from multikpi.config import load_config
from multikpi.data import InMemorySource
from multikpi.optim import build_optimizers, build_param_groups
from multikpi.report.tables import render_table
from multikpi.training import build_training
from multikpi.training.setup import load_splits, seed_everything

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def add_gather_timer(module: torch.nn.Module, spent: list[float]) -> None:
    """Accumulate the wall time of `module`'s forward passes into spent[0]."""
    started: list[float] = []
    module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))

    def done(*_: object) -> None:
        spent[0] += time.perf_counter() - started.pop()

    module.register_forward_hook(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("config", nargs="?", default="configs/feed_benchmark.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = parser.parse_args()
    config = load_config(args.config, ["data.valid=null", "data.test=null", *args.overrides])
    seed_everything(config.train.seed, config.train.threads)
    encoder, splits = load_splits(config)
    training = build_training(config, encoder)
    model = training.model
    optimizers = build_optimizers(build_param_groups(config, model, training.combiner), 10_000, model.embeddings)
    batch_size = config.train.batch_size if isinstance(config.train.batch_size, int) else 4096
    batches = InMemorySource(splits["train"], batch_size, config.train.seed).epoch(1)
    precision = PRECISIONS[args.precision]
    gather = [0.0]
    add_gather_timer(model.embeddings, gather)
    phases = dict.fromkeys(["data", "gather", "forward", "backward", "optimizer"], 0.0)
    for step in range(10 + args.steps):  # 10 warm-up steps
        gather[0] = 0.0
        marks = [time.perf_counter()]
        batch = next(batches)
        marks.append(time.perf_counter())
        with torch.autocast("cpu", dtype=precision, enabled=precision is not None):
            total = training(batch).total  # the phases of train_step, timed one by one
        assert total is not None
        marks.append(time.perf_counter())
        optimizers.zero_grad()
        total.backward()
        marks.append(time.perf_counter())
        optimizers.step()
        marks.append(time.perf_counter())
        if step >= 10:
            data_s, forward_s, backward_s, optim_s = (b - a for a, b in zip(marks, marks[1:]))
            for name, seconds in zip(phases, (data_s, gather[0], forward_s - gather[0], backward_s, optim_s)):
                phases[name] += seconds
    per_step = {k: 1000 * v / args.steps for k, v in phases.items()}
    total_ms = sum(per_step.values())
    rows = [[name, f"{ms:.2f}", f"{100 * ms / total_ms:.0f}%"] for name, ms in per_step.items()]
    rows.append(["step", f"{total_ms:.2f}", f"{batch_size / total_ms * 1000:,.0f} ex/s"])
    embeddings = config.optim.groups.get("embeddings")
    print(f"{config.model.arch}, batch {batch_size}, {args.precision}, embeddings optimizer "
          f"{(embeddings.name if embeddings and embeddings.name else config.optim.default.name)}, "
          f"{torch.get_num_threads()} threads")
    print(render_table(["phase", "ms/step", "share"], rows))


if __name__ == "__main__":
    main()
