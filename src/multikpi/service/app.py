"""The HTTP service (FastAPI): rank a request's candidates, predict rows, health, metadata,
Prometheus metrics and reload (docs/serving.md).

    POST /rank           {"context", "candidates", "top_k"?, "score"?} -> ranked candidates
    POST /predict        {"rows", "calibrated"?} -> per-task estimates per row
    GET  /health         {"status": "ok", "version", "backend"}
    GET  /metadata       tasks, features and their types, formula, version, metrics summary
    GET  /metrics        Prometheus text format
    POST /admin/reload   {"run_dir"?} -> swap in a run (409 and the old one keeps serving if refused)

Needs the `serve` extra (fastapi): the CLI checks it is installed before importing this module.

Bodies are read as bytes (at most `max_body_bytes`, else 413) and validated by the run's generated
pydantic models straight from JSON (pydantic-core). The work of /rank and /predict runs on the
event loop itself: a request is a few milliseconds of CPU, and handing it to a thread and back
costs two thread wake-ups per request, which is what dominates a small request's latency on a busy
machine (measured: 13.1 ms -> 11.2 ms median at 10 candidates on the loaded 2-core machine); a worker
ranks one request at a time and `--workers` scales across cores. Reload runs on a thread, so the
old model keeps answering while the new one loads. Bad input is a 4xx with a message naming the field:
422 for an invalid request, 413 for a body too large; never a 5xx.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from multikpi._version import __version__
from multikpi.errors import MultiKPIError
from multikpi.serve.request import rank_columns
from multikpi.service.metrics import MetricsMiddleware
from multikpi.service.openapi import service_openapi
from multikpi.service.schema import ReloadRequest
from multikpi.service.state import Bundle, ServiceState

logger = logging.getLogger("multikpi")


class BodyTooLarge(Exception):
    """A request body above the limit (answered 413)."""


RELOAD = TypeAdapter(ReloadRequest)


def create_app(state: ServiceState, admin_token: str | None = None, follow: bool = False) -> Any:
    """The FastAPI app over `state`. `admin_token`: when set, /admin/reload needs the header
    `Authorization: Bearer <token>`; `follow`: poll the state's reload file (several workers)."""
    app = FastAPI(title="multikpi", version=__version__, lifespan=_lifespan(state, follow),
                          description="Rank a request's candidates with a multikpi run.")
    limit = state.limits.max_body_bytes

    @app.post("/rank", summary="Rank one request's candidates by the fused score")
    async def rank(request: Request) -> Response:
        body = await read_body(request, limit)
        bundle = state.current  # read once: a reload finishing during this request does not affect it
        return Response(rank_json(bundle, body, state), media_type="application/json")

    @app.post("/predict", summary="Per-task estimates of rows")
    async def predict(request: Request) -> Response:
        body = await read_body(request, limit)
        bundle = state.current
        return Response(predict_json(bundle, body), media_type="application/json")

    @app.get("/health", summary="Liveness and the version served")
    async def health() -> dict[str, str | int]:
        bundle = state.current
        # the worker's pid: with --workers N, which process answered (each reloads on its own)
        return {"status": "ok", "version": bundle.version, "backend": bundle.predictor.backend.name,
                "pid": os.getpid()}

    @app.get("/metadata", summary="Tasks, features, formula, version and metrics of the run served")
    async def metadata() -> Response:
        return Response(to_json(state.current.metadata), media_type="application/json")

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        content, media_type = state.metrics.exposition()
        return Response(content, media_type=media_type)

    @app.post("/admin/reload", summary="Swap in a run directory (refused runs leave the old one serving)")
    async def reload(request: Request) -> Response:
        if admin_token is not None and not _authorized(request.headers.get("authorization", ""), admin_token):
            return JSONResponse({"detail": "unauthorized: send Authorization: Bearer <MULTIKPI_ADMIN_TOKEN>"}, 401)
        body = await read_body(request, limit)
        # no body reloads the run being served; any body (whitespace too) must be a JSON ReloadRequest
        run_dir = RELOAD.validate_json(body).run_dir if body else None
        try:
            old, new = await run_in_threadpool(state.reload, run_dir)
        except MultiKPIError as err:
            return JSONResponse({"detail": str(err)}, 409)
        return JSONResponse({"version": new.version, "previous": old.version, "run_dir": str(new.source)})

    _add_error_handlers(app, JSONResponse)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.openapi = lambda: service_openapi(app, state.current)  # type: ignore[method-assign]  # from the run served
    return app


def rank_json(bundle: Bundle, body: bytes, state: ServiceState) -> bytes:
    """A /rank body -> the response JSON (raises ValidationError / MultiKPIError on bad input).

    A valid body takes the fast path (parsed straight into columns); anything else is validated by
    the generated model, whose errors name the field (service/fast_request.py)."""
    fast = bundle.models.fast_rank.parse(body)
    if fast is not None:
        ranked = rank_columns(bundle.predictor, fast.columns, fast.top_k, fast.score)
    else:
        request = bundle.models.rank.validate_json(body)
        ranked = bundle.predictor.rank({"context": request.context, "candidates": request.candidates,
                                        "top_k": request.top_k, "score": request.score})
    state.metrics.candidates.inc(ranked.num_candidates)
    state.metrics.count_oov(ranked.oov)
    return to_json({"version": ranked.version, "score": ranked.formula, "top_k": ranked.top_k,
                    "num_candidates": ranked.num_candidates, "candidates": ranked.to_rows(),
                    "oov": {c: n for c, n in ranked.oov.items() if n}})


def predict_json(bundle: Bundle, body: bytes) -> bytes:
    """A /predict body -> the response JSON."""
    request = bundle.models.predict.validate_json(body)
    predictor = bundle.predictor
    rows = request.rows
    columns = {f: [row[f] for row in rows] for f in predictor.feature_columns()}
    encoded = predictor.serving_encoder.encode(columns, len(rows))
    values = {t: v.tolist() for t, v in predictor.estimates_of(encoded.categorical, encoded.dense,
                                                                  request.calibrated).items()}
    ids = [c for c in predictor.serving.id_columns if any(c in row for row in rows)]
    predictions = [{"ids": {c: row.get(c) for c in ids}, "estimates": {t: v[i] for t, v in values.items()}}
                   for i, row in enumerate(rows)]
    return to_json({"version": predictor.version, "calibrated": request.calibrated, "predictions": predictions})


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, or BodyTooLarge as soon as it passes `limit` bytes (never read whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def validation_message(err: ValidationError, limit: int = 5) -> str:
    """'candidates[3].price: Input should be a finite number (got nan); ...' (the first `limit`)."""
    parts = []
    for error in err.errors(include_url=False)[:limit]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".") or "body"
        got = error.get("input")
        shown = "" if error["type"] in ("missing", "json_invalid") or isinstance(got, (dict, list)) \
            else f" (got {repr(got)[:60]})"
        parts.append(f"{where}: {error['msg']}{shown}")
    more = err.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _add_error_handlers(app: Any, json_response: Any) -> None:
    async def invalid(request: Any, err: ValidationError) -> Any:
        return json_response({"detail": validation_message(err)}, 422)

    async def user_error(request: Any, err: MultiKPIError) -> Any:
        return json_response({"detail": str(err)}, 422)

    async def too_large(request: Any, err: BodyTooLarge) -> Any:
        return json_response({"detail": f"request body is larger than the limit of "
                                        f"{request.app.state.max_body_bytes:,} bytes"}, 413)

    async def fastapi_invalid(request: Any, err: RequestValidationError) -> Any:
        return json_response({"detail": "; ".join(str(e.get("msg")) for e in err.errors()[:5])}, 422)

    app.add_exception_handler(ValidationError, invalid)
    app.add_exception_handler(MultiKPIError, user_error)
    app.add_exception_handler(BodyTooLarge, too_large)
    app.add_exception_handler(RequestValidationError, fastapi_invalid)


def _authorized(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


def _lifespan(state: ServiceState, follow: bool) -> Any:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        app.state.max_body_bytes = state.limits.max_body_bytes
        _reload_on_sighup(state)
        stop = threading.Event()
        if follow:
            threading.Thread(target=state.follow, args=(stop,), name="multikpi-reload", daemon=True).start()
        yield
        stop.set()

    return lifespan


def _reload_on_sighup(state: ServiceState) -> None:
    """SIGHUP reloads the run directory being served (read anew, e.g. after `train --overwrite` or
    a moved symlink), in a thread; a refused run is logged and the old one keeps serving."""
    def reload_quietly() -> None:
        try:
            state.reload()
        except MultiKPIError as err:
            logger.warning("%s", err)

    try:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, reload_quietly))
    except (NotImplementedError, RuntimeError, ValueError, AttributeError):  # not the main thread / not POSIX
        logger.debug("SIGHUP reload not available here")
