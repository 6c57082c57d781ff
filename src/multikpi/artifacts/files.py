"""Atomic file writes: every artifact goes to a temporary name in the same directory, is fsync'ed,
and is renamed over its final name, so a crash never leaves a half-written file under that name."""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import yaml


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a new temporary file, fsync it, and rename it over `path`. The temporary file is
    created exclusively and never through a symlink, and the rename replaces a symlink at `path`
    rather than writing where it points."""
    write_atomic_with(path, lambda handle: handle.write(data))


def write_atomic_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write_atomic`, with `write(handle)` streaming the content into the temporary file (no
    copy of it in memory: a checkpoint is the model and its optimizer state)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a leftover of this pid: ours to remove
    try:
        with signals_deferred():
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back until the block ends, then raised again, once each.

    Why: a KeyboardInterrupt raised inside `torch.save` makes its zip writer's `__exit__` fail with
    an unrelated RuntimeError ("unexpected pos"), which replaces the interrupt. Held back, the
    signal arrives as itself after the write, with a complete file on disk. The handlers are
    swapped rather than the thread's signal mask blocked: the kernel hands a process-wide signal
    to any thread not blocking it (torch's worker threads), so a mask on this thread holds nothing.
    Python runs handlers in the main thread only, so elsewhere there is nothing to hold.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in DEFERRED_SIGNALS:
        handler = signal.getsignal(signum)
        if handler not in (signal.SIG_IGN, None):  # ignored stays ignored; None: set outside Python
            previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for held, handler in previous.items():
            signal.signal(held, handler)
        for number in dict.fromkeys(received):
            signal.raise_signal(number)


def write_json(path: Path, payload: Any) -> None:
    """Strict JSON (RFC 8259 has no NaN): a NaN or infinite number, such as the AUC of a split with
    one class, is written as null."""
    write_atomic(path, json.dumps(nan_to_null(payload), indent=1, allow_nan=False).encode())


def nan_to_null(node: Any) -> Any:
    """`node` with every non-finite float (NaN, inf) replaced by None, in nested dicts and lists."""
    if isinstance(node, float) and not math.isfinite(node):
        return None
    if isinstance(node, dict):
        return {k: nan_to_null(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [nan_to_null(v) for v in node]
    return node


def write_yaml(path: Path, payload: Any) -> None:
    write_atomic(path, yaml.safe_dump(payload, sort_keys=False).encode())


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
