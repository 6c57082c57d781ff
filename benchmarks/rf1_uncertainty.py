"""Oracle for uncertainty weighting at the defaults (issue 12): on RF1 the learned σ² must rank the
tasks like their validation losses (Spearman ≥ 0.9).

    python benchmarks/rf1_uncertainty.py [--seeds 0,1,2,3] [--updates closed_form,gradient]

RF1 (../shared/data/rf1-river-flow: 8 river-flow regressions, 9k train rows) is split as in
benchmarks/defaults_vs_trees.py; the config is `data`, `tasks` and `loss.combine: uncertainty`
(every other section default; fp32 so that runs are comparable across machines). The σ² are the
kept (best-epoch) weights in metrics.json, compared with each task's valid `relative_loss`.
Prints one row per run and the mean; writes benchmarks/results/rf1_uncertainty.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def one_run(update: str, seed: int) -> dict:
    from defaults_vs_trees import rf1

    import multikpi

    raw, paths = rf1()
    raw["data"].update(paths)
    raw["loss"] = {"combine": "uncertainty", "uncertainty": {"update": update}}
    raw["train"] = {"progress": "off", "precision": "fp32", "seed": seed}
    raw["out_dir"] = str(ROOT / "runs" / "rf1_uncertainty" / f"{update}_{seed}")
    run = multikpi.train(raw, overwrite=True)
    tasks = list(raw["tasks"])
    sigma2 = [run.metrics.loss_weights[t]["sigma"] ** 2 for t in tasks]
    valid = [run.metrics.splits["valid"][t]["relative_loss"] for t in tasks]
    return {"update": update, "seed": seed, "tasks": tasks, "sigma2": sigma2, "valid_relative_loss": valid,
            "spearman": float(spearmanr(sigma2, valid)[0]), "kept_epoch": run.metrics.selection["epoch"],
            "monitor": run.metrics.selection["value"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--updates", default="closed_form,gradient")
    args = parser.parse_args()
    rows = [one_run(update, int(seed)) for update in args.updates.split(",") for seed in args.seeds.split(",")]
    lines = ["| update | seed | Spearman(σ², valid relative loss) | kept epoch | valid monitor |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['update']} | {r['seed']} | {r['spearman']:.3f} | {r['kept_epoch']} | {r['monitor']:.5f} |"
              for r in rows]
    for update in args.updates.split(","):
        mine = [r["spearman"] for r in rows if r["update"] == update]
        lines.append(f"| {update} | mean | {sum(mine) / len(mine):.3f} | | |")
    (ROOT / "benchmarks" / "results" / "rf1_uncertainty.json").write_text(json.dumps(rows, indent=1))
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
