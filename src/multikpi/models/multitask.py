"""The multi-task model: embeddings -> a sharing architecture -> one tower per task.

It computes and nothing else: no loss, optimizer or I/O. `forward` returns the user's task names
as keys; values are (B,) logits for binary tasks and (B,) standardized values for regression.
With a position tower (`data.position`), `forward` (training) multiplies the binary tasks'
probabilities by the position's examination (models/position.py); `forward_features`
(prediction, serving) never runs it: position-free estimates.
"""
from __future__ import annotations

import torch
from torch import nn

from multikpi.data.batches import Batch
from multikpi.models.blocks import FeatureEmbedding
from multikpi.models.position import PositionTower
from multikpi.models.protocols import SharingArchitecture
from multikpi.models.task_graph import TaskGraph


class MultiTaskModel(nn.Module):
    """Hard parameter sharing (lesson 1) and its relatives.

    embeddings: the fused categorical table, (B, F) -> (B, F*dim).
    shared:     the architecture; maps (B, F*dim + D) to one representation per task, dict[task, (B, H)].
    heads:      ModuleDict task -> TaskTower, taking (B, H + k) where k = number of upstream estimates.
    graph:      the order in which heads run and which estimates feed which tower.
    position_tower: optional shallow tower over the logged position, used in `forward` only.
    input_padding: zero columns appended to [embeddings, dense] so that the architecture's input
      width is a multiple of 16 (models/build.py: INPUT_ALIGNMENT). They multiply weights that never
      change an output and get zero gradients.
    """

    output_offsets: torch.Tensor

    def __init__(self, embeddings: FeatureEmbedding, shared: SharingArchitecture, heads: nn.ModuleDict,
                 graph: TaskGraph, position_tower: PositionTower | None = None, num_dense: int = 0,
                 input_padding: int = 0):
        super().__init__()
        self.embeddings = embeddings
        self.shared: SharingArchitecture = shared
        self.heads = heads
        self.graph = graph
        self.position_tower = position_tower
        self.num_dense = num_dense
        self.input_padding = input_padding
        self._splits: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]] = {}
        # Added to each task's final output (a logit shift for binary tasks, a log-mean shift for
        # log-link regressions) after training so that the estimates are right on average
        # (training/centering.py); 0 while training. After the task graph, so that a downstream
        # tower always reads its upstream estimate as it was trained.
        self.register_buffer("output_offsets", torch.zeros(len(heads)))

    @property
    def input_dim(self) -> int:
        """The width of what the architecture reads: F*dim embeddings + D dense + the padding."""
        return self.embeddings.out_dim + self.num_dense + self.input_padding

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Batch (categorical (B, F), dense (B, D), position (B,) or None) -> dict task -> (B,) logit
        or standardized value; the binary logits at the batch's logged positions when the model has
        a position tower and the batch a position.

        With `model.arch: esmm` there is one more key, the CVR tower's logit (see models/esmm.py)."""
        if batch.position is None:
            return self.forward_features(batch.categorical, batch.dense)
        return self.forward_logged(batch.categorical, batch.dense, batch.position)

    def forward_logged(self, categorical: torch.Tensor, dense: torch.Tensor,
                       position: torch.Tensor) -> dict[str, torch.Tensor]:
        """Like `forward_features`, plus the position tower's offsets at the logged `position` (B,)."""
        outputs = self.forward_features(categorical, dense)
        if self.position_tower is None:
            return outputs
        return self.position_tower.add(outputs, position)

    def forward_features(self, categorical: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._towers(self.shared(self._inputs(categorical, dense)))

    def forward_request(self, categorical: torch.Tensor, dense: torch.Tensor, context_categorical: tuple[int, ...],
                        context_dense: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """`forward_features` of one ranking request's N rows, whose categorical columns
        `context_categorical` and dense columns `context_dense` (indices into `categorical` (N, F)
        and `dense` (N, D)) hold the same value in every row: the user and page-view features.

        The architecture's input layers are affine, W x + b = W_K x_K + (W_C x_C + b), so the
        context's share (C) is computed once and broadcast, and each row pays only for its own
        columns (K): on the feed benchmark 241 of the 448 inputs, 31% of SharedBottom's FLOPs
        per candidate. The same outputs as `forward_features` up to float rounding."""
        layers = self.shared.input_layers()
        if not layers or not (context_categorical or context_dense):
            return self.forward_features(categorical, dense)
        inputs = self._inputs(categorical, dense)
        own, shared = self._request_columns(context_categorical, context_dense, inputs.device)
        rows, context = inputs.index_select(1, own), inputs[:1].index_select(1, shared)
        return self._towers(self.shared.forward_projected([_split_affine(layer, rows, own, context, shared)
                                                           for layer in layers]))

    def _request_columns(self, context_categorical: tuple[int, ...], context_dense: tuple[int, ...],
                         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(the rows' own input positions, the context's), the padding in neither; cached per split."""
        key = (context_categorical, context_dense)
        if key not in self._splits:
            dim, width = self.embeddings.dim, self.embeddings.out_dim
            shared = [f * dim + j for f in context_categorical for j in range(dim)] + [width + d for d in context_dense]
            own = sorted(set(range(width + self.num_dense)) - set(shared))
            self._splits[key] = (torch.tensor(own), torch.tensor(sorted(shared)))
        own_index, shared_index = self._splits[key]
        return own_index.to(device), shared_index.to(device)

    def _inputs(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(B, input_dim): the embeddings, the dense inputs and the zero padding."""
        parts = [self.embeddings(categorical), dense]
        if self.input_padding:
            parts.append(dense.new_zeros(dense.shape[0], self.input_padding))
        return torch.cat(parts, dim=1)

    def _towers(self, representations: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The task graph's towers on the architecture's representations, then the output offsets."""
        outputs: dict[str, torch.Tensor] = {}
        for task in self.graph.order:
            features = representations[task]
            upstream = self.graph.upstream_features(task, outputs)
            if upstream is not None:
                features = torch.cat([features, upstream], dim=1)
            outputs.update(self.graph.task_outputs(task, self.heads[task](features), outputs))
        for i, task in enumerate(self.heads):
            outputs[task] = outputs[task] + self.output_offsets[i]
        return outputs

    def add_output_offsets(self, offsets: dict[str, float]) -> None:
        """Shift the named tasks' outputs by `offsets` more (the others are unchanged)."""
        with torch.no_grad():
            for i, task in enumerate(self.heads):
                if task in offsets:
                    self.output_offsets[i] += float(offsets[task])


def _split_affine(layer: nn.Module, rows: torch.Tensor, own: torch.Tensor, context: torch.Tensor,
                  shared: torch.Tensor) -> torch.Tensor:
    """An input layer's output on every row, from the rows' own columns (N, K) at positions `own`
    and the context's (1, C) at positions `shared`: (N, out) for an nn.Linear, (N, E, out) for a
    BatchedLinear ((E, in, out) weight)."""
    weight, bias = layer.weight, layer.bias
    assert isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)
    if isinstance(layer, nn.Linear):
        base = nn.functional.linear(context, weight.index_select(1, shared), bias)  # (1, out)
        return torch.addmm(base.to(rows.dtype), rows, weight.index_select(1, own).t())
    base = torch.einsum("bi,eio->beo", context, weight.index_select(1, shared)) + bias  # (1, E, out)
    return torch.einsum("bi,eio->beo", rows, weight.index_select(1, own)) + base.to(rows.dtype)
