"""Where a model runs: the device, and the matmul precision (bf16 autocast or float32)."""
from __future__ import annotations

import torch

from multikpi.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu. Resolved once, at the start of a run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"`train.device` is {name!r} but this torch ({torch.__version__}) has no usable CUDA "
                           f"device; use cpu or auto"], source="device")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision`, or None for plain float32.

    `auto` picks bf16 where the hardware computes it natively (AVX512-BF16 or AMX on CPU, bf16
    support on CUDA): the MLP matmuls run about 3x faster and the benchmark AUCs hold. Weights,
    the embedding table, optimizer state, output units and losses stay float32."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if native else None
