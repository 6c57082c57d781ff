"""Load a finished run and predict with it: one column per task, a probability for binary tasks
and a value in label units for regression tasks; and rank one request's candidates.

A Predictor holds no per-call state: the model is in eval mode and runs under `inference_mode`
(or in an onnxruntime session), the encoder's lookups are built once and only read, so one
instance may serve concurrent callers from several threads."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from multikpi.artifacts.run_dir import LoadedRun, load_run
from multikpi.artifacts.serving import ServingSettings
from multikpi.config.schema import RunConfig
from multikpi.data.diagnostics import oov_warnings
from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.data.tabular import ParquetColumns, open_columns
from multikpi.data.tabular import column_names as _column_names
from multikpi.errors import DataError
from multikpi.eval.calibration import TaskCalibrator, apply_calibration, calibrators_from_json, resolve_method
from multikpi.eval.evaluate import check_finite, estimates
from multikpi.extras import import_extra
from multikpi.models.multitask import MultiTaskModel
from multikpi.models.precision import resolve_device, resolve_precision
from multikpi.serve.backends import BACKENDS, ContextColumns, ModelBackend
from multikpi.serve.encoding import ServingEncoder
from multikpi.serve.request import RankedCandidates, rank_request

logger = logging.getLogger("multikpi")


class Predictor:
    """A trained model with its encoders and serving settings. `Predictor.load(run_dir).predict(table)`.

    config: the run's resolved config (tasks, columns); serving: batch size, precision, calibration,
    id columns, score and top_k fixed at training time; device: where the model runs (default: the
    serving settings' device); backend: "torch" (eager) or "onnx" (onnxruntime, CPU, float32);
    threads: onnxruntime's intra-op threads."""

    def __init__(self, *, config: RunConfig, encoder: FeatureEncoder, model: MultiTaskModel,
                 serving: ServingSettings, calibrators: dict[str, TaskCalibrator] | None = None,
                 version: str = "", device: str | None = None, backend: str = "torch",
                 run_dir: Path | None = None, threads: int = 1):
        if backend not in BACKENDS:
            raise DataError(f"backend must be one of {', '.join(BACKENDS)}. Got {backend!r}")
        self.config = config
        self.encoder = encoder
        self.serving = serving
        self.version = version
        self.run_dir = run_dir
        self.device = resolve_device(device or serving.device) if backend == "torch" else torch.device("cpu")
        self.model = model.to(self.device).eval()
        self.precision = (resolve_precision(serving.precision, self.device, self.model, serving.batch_size, "infer")
                          if backend == "torch" else None)  # onnxruntime runs the file in float32
        self.calibrators = calibrators  # binary task -> isotonic + Platt, fitted on valid (None: not fitted)
        self.calibration = resolve_method(serving.calibration, calibrators)  # none | isotonic | platt
        self.serving_encoder = ServingEncoder(encoder)
        self.backend: ModelBackend = BACKENDS[backend](self.model, encoder, version, run_dir, self.device,
                                                       self.precision, threads)

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None, backend: str = "torch",
             threads: int = 1) -> Predictor:
        """Verify the run's manifest (version, checksums), then load config, encoders and weights."""
        return cls.from_loaded(load_run(run_dir), device, backend, threads)

    @classmethod
    def from_loaded(cls, run: LoadedRun, device: str | None = None, backend: str = "torch",
                    threads: int = 1) -> Predictor:
        calibrators = calibrators_from_json(run.calibration) if run.calibration is not None else None
        return cls(config=run.config, encoder=run.encoder, model=run.model, serving=run.serving,
                   calibrators=calibrators, version=run.version, device=device, backend=backend,
                   run_dir=run.run_dir, threads=threads)

    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    def feature_columns(self) -> list[str]:
        return self.encoder.categorical + self.encoder.dense

    def predict(self, table: Any, keep: list[str] | tuple[str, ...] | None = None,
                calibrated: bool = True, warn: bool = False) -> pa.Table:
        """table: a pyarrow Table, a pandas DataFrame, a dict of columns (lists or arrays), or a
        Parquet/CSV path.

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
        table = self._as_table(table, [])
        encoded = self.serving_encoder.encode({c: table.column(c) for c in self.feature_columns()}, table.num_rows)
        if warn:
            data = EncodedData(torch.from_numpy(encoded.categorical), torch.from_numpy(encoded.dense),
                               torch.empty((table.num_rows, 0)), ())
            for warning in oov_warnings(self.encoder, data, "input"):
                logger.warning("warning: %s", warning)
        return self.estimates_of(encoded.categorical, encoded.dense, calibrated)

    def estimates_of(self, categorical: np.ndarray, dense: np.ndarray, calibrated: bool = True,
                     context: ContextColumns | None = None) -> dict[str, np.ndarray]:
        """Encoded rows -> task -> (N,) float64 estimates (see `estimates`); `context`: the columns
        that hold one ranking request's context in every row (TorchBackend)."""
        values = estimates(self.raw_outputs(categorical, dense, context), self.encoder)
        if calibrated:
            values = apply_calibration(values, self.calibrators, self.calibration)
        return {task: values[task] for task in self.tasks}

    def raw_outputs(self, categorical: np.ndarray, dense: np.ndarray,
                    context: ContextColumns | None = None) -> dict[str, np.ndarray]:
        """(N, F) int64 and (N, D) float32 encoded rows -> key -> (N,) float32 raw outputs (logits,
        standardized values), through the backend in slices of `serving.batch_size` rows."""
        size = self.serving.batch_size
        parts = []
        for start in range(0, max(categorical.shape[0], 1), size):
            rows = slice(start, min(start + size, categorical.shape[0]))
            outputs = self.backend.outputs(categorical[rows], dense[rows], context)
            check_finite(outputs, rows)  # a corrupt run never yields a NaN estimate (ArtifactError)
            parts.append(outputs)
        if len(parts) == 1:
            return parts[0]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def rank(self, request: Mapping[str, Any]) -> RankedCandidates:
        """Rank one request's candidates: {"context": {feature: value} (sent once, broadcast to
        every candidate), "candidates": [{feature: value}, ...] or {feature: (N,) values},
        "top_k": optional (default: serving.top_k), "score": optional formula (default:
        serving.score)}. Every feature is in the context or in every candidate, not in both."""
        return rank_request(self, request)

    def _as_table(self, table: Any, keep: list[str]) -> pa.Table | ParquetColumns:
        if isinstance(table, (str, Path)):
            optional = [c for c in self.serving.id_columns if c not in keep]
            wanted = keep + self.feature_columns()
            return open_columns(table, wanted + [c for c in optional if c in _column_names(table)])
        if isinstance(table, (pa.Table, ParquetColumns)):
            return table
        if isinstance(table, dict):
            try:
                return pa.table(table)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as err:
                raise DataError(f"predict() takes a dict of equally long columns: {err}") from None
        if type(table).__name__ == "DataFrame":
            return _dataframe_table(table)
        raise DataError(f"predict() takes a pyarrow Table, a DataFrame, a dict or a path. Got {type(table).__name__}")

    def predict_encoded(self, categorical: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        """Already encoded inputs (B, F) int64 and (B, D) float32 -> task -> (B,) raw outputs."""
        outputs = self.backend.outputs(categorical.cpu().numpy().astype(np.int64), dense.cpu().numpy())
        return {key: torch.from_numpy(values) for key, values in outputs.items()}


def _dataframe_table(frame: Any) -> pa.Table:
    """A pandas DataFrame (its index dropped) or a polars one, as a pyarrow Table."""
    if hasattr(frame, "to_arrow"):  # polars: Arrow-native already
        return frame.to_arrow()
    pandas = import_extra("pandas", "predict() on a DataFrame")
    if not isinstance(frame, pandas.DataFrame):
        raise DataError(f"predict() takes a pyarrow Table, a DataFrame, a dict or a path. Got {type(frame).__module__}."
                        f"{type(frame).__name__}")
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataError(f"predict(): the DataFrame has a column Arrow cannot convert: {err}") from None
