"""multikpi's defaults against per-task gradient-boosted trees, on the small real datasets.

    python benchmarks/defaults_vs_trees.py [--datasets adult,womens,rf1,feed] [--seeds 1]

For each dataset: a config with only `data` and `tasks` (every other section at its default), the
same config with the old defaults (0.1.0: 1 epoch, batch 4096, lr 1e-3, no numeric bins), and
one scikit-learn HistGradientBoosting model per task (early stopping on the valid split, learning
rate chosen on valid among 0.03 / 0.1 / 0.3). Test AUC for binary tasks, test RMSE (label units)
for regression tasks, and mean prediction / mean label on test. Prints a Markdown table and writes
benchmarks/results/defaults_vs_trees.json.

Splits: adult by numpy.random.default_rng(2018).permutation(48842) into 50% train / 25% valid / 25%
test; women's reviews and the feed 80/10/10 by default_rng(0); RF1's own train/test files with 10%
of train held out by default_rng(0).
"""
from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench-data" / "defaults"


def _write_splits(name: str, table: pa.Table, parts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, str]:
    paths = {}
    for split, rows in zip(("train", "valid", "test"), parts):
        path = OUT / name / f"{split}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(pa.array(rows)), path)
        paths[split] = str(path)
    return paths


def adult() -> tuple[dict, dict[str, str]]:
    table = pq.read_table(SHARED / "adult" / "adult.parquet.brotli")
    income = pc.equal(pc.utf8_trim_whitespace(table["income"]), ">50K")
    married = pc.equal(pc.utf8_trim_whitespace(table["marital-status"]), "Never-married")
    table = table.append_column("high_income", pc.cast(income, pa.int8())).append_column(
        "never_married", pc.cast(married, pa.int8())).drop_columns(["income", "marital-status", "relationship"])
    perm = np.random.default_rng(2018).permutation(table.num_rows)
    paths = _write_splits("adult", table, (perm[:24421], perm[24421:36631], perm[36631:]))
    data = {"categorical": ["workclass", "education", "occupation", "race", "gender", "native-country"],
            "dense": ["age", "fnlwgt", "educational-num", "capital-gain", "capital-loss", "hours-per-week"]}
    tasks = {"income": {"kind": "binary", "label": "high_income"},
             "never_married": {"kind": "binary", "label": "never_married"}}
    return {"data": data, "tasks": tasks}, paths


def womens() -> tuple[dict, dict[str, str]]:
    table = pq.read_table(glob.glob(str(SHARED / "womens-ecommerce-reviews" / "*.parquet.brotli"))[0])
    table = table.set_column(table.schema.get_field_index("Clothing ID"), "Clothing ID",
                             pc.cast(table["Clothing ID"], pa.string()))
    perm = np.random.default_rng(0).permutation(table.num_rows)
    a, b = int(0.8 * table.num_rows), int(0.9 * table.num_rows)
    paths = _write_splits("womens", table, (perm[:a], perm[a:b], perm[b:]))
    data = {"categorical": ["Division Name", "Department Name", "Class Name", "Clothing ID"], "dense": ["Age"]}
    tasks = {"recommended": {"kind": "binary", "label": "Recommended IND"},
             "rating": {"kind": "regression", "label": "Rating"},
             "feedback": {"kind": "regression", "label": "Positive Feedback Count", "transform": "log1p"}}
    return {"data": data, "tasks": tasks}, paths


def rf1() -> tuple[dict, dict[str, str]]:
    train = pq.read_table(SHARED / "rf1-river-flow" / "rf1_train.parquet.brotli")
    test = pq.read_table(SHARED / "rf1-river-flow" / "rf1_test.parquet.brotli")
    targets = [c for c in train.column_names if "_48H__" in c]
    inputs = [c for c in train.column_names if c not in targets and not c.startswith("__")]
    perm = np.random.default_rng(0).permutation(train.num_rows)
    held = int(round(0.1 * train.num_rows))
    paths = _write_splits("rf1", train, (perm[held:], perm[:held], np.arange(0)))
    test_path = OUT / "rf1" / "test.parquet"
    pq.write_table(test, test_path)
    paths["test"] = str(test_path)
    tasks = {t.replace("_48H__0", "").lower(): {"kind": "regression", "label": t} for t in targets}
    return {"data": {"dense": inputs}, "tasks": tasks}, paths


def feed() -> tuple[dict, dict[str, str]]:
    from multikpi.synthetic.feed import make_feed

    table = make_feed(100_000, seed=0)
    perm = np.random.default_rng(0).permutation(table.num_rows)
    paths = _write_splits("feed", table, (perm[:80_000], perm[80_000:90_000], perm[90_000:]))
    data = {"categorical": ["user_id", "item_id", "item_category", "user_segment", "device", "hour", "position"],
            "dense": ["price", "item_age_h", "user_activity", "affinity", "noise"], "log1p": ["price", "item_age_h"]}
    tasks = {"click": {"kind": "binary", "label": "click"},
             "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"},
             "convert": {"kind": "binary", "label": "convert"}}
    return {"data": data, "tasks": tasks}, paths


# 0.1.0's defaults: one epoch at batch 4096, lr 1e-3, dense columns without bin embeddings
OLD_DEFAULTS = ["train.epochs=1", "train.batch_size=4096", "optim.default.lr=0.001", "data.numeric_bins=0"]
DATASETS = {"adult": adult, "womens": womens, "rf1": rf1, "feed": feed}


def run_multikpi(config: dict, paths: dict[str, str], overrides: list[str], out: Path, seed: int) -> dict:
    import multikpi

    raw = json.loads(json.dumps(config))
    raw["data"].update(paths)
    raw["out_dir"] = str(out)
    raw.setdefault("train", {}).update({"seed": seed, "progress": "off"})
    started = time.perf_counter()
    run = multikpi.train(_with(raw, overrides), overwrite=True)  # a rerun replaces the last one
    return {"seconds": time.perf_counter() - started, "test": run.metrics.splits["test"],
            "epochs": run.metrics.training.get("epochs"), "batch_size": run.metrics.training.get("batch_size"),
            "selection": run.metrics.selection, "warnings": run.metrics.warnings}


def _with(raw: dict, overrides: list[str]):
    from multikpi.config.load import apply_overrides, config_from_dict

    return config_from_dict(apply_overrides(raw, overrides))


def run_trees(config: dict, paths: dict[str, str]) -> dict:
    """One HistGradientBoosting model per task; categoricals as native categories (ordinal codes)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import roc_auc_score

    cats, nums = config["data"].get("categorical", []), config["data"]["dense"]
    tables = {s: pq.read_table(p) for s, p in paths.items()}
    codes = {c: {v: i for i, v in enumerate(sorted(set(tables["train"][c].drop_null().to_pylist()), key=str))}
             for c in cats}

    def matrix(t: pa.Table) -> np.ndarray:
        cols = [np.array([codes[c].get(v, np.nan) for v in t[c].to_pylist()], dtype=float) for c in cats]
        cols += [t[c].to_numpy(zero_copy_only=False).astype(float) for c in nums]
        return np.column_stack(cols)

    x = {s: matrix(t) for s, t in tables.items()}
    mask = [len(codes[c]) <= 255 for c in cats] + [False] * len(nums)
    out = {}
    for task, spec in config["tasks"].items():
        y = {s: t[spec["label"]].to_numpy(zero_copy_only=False).astype(float) for s, t in tables.items()}
        log = spec.get("transform") == "log1p"
        best = None
        for lr in (0.03, 0.1, 0.3):
            kind = HistGradientBoostingClassifier if spec["kind"] == "binary" else HistGradientBoostingRegressor
            model = kind(learning_rate=lr, max_iter=2000, early_stopping=True, n_iter_no_change=20, random_state=0,
                         categorical_features=mask if any(mask) else None)
            target = {s: np.log1p(v) if log else v for s, v in y.items()}
            model.fit(x["train"], target["train"], X_val=x["valid"], y_val=target["valid"])
            if spec["kind"] == "binary":
                score = roc_auc_score(y["valid"], model.predict_proba(x["valid"])[:, 1])
            else:
                score = -float(np.sqrt(np.mean((model.predict(x["valid"]) - target["valid"]) ** 2)))
            if best is None or score > best[0]:
                best = (score, model)
        model = best[1]
        if spec["kind"] == "binary":
            probs = model.predict_proba(x["test"])[:, 1]
            out[task] = {"auc": roc_auc_score(y["test"], probs), "calibration": probs.mean() / y["test"].mean()}
        else:
            pred = model.predict(x["test"])
            pred = np.expm1(pred) if log else pred
            out[task] = {"rmse": float(np.sqrt(np.mean((pred - y["test"]) ** 2))),
                         "calibration": float(pred.mean() / y["test"].mean())}
    return out


def table(results: dict) -> str:
    lines = ["| dataset | task | metric | defaults | 0.1.0 defaults (1 epoch) | trees (HGB) | defaults − trees "
             "| mean pred / mean label (defaults) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for task, tree in r["trees"].items():
            metric = "auc" if "auc" in tree else "rmse"
            new, old = r["defaults"]["test"][task][metric], r["old"]["test"][task][metric]
            ratio = r["defaults"]["test"][task].get("calibration", float("nan"))
            lines.append(f"| {name} | {task} | {metric} | {new:.4f} | {old:.4f} | {tree[metric]:.4f} "
                         f"| {new - tree[metric]:+.4f} | {ratio:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="adult,womens,rf1,feed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = {}
    for name in args.datasets.split(","):
        config, paths = DATASETS[name]()
        runs = ROOT / "runs" / "defaults_vs_trees"
        results[name] = {
            "defaults": run_multikpi(config, paths, [], runs / name, args.seed),
            "old": run_multikpi(config, paths, OLD_DEFAULTS, runs / f"{name}_old", args.seed),
            "trees": run_trees(config, paths)}
        print(table({name: results[name]}), flush=True)
    out = ROOT / "benchmarks" / "results" / "defaults_vs_trees.json"
    out.write_text(json.dumps(results, indent=1, default=float))
    print(table(results))


if __name__ == "__main__":
    main()
