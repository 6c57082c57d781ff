"""What the service serves, and swapping it: a Bundle is one loaded run (Predictor, request models,
metadata), checked before it is served; ServiceState holds the current one.

Reload (POST /admin/reload, SIGHUP): the new run is loaded and checked on the side (manifest and
checksums, the ONNX parity gate for that backend, a probe request ranked end to end) while the old
one keeps serving; then one reference assignment swaps it in. A request reads the reference once
when it starts, so requests in flight finish on the old model. A run that fails any check is
refused and the old one keeps serving.

With several uvicorn workers (processes), the worker that accepts a reload publishes the run
directory to a small JSON file (`ReloadFile`); every other worker polls it and reloads too.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multikpi.artifacts.files import write_json
from multikpi.artifacts.metrics import RunMetrics
from multikpi.errors import ArtifactError, MultiKPIError
from multikpi.serve.predictor import Predictor
from multikpi.service.metrics import ServiceMetrics
from multikpi.service.schema import Limits, RequestModels, request_models

logger = logging.getLogger("multikpi")

REFREEZE_SECONDS = 2.0  # after a reload swap: longer than any request takes
FREEZE_LOCK = threading.RLock()
SUMMARY_METRICS = ("auc", "logloss", "calibration", "rmse", "mae", "pearson", "count")


@dataclass(frozen=True)
class Bundle:
    """One loaded, checked run: the predictor, its request models and its /metadata document."""

    predictor: Predictor
    models: RequestModels
    metadata: dict[str, Any]
    source: Path  # the run directory as given (a symlink is re-resolved at each reload)

    @property
    def version(self) -> str:
        return self.predictor.version


def load_bundle(run_dir: str | Path, backend: str, threads: int, limits: Limits) -> Bundle:
    """Load `run_dir` for serving and check it (see the module docstring); MultiKPIError if it fails."""
    predictor = Predictor.load(run_dir, backend=backend, threads=threads)
    probe_request(predictor)
    return Bundle(predictor, request_models(predictor, limits), metadata(predictor, limits), Path(run_dir))


def probe_request(predictor: Predictor) -> None:
    """Rank two synthetic candidates (first vocabulary ids, zeros) end to end; ArtifactError unless
    every estimate is finite."""
    candidate: dict[str, Any] = {}
    for column, vocab in predictor.encoder.vocabs.items():
        candidate[column] = vocab[0].as_py() if len(vocab) else None
    candidate.update({column: 0.0 for column in predictor.encoder.dense})
    score = predictor.serving.score or predictor.tasks[0]
    ranked = predictor.rank({"candidates": [candidate, dict(candidate)], "score": score, "top_k": 2})
    bad = [task for task, values in ranked.estimates.items() if not np.all(np.isfinite(values))]
    if bad:
        raise ArtifactError(f"the run gives non-finite estimates for {bad} on a probe request")


def metadata(predictor: Predictor, limits: Limits) -> dict[str, Any]:
    """The /metadata document: tasks, features and their types, formula, version, metrics summary."""
    encoder, config = predictor.encoder, predictor.config
    features: dict[str, Any] = {}
    for column, vocab in encoder.vocabs.items():
        features[column] = {"kind": "categorical", "type": str(vocab.type), "vocabulary": len(vocab),
                            "nullable": True}
    for column, stats in encoder.dense_stats.items():
        features[column] = {"kind": "dense", "type": "number", "nullable": bool(stats["indicator"]),
                            "log1p": bool(stats["log1p"])}
    return {"version": predictor.version, "backend": predictor.backend.name,
            "run_dir": str(predictor.run_dir) if predictor.run_dir else None,
            "tasks": {t: {"kind": s.kind, "label": s.label} for t, s in config.tasks.items()},
            "features": features, "id_columns": list(predictor.serving.id_columns),
            "score": predictor.serving.score, "top_k": predictor.serving.top_k,
            "calibration": predictor.calibration, "architecture": config.model.arch,
            # a position tower (data.position) is dropped at serving: position-free estimates
            "position_tower": encoder.position[0] if encoder.position is not None else None,
            "limits": {"max_candidates": limits.max_candidates, "max_body_bytes": limits.max_body_bytes},
            "metrics": _metrics_summary(predictor.run_dir)}


def _metrics_summary(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None or not (run_dir / "metrics.json").is_file():
        return {}
    metrics = RunMetrics.load(run_dir / "metrics.json")
    splits = {split: {task: {k: v for k, v in values.items() if k in SUMMARY_METRICS}
                      for task, values in tasks.items()} for split, tasks in metrics.splits.items()}
    return {"splits": splits, "selection": metrics.selection, "training": metrics.training}


def freeze_loaded_objects() -> None:
    """Move every object alive now (the interpreter, torch, the loaded run) out of the cyclic
    garbage collector's reach (`gc.freeze`), after collecting what a reload left behind.

    Why: a request allocates thousands of containers (the parsed JSON), which triggers the
    collector; once in a while that is a full collection over the ~240k objects of a loaded
    process, 100 ms in the middle of a request (measured: the slowest of 400 in-process
    1000-candidate requests 104-116 ms with the default collector, 23 ms frozen). Frozen objects
    are still freed by reference counting; the old model's cycles, if any, are collected first.
    Serialized: two reloads' timers never interleave their unfreeze and freeze."""
    with FREEZE_LOCK:
        gc.unfreeze()
        gc.collect()
        gc.freeze()


class ReloadFile:
    """The run directory all workers serve: {"run_dir": ..., "generation": n}, written atomically."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> tuple[int, str]:
        payload = json.loads(self.path.read_text())
        return int(payload["generation"]), str(payload["run_dir"])

    def publish(self, run_dir: str) -> int:
        generation = self.read()[0] + 1 if self.path.is_file() else 0
        write_json(self.path, {"run_dir": run_dir, "generation": generation, "by_pid": os.getpid()})
        return generation


class ServiceState:
    """The current Bundle (read `state.current` once per request) and how it is replaced."""

    def __init__(self, bundle: Bundle, *, backend: str, threads: int, limits: Limits,
                 metrics: ServiceMetrics | None = None, reload_file: ReloadFile | None = None,
                 generation: int = 0):
        """`generation`: the reload file's generation that `bundle` was loaded from (read with its
        run directory, before the load)."""
        self.current = bundle
        self.backend, self.threads, self.limits = backend, threads, limits
        self.metrics = metrics or ServiceMetrics()
        self.reload_file = reload_file
        self.generation = generation
        self._reload_lock = threading.Lock()
        self.metrics.serving(bundle.version, bundle.predictor.backend.name)
        freeze_loaded_objects()

    def reload(self, run_dir: str | None = None, publish: bool = True) -> tuple[Bundle, Bundle]:
        """Load `run_dir` (default: the current run's directory, read anew) and swap it in.
        Returns (old, new). ArtifactError "reload refused: ..." when the new run fails a check."""
        with self._reload_lock:
            old = self.current
            target = str(run_dir) if run_dir is not None else str(old.source)
            try:
                new = load_bundle(target, self.backend, self.threads, self.limits)
            except MultiKPIError as err:
                self.metrics.reloads.labels("refused").inc()
                raise ArtifactError(f"reload refused: {err}; still serving version {old.version[:12]}") from None
            self.current = new  # the swap: one reference assignment
            # once the requests still on the old model have finished: collect it, freeze the new one
            timer = threading.Timer(REFREEZE_SECONDS, freeze_loaded_objects)
            timer.daemon = True
            timer.start()
            self.metrics.reloads.labels("ok").inc()
            self.metrics.serving(new.version, new.predictor.backend.name, previous=old.version)
            if publish and self.reload_file is not None:
                self.generation = self.reload_file.publish(target)
            logger.info("reloaded %s: version %s (was %s)", target, new.version[:12], old.version[:12])
            return old, new

    def follow(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Poll the reload file until `stop` is set; reload when another worker published a run."""
        while self.reload_file is not None and not stop.wait(interval):
            try:
                generation, run_dir = self.reload_file.read()
            except (OSError, ValueError, KeyError):
                continue
            if generation != self.generation:
                self.generation = generation
                try:
                    self.reload(run_dir, publish=False)
                except MultiKPIError as err:
                    logger.warning("%s", err)
