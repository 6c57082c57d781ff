"""Config -> model. Architectures are chosen through a literal name -> builder dict."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from multikpi.config.schema import RunConfig
from multikpi.data.encoders import FeatureEncoder
from multikpi.models.architectures import SharedBottom
from multikpi.models.blocks import FeatureEmbedding
from multikpi.models.heads import TaskTower, logit_of_rate
from multikpi.models.multitask import MultiTaskModel
from multikpi.models.task_graph import TaskGraph


def _shared_bottom(config: RunConfig, in_dim: int) -> nn.Module:
    return SharedBottom(in_dim, list(config.model.shared), list(config.tasks), config.model.dropout)


ARCHITECTURES: dict[str, Callable[[RunConfig, int], nn.Module]] = {
    "shared_bottom": _shared_bottom,
}


def build_model(config: RunConfig, encoder: FeatureEncoder) -> MultiTaskModel:
    """The model for `config`, sized by the fitted `encoder` (vocabularies, dense inputs, base rates)."""
    spec = config.model
    if spec.arch not in ARCHITECTURES:
        raise NotImplementedError(f"model.arch {spec.arch!r} is not built yet; available: {sorted(ARCHITECTURES)}")
    embeddings = FeatureEmbedding(encoder.vocab_sizes, spec.embedding_dim)
    shared = ARCHITECTURES[spec.arch](config, embeddings.out_dim + encoder.num_dense_inputs)
    graph = TaskGraph.from_config(config)
    heads = nn.ModuleDict()
    for task in config.tasks:
        stats = encoder.labels[task]
        bias = logit_of_rate(stats.mean) if stats.kind == "binary" else 0.0
        heads[task] = TaskTower(shared.out_dim + graph.num_inputs(task), list(spec.tower), spec.dropout, bias)
    return MultiTaskModel(embeddings, shared, heads, graph)
