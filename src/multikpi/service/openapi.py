"""The service's OpenAPI document, built from the run being served: the request bodies and
responses are the run's generated models (service/schema.py), so a reload to a run with other
features changes the document too. The endpoints read their bodies as bytes (for speed), so their
bodies and responses are declared here rather than by FastAPI's parameter inspection."""
from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from multikpi.service.schema import ReloadRequest
from multikpi.service.state import Bundle

ERROR = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
HEALTH = {"type": "object", "required": ["status", "version", "backend"],
          "properties": {"status": {"type": "string"}, "version": {"type": "string"}, "backend": {"type": "string"}}}
RELOADED = {"type": "object", "required": ["version", "previous", "run_dir"],
            "properties": {"version": {"type": "string"}, "previous": {"type": "string"},
                           "run_dir": {"type": "string"}}}
_CACHE: dict[tuple[int, str], dict[str, Any]] = {}


def service_openapi(app: Any, bundle: Bundle) -> dict[str, Any]:
    """The OpenAPI document of `app` serving `bundle` (cached per app and run version)."""
    key = (id(app), bundle.version)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _build(app, bundle)
    return _CACHE[key]


def _build(app: Any, bundle: Bundle) -> dict[str, Any]:
    from fastapi.openapi.utils import get_openapi

    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    models: dict[str, Any] = {**bundle.models.schemas, "ReloadRequest": ReloadRequest}
    for name, model in models.items():
        schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    schemas.update({"Error": ERROR, "Health": HEALTH, "Reloaded": RELOADED})
    paths = document["paths"]
    paths["/rank"]["post"].update(_post("RankRequest", "RankResponse", required=True))
    paths["/predict"]["post"].update(_post("PredictRequest", "PredictResponse", required=True))
    reload = _post("ReloadRequest", "Reloaded", required=False)
    reload["responses"].update({"401": _json("Error", "admin token missing or wrong"),
                                "409": _json("Error", "reload refused; the old run keeps serving")})
    paths["/admin/reload"]["post"].update(reload)
    paths["/health"]["get"]["responses"] = {"200": _json("Health", "ok")}
    paths["/metadata"]["get"]["responses"] = {"200": {"description": "the run's metadata", "content": {
        "application/json": {"schema": {"type": "object"}}}}}
    paths["/metrics"]["get"]["responses"] = {"200": {"description": "Prometheus text format", "content": {
        "text/plain": {"schema": {"type": "string"}}}}}
    return document


def _post(request: str, response: str, required: bool) -> dict[str, Any]:
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": _ref(request)}}},
            "responses": {"200": _json(response, "ok"), "413": _json("Error", "request body too large"),
                          "422": _json("Error", "invalid request; the message names the field")}}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}
