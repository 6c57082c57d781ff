"""Sharing architectures. Each maps the input vector (B, in_dim) to one representation per task,
dict[task, (B, out_dim)], so that towers and task edges work the same on top of any of them."""
from __future__ import annotations

import torch
from torch import nn

from multikpi.models.blocks import last_linear, mlp, mlp_out_dim


class SharedBottom(nn.Module):
    """Hard parameter sharing: one MLP whose output every task tower reads.

    (B, in_dim) -> {task: (B, hidden[-1])}, the same tensor for every task.
    """

    def __init__(self, in_dim: int, hidden: list[int], tasks: list[str], dropout: float = 0.0):
        super().__init__()
        self.mlp = mlp(in_dim, hidden, dropout)
        self.tasks = list(tasks)
        self.out_dim = mlp_out_dim(in_dim, hidden)

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.mlp(inputs)
        return {task: shared for task in self.tasks}

    def last_shared_layer(self) -> nn.Linear:
        return last_linear(self.mlp)
