"""The model as an ONNX file: embeddings -> sharing architecture -> towers, with the output
offsets, one named output per task (and ESMM's CVR side output), a dynamic batch axis.

    inputs   categorical  (B, F + B_bins) int64   the encoder's codes: categorical columns, then the
                                                  binned dense columns (ServingEncoder's layout)
             dense        (B, D) float32          standardized dense columns, then missing indicators
    outputs  logit_<key>  (B,) float32            raw outputs in `output_keys` order: logits for
                                                  binary tasks, standardized values for regression

The recipe (torch 2.13, onnx 1.23, onnxruntime 1.32, onnxscript 0.7), and why:
- the dynamo exporter, `dynamic_shapes` on axis 0 of both inputs, under `torch.no_grad()` and never
  under autocast (a bf16 Gemm has no onnxruntime CPU kernel);
- an example batch of at least 2: with 1 the exporter silently specializes MMoE/PLE's einsum to
  batch 1, so the saved file is checked to have a symbolic axis 0 everywhere;
- a custom translation of `aten.log_sigmoid` and `aten.logaddexp`: the default ones are
  Log(Sigmoid(x)) and Log(Exp(a) + Exp(b)), which turn ESMM's stable logit into inf/NaN once a
  logit passes about +-17 (float32), while `models/esmm.py` is finite for any logit;
- one file (`external_data=False`), metadata recording the run's version and the input layout.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from typing import Any

import torch
from torch import nn

from multikpi.data.encoders import FeatureEncoder
from multikpi.errors import ArtifactError
from multikpi.extras import import_extra
from multikpi.models.multitask import MultiTaskModel

INPUTS = ("categorical", "dense")
VERSION_KEY = "multikpi.version"
LAYOUT_KEY = "multikpi.layout"
EXAMPLE_BATCH = 8


def output_keys(model: MultiTaskModel) -> list[str]:
    """The model's output keys in a fixed order: the task graph's order, then ESMM side outputs."""
    keys = list(model.graph.order)
    keys += [f"{ctcvr}.given_{ctr}" for ctcvr, ctr in model.graph.entire_space.items()]
    return keys


def onnx_output_name(key: str) -> str:
    """"click" -> "logit_click", "convert.given_click" -> "logit_convert_given_click"."""
    return "logit_" + key.replace(".", "_")


class _Outputs(nn.Module):
    """forward(categorical, dense) -> tuple of (B,) outputs in `keys` order (ONNX outputs are positional)."""

    def __init__(self, model: MultiTaskModel, keys: list[str]):
        super().__init__()
        self.model = model
        self.keys = list(keys)

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model.forward_features(categorical, dense)
        return tuple(outputs[k] for k in self.keys)


def layout(encoder: FeatureEncoder, model: MultiTaskModel) -> dict[str, Any]:
    """What another language needs to feed the file: the column order of both inputs and the
    output names with the task (or side output) each one holds."""
    return {"categorical": encoder.categorical + [f"{c}#bin" for c in encoder.binned],
            "dense": encoder.dense + [f"{c}#missing" for c in encoder.missing_indicators],
            "outputs": {onnx_output_name(k): k for k in output_keys(model)}}


def export_onnx_bytes(model: MultiTaskModel, encoder: FeatureEncoder, version: str) -> bytes:
    """The serialized ONNX model of `model` (on the CPU, float32, eval mode)."""
    onnx = import_extra("onnx", "ONNX export")
    import_extra("onnxscript", "ONNX export")
    model = model.cpu().eval()
    keys = output_keys(model)
    names = [onnx_output_name(k) for k in keys]
    num_categorical = len(encoder.vocab_sizes)
    example = (torch.zeros(EXAMPLE_BATCH, num_categorical, dtype=torch.int64),
               torch.zeros(EXAMPLE_BATCH, encoder.num_dense_inputs, dtype=torch.float32))
    batch = torch.export.Dim("batch")
    # the exporter logs one warning per torchvision op it cannot register when torchvision is absent
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    # the exporter's graph optimizer prints its passes to stdout: keep a CLI's output clean
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _Outputs(model, keys), example, dynamo=True, verbose=False,
            input_names=list(INPUTS), output_names=names,
            dynamic_shapes={"categorical": {0: batch}, "dense": {0: batch}},
            custom_translation_table=_stable_translations(),
        )
    assert program is not None  # dynamo=True returns the program
    proto = program.model_proto
    _check_dynamic_batch(proto)
    meta = {VERSION_KEY: version, LAYOUT_KEY: json.dumps(layout(encoder, model))}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data: bytes = proto.SerializeToString()
    onnx.checker.check_model(data if len(data) < 2**31 else proto)
    return data


def onnx_metadata(data: bytes) -> dict[str, str]:
    """The metadata properties of a serialized ONNX model. ArtifactError when it is not one."""
    onnx = import_extra("onnx", "ONNX serving")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:  # noqa: BLE001 - protobuf raises its own DecodeError (and others) on bad bytes
        raise ArtifactError(f"not a valid ONNX file: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                            ) from None
    return {p.key: p.value for p in proto.metadata_props}


def _check_dynamic_batch(proto: Any) -> None:
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        if not dim0.dim_param:
            raise ArtifactError(f"ONNX export: {value.name} has a static batch axis ({dim0.dim_value}); "
                                f"the exporter specialized the batch size")


def _stable_translations() -> dict[Any, Any]:
    """aten op -> onnxscript function: numerically stable log_sigmoid and logaddexp (see module doc)."""
    from multikpi.serve._onnx_ops import log_sigmoid, logaddexp

    return {torch.ops.aten.log_sigmoid.default: log_sigmoid, torch.ops.aten.logaddexp.default: logaddexp}
