"""The shallow position tower: position bias learned beside the model, and left out at prediction.

Clicks depend on where an item was shown as well as on what it is. A model that reads the logged
position as a feature learns that, but then predicts for the position the row happened to be
logged at; one that ignores it learns the logging policy's position effect into every estimate.
A shallow tower over the position (Zhao et al. 2019, "Recommending what video to watch next: a
multitask ranking system", YouTube) instead explains the position effect during training only,
and prediction drops it, so that the main model's estimates are position-free.

How the tower's output meets a task's logit: YouTube adds it to the logit; PAL (Guo et al. 2019,
"PAL: a position-bias aware learning framework for CTR prediction") multiplies probabilities,
P(click | x, p) = P(examined | p) * P(click | examined, x). The product is the position-based
model of the off-policy estimators (decide/estimators.py), so that is what is used here:

    log P(y = 1 | x, p) = log sigmoid(logit(x)) + o_p,   o_p = log theta_p / theta_ref

with o_ref = 0 at the reference position, the smallest one seen in train (vocabulary index 1,
position 1 in the built-in feed). A binary estimate is then the probability at the top position,
r_t of the estimators. (An additive logit offset cannot be a PBM: logit(theta * a) - logit(a)
depends on a; on the demo feed it learned offsets 20% too deep and DM was 8% high.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

REFERENCE = 1        # vocabulary index of the reference position (0 is the unseen-position row)
OFFSET_SCALE = 10.0  # offsets = 10 * table entries: Adam moves every parameter by about lr per step,
                     # so a position's offset moves by ~10 lr: an offset of -1 takes ~100 steps, not 1,000


class PositionTower(nn.Module):
    """position (B,) vocabulary index -> (B, T_b) log examination offsets o_p, one per binary task,
    0 at the reference position: o_p = OFFSET_SCALE * (table[p] - table[reference]), a linear
    layer over the one-hot position (the shallowest tower), starting at 0 everywhere.

    add(outputs, position): the binary tasks' logits in `outputs` (task -> (B,)) become the logits
    of sigmoid(logit) * exp(o_p) (PAL's product), the other outputs unchanged.
    """

    def __init__(self, num_positions: int, tasks: list[str]):
        super().__init__()
        self.tasks = list(tasks)
        self.table = nn.Embedding(max(num_positions, REFERENCE + 1), len(self.tasks))
        nn.init.zeros_(self.table.weight)

    def forward(self, position: torch.Tensor) -> torch.Tensor:
        weight = self.table.weight.float()  # float32 whatever the autocast dtype, like the towers' output
        return OFFSET_SCALE * (weight[position.long()] - weight[REFERENCE])

    def add(self, outputs: dict[str, torch.Tensor], position: torch.Tensor) -> dict[str, torch.Tensor]:
        offsets = self(position)
        shifted = dict(outputs)
        for i, task in enumerate(self.tasks):
            shifted[task] = logit_of_product(outputs[task], offsets[:, i])
        return shifted


def logit_of_product(logit: torch.Tensor, log_factor: torch.Tensor) -> torch.Tensor:
    """logit(sigmoid(logit) * exp(log_factor)), the product kept below 1: (B,), (B,) -> (B,) logits.
    log p = log sigmoid(logit) + log_factor; logit(p) = log p - log(1 - p)."""
    log_p = torch.clamp(F.logsigmoid(logit) + log_factor, max=-1e-6)
    return log_p - torch.log(-torch.expm1(log_p))
