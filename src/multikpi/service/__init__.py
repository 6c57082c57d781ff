"""The HTTP service over a run (FastAPI + uvicorn): /rank, /predict, /health, /metadata, /metrics,
/admin/reload (docs/serving.md). Needs the `serve` extra."""
from multikpi.service.schema import Limits

__all__ = ["Limits"]
