"""Where the model runs for a Predictor: eager PyTorch, or the run exported to ONNX and run by
onnxruntime. Both take the ServingEncoder's arrays and return the same raw outputs, so everything
after them (estimates, calibration, the fused score, the order) is shared.

    outputs(categorical (B, F) int64, dense (B, D) float32) -> key -> (B,) float32 raw outputs:
    logits for binary tasks, standardized values for regression, plus ESMM's side output.

The ONNX backend reads RUN_DIR/model.onnx (written by `multikpi export`) when its recorded version
is the run's, otherwise exports the loaded model in memory; either way it must match eager PyTorch
(float32) on a probe batch before it serves (`check_parity`).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from multikpi.data.encoders import FeatureEncoder
from multikpi.errors import ArtifactError
from multikpi.extras import import_extra
from multikpi.models.multitask import MultiTaskModel

logger = logging.getLogger("multikpi")

ONNX_FILE = "model.onnx"
# The parity gate, onnxruntime vs eager PyTorch in float32: |onnx - torch| <= ATOL * scale + RTOL * |torch|,
# scale = the output's largest magnitude in the batch, at least 1 (`check_parity`)
RTOL, ATOL = 1e-5, 1e-6
# The torch backend computes a request's context once (forward_request) from this many rows on;
# below, gathering the input layers' weight columns costs more than the FLOPs it saves (measured,
# 1 thread, feed benchmark: 0.70 -> 0.79 ms at 10 rows, 1.51 -> 1.45 at 100, 7.75 -> 6.30 at 1000).
SPLIT_MIN_ROWS = 64


# (columns of `categorical`, columns of `dense`) that hold one request's context in every row
ContextColumns = tuple[tuple[int, ...], tuple[int, ...]]


class ModelBackend(Protocol):
    name: str

    def outputs(self, categorical: np.ndarray, dense: np.ndarray,
                context: ContextColumns | None = None) -> dict[str, np.ndarray]: ...


class TorchBackend:
    """Eager PyTorch under `inference_mode` (and autocast to `precision` when it is not None).
    With `context`, the rows are one ranking request's: the context's share of the input layers is
    computed once (MultiTaskModel.forward_request)."""

    name = "torch"

    def __init__(self, model: MultiTaskModel, device: torch.device, precision: torch.dtype | None):
        self.model = model.to(device).eval()
        self.device = device
        self.precision = precision

    @torch.inference_mode()
    def outputs(self, categorical: np.ndarray, dense: np.ndarray,
                context: ContextColumns | None = None) -> dict[str, np.ndarray]:
        cat = torch.from_numpy(categorical).to(self.device)
        num = torch.from_numpy(dense).to(self.device)
        with torch.autocast(self.device.type, dtype=self.precision, enabled=self.precision is not None):
            if context is not None and categorical.shape[0] >= SPLIT_MIN_ROWS:
                out = self.model.forward_request(cat, num, *context)
            else:
                out = self.model.forward_features(cat, num)
        return {key: values.float().cpu().numpy() for key, values in out.items()}


class OnnxBackend:
    """An onnxruntime session over a serialized model; `threads` intra-op threads (1 suits a small
    batch per request; more than 1 does not spin, so that it leaves the other cores alone)."""

    name = "onnx"

    def __init__(self, data: bytes, threads: int = 1):
        ort = import_extra("onnxruntime", "the onnx backend")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads > 1:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own error types for a bad model
            raise ArtifactError(f"onnxruntime cannot load the ONNX model: {str(err).splitlines()[0]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.version = meta.get("multikpi.version", "")
        self.names = [o.name for o in self.session.get_outputs()]
        keys = json.loads(meta.get("multikpi.layout", "{}")).get("outputs", {})
        self.keys = [keys.get(n, n) for n in self.names]

    def outputs(self, categorical: np.ndarray, dense: np.ndarray,
                context: ContextColumns | None = None) -> dict[str, np.ndarray]:
        """`context` is not used: the exported graph takes whole rows."""
        got = self.session.run(self.names, {"categorical": categorical, "dense": dense})
        return dict(zip(self.keys, got))


def onnx_backend(model: MultiTaskModel, encoder: FeatureEncoder, version: str, run_dir: Path | None,
                 threads: int = 1) -> OnnxBackend:
    """RUN_DIR/model.onnx when it was exported from this version of the run, else an in-memory
    export; refused (ArtifactError) unless it matches eager PyTorch on a probe batch."""
    from multikpi.serve.onnx_export import export_onnx_bytes, onnx_metadata

    path = run_dir / ONNX_FILE if run_dir is not None else None
    if path is not None and path.is_file():
        data = path.read_bytes()
        recorded = onnx_metadata(data).get("multikpi.version")
        if recorded != version:
            raise ArtifactError(f"{str(path)!r} was exported from run version {str(recorded)[:12]!r}, not this "
                                f"run's {version[:12]!r}: export it again with `multikpi export`")
    else:
        logger.info("onnx backend: no %s in the run; exporting the model in memory", ONNX_FILE)
        data = export_onnx_bytes(model, encoder, version)
    backend = OnnxBackend(data, threads)
    check_parity(TorchBackend(model, torch.device("cpu"), None), backend, probe_inputs(encoder))
    return backend


def probe_inputs(encoder: FeatureEncoder, rows: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A reproducible batch of valid encoded inputs: uniform codes within each column's
    vocabulary (0 = OOV included), standard normal dense values, 0/1 missing indicators."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(encoder.vocab_sizes, dtype=np.int64)
    categorical = rng.integers(0, sizes, size=(rows, sizes.size), dtype=np.int64)
    dense = rng.standard_normal((rows, encoder.num_dense_inputs)).astype(np.float32)
    dense[:, len(encoder.dense):] = rng.integers(0, 2, (rows, len(encoder.missing_indicators)))
    return categorical, dense


def check_parity(reference: ModelBackend, candidate: ModelBackend, inputs: tuple[np.ndarray, np.ndarray],
                 rtol: float = RTOL, atol: float = ATOL) -> float:
    """Raise ArtifactError unless every output of `candidate` is within tolerance of `reference`:
    |candidate - reference| <= atol * scale + rtol * |reference|, where scale is the output's
    largest magnitude in the batch (at least 1). Returns the largest absolute difference.

    Why the scale: float32 rounding is relative to the magnitudes a value passes through. Two
    correct implementations that sum in different orders differ by a few ulp of the largest terms,
    so an output near 0 in a batch whose outputs reach 10 differs by about 1e-6, not 1e-7 (RF1's
    river-flow regressions: 1.4e-6 at an output of 0.03; a plain atol of 1e-6 refused the model)."""
    expected, got = reference.outputs(*inputs), candidate.outputs(*inputs)
    if set(expected) != set(got):
        raise ArtifactError(f"the {candidate.name} model has outputs {sorted(got)}; the run has {sorted(expected)}")
    worst = 0.0
    for key, values in expected.items():
        reference_values = values.astype(np.float64)
        diff = np.abs(got[key].astype(np.float64) - reference_values)
        worst = max(worst, float(diff.max(initial=0.0)))
        scale = max(1.0, float(np.abs(reference_values).max(initial=0.0)))
        if not (diff <= atol * scale + rtol * np.abs(reference_values)).all():  # NaN fails too
            raise ArtifactError(f"the {candidate.name} model differs from the run's PyTorch model on {key!r} "
                                f"(max abs difference {float(diff.max()):.3g}; allowed rtol {rtol}, atol "
                                f"{atol} x {scale:.3g}, the output's largest magnitude)")
    return worst


BackendBuilder = Callable[[MultiTaskModel, FeatureEncoder, str, Path | None, torch.device,
                           torch.dtype | None, int], ModelBackend]

BACKENDS: dict[str, BackendBuilder] = {
    "torch": lambda model, encoder, version, run_dir, device, precision, threads: TorchBackend(model, device,
                                                                                               precision),
    "onnx": lambda model, encoder, version, run_dir, device, precision, threads: onnx_backend(
        model, encoder, version, run_dir, threads),
}
