"""The HTTP request and response models, generated from a loaded run's schema: its features (with
their types as trained), id columns and tasks. They validate every request and make the OpenAPI
schema that clients and the fuzz test read.

Field types:
- a categorical feature: a strict (64-bit) integer or a strict string, as its training vocabulary; null is
  allowed (a missing id, out of vocabulary like an unseen one);
- a dense feature: a finite number (JSON numbers only, no NaN or Infinity); null only when the
  column had missing values in training (the model has a missing indicator for it);
- an id column that is not a feature: an integer, a string or null, echoed in the response.

A context or candidate object is a TypedDict validated in Rust (pydantic-core) straight from the
request bytes; unknown keys are rejected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, NotRequired, Required

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, StrictStr, TypeAdapter, create_model
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict on Python < 3.12

from multikpi.formula import MAX_LENGTH
from multikpi.serve.encoding import INT64_MAX, INT64_MIN
from multikpi.serve.predictor import Predictor
from multikpi.service.fast_request import FastRankParser

FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Int64 = Annotated[int, Field(strict=True, ge=INT64_MIN, le=INT64_MAX)]
IdValue = Int64 | StrictStr | None


@dataclass(frozen=True)
class Limits:
    """max_candidates: candidates per /rank request (and rows per /predict); max_body_bytes: the
    largest request body accepted (413 above it)."""

    max_candidates: int = 5000
    max_body_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class RequestModels:
    """The generated models of one run: `rank` and `predict` validate request bodies (JSON bytes);
    `fast_rank` parses the valid /rank bodies straight into columns (service/fast_request.py)."""

    rank: TypeAdapter[Any]
    predict: TypeAdapter[Any]
    schemas: dict[str, Any]  # name -> model, for the OpenAPI components
    fast_rank: FastRankParser


def feature_types(predictor: Predictor) -> dict[str, Any]:
    """feature -> its pydantic type (see the module docstring), categorical then dense."""
    types: dict[str, Any] = {}
    for column, vocab in predictor.encoder.vocabs.items():
        types[column] = (Int64 if pa.types.is_integer(vocab.type) else StrictStr) | None
    for column, stats in predictor.encoder.dense_stats.items():
        types[column] = FiniteNumber | None if stats["indicator"] else FiniteNumber
    return types


def request_models(predictor: Predictor, limits: Limits) -> RequestModels:
    """The /rank and /predict request models and the response models of `predictor`'s run."""
    types = feature_types(predictor)
    ids = {c: IdValue for c in predictor.serving.id_columns if c not in types}
    optional = {name: NotRequired[kind] for name, kind in {**types, **ids}.items()}
    context = _typed_dict("Context", optional)
    candidate = _typed_dict("Candidate", optional)
    row = _typed_dict("Row", {**{n: Required[k] for n, k in types.items()},
                              **{n: NotRequired[k] for n, k in ids.items()}})
    no_unknown_keys = ConfigDict(extra="forbid")
    rank = create_model(
        "RankRequest", __config__=no_unknown_keys,
        context=(context, Field(default_factory=dict, description="user and page-view features, sent once")),
        candidates=(list[candidate], Field(min_length=1, max_length=limits.max_candidates)),  # type: ignore[valid-type]
        top_k=(int | None, Field(None, ge=1, strict=True, description="default: the run's decide.top_k")),
        score=(str | None, Field(None, min_length=1, max_length=MAX_LENGTH,
                                 description="fusion formula over the tasks; default: the run's decide.score")),
    )
    predict = create_model(
        "PredictRequest", __config__=no_unknown_keys,
        rows=(list[row], Field(min_length=1, max_length=limits.max_candidates)),  # type: ignore[valid-type]
        calibrated=(bool, Field(True, strict=True, description="false: the model's raw probabilities")),
    )
    responses = response_models(predictor)
    schemas = {"RankRequest": rank, "PredictRequest": predict, **responses}
    return RequestModels(TypeAdapter(rank), TypeAdapter(predict), schemas,
                         FastRankParser(predictor, limits.max_candidates))


def response_models(predictor: Predictor) -> dict[str, type[BaseModel]]:
    """RankResponse and PredictResponse of the run's tasks (documentation of the responses)."""
    estimates = create_model("Estimates", **{t: (float | None, ...) for t in predictor.tasks})  # type: ignore[call-overload]
    ranked = create_model("RankedCandidate", rank=(int, ...), index=(int, ...),
                          ids=(dict[str, IdValue], ...), score=(float | None, ...), estimates=(estimates, ...))
    rank = create_model("RankResponse", version=(str, ...), score=(str, ...), top_k=(int, ...),
                        num_candidates=(int, ...), candidates=(list[ranked], ...),
                        oov=(dict[str, int], ...))
    prediction = create_model("Prediction", ids=(dict[str, IdValue], ...), estimates=(estimates, ...))
    predict = create_model("PredictResponse", version=(str, ...), calibrated=(bool, ...),
                           predictions=(list[prediction], ...))
    return {"RankResponse": rank, "PredictResponse": predict}


def _typed_dict(name: str, fields: dict[str, Any]) -> type[Any]:
    """A TypedDict class with these (possibly non-identifier) keys that forbids unknown keys."""
    cls = TypedDict(name, fields)  # type: ignore[misc]  # keys come from the run's schema
    cls.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return cls


class ReloadRequest(BaseModel):
    """POST /admin/reload: the run directory to serve (default: the current one, read anew)."""

    model_config = ConfigDict(extra="forbid")
    run_dir: str | None = Field(None, min_length=1, max_length=4096)
