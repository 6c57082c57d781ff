"""The interface every sharing architecture implements (checked by mypy), with the shared no-op
defaults in one place: an architecture without gates inherits `gate_usage` from here."""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class SharingArchitecture(Protocol):
    """Maps the input vector (B, in_dim) to one representation per task, dict[task, (B, out_dim)],
    so that towers and task edges work the same on top of any architecture."""

    out_dim: int

    def __call__(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def last_shared_layer(self) -> nn.Module:
        """The layer whose weight GradNorm measures per-task gradient norms on."""
        ...

    def gate_usage(self) -> dict[str, list[float]]:
        """task -> batch-mean gate weight of each expert in the last forward pass; {} without gates."""
        return {}
