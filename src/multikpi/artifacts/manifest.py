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
# A finished run has at least these; a manifest that lists fewer verifies too little.
CORE_FILES = ("config.yaml", "model.safetensors", "serving.json", "metrics.json", "encoders/encoders.json")


def write_manifest(run_dir: Path, files: list[Path]) -> str:
    """Record the package version and the sha256 of `files` (paths inside `run_dir`); return the
    model version: the sha256 of the manifest itself."""
    checksums = {str(p.relative_to(run_dir)): sha256_of(p) for p in sorted(files)}
    write_json(run_dir / MANIFEST, {"package": PACKAGE, "version": __version__, "files": checksums})
    return sha256_of(run_dir / MANIFEST)


def verify_run(run_dir: Path, required: tuple[str, ...] = CORE_FILES) -> dict[str, str]:
    """Check that `run_dir` is a finished run of this package version with untouched files.

    `required`: files the manifest must list (those the caller reads). Returns the relative-path ->
    sha256 map. Raises ArtifactError naming the first problem."""
    if not run_dir.is_dir():
        raise ArtifactError(f"run directory {str(run_dir)!r} does not exist")
    manifest_path = run_dir / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"run directory {str(run_dir)!r} has no {MANIFEST}: the run did not finish")
    try:
        manifest = json.loads(manifest_path.read_text())
        files, version = manifest["files"], manifest["version"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, OSError):
        raise ArtifactError(f"{str(manifest_path)!r} is not a valid manifest") from None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ArtifactError(f"{str(manifest_path)!r} is not a valid manifest: `files` must map names to sha256 sums")
    if manifest.get("package") != PACKAGE or version != __version__:
        raise ArtifactError(
            f"run {str(run_dir)!r} was written by {manifest.get('package')} {version}; "
            f"this is {PACKAGE} {__version__}: retrain, or load it with that version"
        )
    missing = [name for name in required if name not in files]
    if missing:
        raise ArtifactError(f"{str(manifest_path)!r} does not list the run's core files {missing}: the run is "
                            f"incomplete or the manifest was edited")
    for name, expected in files.items():
        path = run_dir / name
        if Path(name).is_absolute() or ".." in Path(name).parts or path.is_symlink():
            raise ArtifactError(f"{str(manifest_path)!r} lists {name!r}, which is not a file inside the run "
                                f"directory: the manifest was tampered with")
        if not path.is_file():
            raise ArtifactError(f"run {str(run_dir)!r} is missing {name!r}")
        if sha256_of(path) != expected:
            raise ArtifactError(f"run {str(run_dir)!r}: {name!r} was modified after training (sha256 mismatch)")
    return files


def model_version(run_dir: Path) -> str:
    """The sha256 of the run's manifest: it changes whenever any artifact does."""
    return sha256_of(run_dir / MANIFEST)
