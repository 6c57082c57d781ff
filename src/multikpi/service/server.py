"""Running the service under uvicorn: one process, or several workers (`--workers N`).

One worker: the run is loaded (and checked) before the socket opens, and the app runs in this
process. Several: the run is checked here first (a bad run fails the command, not N workers),
then uvicorn starts N processes that each build the app from `app_from_env`; they share a reload
file (so that a reload reaches every worker) and a Prometheus multiprocess directory, both in a
temporary directory removed on exit.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from multikpi.extras import import_extra
from multikpi.service.app import create_app
from multikpi.service.schema import Limits
from multikpi.service.state import Bundle, ReloadFile, ServiceState, load_bundle

ENV_SETTINGS = "MULTIKPI_SERVE_SETTINGS"  # JSON ServeSettings for the worker processes
ENV_ADMIN_TOKEN = "MULTIKPI_ADMIN_TOKEN"


@dataclass(frozen=True)
class ServeSettings:
    """run_dir: the run to serve; backend: torch | onnx; threads: intra-op threads per worker
    (torch and onnxruntime); limits: request limits; reload_file: shared by several workers."""

    run_dir: str
    backend: str = "torch"
    threads: int = 1
    limits: Limits = field(default_factory=Limits)
    reload_file: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        payload = json.loads(text)
        return cls(**{**payload, "limits": Limits(**payload["limits"])})


def build_app(settings: ServeSettings, bundle: Bundle | None = None) -> Any:
    """The app for `settings` (loading the run unless `bundle` is given). With a reload file, the
    run is the one last published there (a worker restarted after a reload serves the new run)."""
    torch.set_num_threads(settings.threads)
    reload_file = ReloadFile(Path(settings.reload_file)) if settings.reload_file else None
    # The generation and its run are read together, before the (slow) load: a reload published
    # while this worker loads then has a newer generation, and the follower swaps it in.
    generation, run_dir = (reload_file.read() if reload_file is not None and reload_file.path.is_file()
                           else (0, settings.run_dir))
    if bundle is None:
        bundle = load_bundle(run_dir, settings.backend, settings.threads, settings.limits)
    state = ServiceState(bundle, backend=settings.backend, threads=settings.threads, limits=settings.limits,
                         reload_file=reload_file, generation=generation)
    return create_app(state, admin_token=os.environ.get(ENV_ADMIN_TOKEN) or None, follow=reload_file is not None)


def app_from_env() -> Any:
    """uvicorn's factory in each worker process: the settings come from MULTIKPI_SERVE_SETTINGS."""
    return build_app(ServeSettings.from_json(os.environ[ENV_SETTINGS]))


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info") -> None:
    """Serve until interrupted (SIGINT / SIGTERM: in-flight requests finish first)."""
    uvicorn = import_extra("uvicorn", "multikpi serve")
    import_extra("fastapi", "multikpi serve")
    bundle = load_bundle(settings.run_dir, settings.backend, settings.threads, settings.limits)
    options: dict[str, Any] = {"host": host, "port": port, "log_level": log_level, "access_log": False}
    if workers == 1:
        uvicorn.run(build_app(settings, bundle), **options)
        return
    del bundle  # checked; each worker loads its own
    shared = Path(tempfile.mkdtemp(prefix="multikpi-serve-"))
    try:
        (shared / "metrics").mkdir()
        reload_file = ReloadFile(shared / "run.json")
        reload_file.publish(str(Path(settings.run_dir).absolute()))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared / "metrics")
        os.environ[ENV_SETTINGS] = ServeSettings(str(Path(settings.run_dir).absolute()), settings.backend,
                                                 settings.threads, settings.limits,
                                                 str(reload_file.path)).to_json()
        uvicorn.run("multikpi.service.server:app_from_env", factory=True, workers=workers, **options)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
