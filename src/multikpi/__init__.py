"""multikpi: learn several feed KPIs with one multi-task network, and rank on them.

The public names are imported lazily (PEP 562), so that `import multikpi.serve` loads the serving
layer only, not the training recipe, tqdm or optuna."""
from __future__ import annotations

import importlib
from typing import Any

from multikpi._version import __version__ as __version__

# public name -> the module that defines it
_EXPORTS = {
    "train": "multikpi.api", "evaluate": "multikpi.api", "predict": "multikpi.api", "rank": "multikpi.api",
    "load_config": "multikpi.config.load", "Predictor": "multikpi.serve.predictor", "Run": "multikpi.training.run",
    "RunMetrics": "multikpi.artifacts.metrics",
    "ArtifactError": "multikpi.errors", "ConfigError": "multikpi.errors", "DataError": "multikpi.errors",
    "MultiKPIError": "multikpi.errors", "TrainingError": "multikpi.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'multikpi' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
