"""The multi-task model: embeddings -> a sharing architecture -> one tower per task.

It computes and nothing else: no loss, optimizer or I/O. `forward` returns the user's task names
as keys; values are (B,) logits for binary tasks and (B,) standardized values for regression.
"""
from __future__ import annotations

import torch
from torch import nn

from multikpi.data.batches import Batch
from multikpi.models.blocks import FeatureEmbedding
from multikpi.models.protocols import SharingArchitecture
from multikpi.models.task_graph import TaskGraph


class MultiTaskModel(nn.Module):
    """Hard parameter sharing (lesson 1) and its relatives.

    embeddings: the fused categorical table, (B, F) -> (B, F*dim).
    shared:     the architecture; maps (B, F*dim + D) to one representation per task, dict[task, (B, H)].
    heads:      ModuleDict task -> TaskTower, taking (B, H + k) where k = number of upstream estimates.
    graph:      the order in which heads run and which estimates feed which tower.
    """

    output_offsets: torch.Tensor

    def __init__(self, embeddings: FeatureEmbedding, shared: SharingArchitecture, heads: nn.ModuleDict,
                 graph: TaskGraph):
        super().__init__()
        self.embeddings = embeddings
        self.shared: SharingArchitecture = shared
        self.heads = heads
        self.graph = graph
        # Added to each task's final output (a logit shift for binary tasks, a log-mean shift for
        # log-link regressions) after training so that the estimates are right on average
        # (training/centering.py); 0 while training. After the task graph, so that a downstream
        # tower always reads its upstream estimate as it was trained.
        self.register_buffer("output_offsets", torch.zeros(len(heads)))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Batch (categorical (B, F), dense (B, D)) -> dict task -> (B,) logit or standardized value.

        With `model.arch: esmm` there is one more key, the CVR tower's logit (see models/esmm.py)."""
        return self.forward_features(batch.categorical, batch.dense)

    def forward_features(self, categorical: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = torch.cat([self.embeddings(categorical), dense], dim=1)
        representations = self.shared(inputs)
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
