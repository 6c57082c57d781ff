"""The manifest: written last into a run directory, it lists the package version and the sha256
of every artifact. A run without one did not finish; loading verifies every checksum."""
from __future__ import annotations

import json
from pathlib import Path

from multikpi._version import __version__
from multikpi.artifacts.files import sha256_of, write_json
from multikpi.errors import ArtifactError

MANIFEST = "manifest.json"
PACKAGE = "multikpi"


def write_manifest(run_dir: Path, files: list[Path]) -> str:
    """Record the package version and the sha256 of `files` (paths inside `run_dir`); return the
    model version: the sha256 of the manifest itself."""
    checksums = {str(p.relative_to(run_dir)): sha256_of(p) for p in sorted(files)}
    write_json(run_dir / MANIFEST, {"package": PACKAGE, "version": __version__, "files": checksums})
    return sha256_of(run_dir / MANIFEST)


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
    if manifest.get("package") != PACKAGE or version != __version__:
        raise ArtifactError(
            f"run {str(run_dir)!r} was written by {manifest.get('package')} {version}; "
            f"this is {PACKAGE} {__version__}: retrain, or load it with that version"
        )
    for name, expected in files.items():
        path = run_dir / name
        if not path.is_file():
            raise ArtifactError(f"run {str(run_dir)!r} is missing {name!r}")
        if sha256_of(path) != expected:
            raise ArtifactError(f"run {str(run_dir)!r}: {name!r} was modified after training (sha256 mismatch)")
    return files


def model_version(run_dir: Path) -> str:
    """The sha256 of the run's manifest: it changes whenever any artifact does."""
    return sha256_of(run_dir / MANIFEST)
