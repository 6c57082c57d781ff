"""Reproduce the synthetic experiment of the MMoE paper (Ma et al., KDD 2018, §3.2, Figure 4):
average test loss against training steps of a shared-bottom model and MMoE on two regression
tasks whose relatedness is the cosine p between their weight vectors.

Data: `multikpi.data.synthetic_mmoe` (d = 100, c = 1, m = 10 sine terms). Every seed draws its own
world (u1, u2, α, β) and its own rows; both architectures of a seed train on the same rows.
Models (the paper's sizes), built with the library's own builders (config -> model, combiner,
optimizer groups), trained with Adam on the sum of the two standardized MSE losses:
    shared_bottom: one shared hidden layer of 113 units, towers of 8 units;
    mmoe:          8 experts of 16 units, one linear softmax gate per task, towers of 8 units.
Test loss: the mean over the two tasks of the MSE in label units, on held-out rows (the noise
alone costs 0.01).

    .venv/bin/python benchmarks/mmoe_synthetic.py            # ~ a few minutes on 1 thread
    .venv/bin/python benchmarks/mmoe_synthetic.py --seeds 3 --steps 300   # a quick look

Writes benchmarks/results/mmoe_synthetic.json and docs/mmoe_synthetic.png.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from multikpi.config import config_from_dict  # noqa: E402
from multikpi.data import FeatureEncoder, shuffled_batches  # noqa: E402
from multikpi.optim import build_optimizers, build_param_groups  # noqa: E402
from multikpi.synthetic.mmoe import mmoe_synthetic_arrays, mmoe_synthetic_world  # noqa: E402
from multikpi.training import build_training, train_step  # noqa: E402
from multikpi.training.setup import encoder_specs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIM = 100
ARCHS = {
    "shared_bottom": {"arch": "shared_bottom", "shared": [113], "tower": [8]},
    "mmoe": {"arch": "mmoe", "shared": [16], "num_experts": 8, "tower": [8]},
}


def make_config(model: dict, lr: float, batch_size: int):
    return config_from_dict({
        "data": {"train": "in-memory", "dense": [f"x{j}" for j in range(DIM)]},
        "tasks": {"y1": {"kind": "regression", "label": "y1"}, "y2": {"kind": "regression", "label": "y2"}},
        "model": {"embedding_dim": 1, **model},
        "loss": {"combine": "sum"},
        "optim": {"default": {"name": "adam", "lr": lr}},
        "train": {"batch_size": batch_size, "threads": 1},
    })


def as_table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    columns = {f"x{j}": pa.array(x[:, j]) for j in range(DIM)}
    columns.update({"y1": pa.array(y[:, 0]), "y2": pa.array(y[:, 1])})
    return pa.table(columns)


def test_loss(model, encoder: FeatureEncoder, test, y_test: np.ndarray) -> float:
    """Mean over the two tasks of the test MSE in label units."""
    model.eval()
    with torch.inference_mode():
        outputs = model.forward_features(test.categorical, test.dense)
    model.train()
    errors = [np.mean((encoder.to_original_units(t, outputs[t].numpy().astype(np.float64)) - y_test[:, i]) ** 2)
              for i, t in enumerate(("y1", "y2"))]
    return float(np.mean(errors))


def train_curve(config, train_table: pa.Table, test_table: pa.Table, y_test: np.ndarray, args,
                seed: int) -> tuple[list[float], dict]:
    """Test loss at steps 0, eval_every, 2*eval_every, ..., args.steps; and the gate usage on the
    test rows at the end (task -> mean weight per expert; {} for shared_bottom)."""
    encoder, train = FeatureEncoder.fit_encode(train_table, *encoder_specs(config))
    test = encoder.encode(test_table)
    torch.manual_seed(seed)
    training = build_training(config, encoder)
    model = training.model
    optimizers = build_optimizers(build_param_groups(config, model, training.combiner), args.steps)
    generator = torch.Generator().manual_seed(seed)
    curve, step = [test_loss(model, encoder, test, y_test)], 0
    while step < args.steps:
        for batch in shuffled_batches(train, args.batch_size, generator):
            train_step(training, optimizers, batch)
            step += 1
            if step % args.eval_every == 0:
                curve.append(test_loss(model, encoder, test, y_test))
            if step == args.steps:
                break
    return curve, model.shared.gate_usage()  # the last forward pass was test_loss on the test rows


def run(args) -> dict:
    results = {}
    for p in args.correlations:
        curves, gates = {arch: [] for arch in ARCHS}, []
        for seed in range(args.seeds):
            world = mmoe_synthetic_world(p, world_seed=1000 + seed)
            x, y = mmoe_synthetic_arrays(args.train_rows, world, seed=2 * seed)
            x_test, y_test = mmoe_synthetic_arrays(args.test_rows, world, seed=2 * seed + 1)
            train_table, test_table = as_table(x, y), as_table(x_test, y_test)
            for arch, model in ARCHS.items():
                config = make_config(model, args.lr, args.batch_size)
                curve, usage = train_curve(config, train_table, test_table, y_test, args, seed)
                curves[arch].append(curve)
                gates += [usage] if usage else []
        results[str(p)] = {arch: summarize(c) for arch, c in curves.items()}
        results[str(p)]["paired"] = paired_gap(curves["shared_bottom"], curves["mmoe"])
        results[str(p)]["mmoe_gates"] = gate_summary(gates)
        print(f"p={p}: " + ", ".join(f"{a} final {results[str(p)][a]['final_mean']:.4f} ± "
                                     f"{results[str(p)][a]['final_std']:.4f} (median "
                                     f"{results[str(p)][a]['final_median']:.4f})" for a in ARCHS)
              + f"; paired gap {results[str(p)]['paired']}", flush=True)
    return results


def paired_gap(shared_bottom: list[list[float]], mmoe: list[list[float]]) -> dict:
    """Final test loss of shared_bottom minus MMoE's, per seed (positive = MMoE better)."""
    gaps = np.array([a[-1] - b[-1] for a, b in zip(shared_bottom, mmoe)])
    return {"mean": float(gaps.mean()), "std": float(gaps.std(ddof=1)), "median": float(np.median(gaps)),
            "mmoe_better": int((gaps > 0).sum()), "seeds": len(gaps)}


def gate_summary(usages: list[dict]) -> dict:
    """Over seeds: the largest mean gate weight of a task (1/8 = uniform) and the L1 distance
    between the two tasks' mean gate vectors (0 = both tasks use the experts alike)."""
    top = [max(max(u["y1"]), max(u["y2"])) for u in usages]
    apart = [float(np.abs(np.array(u["y1"]) - np.array(u["y2"])).sum()) for u in usages]
    return {"max_weight_mean": float(np.mean(top)), "max_weight_max": float(np.max(top)),
            "task_l1_distance_mean": float(np.mean(apart)), "task_l1_distance_max": float(np.max(apart))}


def summarize(curves: list[list[float]]) -> dict:
    values = np.array(curves)
    return {"mean": values.mean(axis=0).tolist(), "std": values.std(axis=0, ddof=1).tolist(),
            "median": np.median(values, axis=0).tolist(),
            "final_mean": float(values[:, -1].mean()), "final_std": float(values[:, -1].std(ddof=1)),
            "final_median": float(np.median(values[:, -1])), "final_values": values[:, -1].tolist()}


def plot(results: dict, steps: list[int], path: Path, seeds: int) -> None:
    """Row 1: mean over seeds ± 1 s.e., log scale. Row 2: the median over seeds, zoomed on the
    plateau, with the noise floor (the MSE of the true function, 0.01)."""
    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 6.4), sharey="row", squeeze=False)
    for column, (p, by_arch) in enumerate(results.items()):
        top, bottom = axes[0, column], axes[1, column]
        for arch, color in (("shared_bottom", "tab:blue"), ("mmoe", "tab:red")):
            mean, sem = np.array(by_arch[arch]["mean"]), np.array(by_arch[arch]["std"]) / np.sqrt(seeds)
            top.plot(steps, mean, color=color, label=arch)
            top.fill_between(steps, mean - sem, mean + sem, color=color, alpha=0.2, linewidth=0)
            bottom.plot(steps, by_arch[arch]["median"], color=color, label=arch)
        bottom.axhline(0.01, color="gray", linestyle="--", linewidth=1, label="noise floor")
        top.set(title=f"correlation p = {p}", yscale="log")
        bottom.set(xlabel="training steps", ylim=(0.008, 0.03), xlim=(100, steps[-1]))
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"mean test MSE ± s.e.\n({seeds} seeds, log scale)")
    axes[1, 0].set_ylabel("median test MSE (zoom)")
    axes[0, 0].legend()
    axes[1, 0].legend()
    fig.suptitle("MMoE paper §3.2 synthetic data: average test MSE of the 2 tasks vs training steps", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--train-rows", type=int, default=10_000)
    parser.add_argument("--test-rows", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--correlations", type=float, nargs="+", default=[0.5, 0.9, 1.0])
    parser.add_argument("--out-json", default=str(ROOT / "benchmarks/results/mmoe_synthetic.json"))
    parser.add_argument("--out-png", default=str(ROOT / "docs/mmoe_synthetic.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    results = run(args)
    steps = list(range(0, args.steps + 1, args.eval_every))
    settings = {k: v for k, v in vars(args).items() if not k.startswith("out_")}
    payload = {"settings": settings, "archs": ARCHS, "steps": steps, "results": results,
               "seconds": time.perf_counter() - started}
    Path(args.out_json).write_text(json.dumps(payload, indent=1))
    plot(results, steps, Path(args.out_png), args.seeds)
    print(f"{payload['seconds']:.0f}s; wrote {args.out_json} and {args.out_png}")


if __name__ == "__main__":
    main()
