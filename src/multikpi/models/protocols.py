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

    def input_layers(self) -> list[nn.Module]:
        """The affine layers that read the input vector, each an nn.Linear ((out, in) weight) or a
        BatchedLinear ((E, in, out) weight); [] when the architecture cannot start from their
        outputs (then `forward_projected` is never called). A ranking request computes the
        context's share of these layers once and broadcasts it (MultiTaskModel.forward_request)."""
        return []

    def forward_projected(self, projected: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The forward pass from the outputs of `input_layers()` on the input, in their order:
        forward(x) == forward_projected([layer(x) for layer in input_layers()])."""
        raise TypeError(f"{type(self).__name__} has no input layers to start from")
