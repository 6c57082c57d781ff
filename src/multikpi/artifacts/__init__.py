"""Artifacts: the run directory's layout, atomic writes, the manifest, and saving and loading a run.

The names are imported lazily (PEP 562): `multikpi.artifacts.metrics` and `.manifest` read a run's
files without torch, which `run_dir` (the weights) needs; the report reads runs that way."""
from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "write_atomic": "multikpi.artifacts.files", "write_json": "multikpi.artifacts.files",
    "write_jsonl": "multikpi.artifacts.files", "write_yaml": "multikpi.artifacts.files",
    "verify_run": "multikpi.artifacts.manifest", "write_manifest": "multikpi.artifacts.manifest",
    "RunMetrics": "multikpi.artifacts.metrics",
    "LoadedRun": "multikpi.artifacts.run_dir", "RunArtifacts": "multikpi.artifacts.run_dir",
    "load_run": "multikpi.artifacts.run_dir", "save_run": "multikpi.artifacts.run_dir",
    "serving_settings": "multikpi.artifacts.run_dir", "start_run_dir": "multikpi.artifacts.run_dir",
    "ServingSettings": "multikpi.artifacts.serving",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'multikpi.artifacts' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
