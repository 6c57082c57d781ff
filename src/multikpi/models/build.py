"""Config -> model. Architectures are chosen through a literal name -> builder dict."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from multikpi.config.schema import RunConfig
from multikpi.data.encoders import FeatureEncoder
from multikpi.models.architectures import SeparateNets, SharedBottom, task_columns
from multikpi.models.blocks import FeatureEmbedding, mlp
from multikpi.models.experts import MMoE, PLE, ExpertBank, Gate
from multikpi.models.heads import TaskTower, logit_of_rate
from multikpi.models.multitask import MultiTaskModel
from multikpi.models.task_graph import TaskGraph


@dataclass(frozen=True)
class ArchInputs:
    """What an architecture reads: the embeddings (B, F * width), then `num_dense` dense inputs."""

    embeddings: FeatureEmbedding
    num_dense: int

    @property
    def dim(self) -> int:
        return self.embeddings.out_dim + self.num_dense


def _shared_bottom(config: RunConfig, inputs: ArchInputs) -> nn.Module:
    return SharedBottom(inputs.dim, list(config.model.shared), list(config.tasks), config.model.dropout)


def _mmoe(config: RunConfig, inputs: ArchInputs) -> nn.Module:
    spec = config.model
    experts = ExpertBank(inputs.dim, list(spec.shared), spec.num_experts, spec.dropout)
    gates = nn.ModuleDict({t: Gate(inputs.dim, list(spec.gate_hidden), spec.num_experts) for t in config.tasks})
    return MMoE(experts=experts, gates=gates)


def _ple(config: RunConfig, inputs: ArchInputs) -> nn.Module:
    spec, tasks = config.model, list(config.tasks)
    hidden, gate_hidden = list(spec.shared), list(spec.gate_hidden)
    experts, gates, in_dim = nn.ModuleList(), nn.ModuleList(), inputs.dim
    for level in range(spec.num_levels):
        specific = nn.ModuleDict(
            {t: ExpertBank(in_dim, hidden, spec.num_specific_experts, spec.dropout) for t in tasks})
        experts.append(nn.ModuleDict({"shared": ExpertBank(in_dim, hidden, spec.num_experts, spec.dropout),
                                      "specific": specific}))
        level_gates = nn.ModuleDict({"tasks": nn.ModuleDict(
            {t: Gate(in_dim, gate_hidden, spec.num_specific_experts + spec.num_experts) for t in tasks})})
        if level < spec.num_levels - 1:  # the last level has no shared output
            level_gates["shared"] = Gate(in_dim, gate_hidden, len(tasks) * spec.num_specific_experts + spec.num_experts)
        gates.append(level_gates)
        in_dim = hidden[-1]
    return PLE(experts=experts, gates=gates)


def _task_nets(config: RunConfig, in_dim: int) -> nn.ModuleDict:
    return nn.ModuleDict({t: mlp(in_dim, list(config.model.shared), config.model.dropout) for t in config.tasks})


def _single_task(config: RunConfig, inputs: ArchInputs) -> nn.Module:
    columns = task_columns(inputs.embeddings.num_columns, config.model.embedding_dim, inputs.num_dense,
                           len(config.tasks))
    return SeparateNets(nets=_task_nets(config, columns.shape[1]), out_dim=config.model.shared[-1],
                        shared_layer=inputs.embeddings, columns=columns)


def _esmm(config: RunConfig, inputs: ArchInputs) -> nn.Module:
    return SeparateNets(nets=_task_nets(config, inputs.dim), out_dim=config.model.shared[-1],
                        shared_layer=inputs.embeddings)


ARCHITECTURES: dict[str, Callable[[RunConfig, ArchInputs], nn.Module]] = {
    "shared_bottom": _shared_bottom,
    "mmoe": _mmoe,
    "ple": _ple,
    "esmm": _esmm,
    "single_task": _single_task,
}


def build_model(config: RunConfig, encoder: FeatureEncoder) -> MultiTaskModel:
    """The model for `config`, sized by the fitted `encoder` (vocabularies, dense inputs, base rates)."""
    spec = config.model
    if spec.arch not in ARCHITECTURES:
        raise NotImplementedError(f"model.arch {spec.arch!r} is not built yet; available: {sorted(ARCHITECTURES)}")
    # single_task: one embedding slice per task (T times wider table), so that no weight is shared.
    copies = len(config.tasks) if spec.arch == "single_task" else 1
    embeddings = FeatureEmbedding(encoder.vocab_sizes, spec.embedding_dim * copies)
    shared = ARCHITECTURES[spec.arch](config, ArchInputs(embeddings, encoder.num_dense_inputs))
    graph = TaskGraph.from_config(config)
    heads = nn.ModuleDict()
    for task in config.tasks:
        heads[task] = TaskTower(shared.out_dim + graph.num_inputs(task), list(spec.tower), spec.dropout,
                                _output_bias(task, encoder, graph))
    return MultiTaskModel(embeddings, shared, heads, graph)


def _output_bias(task: str, encoder: FeatureEncoder, graph: TaskGraph) -> float:
    """logit(base rate) for a binary task, 0 for regression. ESMM's CVR tower (the CTCVR task's
    tower) starts at logit(rate of CTCVR / rate of CTR), so that pCTR * pCVR starts at the CTCVR rate."""
    stats = encoder.labels[task]
    if stats.kind != "binary":
        return 0.0
    ctr = graph.entire_space.get(task)
    if ctr is None:
        return logit_of_rate(stats.mean)
    return logit_of_rate(stats.mean / max(encoder.labels[ctr].mean, 1e-12))
