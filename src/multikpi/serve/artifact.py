"""The run directory: what `train` writes and `evaluate`, `predict` and the server read.

    config.yaml         the resolved config
    model.safetensors   model weights (safetensors: no pickled objects)
    loss.safetensors    the combiner's learned state (e.g. uncertainty log-variances)
    encoders/           encoders.json + one Parquet vocabulary per categorical column
    metrics.json        split -> task -> metric -> value (+ loss_weights)
    history.jsonl       one line per training step: raw per-task losses, effective weights, lrs
    train_log.jsonl     one line per epoch
    calibration.json    with data.valid: isotonic thresholds and Platt a, b per binary task
    manifest.json       package version and the sha256 of every file above; written last

Every file is written to a temporary name and renamed into place; the manifest is written last,
so a run without one did not finish. Loading verifies every checksum.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from multikpi.errors import ArtifactError

MANIFEST = "manifest.json"
PACKAGE = "multikpi"


def package_version() -> str:
    from multikpi import __version__

    return __version__


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync it, and rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, payload: Any) -> None:
    write_atomic(path, json.dumps(payload, indent=1, allow_nan=True).encode())


def write_yaml(path: Path, payload: Any) -> None:
    write_atomic(path, yaml.safe_dump(payload, sort_keys=False).encode())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(run_dir: Path, files: list[Path]) -> None:
    """Record the package version and the sha256 of `files` (paths inside `run_dir`)."""
    checksums = {str(p.relative_to(run_dir)): sha256_of(p) for p in sorted(files)}
    write_json(run_dir / MANIFEST, {"package": PACKAGE, "version": package_version(), "files": checksums})


def verify_run(run_dir: Path) -> dict[str, str]:
    """Check that `run_dir` is a finished run of this package version with untouched files.

    Returns the relative-path -> sha256 map. Raises ArtifactError naming the first problem."""
    if not run_dir.is_dir():
        raise ArtifactError(f"run directory {str(run_dir)!r} does not exist")
    manifest_path = run_dir / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"run directory {str(run_dir)!r} has no {MANIFEST}: the run did not finish")
    try:
        manifest = json.loads(manifest_path.read_text())
        files, version = manifest["files"], manifest["version"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ArtifactError(f"{str(manifest_path)!r} is not a valid manifest") from None
    if manifest.get("package") != PACKAGE or version != package_version():
        raise ArtifactError(
            f"run {str(run_dir)!r} was written by {manifest.get('package')} {version}; "
            f"this is {PACKAGE} {package_version()}: retrain, or load it with that version"
        )
    for name, expected in files.items():
        path = run_dir / name
        if not path.is_file():
            raise ArtifactError(f"run {str(run_dir)!r} is missing {name!r}")
        if sha256_of(path) != expected:
            raise ArtifactError(f"run {str(run_dir)!r}: {name!r} was modified after training (sha256 mismatch)")
    return files
