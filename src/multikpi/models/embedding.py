"""The fused embedding table, and its two ways of learning.

All categorical columns (and the binned dense columns) share one table, addressed through
per-column offsets: one gather in the forward pass, one gradient for the optimizer, which is what
makes a CPU epoch fast.

Backward, both ways: the (B·F, dim) output gradient is coalesced into the U distinct rows the batch
touched (`coalesce_rows`: one stable sort, then `embedding_bag(mode="sum")`, which sums each row's
gradients in the order they occur, i.e. bitwise what `index_add_` sums, 2-3x faster).

- dense (the default): the U rows are written into a fresh (rows, dim) gradient of the table
  parameter, and any torch optimizer updates the whole table (fused Adam reads and writes all of
  it, with its moments, every step).
- row-sparse (`enable_sparse_updates`, chosen by giving the `embeddings` optimizer group a sparse
  optimizer, optim/sparse.py): the table never gets a `.grad`; the backward keeps the (rows,
  grad_rows) pair, and the sparse optimizer's step reads and writes only those rows, so an update
  costs what the batch touched, not the table size (torchrec / FBGEMM's table-batched embeddings).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def coalesce_rows(rows: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rows (n,) int64 with repeats, grad (n, dim) -> (distinct rows ascending (U,), their summed
    gradients (U, dim)), each row's gradients summed in the order they occur."""
    sorted_rows, order = torch.sort(rows, stable=True)
    unique, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    starts = torch.zeros_like(counts)
    torch.cumsum(counts[:-1], 0, out=starts[1:])
    return unique, nn.functional.embedding_bag(order, grad, starts, mode="sum")


class _DenseGather(torch.autograd.Function):
    """weight[rows]; backward: the coalesced rows written into a dense zero gradient."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.table_shape = weight.shape
        return weight.index_select(0, rows.reshape(-1)).view(*rows.shape, weight.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (rows,) = ctx.saved_tensors
        unique, summed = coalesce_rows(rows.reshape(-1), grad.reshape(-1, ctx.table_shape[1]))
        grad_weight = torch.zeros(ctx.table_shape, dtype=grad.dtype, device=grad.device)
        grad_weight.index_copy_(0, unique, summed)
        return grad_weight, None


class _SparseGather(torch.autograd.Function):
    """weight[rows]; backward: the coalesced (rows, grad_rows) pair kept on the module."""

    @staticmethod
    def forward(ctx: Any, handle: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor,
                module: FeatureEmbedding) -> torch.Tensor:
        ctx.module = module
        ctx.save_for_backward(rows)
        return weight.index_select(0, rows.reshape(-1)).view(*rows.shape, weight.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None, None]:
        (rows,) = ctx.saved_tensors
        module = ctx.module
        grad = grad.reshape(-1, module.dim).to(module.weight.dtype)  # bf16 upstream grads sum in fp32
        module.pending.append(coalesce_rows(rows.reshape(-1), grad))
        return None, None, None, None


class FeatureEmbedding(nn.Module):
    """(B, F) int32 or int64 per-column indices -> (B, F * dim) float32 embeddings."""

    offsets: torch.Tensor

    def __init__(self, vocab_sizes: list[int], dim: int, init_std: float = 0.01):
        super().__init__()
        offsets = torch.tensor([0] + vocab_sizes[:-1], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.weight = nn.Parameter(torch.empty(max(sum(vocab_sizes), 1), dim))
        nn.init.normal_(self.weight, std=init_std)
        self.num_columns = len(vocab_sizes)
        self.dim = dim
        self.sparse = False
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # row-sparse: (rows, grad_rows) per backward
        self._handle = torch.empty(0, requires_grad=True)  # lets autograd reach the sparse gather

    @property
    def out_dim(self) -> int:
        return self.num_columns * self.dim

    def enable_sparse_updates(self) -> None:
        """Switch to row-sparse updates: the table gets no `.grad` (torch optimizers and clipping
        skip it); a row-sparse optimizer consumes `sparse_grad()` instead."""
        self.sparse = True
        self.weight.requires_grad_(False)

    def forward(self, categorical: torch.Tensor) -> torch.Tensor:
        rows = categorical.to(torch.int64) + self.offsets
        if torch.is_grad_enabled() and self.sparse:
            return _SparseGather.apply(self._handle, self.weight, rows, self).flatten(1)
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return _DenseGather.apply(self.weight, rows).flatten(1)
        return self.weight.index_select(0, rows.reshape(-1)).view(rows.shape[0], -1)

    def sparse_grad(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The gradient since the last step as one (rows (U,), grad_rows (U, dim)) pair, or None."""
        if not self.pending:
            return None
        if len(self.pending) > 1:  # several backward passes (accumulation): coalesce them together
            self.pending = [coalesce_rows(torch.cat([r for r, _ in self.pending]),
                                          torch.cat([g for _, g in self.pending]))]
        return self.pending[0]
