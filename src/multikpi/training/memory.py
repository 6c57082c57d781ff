"""Memory: refuse a batch size that cannot fit before allocating it, and turn an allocator
failure into a clear TrainingError instead of a crash (or the kernel's OOM killer)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from multikpi.errors import TrainingError

BYTES_PER_ACTIVATION = 4 * 4  # float32 value, its gradient, a bf16 copy and slack for temporaries


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def step_bytes(model: nn.Module, batch_rows: int, input_width: int) -> int:
    """Rough upper estimate of one training step's memory: activations of every linear layer and
    the input for `batch_rows` rows, plus parameters with gradient and two Adam moments."""
    widths = input_width + sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    params = sum(p.numel() for p in model.parameters())
    return batch_rows * widths * BYTES_PER_ACTIVATION + params * 4 * 4


def check_memory(model: nn.Module, batch_size: int, train_rows: int, input_width: int) -> None:
    """Raise TrainingError when one step of `batch_size` rows (of `input_width` model inputs each)
    cannot fit in the available memory."""
    available = available_bytes()
    if available is None:
        return
    rows = min(batch_size, train_rows)
    needed = step_bytes(model, rows, input_width)
    if needed > 0.9 * available:
        fits = int((0.9 * available - step_bytes(model, 0, input_width)) // max(step_bytes(model, 1, input_width)
                                                                             - step_bytes(model, 0, input_width), 1))
        raise TrainingError(
            f"`train.batch_size` {batch_size} needs about {needed / 2**30:.1f} GiB for one step; "
            f"{available / 2**30:.1f} GiB is available. Use a batch size of at most {max(fits, 0):,}")


def check_table_memory(vocab_rows: int, width: int) -> None:
    """Raise TrainingError, before allocating it, when the embedding table (`vocab_rows` x `width`
    float32 values, with its gradient and two Adam moments) cannot fit in the available memory."""
    available = available_bytes()
    needed = vocab_rows * width * 4 * 4
    if available is not None and needed > 0.9 * available:
        raise TrainingError(
            f"the embedding table has {vocab_rows:,} rows x {width} values (`model.embedding_dim`) and needs about "
            f"{needed / 2**30:.1f} GiB with its gradient and optimizer state; {available / 2**30:.1f} GiB is "
            f"available. Lower model.embedding_dim, or raise data.min_frequency to shrink the vocabularies")


@contextlib.contextmanager
def out_of_memory_as_error(batch_size: int | str) -> Iterator[None]:
    """Re-raise an allocator failure inside the block as a one-line TrainingError."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise TrainingError(f"out of memory at `train.batch_size` {batch_size}; use a smaller batch size") from None
    except RuntimeError as err:
        if not any(s in str(err) for s in ("out of memory", "not enough memory", "can't allocate memory")):
            raise
        raise TrainingError(f"out of memory at `train.batch_size` {batch_size}; use a smaller batch size") from None
