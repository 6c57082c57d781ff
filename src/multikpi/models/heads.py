"""Task towers: one per KPI, each ending in a single output unit."""
from __future__ import annotations

import math

import torch
from torch import nn

from multikpi.models.blocks import mlp, mlp_out_dim


class TaskTower(nn.Module):
    """MLP tower -> one output. (B, in_dim) -> (B,).

    The output is a logit for binary tasks and a standardized value for regression tasks.
    `output_bias` starts the output at logit(base rate) for binary tasks (0 for regression): a
    tower that starts at logit 0 spends its first steps pulling every click logit down to about
    -3 through the shared layers, which inverts the ranking for a while (and for good in a peer).
    """

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0, output_bias: float = 0.0):
        super().__init__()
        self.body = mlp(in_dim, hidden, dropout)
        self.out = nn.Linear(mlp_out_dim(in_dim, hidden), 1)
        nn.init.constant_(self.out.bias, output_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.body(features)
        # The output unit always runs in float32: a bf16 logit has steps of 1/64 near -3, which
        # would tie thousands of scores and cost AUC. It is one column, so it costs nothing.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.out(hidden.float()).squeeze(-1)


def logit_of_rate(rate: float) -> float:
    """logit(rate), with the rate kept inside [1e-4, 1 - 1e-4] so that it stays finite."""
    rate = min(max(rate, 1e-4), 1.0 - 1e-4)
    return math.log(rate / (1.0 - rate))
