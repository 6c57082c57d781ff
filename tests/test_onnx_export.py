"""`multikpi export --format onnx` and the ONNX backend: the parity gate against eager PyTorch
(fp32) on the test split and on golden requests, a dynamic batch axis (also for MMoE's einsum),
ESMM's stable logit at extreme values, and a stale file refused."""
from __future__ import annotations

import math
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from multikpi import Predictor
from multikpi.cli.main import main
from multikpi.errors import ArtifactError
from multikpi.serve.backends import ATOL, RTOL, OnnxBackend, TorchBackend, probe_inputs

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def onnx_run(serving_run):
    """serving_run with RUN_DIR/model.onnx written by `multikpi export` (what `serve --backend onnx` reads)."""
    if not (serving_run / "model.onnx").is_file():
        assert main(["export", str(serving_run)]) == 0
    return serving_run


def test_export_writes_one_file_with_named_outputs_and_a_dynamic_batch(onnx_run, capsys):
    model = onnx.load(str(onnx_run / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["categorical", "dense"]
    assert [o.name for o in model.graph.output] == ["logit_click", "logit_dwell", "logit_convert"]
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param  # symbolic: any batch size
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["multikpi.version"] == Predictor.load(onnx_run).version


def test_logits_match_pytorch_on_the_test_split(onnx_run, feed_files):
    """Raw outputs of onnxruntime vs eager PyTorch (fp32) on every test row, in batches of 1, 7 and all."""
    predictor = Predictor.load(onnx_run)
    table = pq.read_table(feed_files["test"])
    encoded = predictor.serving_encoder.encode({c: table.column(c) for c in predictor.feature_columns()},
                                               table.num_rows)
    session = OnnxBackend((onnx_run / "model.onnx").read_bytes())
    eager = TorchBackend(predictor.model, torch.device("cpu"), None)
    for size in (1, 7, table.num_rows):
        rows = slice(0, size)
        got = session.outputs(encoded.categorical[rows], encoded.dense[rows])
        expected = eager.outputs(encoded.categorical[rows], encoded.dense[rows])
        for task in ("click", "dwell", "convert"):
            np.testing.assert_allclose(got[task], expected[task], rtol=RTOL, atol=ATOL)


def test_golden_requests_get_the_same_top_k_after_calibration_and_the_formula(onnx_run, feed_files):
    eager, exported = Predictor.load(onnx_run), Predictor.load(onnx_run, backend="onnx")
    table = pq.read_table(feed_files["test"])
    features = ["item_id", "item_category", "position", "price", "item_age_h", "affinity"]
    requests = 0
    request_ids = np.unique(table.column("request_id").to_numpy())
    for request_id in request_ids:  # every request of the test split
        rows = table.filter(pa.compute.equal(table.column("request_id"), request_id)).to_pylist()
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        request = {"context": {"user_id": rows[0]["user_id"], "device": rows[0]["device"]},
                   "candidates": [{k: r[k] for k in features} for r in rows]}
        a, b = eager.rank(request), exported.rank(request)
        assert a.indices.tolist() == b.indices.tolist()  # the run's top_k (5) by its decide.score
        for task in a.estimates:
            np.testing.assert_allclose(b.estimates[task], a.estimates[task], rtol=1e-6, atol=1e-7)
        requests += 1
    assert requests == request_ids.size > 40


def test_mmoe_export_keeps_the_batch_dynamic(report_run, tmp_path):
    """MMoE's einsum: a file exported from a batch-8 example runs any batch size (1, 3, 257)."""
    out = tmp_path / "mmoe.onnx"
    assert main(["export", str(report_run), "--out", str(out), "--rows", "500"]) == 0
    predictor = Predictor.load(report_run)
    session, eager = OnnxBackend(out.read_bytes()), TorchBackend(predictor.model, torch.device("cpu"), None)
    for rows in (1, 3, 257):
        inputs = probe_inputs(predictor.encoder, rows, seed=rows)
        got, expected = session.outputs(*inputs), eager.outputs(*inputs)
        assert set(got) == set(expected)
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], rtol=RTOL, atol=ATOL)


def test_esmm_logit_stays_finite_at_extreme_logits(tmp_path):
    """The stable translations of log_sigmoid / logaddexp: ESMM's logit(σ(a)σ(b)) for |a|, |b| up to
    1000 is finite and within tolerance of PyTorch's (the default translations give inf/NaN)."""
    from multikpi.models.esmm import ctcvr_logit
    from multikpi.serve.onnx_export import _stable_translations

    class Ctcvr(torch.nn.Module):
        def forward(self, a, b):
            return ctcvr_logit(a, b)

    grid = np.concatenate([-np.logspace(-3, 3, 41)[::-1], [0.0], np.logspace(-3, 3, 41)]).astype(np.float32)
    a, b = (x.ravel() for x in np.meshgrid(grid, grid))
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        program = torch.onnx.export(Ctcvr().eval(), (torch.zeros(8), torch.zeros(8)), dynamo=True, input_names=["a", "b"],
                                    dynamic_shapes={"a": {0: batch}, "b": {0: batch}},
                                    custom_translation_table=_stable_translations(), verbose=False)
    got = ort.InferenceSession(program.model_proto.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"a": a, "b": b})[0]
    expected = Ctcvr()(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.isfinite(expected).all() and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-5)


def test_a_file_from_another_run_is_refused(onnx_run, serving_run_b, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(serving_run_b, other)
    shutil.copy(onnx_run / "model.onnx", other / "model.onnx")
    with pytest.raises(ArtifactError, match=r"model.onnx' was exported from run version '[0-9a-f]{12}', not this "
                                            r"run's '[0-9a-f]{12}': export it again with `multikpi export`"):
        Predictor.load(other, backend="onnx")


@pytest.mark.parametrize("argv, expected", [
    (["--format", "torchscript"], r"--format must be one of onnx. Got 'torchscript'"),
    (["--out", "model.bin"], r"--out must name a .onnx file. Got 'model.bin'"),
])
def test_export_errors_are_one_line(serving_run, argv, expected, capsys):
    assert main(["export", str(serving_run), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(expected, err[0]), err
