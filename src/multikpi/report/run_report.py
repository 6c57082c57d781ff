"""The data model of a run's report: what a finished run directory holds, read without the model,
and the series the figures draw (numpy arrays on the global-step axis).

Read: manifest.json (checked: the run finished and its files are untouched), config.yaml,
metrics.json (RunMetrics), history.jsonl (one record per step), train_log.jsonl (one per epoch),
encoders/encoders.json (label statistics) and, when present, tune-decision/ (result.json,
tradeoff.md, pareto.png).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from multikpi.artifacts.manifest import verify_run
from multikpi.artifacts.metrics import RunMetrics
from multikpi.errors import ArtifactError

DECISION_DIR = "tune-decision"


@dataclass(frozen=True)
class Decision:
    """What tune-decision wrote: its summary (result.json), the trade-off table (header, rows
    from tradeoff.md) and the Pareto plot (PNG bytes)."""

    summary: dict[str, Any]
    header: list[str]
    rows: list[list[str]]
    pareto_png: bytes


@dataclass(frozen=True)
class RunReport:
    """A finished run, read back for the report. `history` and `epochs` are the jsonl records;
    `label_stats` task -> {kind, label, transform, mean, std, train_on}."""

    run_dir: Path
    config: dict[str, Any]
    metrics: RunMetrics
    history: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    label_stats: dict[str, dict[str, Any]]
    decision: Decision | None

    @property
    def tasks(self) -> dict[str, str]:
        """task -> kind, in config order."""
        return {task: spec["kind"] for task, spec in self.config["tasks"].items()}

    @property
    def kept_epoch(self) -> int:
        """The epoch whose model was kept: `metrics.selection["epoch"]` (early stopping), else the last."""
        if self.metrics.selection and "epoch" in self.metrics.selection:
            return int(self.metrics.selection["epoch"])
        return int(self.epochs[-1]["epoch"]) if self.epochs else 0

    def epoch_end_steps(self) -> dict[int, int]:
        """epoch -> the global step that ended it (the last step recorded in that epoch)."""
        ends: dict[int, int] = {}
        for record in self.history:
            ends[record["epoch"]] = record["step"]
        return ends

    def steps(self) -> np.ndarray:
        return np.array([r["step"] for r in self.history], dtype=np.int64)

    def step_losses(self, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(raw, weighted) per-step losses of `task`; NaN at steps without a label of the task.
        weighted = the combiner's effective weight at that step × the raw loss."""
        raw = np.array([r["losses"].get(task, math.nan) for r in self.history], dtype=np.float64)
        weight = self.step_weights(task, "weight")
        return raw, raw * weight

    def step_weights(self, task: str, name: str) -> np.ndarray:
        """One quantity of the combiner per step (`weight`, uncertainty's `log_var`, ...); NaN if absent."""
        return np.array([r["weights"].get(task, {}).get(name, math.nan) for r in self.history], dtype=np.float64)

    def step_learning_rates(self) -> dict[str, np.ndarray]:
        groups = list(self.history[-1]["lr"]) if self.history else []
        return {g: np.array([r["lr"].get(g, math.nan) for r in self.history], dtype=np.float64) for g in groups}

    def step_gates(self) -> dict[str, np.ndarray]:
        """task -> (S, E) batch-mean gate weights per step, for mmoe/ple ({} without gates)."""
        records = [r for r in self.history if "gates" in r]
        if not records:
            return {}
        return {task: np.array([r["gates"][task] for r in records], dtype=np.float64) for task in records[-1]["gates"]}

    def gate_steps(self) -> np.ndarray:
        return np.array([r["step"] for r in self.history if "gates" in r], dtype=np.int64)

    def valid_metric(self, task: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, values) of one valid metric over the epochs that have it."""
        points = [(e["epoch"], e["valid"][task][metric]) for e in self.epochs
                  if metric in e.get("valid", {}).get(task, {})]
        epochs, values = zip(*points) if points else ((), ())
        return np.array(epochs, dtype=np.int64), np.array(values, dtype=np.float64)

    def valid_loss(self, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, the valid split's value of the training loss of `task`). Binary: the logloss
        (= mean BCE-with-logits); regression: the MSE on the standardized target, which is
        (RMSE on the transformed scale / std of the transformed train target)²."""
        stats = self.label_stats[task]
        if stats["kind"] == "binary":
            return self.valid_metric(task, "logloss")
        key = "rmse" if stats["transform"] == "none" else f"rmse_{stats['transform']}"
        epochs, rmse = self.valid_metric(task, key)
        return epochs, (rmse / stats["std"]) ** 2


def load_run_report(run_dir: str | Path) -> RunReport:
    """Read a finished run directory (see the module docstring). ArtifactError naming what is wrong."""
    run_dir = Path(run_dir)
    verify_run(run_dir, required=("config.yaml", "metrics.json"))  # a report reads no weights
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = RunMetrics.load(run_dir / "metrics.json")
    encoders = _read_json(run_dir / "encoders" / "encoders.json")
    return RunReport(run_dir=run_dir, config=config, metrics=metrics, history=_read_jsonl(run_dir / "history.jsonl"),
                     epochs=_read_jsonl(run_dir / "train_log.jsonl"), label_stats=encoders["labels"],
                     decision=load_decision(run_dir / DECISION_DIR))


def load_decision(directory: Path) -> Decision | None:
    """tune-decision's output in `directory`, or None when it has none (no decide.yaml: incomplete)."""
    if not (directory / "decide.yaml").is_file():
        return None
    header, rows = parse_markdown_table((directory / "tradeoff.md").read_text())
    return Decision(summary=_read_json(directory / "result.json"), header=header, rows=rows,
                    pareto_png=(directory / "pareto.png").read_bytes())


def parse_markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    """A GitHub table as `render_table(style="markdown")` writes it -> (header, rows of cells),
    cells as plain text (`**bold**` and `code` marks removed)."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        raise ArtifactError(f"not a Markdown table: {text[:60]!r}")
    cells = [[c.strip().replace("**", "").strip("`") for c in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{str(path)!r} cannot be read: {err}") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{str(path)!r} cannot be read: {err}") from None
