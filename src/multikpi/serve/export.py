"""`multikpi export RUN_DIR --format onnx`: export, then a parity gate, then write (atomically).

The gate runs the exported model in onnxruntime against eager PyTorch in float32:
- raw outputs (logits) within rtol 1e-5 / atol 1e-6 on a probe batch and on up to `rows` rows of
  the run's test split (else its valid split, when the file is there);
- the same top-k per request after the calibrators and the formula, on those rows grouped by
  `data.group` (else consecutive blocks of 100 rows, as pseudo-requests), up to the order of
  candidates whose scores tie within float32 rounding (`same_ranking`).
A file that fails is not written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from multikpi.artifacts.files import write_atomic
from multikpi.artifacts.run_dir import LoadedRun, load_run
from multikpi.data.tabular import read_table
from multikpi.errors import ArtifactError, DataError
from multikpi.eval.calibration import apply_calibration, calibrators_from_json, resolve_method
from multikpi.eval.evaluate import estimates
from multikpi.serve.backends import ATOL, ONNX_FILE, RTOL, OnnxBackend, TorchBackend, check_parity, probe_inputs
from multikpi.serve.encoding import ServingEncoder
from multikpi.serve.onnx_export import export_onnx_bytes
from multikpi.serve.ranking import request_formula, request_order

FORMATS = ("onnx",)
BLOCK = 100  # rows per pseudo-request when the run has no data.group
SCORE_RTOL = 1e-4  # scores this close (relative) are ties the two models may order either way


@dataclass(frozen=True)
class ExportReport:
    path: Path
    size_bytes: int
    outputs: list[str]
    rows_checked: int  # split rows compared (0 when no split file is available)
    split: str | None
    requests_checked: int
    max_abs_diff: float


def export_run(run_dir: str | Path, out: str | Path | None = None, fmt: str = "onnx",
               rows: int = 20_000) -> ExportReport:
    if fmt not in FORMATS:
        raise DataError(f"--format must be one of {', '.join(FORMATS)}. Got {fmt!r}")
    run = load_run(run_dir)
    path = Path(out) if out is not None else run.run_dir / ONNX_FILE
    if path.suffix != ".onnx":
        raise DataError(f"--out must name a .onnx file. Got {str(path)!r}")
    data = export_onnx_bytes(run.model, run.encoder, run.version)
    onnx, torch_fp32 = OnnxBackend(data), TorchBackend(run.model, torch.device("cpu"), None)
    worst = check_parity(torch_fp32, onnx, probe_inputs(run.encoder))
    split, table = _parity_split(run, rows)
    requests = 0
    if table is not None:
        encoded = ServingEncoder(run.encoder).encode({c: table.column(c) for c in run.encoder.categorical +
                                                      run.encoder.dense}, table.num_rows)
        worst = max(worst, check_parity(torch_fp32, onnx, (encoded.categorical, encoded.dense)))
        requests = _check_top_k(run, torch_fp32.outputs(encoded.categorical, encoded.dense),
                                onnx.outputs(encoded.categorical, encoded.dense), table)
    write_atomic(path, data)
    return ExportReport(path, len(data), onnx.names, table.num_rows if table is not None else 0, split, requests,
                        worst)


def _parity_split(run: LoadedRun, rows: int) -> tuple[str | None, pa.Table | None]:
    """The first `rows` rows of the test split (else valid) when its file exists, with the group."""
    for split, path in (("test", run.config.data.test), ("valid", run.config.data.valid)):
        if path and Path(path).is_file():
            wanted = run.encoder.categorical + run.encoder.dense
            group = run.config.data.group
            table = read_table(path, wanted + ([group] if group else []))
            return split, table.slice(0, rows)
    return None, None


def _check_top_k(run: LoadedRun, reference: dict[str, np.ndarray], exported: dict[str, np.ndarray],
                 table: pa.Table) -> int:
    """Rank each request by the run's formula on calibrated estimates from both models; ArtifactError
    unless every top-k (the run's decide.top_k) is the same. Returns the number of requests."""
    calibrators = calibrators_from_json(run.calibration) if run.calibration is not None else None
    method = resolve_method(run.serving.calibration, calibrators)
    tasks = tuple(run.config.tasks)
    formula = request_formula(run.serving.score or tasks[0], tasks)
    scores = [formula.evaluate(apply_calibration(estimates(o, run.encoder), calibrators, method), rows=table.num_rows)
              for o in (reference, exported)]
    groups = _groups(run, table)
    for number, rows in enumerate(groups):
        top = [rows[request_order(s[rows])[:run.serving.top_k]] for s in scores]
        if not same_ranking(scores[0], top[0], top[1]):
            raise ArtifactError(f"ONNX export: request {number} ranks differently from PyTorch after calibration "
                                f"and {formula.text!r}: top-{run.serving.top_k} {top[1].tolist()} vs "
                                f"{top[0].tolist()}")
    return len(groups)


def same_ranking(reference_scores: np.ndarray, reference_top: np.ndarray, exported_top: np.ndarray) -> bool:
    """Whether the exported model's top-k is the reference's, up to the order of near-ties: at every
    rank, the reference scores of the two picks agree within SCORE_RTOL. Two candidates whose scores
    differ by less than the models' float32 rounding may come out in either order; any other
    difference (another candidate, or an order the scores do not explain) is a different ranking."""
    if reference_top.shape != exported_top.shape:
        return False
    if np.array_equal(reference_top, exported_top):
        return True
    picked, expected = reference_scores[exported_top], reference_scores[reference_top]
    return bool(np.allclose(picked, expected, rtol=SCORE_RTOL, atol=0.0))


def _groups(run: LoadedRun, table: pa.Table) -> list[np.ndarray]:
    group = run.config.data.group
    if group and group in table.column_names:
        values = table.column(group).to_numpy(zero_copy_only=False)
        _, codes = np.unique(values, return_inverse=True)
        order = np.argsort(codes, kind="stable")
        return np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    return [np.arange(s, min(s + BLOCK, table.num_rows)) for s in range(0, table.num_rows, BLOCK)]


__all__ = ["ATOL", "FORMATS", "RTOL", "ExportReport", "export_run"]
