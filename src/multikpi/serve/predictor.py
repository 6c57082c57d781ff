"""Load a finished run and predict with it: one column per task, a probability for binary tasks
and a value in label units for regression tasks.

A Predictor holds no per-call state: the model is in eval mode and runs under `inference_mode`,
so one instance may serve concurrent callers from several threads."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from multikpi.artifacts.run_dir import LoadedRun, load_run
from multikpi.artifacts.serving import ServingSettings
from multikpi.config.schema import RunConfig
from multikpi.data.diagnostics import oov_warnings
from multikpi.data.encoders import FeatureEncoder
from multikpi.data.tabular import column_names as _column_names
from multikpi.data.tabular import open_columns
from multikpi.errors import DataError
from multikpi.eval.calibration import TaskCalibrator, apply_calibration, calibrators_from_json, resolve_method
from multikpi.eval.evaluate import estimates, model_outputs
from multikpi.models.multitask import MultiTaskModel
from multikpi.models.precision import resolve_device, resolve_precision

logger = logging.getLogger("multikpi")


class Predictor:
    """A trained model with its encoders and serving settings. `Predictor.load(run_dir).predict(table)`.

    config: the run's resolved config (tasks, columns); serving: batch size, precision, calibration,
    id columns, score and top_k fixed at training time; device: where the model runs (default: the
    serving settings' device)."""

    def __init__(self, *, config: RunConfig, encoder: FeatureEncoder, model: MultiTaskModel,
                 serving: ServingSettings, calibrators: dict[str, TaskCalibrator] | None = None,
                 version: str = "", device: str | None = None):
        self.config = config
        self.encoder = encoder
        self.serving = serving
        self.version = version
        self.device = resolve_device(device or serving.device)
        self.model = model.to(self.device).eval()
        self.precision = resolve_precision(serving.precision, self.device, self.model, serving.batch_size, "infer")
        self.calibrators = calibrators  # binary task -> isotonic + Platt, fitted on valid (None: not fitted)
        self.calibration = resolve_method(serving.calibration, calibrators)  # none | isotonic | platt

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None) -> Predictor:
        """Verify the run's manifest (version, checksums), then load config, encoders and weights."""
        return cls.from_loaded(load_run(run_dir), device)

    @classmethod
    def from_loaded(cls, run: LoadedRun, device: str | None = None) -> Predictor:
        calibrators = calibrators_from_json(run.calibration) if run.calibration is not None else None
        return cls(config=run.config, encoder=run.encoder, model=run.model, serving=run.serving,
                   calibrators=calibrators, version=run.version, device=device)

    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    def feature_columns(self) -> list[str]:
        return self.encoder.categorical + self.encoder.dense

    def predict(self, table: Any, keep: list[str] | tuple[str, ...] | None = None,
                calibrated: bool = True, warn: bool = False) -> pa.Table:
        """table: a pyarrow Table, a pandas DataFrame, a dict of columns, or a Parquet/CSV path.

        Returns a Table with the `keep` columns passed through (default: those of the id columns
        that the input has), then one float64 column per task. Binary tasks are calibrated as the
        serving settings say (`self.calibration`) unless `calibrated` is False."""
        table = self._as_table(table, list(keep or []))
        if keep is None:
            keep = [c for c in self.serving.id_columns if c in table.column_names]
        clash = sorted(set(keep) & set(self.tasks))
        if clash:
            raise DataError(f"column(s) {clash} would be written twice: as kept input columns and as the "
                            f"estimates of the task(s) of the same name; drop them from the kept columns")
        missing = [c for c in list(keep) + self.feature_columns() if c not in table.column_names]
        if missing:
            raise DataError(f"input has no column(s) {missing}; the model needs {self.feature_columns()}")
        values = self.estimates(table, calibrated, warn)
        columns = {c: table.column(c) for c in keep}
        columns.update({task: pa.array(np.asarray(values[task], dtype=np.float64)) for task in self.tasks})
        return pa.table(columns)

    def estimates(self, table: Any, calibrated: bool = True, warn: bool = False) -> dict[str, np.ndarray]:
        """task -> (N,) estimates of the rows of `table`: probabilities (calibrated unless told not
        to) for binary tasks, label units for regression tasks."""
        data = self.encoder.encode(table, with_labels=False)
        if warn:
            for warning in oov_warnings(self.encoder, data, "input"):
                logger.warning("warning: %s", warning)
        outputs = model_outputs(self.model, data, self.serving.batch_size, self.precision)
        values = estimates(outputs, self.encoder)
        if calibrated:
            values = apply_calibration(values, self.calibrators, self.calibration)
        return {task: values[task] for task in self.tasks}

    def _as_table(self, table: Any, keep: list[str]) -> pa.Table:
        if isinstance(table, (str, Path)):
            optional = [c for c in self.serving.id_columns if c not in keep]
            wanted = keep + self.feature_columns()
            return open_columns(table, wanted + [c for c in optional if c in _column_names(table)])
        if isinstance(table, pa.Table):
            return table
        if isinstance(table, dict):
            return pa.table(table)
        if hasattr(table, "to_dict") and hasattr(table, "columns"):  # a pandas DataFrame
            return pa.Table.from_pandas(table, preserve_index=False)
        raise DataError(f"predict() takes a pyarrow Table, a DataFrame, a dict or a path. Got {type(table).__name__}")

    @torch.inference_mode()
    def predict_encoded(self, categorical: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        """Already encoded inputs (B, F) int64 and (B, D) float32 -> task -> (B,) raw outputs."""
        return self.model.forward_features(categorical.to(self.device), dense.to(self.device))
