"""Model specs -> model. Architectures are chosen through the literal name -> builder dict
`BUILDERS`, whose keys are those of the catalogue `multikpi.config.architectures.ARCHITECTURES`."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from multikpi.config.architectures import ARCHITECTURES
from multikpi.config.schema import ModelSpec, TaskSpec
from multikpi.data.encoders import FeatureEncoder
from multikpi.models.architectures import SeparateNets, SharedBottom, task_columns
from multikpi.models.blocks import FeatureEmbedding, mlp
from multikpi.models.experts import PLE, ExpertBank, Gate, GateBank, MMoE
from multikpi.models.heads import TaskTower, logit_of_rate
from multikpi.models.multitask import MultiTaskModel
from multikpi.models.position import PositionTower
from multikpi.models.protocols import SharingArchitecture
from multikpi.models.task_graph import Edge, TaskGraph

# The input width is rounded up to a multiple of this with zero columns (nanoGPT pads its
# vocabulary to a multiple of 64 for the same reason): the first layer's input-gradient GEMM
# writes an (B, in_dim) output, and at an odd width such as the feed benchmark's 433 MKL's sgemm
# runs at about half speed (4096 x 256 @ 256 x 433: 10.9 ms; x 432: 5.4 ms; on 2 AVX2 cores).
INPUT_ALIGNMENT = 16


@dataclass(frozen=True)
class ArchInputs:
    """What an architecture reads: the embeddings (B, F * width), then `num_dense` dense inputs,
    then `padding` zero columns that round the width up to a multiple of INPUT_ALIGNMENT."""

    embeddings: FeatureEmbedding
    num_dense: int

    @property
    def padding(self) -> int:
        return -(self.embeddings.out_dim + self.num_dense) % INPUT_ALIGNMENT

    @property
    def dim(self) -> int:
        return self.embeddings.out_dim + self.num_dense + self.padding


def _shared_bottom(spec: ModelSpec, tasks: list[str], inputs: ArchInputs) -> SharingArchitecture:
    return SharedBottom(inputs.dim, list(spec.shared), tasks, spec.dropout)


def _mmoe(spec: ModelSpec, tasks: list[str], inputs: ArchInputs) -> SharingArchitecture:
    experts = ExpertBank(inputs.dim, list(spec.shared), spec.num_experts, spec.dropout)
    gates = GateBank(len(tasks), inputs.dim, list(spec.gate_hidden), spec.num_experts)
    return MMoE(experts=experts, gates=gates, tasks=tasks)


def _ple(spec: ModelSpec, tasks: list[str], inputs: ArchInputs) -> SharingArchitecture:
    hidden, gate_hidden = list(spec.shared), list(spec.gate_hidden)
    experts, gates, in_dim = nn.ModuleList(), nn.ModuleList(), inputs.dim
    for level in range(spec.num_levels):
        specific = ExpertBank(in_dim, hidden, len(tasks) * spec.num_specific_experts, spec.dropout)
        experts.append(nn.ModuleDict({"shared": ExpertBank(in_dim, hidden, spec.num_experts, spec.dropout),
                                      "specific": specific}))
        level_gates = nn.ModuleDict(
            {"tasks": GateBank(len(tasks), in_dim, gate_hidden, spec.num_specific_experts + spec.num_experts)})
        if level < spec.num_levels - 1:  # the last level has no shared output
            level_gates["shared"] = Gate(in_dim, gate_hidden, len(tasks) * spec.num_specific_experts + spec.num_experts)
        gates.append(level_gates)
        in_dim = hidden[-1]
    return PLE(experts=experts, gates=gates, tasks=tasks)


def _task_nets(spec: ModelSpec, tasks: list[str], in_dim: int) -> nn.ModuleDict:
    return nn.ModuleDict({t: mlp(in_dim, list(spec.shared), spec.dropout) for t in tasks})


def _single_task(spec: ModelSpec, tasks: list[str], inputs: ArchInputs) -> SharingArchitecture:
    columns = task_columns(inputs.embeddings.num_columns, spec.embedding_dim, inputs.num_dense, len(tasks))
    return SeparateNets(nets=_task_nets(spec, tasks, columns.shape[1]), out_dim=spec.shared[-1],
                        shared_layer=inputs.embeddings, columns=columns)


def _esmm(spec: ModelSpec, tasks: list[str], inputs: ArchInputs) -> SharingArchitecture:
    return SeparateNets(nets=_task_nets(spec, tasks, inputs.dim), out_dim=spec.shared[-1],
                        shared_layer=inputs.embeddings)


BUILDERS: dict[str, Callable[[ModelSpec, list[str], ArchInputs], SharingArchitecture]] = {
    "shared_bottom": _shared_bottom,
    "mmoe": _mmoe,
    "ple": _ple,
    "esmm": _esmm,
    "single_task": _single_task,
}


def task_graph(spec: ModelSpec, tasks: Mapping[str, TaskSpec]) -> TaskGraph:
    """The `inputs_from` edges of the tasks, and ESMM's CTCVR -> CTR pair."""
    edges = {name: [Edge(up, task.stop_gradient, tasks[up].kind == "binary" and task.upstream_as == "prob")
                    for up in task.inputs_from] for name, task in tasks.items()}
    entire_space = {spec.esmm.ctcvr: spec.esmm.ctr} if spec.arch == "esmm" and spec.esmm is not None else {}
    return TaskGraph.from_edges(list(tasks), edges, entire_space)


def build_model(spec: ModelSpec, tasks: Mapping[str, TaskSpec], encoder: FeatureEncoder) -> MultiTaskModel:
    """The model `spec` describes for `tasks`, sized by the fitted `encoder` (vocabularies, dense
    inputs, base rates)."""
    names = list(tasks)
    # single_task: one embedding slice per task (T times wider table), so that no weight is shared.
    copies = len(names) if ARCHITECTURES[spec.arch].embedding_copies_per_task else 1
    embeddings = FeatureEmbedding(encoder.vocab_sizes, spec.embedding_dim * copies)
    inputs = ArchInputs(embeddings, encoder.num_dense_inputs)
    shared = BUILDERS[spec.arch](spec, names, inputs)
    graph = task_graph(spec, tasks)
    heads = nn.ModuleDict()
    for task in names:
        heads[task] = TaskTower(shared.out_dim + graph.num_inputs(task), list(spec.tower), spec.dropout,
                                _output_bias(task, encoder, graph))
    binary = [t for t in names if tasks[t].kind == "binary"]
    tower = PositionTower(encoder.num_positions, binary) if encoder.position is not None and binary else None
    return MultiTaskModel(embeddings, shared, heads, graph, tower, num_dense=inputs.num_dense,
                          input_padding=inputs.padding)


def _output_bias(task: str, encoder: FeatureEncoder, graph: TaskGraph) -> float:
    """logit(base rate) for a binary task, log(mean label) for a log-link regression, 0 for mse
    regression (the target is standardized). ESMM's CVR tower (the CTCVR task's
    tower) starts at logit(rate of CTCVR / rate of CTR), so that pCTR * pCVR starts at the CTCVR rate."""
    stats = encoder.labels[task]
    if stats.log_link:  # poisson / tweedie: the output is log E[y]
        return math.log(max(stats.mean, 1e-8))
    if stats.kind != "binary":
        return 0.0
    ctr = graph.entire_space.get(task)
    if ctr is None:
        return logit_of_rate(stats.mean)
    return logit_of_rate(stats.mean / max(encoder.labels[ctr].mean, 1e-12))
