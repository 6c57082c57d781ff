"""The shallow position tower: position bias learned beside the model, and left out at prediction.

Clicks depend on where an item was shown as well as on what it is. A model that reads the logged
position as a feature learns that, but then predicts for the position the row happened to be
logged at; one that ignores it learns the logging policy's position effect into every estimate.
The shallow tower of Zhao et al. 2019 ("Recommending what video to watch next: a multitask ranking
system", YouTube) instead adds a position-only logit to each binary task's logit during training
(PAL, Guo et al. 2019, multiplies probabilities to the same end), and prediction drops it, so
that the main model's estimates are position-free.

Here the tower's offsets are relative to a reference position, the smallest one seen in train
(vocabulary index 1, position 1 in the built-in feed), whose offset is 0 by construction: a
binary estimate is then the probability at the top position, which is what the position-based
model of the off-policy estimators (decide/estimators.py) calls r_t.
"""
from __future__ import annotations

import torch
from torch import nn

REFERENCE = 1        # vocabulary index of the reference position (0 is the unseen-position row)
OFFSET_SCALE = 10.0  # offsets = 10 * table entries: Adam moves every parameter by about lr per step,
                     # so a position's offset moves by ~10 lr: an offset of -1 takes ~100 steps, not 1,000


class PositionTower(nn.Module):
    """position (B,) vocabulary index -> (B, T_b) logit offsets, one per binary task, 0 at the
    reference position: offset(p) = OFFSET_SCALE * (table[p] - table[reference]), a linear layer
    over the one-hot position (the shallowest tower), starting at 0 everywhere.

    add(outputs, position) adds the offsets to the binary tasks' logits in `outputs` (task -> (B,)).
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
            shifted[task] = outputs[task] + offsets[:, i]
        return shifted
