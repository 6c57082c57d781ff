"""metrics.json, read and written through one typed object.

    {"format": 2,
     "splits": {"train" | "valid" | "test": {task: {metric: value}}},
     "loss_weights": {task: {name: value}},        effective combiner weights at the end
     "timing": {"total_seconds": s, "train_examples_per_second": r},
     "calibration": {...} | null,                  fitted on valid (multikpi.eval.calibration)
     "gate_usage": {task: [weight per expert]} | null,   mmoe / ple, mean over the last epoch
     "selection": {"monitor", "value", "epoch", "step", "evaluations", "per_task_best_epoch",
                   "per_task_best_step"} | null,   the evaluation whose weights were kept
     "training": {"batch_size", "steps", "epochs", "steps_per_epoch"},   what the recipe chose and ran
     "warnings": [one line each],
     "label_coverage": {split: {task: {"rows", "labelled", "masked_by_train_on", "missing", "positives"}}} | null,
     "data_summary": {"rows": {split: n}, "vocabulary": {column: {"size", "oov_rate": {split: r}}},
                      "dense": [column], "missing_indicators": [column]} | null,
     "regression_bins": {"split": str, "tasks": {task: {...}}} | null}   predicted vs actual, residuals

The keys after `gate_usage` are optional: metrics files written before them read back as None
(multikpi.eval.diagnostics computes them; the report draws them when present).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multikpi.artifacts.files import nan_to_null, write_atomic
from multikpi.errors import ArtifactError

FORMAT = 2
SplitMetrics = dict[str, dict[str, float]]  # task -> metric -> value


@dataclass
class RunMetrics:
    """What a run measured. `splits[split][task][metric]`, e.g. `splits["test"]["click"]["auc"]`."""

    splits: dict[str, SplitMetrics] = field(default_factory=dict)
    loss_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    gate_usage: dict[str, list[float]] | None = None
    selection: dict[str, Any] | None = None  # the kept evaluation (early stopping); None = the last epoch
    training: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    label_coverage: dict[str, dict[str, dict[str, int]]] | None = None
    data_summary: dict[str, Any] | None = None
    regression_bins: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "splits": self.splits, "loss_weights": self.loss_weights, "timing": self.timing,
                "calibration": self.calibration, "gate_usage": self.gate_usage, "selection": self.selection,
                "training": self.training, "warnings": self.warnings, "label_coverage": self.label_coverage,
                "data_summary": self.data_summary, "regression_bins": self.regression_bins}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> RunMetrics:
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"metrics format must be {FORMAT}")
        return cls(splits=payload["splits"], loss_weights=payload["loss_weights"], timing=payload["timing"],
                   calibration=payload.get("calibration"), gate_usage=payload.get("gate_usage"),
                   selection=payload.get("selection"), training=payload.get("training", {}),
                   warnings=list(payload.get("warnings", [])), label_coverage=payload.get("label_coverage"),
                   data_summary=payload.get("data_summary"), regression_bins=payload.get("regression_bins"))

    def save(self, path: Path) -> None:
        """Atomic write; NaN metrics (an AUC of a one-class split) are written as JSON null."""
        write_atomic(path, json.dumps(nan_to_null(self.to_json()), indent=1, allow_nan=False).encode())

    @classmethod
    def load(cls, path: Path) -> RunMetrics:
        try:
            return cls.from_json(_none_to_nan(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ArtifactError(f"{str(path)!r} is not a valid metrics file: {err}") from None


def _none_to_nan(node: Any) -> Any:
    """Inside `splits`, null metric values read back as NaN."""
    if isinstance(node, dict) and "splits" in node and isinstance(node["splits"], dict):
        node["splits"] = {s: {t: {m: (math.nan if v is None else v) for m, v in metrics.items()}
                              for t, metrics in tasks.items()} for s, tasks in node["splits"].items()}
    return node
