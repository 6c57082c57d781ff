"""Row-sparse optimizers for the fused embedding table: each step reads and writes only the rows the
batch touched (models/embedding.py keeps their summed gradient), so an update costs what the batch
touched, not the table size. Chosen by the `embeddings` group's optimizer name:

    optim: {groups: {embeddings: {name: rowwise_adagrad, lr: 0.05}}}

Semantics, with g a touched row's summed gradient (rows not touched are neither read nor written):

- `sparse_sgd`: w ← w − lr·(g + wd·w). Equal to torch.optim.SGD on the touched rows (and
  everywhere when wd = 0: an untouched row has zero gradient).
- `lazy_adam`: the moments of touched rows only,
      m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²,   w ← w − lr·√(1−β2^t)/(1−β1^t) · m/(√v + ε)
  with one step counter t for the table, incremented every step (torch.optim.SparseAdam and
  TensorFlow's LazyAdam semantics): an idle row's moments do not decay while it is idle.
- `rowwise_adagrad`: one accumulator per row (FBGEMM's EXACT_ROWWISE_ADAGRAD),
      G ← G + mean_d(g_d²),   w ← w − lr·g/(√G + ε)
  whose state is one number per row instead of two per value.

They are torch optimizers (param_groups, LambdaLR schedules, state_dict for checkpoints work as for
any), over the table parameter, which has no `.grad`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from multikpi.models.embedding import FeatureEmbedding

SPARSE_OPTIMIZERS = ("sparse_sgd", "lazy_adam", "rowwise_adagrad")


class RowSparseOptimizer(torch.optim.Optimizer):
    """Base of the three: the step takes the embedding's pending (rows, grad_rows) pair."""

    def __init__(self, embedding: FeatureEmbedding, defaults: dict[str, Any], name: str = "embeddings"):
        super().__init__([{"params": [embedding.weight], "name": name}], defaults)
        self.embedding = embedding

    @property
    def row_state(self) -> dict[str, Any]:
        return self.state[self.embedding.weight]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.embedding.pending = []

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        pair = self.embedding.sparse_grad()
        self.embedding.pending = []
        if pair is not None:
            rows, grad = pair
            weight = self.embedding.weight
            group = self.param_groups[0]
            current = weight.index_select(0, rows)
            if group["weight_decay"]:
                grad = grad.add(current, alpha=group["weight_decay"])
            weight.index_copy_(0, rows, self.update(rows, grad, current, group))
        return loss

    def update(self, rows: torch.Tensor, grad: torch.Tensor, current: torch.Tensor,
               group: dict[str, Any]) -> torch.Tensor:
        """The new values of the touched rows (U, dim)."""
        raise NotImplementedError


class RowSparseSGD(RowSparseOptimizer):
    def __init__(self, embedding: FeatureEmbedding, lr: float = 0.01, weight_decay: float = 0.0):
        super().__init__(embedding, {"lr": lr, "weight_decay": weight_decay})

    def update(self, rows: torch.Tensor, grad: torch.Tensor, current: torch.Tensor,
               group: dict[str, Any]) -> torch.Tensor:
        return current.add_(grad, alpha=-group["lr"])


class LazyAdam(RowSparseOptimizer):
    def __init__(self, embedding: FeatureEmbedding, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(embedding, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        weight = embedding.weight
        self.row_state.update({"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(weight),
                               "exp_avg_sq": torch.zeros_like(weight)})

    def update(self, rows: torch.Tensor, grad: torch.Tensor, current: torch.Tensor,
               group: dict[str, Any]) -> torch.Tensor:
        state, (beta1, beta2) = self.row_state, group["betas"]
        state["step"] += 1
        m = state["exp_avg"].index_select(0, rows)
        v = state["exp_avg_sq"].index_select(0, rows)
        m.add_(grad.sub(m).mul_(1 - beta1))  # the operation order of torch.optim.SparseAdam
        v.add_(grad.pow(2).sub_(v).mul_(1 - beta2))
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        t = float(state["step"])
        step_size = group["lr"] * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        return current.add_(m.div_(v.sqrt_().add_(group["eps"])).mul_(-step_size))


class RowwiseAdagrad(RowSparseOptimizer):
    def __init__(self, embedding: FeatureEmbedding, lr: float = 0.01, eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(embedding, {"lr": lr, "eps": eps, "weight_decay": weight_decay})
        self.row_state["sum"] = torch.zeros(embedding.weight.shape[0], dtype=embedding.weight.dtype)

    def update(self, rows: torch.Tensor, grad: torch.Tensor, current: torch.Tensor,
               group: dict[str, Any]) -> torch.Tensor:
        accumulated = self.row_state["sum"].index_select(0, rows).add_(grad.pow(2).mean(1))
        self.row_state["sum"].index_copy_(0, rows, accumulated)
        scale = accumulated.sqrt().add_(group["eps"]).reciprocal_().mul_(-group["lr"])
        return current.addcmul_(grad, scale.unsqueeze(1))


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.nn.Parameter], embedding: FeatureEmbedding | None,
                   max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (L2) over the dense gradients and, for a row-sparse table,
    its pending gradient rows (the norm of its dense gradient, which is zero off those rows)."""
    grads = [p.grad for p in params if p.grad is not None]
    pair = embedding.sparse_grad() if embedding is not None and embedding.sparse else None
    if pair is not None:
        grads.append(pair[1])
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grad in grads:
        grad.mul_(scale)
    return total
