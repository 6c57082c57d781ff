"""Mixture-of-experts sharing: MMoE (Ma et al., KDD 2018) and PLE (Tang et al., RecSys 2020).

Both map the input (B, in_dim) to one representation per task, dict[task, (B, H)], like
SharedBottom, so that towers, task edges and label masks work unchanged on top of them.

Experts of one group (MMoE's experts, or one PLE level's shared or task-specific experts) are
stored batched: each layer is one (E, in, out) weight and runs as one batched matmul instead of
E small ones. This also makes "the last layer of the experts" a single parameter, which is what
GradNorm measures gradient norms on (`last_shared_layer`).

Gates are fused the same way (GateBank): all T gates of a level are one batched matmul per layer,
and the T mixtures one batched matmul, so nothing on the hot path loops over experts or tasks.

Gate usage: after every forward pass the module keeps the batch-mean gate weights per task
(detached); `gate_usage()` returns them as lists of floats for the training history.
"""
from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from multikpi.models.blocks import mlp, mlp_out_dim
from multikpi.models.protocols import SharingArchitecture


class BatchedLinear(nn.Module):
    """E independent linear layers in one (E, in_dim, out_dim) weight.

    (B, in_dim) -> (B, E, out_dim) when every expert reads the same input;
    (B, E, in_dim) -> (B, E, out_dim) when expert e reads its own input [:, e].
    Initialised like nn.Linear: weight and bias ~ U(-1/sqrt(in_dim), 1/sqrt(in_dim)).
    """

    def __init__(self, num: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(num, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num, out_dim).uniform_(-bound, bound))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        pattern = "bi,eio->beo" if inputs.dim() == 2 else "bei,eio->beo"
        outputs = torch.einsum(pattern, inputs, self.weight)
        # Add the bias in the matmul's dtype: an fp32 bias would promote a bf16 (autocast) output
        # to fp32 and double the memory traffic of every expert activation.
        return outputs + self.bias.to(outputs.dtype)


class ExpertBank(nn.Module):
    """`num_experts` MLP experts of the same widths, run batched.

    (B, in_dim) -> (B, E, hidden[-1]); every layer is Linear -> ReLU (-> Dropout), as in `mlp`.
    """

    def __init__(self, in_dim: int, hidden: list[int], num_experts: int, dropout: float = 0.0):
        super().__init__()
        dims = [in_dim] + list(hidden)
        self.layers = nn.ModuleList(BatchedLinear(num_experts, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.num_experts = num_experts
        self.out_dim = mlp_out_dim(in_dim, hidden)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.layers[0](inputs))

    def forward_from(self, first: torch.Tensor) -> torch.Tensor:
        """The experts from the first layer's output (B, E, hidden[0]) on."""
        hidden = self.dropout(torch.relu(first))
        for layer in self.layers[1:]:
            hidden = self.dropout(torch.relu(layer(hidden)))
        return hidden

    def last_layer(self) -> BatchedLinear:
        layer: BatchedLinear = self.layers[-1]  # type: ignore[assignment]
        return layer


class Gate(nn.Module):
    """Softmax gate over E experts: (B, in_dim) -> (B, E) weights, each row sums to 1.

    With `hidden = []` it is the papers' linear gate, softmax(W_g x); otherwise an MLP first.
    PLE's shared gate (one per level); the task gates are a GateBank."""

    def __init__(self, in_dim: int, hidden: list[int], num_experts: int):
        super().__init__()
        self.body = mlp(in_dim, hidden)
        self.out = nn.Linear(mlp_out_dim(in_dim, hidden), num_experts)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.out(self.body(inputs)).float(), dim=-1)


class GateBank(nn.Module):
    """G softmax gates over E experts each, fused: every layer of all gates is one BatchedLinear.

    (B, in_dim) -> (B, G, E) when every gate reads the same input (MMoE, PLE's first level);
    (B, G, in_dim) -> (B, G, E) when gate g reads its own input [:, g] (PLE's task gates above
    the first level). Rows sum to 1 over E (fp32 softmax). Gate g with `hidden = []` is
    softmax(W_g x + b_g), the papers' linear gate; otherwise Linear -> ReLU layers first.
    """

    def __init__(self, num_gates: int, in_dim: int, hidden: list[int], num_experts: int):
        super().__init__()
        dims = [in_dim] + list(hidden) + [num_experts]
        self.layers = nn.ModuleList(BatchedLinear(num_gates, a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.layers[0](inputs))

    def forward_from(self, first: torch.Tensor) -> torch.Tensor:
        """The gates from the first layer's output (B, G, width) on."""
        if len(self.layers) == 1:
            return torch.softmax(first.float(), dim=-1)
        hidden = torch.relu(first)
        for layer in self.layers[1:-1]:
            hidden = torch.relu(layer(hidden))
        return torch.softmax(self.layers[-1](hidden).float(), dim=-1)


def mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum of expert outputs: weights (B, E), experts (B, E, H) -> (B, H)."""
    return torch.einsum("be,beh->bh", weights.to(experts.dtype), experts)


class MMoE(nn.Module, SharingArchitecture):
    """Multi-gate Mixture-of-Experts (Ma, Zhao, Yi, Chen, Hong & Chi, KDD 2018, eq. 5-6).

        f^t(x) = Σ_e g^t(x)_e · f_e(x),   g^t(x) = softmax(W_t x)

    experts: ExpertBank, (B, in_dim) -> (B, E, H); gates: GateBank of T gates over E experts,
    (B, in_dim) -> (B, T, E); tasks: the T task names, in the gates' order. All experts run as one
    batched matmul per layer, all gates as one, and the T mixtures as one (B, T, E) x (B, E, H)
    batched matmul: no Python loop over experts or tasks. forward: (B, in_dim) -> {task: (B, H)}.
    Parameters: `experts.*` (optimizer group `experts`) and `gates.*` (group `gates`).
    """

    def __init__(self, *, experts: ExpertBank, gates: GateBank, tasks: list[str]):
        super().__init__()
        self.experts = experts
        self.gates = gates
        self.tasks = list(tasks)
        self.out_dim = experts.out_dim
        self._usage: dict[str, torch.Tensor] = {}

    def gate_weights(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """task -> (B, E) gate weights (rows sum to 1)."""
        return dict(zip(self.tasks, self.gates(inputs).unbind(1)))

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_projected([layer(inputs) for layer in self.input_layers()])

    def input_layers(self) -> list[nn.Module]:
        return [self.experts.layers[0], self.gates.layers[0]]

    def forward_projected(self, projected: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        expert_outputs = self.experts.forward_from(projected[0])  # (B, E, H)
        weights = self.gates.forward_from(projected[1])  # (B, T, E)
        self._usage = dict(zip(self.tasks, weights.detach().mean(dim=0)))
        mixed = torch.bmm(weights.to(expert_outputs.dtype), expert_outputs)  # (B, T, H)
        return dict(zip(self.tasks, mixed.unbind(1)))

    def gate_usage(self) -> dict[str, list[float]]:
        """task -> batch-mean gate weight of each expert in the last forward pass."""
        return {task: w.tolist() for task, w in self._usage.items()}

    def last_shared_layer(self) -> BatchedLinear:
        """The last layer of all experts, one (E, in, H) weight: the layer right below the gates,
        shared by every task (GradNorm measures each task's gradient norm on it)."""
        return self.experts.last_layer()


class PLE(nn.Module, SharingArchitecture):
    """Progressive Layered Extraction with Customized Gate Control (Tang, Liu, Zhao & Gong,
    RecSys 2020, eq. 2-5).

    Level j has S shared experts S^j and K task-specific experts E^j_t per task. Task t's gate
    reads task t's input of the level and mixes [E^j_t ; S^j]; below the last level a shared
    gate reads the shared input and mixes every expert of the level, [E^j_1 ; ... ; E^j_T ; S^j],
    into the next level's shared input. Level 1 reads x everywhere.

    experts: ModuleList over levels of ModuleDict {"shared": ExpertBank of S, "specific":
    ExpertBank of T*K (task t's experts are [t*K, (t+1)*K))}; gates: ModuleList over levels of
    ModuleDict {"tasks": GateBank of T gates over K + S experts, and below the last level
    "shared": Gate over T*K + S}; tasks: the T names in that order. Each level runs its experts as
    two batched matmuls per layer and its task gates as one, with no loop over tasks.
    forward: (B, in_dim) -> {task: (B, H)}. Parameters: `experts.*` (optimizer group `experts`)
    and `gates.*` (group `gates`). Gate usage reports the last level's task gates, over
    [task-specific experts, shared experts].
    """

    def __init__(self, *, experts: nn.ModuleList, gates: nn.ModuleList, tasks: list[str]):
        super().__init__()
        self.experts = experts
        self.gates = gates
        self.tasks = list(tasks)
        last = cast(nn.ModuleDict, experts[-1])
        self.out_dim: int = cast(ExpertBank, last["shared"]).out_dim
        self._usage: dict[str, torch.Tensor] = {}

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs, weights = self._levels(inputs)
        self._usage = dict(zip(self.tasks, weights.detach().mean(dim=0)))
        return dict(zip(self.tasks, outputs.unbind(1)))

    def gate_weights(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """task -> (B, K + S) gate weights of the last level (rows sum to 1)."""
        return dict(zip(self.tasks, self._levels(inputs)[1].unbind(1)))

    def _levels(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ((B, T, H) task outputs of the last level, (B, T, K + S) its task gate weights)."""
        task_inputs, shared_input = inputs, inputs  # (B, in) at level 1, then (B, T, H)
        weights = torch.empty(0)
        for experts, gates in zip(self.experts, self.gates):
            level = self._level(cast(nn.ModuleDict, experts), cast(nn.ModuleDict, gates), task_inputs, shared_input)
            task_inputs, next_shared, weights = level
            shared_input = next_shared if next_shared is not None else shared_input
        return task_inputs, weights

    def _level(self, experts: nn.ModuleDict, gates: nn.ModuleDict, task_inputs: torch.Tensor,
               shared_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One CGC level -> ((B, T, H) task outputs, (B, H) shared output or None, (B, T, K + S)
        task gate weights). task_inputs: (B, in) (every task reads it) or (B, T, in)."""
        num_tasks = len(self.tasks)
        per_task = cast(ExpertBank, experts["specific"]).num_experts // num_tasks  # K
        shared = experts["shared"](shared_input)  # (B, S, H)
        # expert t*K + k reads task t's input: repeat each task's input K times along the expert axis
        specific_in = task_inputs if task_inputs.dim() == 2 else task_inputs.repeat_interleave(per_task, dim=1)
        specific = experts["specific"](specific_in)  # (B, T*K, H)
        weights = gates["tasks"](task_inputs)  # (B, T, K + S)
        w = weights.to(shared.dtype)
        own = specific.unflatten(1, (num_tasks, per_task))  # (B, T, K, H)
        outputs = (torch.einsum("btk,btkh->bth", w[..., :per_task], own)
                   + torch.bmm(w[..., per_task:], shared))  # (B, T, H)
        shared_output = None
        if "shared" in gates:
            shared_output = mix(gates["shared"](shared_input), torch.cat([specific, shared], dim=1))
        return outputs, shared_output, weights

    def gate_usage(self) -> dict[str, list[float]]:
        """task -> batch-mean weight of each last-level expert (task-specific first, then shared)."""
        return {task: w.tolist() for task, w in self._usage.items()}

    def last_shared_layer(self) -> BatchedLinear:
        """The last layer of the last level's shared experts: the only expert weights that every
        task's final gate reads (GradNorm measures each task's gradient norm on it)."""
        return cast(ExpertBank, cast(nn.ModuleDict, self.experts[-1])["shared"]).last_layer()
