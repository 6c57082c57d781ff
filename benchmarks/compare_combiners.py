"""Compare loss combiners on the standard feed benchmark (1M train rows, 200k test rows, 1 epoch).

Each variant is `multikpi train configs/feed_benchmark.yaml <overrides>` in its own process.
Prints a Markdown table of per-task test metrics and the final loss weights, and writes it to
benchmarks/results/combiners.json and docs/benchmarks_combiners.md.

    python benchmarks/compare_combiners.py            # needs bench-data/ (make bench-data)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, list[str]] = {
    "sum": ["loss.combine=sum"],
    "weighted (1, 1, 0.1)": ["loss.combine=weighted", "loss.weights={click: 1.0, convert: 1.0, dwell: 0.1}"],
    "uncertainty (kendall)": ["loss.combine=uncertainty"],
    "uncertainty (kendall, gradient, loss lr 1e-2)": ["loss.combine=uncertainty", "loss.uncertainty.update=gradient",
                                                     "optim.groups.loss.lr=0.01"],
    "uncertainty (plain)": ["loss.combine=uncertainty", "loss.uncertainty.form=plain"],
    "gradnorm (alpha 1.5)": ["loss.combine=gradnorm", "loss.gradnorm_alpha=1.5"],
    "dwa (T 2, window 20 steps)": ["loss.combine=dwa", "loss.dwa_temperature=2.0", "loss.dwa_window=20"],
    "sum + dwell fed from click (stop-gradient)": ["loss.combine=sum", "tasks.dwell.inputs_from=[click]"],
}


def run_variant(name: str, overrides: list[str], config: str, out_root: Path) -> dict:
    out_dir = out_root / "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
    cmd = [sys.executable, "-m", "multikpi.cli.main", "train", config, *overrides, "--out-dir", str(out_dir)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return {"variant": name, "overrides": overrides, "wall_seconds": time.perf_counter() - started,
            "test": metrics["splits"]["test"], "loss_weights": metrics["loss_weights"],
            "train_examples_per_second": metrics["timing"]["train_examples_per_second"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | click AUC | click logloss | convert AUC | convert logloss | dwell pearson (log1p) "
             "| dwell RMSE (log1p) | final weights click / convert / dwell |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, w = r["test"], r["loss_weights"]
        weights = " / ".join(f"{w[k]['weight']:.3g}" for k in ("click", "convert", "dwell"))
        lines.append(f"| {r['variant']} | {t['click']['auc']:.4f} | {t['click']['logloss']:.4f} "
                     f"| {t['convert']['auc']:.4f} | {t['convert']['logloss']:.4f} "
                     f"| {t['dwell']['pearson_log1p']:.4f} | {t['dwell']['rmse_log1p']:.4f} | {weights} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/feed_benchmark.yaml")
    parser.add_argument("--out-root", default="runs/combiners")
    args = parser.parse_args()
    rows = []
    for name, overrides in VARIANTS.items():
        rows.append(run_variant(name, overrides, args.config, ROOT / args.out_root))
        print(f"done: {name} ({rows[-1]['wall_seconds']:.0f}s)", file=sys.stderr)
    table = markdown(rows)
    print(table)
    (ROOT / "benchmarks/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks/results/combiners.json").write_text(json.dumps(rows, indent=1))
    doc = ("# Loss combiners on the feed benchmark\n\nProduced by `python benchmarks/compare_combiners.py`: "
           "1M train rows, 200k test rows (../shared/bench/gen_feed.py, default seeds), "
           "`configs/feed_benchmark.yaml`, 1 epoch, seed 0. Test metrics. Weights are the effective "
           "multipliers of each task's raw loss at the end of training (uncertainty kendall: "
           "exp(-s) for binary, ½exp(-s) for regression; dwell's loss is the MSE of the standardized log1p target).\n\n"
           + table + "\n")
    (ROOT / "docs/benchmarks_combiners.md").write_text(doc)


if __name__ == "__main__":
    main()
