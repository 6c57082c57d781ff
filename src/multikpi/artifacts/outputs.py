"""Checks before a command writes an output file: it must never replace its own input or a file of
a run directory (the data the user has, and the model they trained)."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from multikpi.errors import DataError


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(out: str | Path, option: str, inputs: Iterable[str | Path] = (),
                      protected: Iterable[str | Path] = ()) -> Path:
    """`out` (the value of `option`, e.g. "--out") must not be an input file, must not lie inside a
    protected directory (a run directory), and must not be a directory. Returns it as a Path."""
    path = Path(out)
    resolved = path.resolve()
    for source in inputs:
        if resolved == Path(source).resolve() or _same(path, Path(source)):
            raise DataError(f"{option} {str(path)!r} is the input file {str(source)!r}; writing it would destroy "
                            f"the input: choose another output path")
    for directory in protected:
        root = Path(directory).resolve()
        if resolved == root or root in resolved.parents:
            raise DataError(f"{option} {str(path)!r} is inside the run directory {str(directory)!r}; a command never "
                            f"writes into a run: choose a path outside it")
    if path.is_dir():
        raise DataError(f"{option} {str(path)!r} is a directory; give a file name")
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{option} {str(path)!r}: {str(parent)!r} is a file, not a directory")
            break
    return path
