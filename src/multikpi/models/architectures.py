"""Sharing architectures. Each maps the input vector (B, in_dim) to one representation per task,
dict[task, (B, out_dim)], so that towers and task edges work the same on top of any of them.

Every architecture also has `last_shared_layer()` (the layer GradNorm measures gradient norms on)
and `gate_usage()` (task -> batch-mean gate weights of the last forward pass; {} without gates).
SharedBottom and SeparateNets live here; MMoE and PLE in `experts.py`."""
from __future__ import annotations

import torch
from torch import nn

from multikpi.models.blocks import last_linear, mlp, mlp_out_dim
from multikpi.models.protocols import SharingArchitecture


class SharedBottom(nn.Module, SharingArchitecture):
    """Hard parameter sharing: one MLP whose output every task tower reads.

    (B, in_dim) -> {task: (B, hidden[-1])}, the same tensor for every task.
    """

    def __init__(self, in_dim: int, hidden: list[int], tasks: list[str], dropout: float = 0.0):
        super().__init__()
        self.mlp = mlp(in_dim, hidden, dropout)
        self.tasks = list(tasks)
        self.out_dim = mlp_out_dim(in_dim, hidden)

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if not len(self.mlp):  # no hidden layer: the input itself
            return {task: inputs for task in self.tasks}
        return self.forward_projected([self.mlp[0](inputs)])

    def input_layers(self) -> list[nn.Module]:
        return [self.mlp[0]] if len(self.mlp) else []

    def forward_projected(self, projected: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        shared = self.mlp[1:](projected[0])
        return {task: shared for task in self.tasks}

    def last_shared_layer(self) -> nn.Linear:
        return last_linear(self.mlp)


class SeparateNets(nn.Module, SharingArchitecture):
    """One MLP per task and nothing shared above the input: `single_task` and `esmm`.

    (B, in_dim) -> {task: (B, hidden[-1])}. `nets` is a ModuleDict task -> MLP; parameters are
    `nets.<task>.*`, which the optimizer puts in the group `heads.<task>` with the task's tower.

    columns: (T, in_t) int64 indices, row t = the input columns task t's MLP reads, or None for
      all of them. single_task gives each task its own slice of a T-times wider embedding table, so
      that no parameter is read by two tasks (the single-task baseline); esmm passes None, because
      ESMM shares the embedding table between the CTR and CVR networks (Ma et al., SIGIR 2018, §2.3).
    shared_layer: what `last_shared_layer()` returns, the embedding table. For esmm it is the only
      parameter the tasks share, and GradNorm measures gradient norms on it. For single_task the
      tasks read disjoint slices of it, so there is nothing to balance: validate.py rejects
      gradnorm with single_task, and the training loop only asks for the layer, never uses it.
    """

    columns: torch.Tensor | None

    def __init__(self, *, nets: nn.ModuleDict, out_dim: int, shared_layer: nn.Module,
                 columns: torch.Tensor | None = None):
        super().__init__()
        self.nets = nets
        self.out_dim = out_dim
        self.register_buffer("columns", columns, persistent=False)
        self._shared_layer = [shared_layer]  # a list: owned (and registered) by MultiTaskModel, not here

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.columns is None:
            return {task: net(inputs) for task, net in self.nets.items()}
        return {task: net(inputs.index_select(1, self.columns[i])) for i, (task, net) in enumerate(self.nets.items())}

    def last_shared_layer(self) -> nn.Module:
        return self._shared_layer[0]


def task_columns(num_columns: int, dim: int, num_dense: int, num_tasks: int) -> torch.Tensor:
    """(T, F*dim + D) input indices of each task when every categorical column's embedding is
    T*dim wide (task t owns [t*dim, (t+1)*dim) of it) and the D dense inputs follow.

    >>> task_columns(num_columns=2, dim=1, num_dense=1, num_tasks=2).tolist()
    [[0, 2, 4], [1, 3, 4]]
    """
    width = dim * num_tasks
    dense = torch.arange(num_columns * width, num_columns * width + num_dense)
    rows = []
    for t in range(num_tasks):
        embedded = [torch.arange(f * width + t * dim, f * width + (t + 1) * dim) for f in range(num_columns)]
        rows.append(torch.cat(embedded + [dense]))
    return torch.stack(rows)
