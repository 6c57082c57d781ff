"""Optional dependencies behind extras: a missing one is a one-line error naming the extra."""
from __future__ import annotations

import importlib
from types import ModuleType

from multikpi.errors import MultiKPIError

# module -> the extra of pyproject.toml that installs it
EXTRAS = {
    "optuna": "tune",
    "matplotlib": "report",
    "jinja2": "report",
    "fastapi": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "orjson": "serve",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "pandas": "pandas",
    "tensorboard": "tensorboard",
}


class MissingExtraError(MultiKPIError):
    """An optional dependency that the requested feature needs is not installed."""


def import_extra(module: str, feature: str) -> ModuleType:
    """Import `module` (a key of EXTRAS) or raise MissingExtraError naming the extra to install."""
    extra = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{feature} needs the {module!r} package, which is not installed: "
                                f"pip install 'multikpi[{extra}]'") from None
