"""Where a training run writes, so that no run, no input and no unrelated directory is lost.

- A run directory carries a marker file (`.multikpi-run`). An existing directory that is not empty
  and has no marker is not a run directory and is never written into (`out_dir: /` is refused).
- A directory holding a finished run (its manifest) is replaced only with `overwrite`: the new run
  is trained in a staging sibling (`.<name>.staging`) and swapped in when it is complete, so the old
  run stays loadable until then, and a failed or killed retrain leaves it untouched.
- One training at a time per directory: a lock file (`.lock`) holds the pid of its owner; a second
  training is refused with the owner named; a lock whose process is gone is taken over.
- Temporary files (`.<name>.tmp-<pid>`) that a killed process left behind are removed at the next start.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from multikpi.artifacts.manifest import MANIFEST
from multikpi.errors import ArtifactError

MARKER = ".multikpi-run"
LOCK = ".lock"
CHECKPOINT_NAME = "checkpoint.pt"


def staging_dir(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.staging"


class RunWorkspace:
    """The directory a training writes into (`path`: the run directory, or its staging sibling),
    locked while it is held. Use `open_workspace`, then `commit()` once the run is complete.
    `writer` False: the other ranks of a distributed run, which never lock or write (rank 0 does)."""

    def __init__(self, run_dir: Path, path: Path, writer: bool = True):
        self.run_dir = run_dir
        self.path = path
        self.writer = writer
        self._locked = False

    def __enter__(self) -> RunWorkspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def start(self) -> None:
        """Create the directory (marked as a run directory), take its lock and remove the temporary
        files a killed process left. Called right before the first write, so that a run that fails
        on its inputs leaves nothing behind."""
        if self._locked or not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        _take_lock(self.path / LOCK)
        self._locked = True
        (self.path / MARKER).touch()
        remove_orphans(self.path)

    def release(self) -> None:
        if self._locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self._locked = False

    def commit(self) -> None:
        """Swap a staged run in place of the old one (two renames in one directory)."""
        if self.path == self.run_dir or not self.writer:
            return
        self.release()
        old = self.run_dir.parent / f".{self.run_dir.name}.old-{os.getpid()}"
        os.rename(self.run_dir, old)
        os.rename(self.path, self.run_dir)
        shutil.rmtree(old, ignore_errors=True)
        self.path = self.run_dir


def open_workspace(run_dir: Path, resume: bool = False, overwrite: bool = False) -> RunWorkspace:
    """Check `run_dir` and choose where to write, without writing anything yet (`start()` does).

    Raises ArtifactError naming the directory and what to do."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ArtifactError(f"out_dir {str(run_dir)!r} is a file, not a directory; choose a directory")
    path = _resume_path(run_dir) if resume else _fresh_path(run_dir, overwrite)
    if resume:
        _check_not_locked(path)
    return RunWorkspace(run_dir, path)


def is_run_dir(path: Path) -> bool:
    return (path / MARKER).is_file() or (path / MANIFEST).is_file()


def _fresh_path(run_dir: Path, overwrite: bool) -> Path:
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return run_dir
    if not is_run_dir(run_dir):
        raise ArtifactError(f"out_dir {str(run_dir)!r} exists and is not a multikpi run directory (no {MARKER}); "
                            f"refusing to write into it: choose a new or empty directory")
    if (run_dir / MANIFEST).is_file():
        if not overwrite:
            raise ArtifactError(f"out_dir {str(run_dir)!r} holds a finished run; pass --overwrite (train(..., "
                                f"overwrite=True)) to replace it once the new one is complete, or choose another "
                                f"out_dir")
        staging = staging_dir(run_dir)
        if staging.exists():
            _check_not_locked(staging)
            shutil.rmtree(staging)
        return staging
    if (run_dir / CHECKPOINT_NAME).is_file() and not overwrite:
        raise ArtifactError(f"out_dir {str(run_dir)!r} holds an interrupted run; continue it with --resume "
                            f"{str(run_dir)!r}, or pass --overwrite to start again")
    return run_dir


def _resume_path(run_dir: Path) -> Path:
    staging = staging_dir(run_dir)
    if not (run_dir / "config.yaml").is_file() and not (staging / "config.yaml").is_file():
        raise ArtifactError(f"cannot resume: {str(run_dir)!r} has no config.yaml (was a run started there?)")
    if (staging / CHECKPOINT_NAME).is_file():
        return staging  # an --overwrite retrain that was interrupted
    if (run_dir / CHECKPOINT_NAME).is_file():
        return run_dir
    if (run_dir / MANIFEST).is_file():
        raise ArtifactError(f"cannot resume {str(run_dir)!r}: that run finished (it has its {MANIFEST}); there is "
                            f"nothing to resume. Retrain it with --overwrite, or evaluate it")
    raise ArtifactError(f"cannot resume: {str(run_dir / CHECKPOINT_NAME)!r} does not exist (no checkpoint was "
                        f"written yet)")


def _take_lock(path: Path) -> None:
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            owner = _owner(path)
            if owner is not None and _alive(owner):
                raise ArtifactError(f"run directory {str(path.parent)!r} is locked by another training (pid "
                                    f"{owner}, lock file {str(path)!r}); wait for it to finish or stop it") from None
            path.unlink(missing_ok=True)  # the owner is gone: a stale lock
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return
    raise ArtifactError(f"cannot take the lock {str(path)!r}")


def _check_not_locked(directory: Path) -> None:
    owner = _owner(directory / LOCK)
    if owner is not None and _alive(owner):
        raise ArtifactError(f"run directory {str(directory)!r} is locked by another training (pid {owner})")


def _owner(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "0") or None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as err:
        return err.errno != errno.ESRCH
    return True


def remove_orphans(directory: Path) -> list[Path]:
    """Delete the temporary files (`.*.tmp-<pid>` of a dead pid, `.*.tmp`) under `directory`."""
    removed = []
    for path in directory.rglob(".*.tmp*"):
        pid = path.name.rsplit("-", 1)[-1]
        if path.is_file() and not path.is_symlink() and (not pid.isdigit() or not _alive(int(pid))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed

