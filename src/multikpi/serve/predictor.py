"""Load a finished run and predict with it: one column per task, a probability for binary tasks
and a value in label units for regression tasks."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from multikpi.config.load import config_from_dict
from multikpi.config.schema import RunConfig
from multikpi.data.encoders import FeatureEncoder
from multikpi.data.tabular import column_names as _column_names
from multikpi.data.tabular import open_columns
from multikpi.decide.calibration import TaskCalibrator, apply_calibration, load_calibrators, resolve_method
from multikpi.errors import ArtifactError, DataError
from multikpi.eval.evaluate import estimates, model_outputs
from multikpi.models.build import build_model
from multikpi.models.multitask import MultiTaskModel
from multikpi.serve.artifact import verify_run
from multikpi.train.run import resolve_precision


class Predictor:
    """A trained model with its encoders. `Predictor.load(run_dir).predict(table)`."""

    def __init__(self, config: RunConfig, encoder: FeatureEncoder, model: MultiTaskModel, *,
                 calibrators: dict[str, TaskCalibrator] | None = None):
        self.config = config
        self.encoder = encoder
        self.model = model.eval()
        self.precision = resolve_precision(config.train.precision, torch.device("cpu"))
        self.calibrators = calibrators  # binary task -> isotonic + Platt, fitted on valid (None: not fitted)
        self.calibration = resolve_method(config.decide.calibration, calibrators)  # none | isotonic | platt

    @classmethod
    def load(cls, run_dir: str | Path) -> "Predictor":
        """Verify the run's manifest (version, checksums), then load config, encoders and weights."""
        run_dir = Path(run_dir)
        files = verify_run(run_dir)
        config = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()), source=str(run_dir))
        encoder = FeatureEncoder.load(run_dir / "encoders")
        model = build_model(config, encoder)
        try:
            state = load_file(run_dir / "model.safetensors")
            model.load_state_dict(state)
        except (SafetensorError, RuntimeError, OSError) as err:
            raise ArtifactError(f"weights in {str(run_dir)!r} cannot be loaded: {str(err).splitlines()[0]}") from None
        return cls(config, encoder, model, calibrators=load_calibrators(run_dir, files))

    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    def feature_columns(self) -> list[str]:
        return self.encoder.categorical + self.encoder.dense

    def predict(self, table: Any, keep: list[str] | tuple[str, ...] | None = None,
                calibrated: bool = True) -> pa.Table:
        """table: a pyarrow Table, a pandas DataFrame, a dict of columns, or a Parquet/CSV path.

        Returns a Table with the `keep` columns passed through (default: those of
        `data.id_columns` that the input has), then one float64 column per task. Binary tasks are
        calibrated as `decide.calibration` says (`self.calibration`) unless `calibrated` is False."""
        table = self._as_table(table, list(keep or []))
        if keep is None:
            keep = [c for c in self.config.data.id_columns if c in table.column_names]
        missing = [c for c in list(keep) + self.feature_columns() if c not in table.column_names]
        if missing:
            raise DataError(f"input has no column(s) {missing}; the model needs {self.feature_columns()}")
        data = self.encoder.encode(table, with_labels=False)
        values = estimates(model_outputs(self.model, data, self.config.train.eval_batch_size, self.precision), self.encoder)
        if calibrated:
            values = apply_calibration(values, self.calibrators, self.calibration)
        columns = {c: table.column(c) for c in keep}
        columns.update({task: pa.array(np.asarray(values[task], dtype=np.float64)) for task in self.tasks})
        return pa.table(columns)

    def _as_table(self, table: Any, keep: list[str]) -> pa.Table:
        if isinstance(table, (str, Path)):
            optional = [c for c in self.config.data.id_columns if c not in keep]
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
        return self.model.forward_features(categorical, dense)
