"""Numerically stable ONNX translations of aten::log_sigmoid and aten::logaddexp for the dynamo
exporter (onnxscript). The exporter's own are Log(Sigmoid(x)) and Log(Exp(a) + Exp(b)), which
overflow for large |x|; ESMM's CTCVR logit (models/esmm.py) is made of these two ops.

    log_sigmoid(x)  = min(x, 0) - log1p(exp(-|x|))
    logaddexp(a, b) = max(a, b) + log1p(exp(-|a - b|))

ONNX has no Log1p: log1p(u) for u in [0, 1] is Log(1 + u) with Kahan's correction
u * Log(w) / (w - 1), w = 1 + u (and u itself where w rounds to 1), accurate to a few ulp.
Imported only by the exporter (this module needs the `onnx` extra).
"""
from __future__ import annotations

from typing import Any

from onnxscript import opset20 as op


def _log1p_small(u: Any) -> Any:
    one = op.CastLike(1.0, u)  # type: ignore[type-var]
    w = op.Add(one, u)
    d = op.Sub(w, one)
    rounds_to_one = op.Equal(d, op.CastLike(0.0, u))  # type: ignore[type-var]
    safe_d = op.Where(rounds_to_one, one, d)  # 0/0 where w == 1: divide by 1 there and pick u
    return op.Where(rounds_to_one, u, op.Div(op.Mul(op.Log(w), u), safe_d))


def log_sigmoid(x: Any) -> Any:
    zero = op.CastLike(0.0, x)  # type: ignore[type-var]
    return op.Sub(op.Min(x, zero), _log1p_small(op.Exp(op.Neg(op.Abs(x)))))


def logaddexp(a: Any, b: Any) -> Any:
    return op.Add(op.Max(a, b), _log1p_small(op.Exp(op.Neg(op.Abs(op.Sub(a, b))))))
