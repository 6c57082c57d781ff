"""`multikpi compare`: train one config under several architectures and seeds, and tabulate the
per-task test metrics with the multi-task gain over single-task training.

Each (arch, seed) is an ordinary training run in `<out>/<arch>_seed<seed>`, of the same config with
`model.arch` and `train.seed` replaced. The base mapping may hold the keys of several archs: model
keys an arch does not read (`num_experts` for shared_bottom, `esmm` for mmoe, ...) are reset to
their defaults for that arch, and `optim.groups` entries for subnets it does not have (`shared` for
mmoe, `experts` for shared_bottom) are dropped; both are logged. So one file can set `num_experts`
and `esmm` and compare mmoe with esmm. Every arch's config is validated before the first run starts.

Main metric per task, higher is better: AUC for binary tasks, Pearson correlation for regression
tasks, on the transformed scale when the task has a `transform` (`pearson_log1p`).

MTL gain of an arch on a task (only when `single_task` is among the archs): per seed k,
    g_k = metric(arch, seed k) − metric(single_task, seed k)
(the two runs share the data and the seed), reported as mean(g) ± std(g) and as a percentage of
the single-task mean. *Negative transfer* is flagged when mean(g) < 0 by more than one standard
deviation of the g_k; with a single seed, whenever mean(g) < 0.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from multikpi.artifacts.files import write_atomic, write_json
from multikpi.artifacts.metrics import RunMetrics
from multikpi.config.architectures import ARCHITECTURES, arch_model_keys, subnet_names
from multikpi.config.load import apply_overrides, config_from_dict
from multikpi.config.schema import ModelSpec, RunConfig
from multikpi.errors import ConfigError
from multikpi.report.compare import render_markdown
from multikpi.training.recipe import train

logger = logging.getLogger("multikpi")
BASELINE = "single_task"


def parse_archs(text: str) -> list[str]:
    """"single_task,mmoe" -> ["single_task", "mmoe"]. ConfigError on an unknown, repeated or empty list."""
    archs = [a.strip() for a in text.split(",") if a.strip()]
    allowed = list(ARCHITECTURES)
    unknown = [a for a in archs if a not in allowed]
    if unknown or not archs:
        raise ConfigError([f"`--archs` must be a comma-separated list of {allowed}. Got {unknown or text!r}"],
                          source="compare")
    repeated = sorted({a for a in archs if archs.count(a) > 1})
    if repeated:
        raise ConfigError([f"`--archs` must name each arch once. Got {repeated} more than once"], source="compare")
    return archs


def arch_config(raw: dict | RunConfig, arch: str, seed: int, log: bool = False) -> RunConfig:
    """The config mapping (or a RunConfig) with `model.arch` = arch and `train.seed` = seed, the
    model keys the arch does not read reset and the optimizer groups it does not have dropped."""
    raw = raw.model_dump(mode="json") if isinstance(raw, RunConfig) else apply_overrides(raw, ())  # a copy
    model = raw.setdefault("model", {}) if isinstance(raw.get("model", {}), dict) else {}
    reset = [k for k, archs in arch_model_keys().items() if arch not in archs and k in model]
    changed = [k for k in reset if model[k] != ModelSpec.model_fields[k].get_default(call_default_factory=True)]
    for key in reset:
        del model[key]
    model["arch"] = arch
    tasks = raw["tasks"] if isinstance(raw.get("tasks"), dict) else {}
    allowed = set(subnet_names(arch, list(tasks)))
    optim = raw.get("optim")
    groups = optim.get("groups") if isinstance(optim, dict) else None
    dropped = [g for g in groups if g not in allowed] if isinstance(groups, dict) else []
    for group in dropped:
        del groups[group]  # type: ignore[union-attr]
    if log and (changed or dropped):
        logger.info("compare %s: reset model keys %s, dropped optim groups %s", arch, changed, dropped)
    raw.setdefault("train", {})["seed"] = seed
    return config_from_dict(raw, source=f"compare {arch}")


def arch_configs(raw: dict | RunConfig, archs: list[str], seeds: list[int]) -> dict[str, list[RunConfig]]:
    """arch -> one validated config per seed. A ConfigError lists every problem of every arch,
    each problem once with the archs it concerns."""
    configs: dict[str, list[RunConfig]] = {}
    problems: dict[str, list[str]] = {}
    for arch in archs:
        try:
            configs[arch] = [arch_config(raw, arch, seed, log=k == 0) for k, seed in enumerate(seeds)]
        except ConfigError as err:
            for problem in err.problems:
                problems.setdefault(problem, []).append(arch)
    if problems:
        raise ConfigError([f"{', '.join(a)}: {p}" for p, a in problems.items()], source="compare")
    return configs


def compare(raw: dict | RunConfig, archs: list[str], seeds: int, out_dir: str | Path) -> dict:
    """Train every (arch, seed) of the config mapping `raw` (or a RunConfig), write `compare.md`
    and `compare.json` to `out_dir`; return the JSON. Seeds: train.seed, train.seed + 1, ..."""
    out_dir = Path(out_dir)
    seed_values = [_base_seed(raw) + k for k in range(seeds)]
    configs = arch_configs(raw, archs, seed_values)
    runs: dict[str, list[RunMetrics]] = {}
    for arch in archs:
        for arch_seed_config in configs[arch]:
            seed = arch_seed_config.train.seed
            logger.info("compare: training %s, seed %d", arch, seed)
            run = train(arch_seed_config, out_dir / f"{arch}_seed{seed}")
            runs.setdefault(arch, []).append(run.metrics)
    result = summarize(configs[archs[0]][0], runs, seed_values)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "compare.json", result)
    write_atomic(out_dir / "compare.md", render_markdown(result).encode())
    return result


def _base_seed(raw: dict | RunConfig) -> int:
    if isinstance(raw, RunConfig):
        return raw.train.seed
    train = raw.get("train")
    seed = train.get("seed", 0) if isinstance(train, dict) else 0
    return seed if isinstance(seed, int) else 0


def main_metric(config: RunConfig, task: str) -> str:
    spec = config.tasks[task]
    if spec.kind == "binary":
        return "auc"
    return "pearson" if spec.transform == "none" else f"pearson_{spec.transform}"


def summarize(config: RunConfig, runs: dict[str, list[RunMetrics]], seeds: list[int]) -> dict[str, Any]:
    """arch -> per-seed RunMetrics -> one row per (arch, task) with mean, std and gain."""
    split = next(s for s in ("test", "valid", "train") if s in next(iter(runs.values()))[0].splits)
    values = {arch: {task: [m.splits[split].get(task, {}).get(main_metric(config, task), math.nan) for m in metrics]
                     for task in config.tasks} for arch, metrics in runs.items()}
    rows = []
    for arch in runs:
        for task in config.tasks:
            row = {"arch": arch, "task": task, "metric": main_metric(config, task), "values": values[arch][task],
                   "mean": _mean(values[arch][task]), "std": _std(values[arch][task])}
            if BASELINE in runs and arch != BASELINE:
                row.update(_gain(values[arch][task], values[BASELINE][task]))
            rows.append(row)
    gates = {arch: [m.gate_usage for m in metrics if m.gate_usage] for arch, metrics in runs.items()}
    return {"split": split, "seeds": seeds, "archs": list(runs), "baseline": BASELINE if BASELINE in runs else None,
            "rows": rows, "gate_usage": {a: g for a, g in gates.items() if g}}


def _gain(arch_values: list[float], base_values: list[float]) -> dict:
    gains = [a - b for a, b in zip(arch_values, base_values)]
    gain, spread, base = _mean(gains), _std(gains), _mean(base_values)
    margin = 0.0 if math.isnan(spread) else spread
    return {"gain": gain, "gain_std": spread, "gain_pct": 100.0 * gain / abs(base) if base else math.nan,
            "negative_transfer": bool(gain < -margin)}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _std(values: list[float]) -> float:
    """Sample standard deviation over seeds; NaN with fewer than two seeds."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
