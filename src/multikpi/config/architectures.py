"""The architecture catalogue: one row per sharing architecture, with everything the config layer
must know about it. The builder of each row lives in `multikpi.models.build.BUILDERS` under the
same name (a test checks that the two key sets are equal), so adding an architecture is one row
here and one builder there.

    subnets        optimizer groups the architecture owns besides `embeddings`, `heads.<task>` and
                   `loss`; parameter `shared.<subnet>.*` (or `shared.*` for the subnet `shared`)
    per_task_nets  each task has its own MLP `shared.nets.<task>`, which joins the group `heads.<task>`
    model_keys     `model` keys only this architecture (and others listing them) reads; any other
                   architecture rejects a non-default value, and `compare` resets them
    embedding_copies_per_task
                   the embedding table is T times wider, one slice per task (nothing shared)
    shares_a_layer GradNorm needs a layer every task shares
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchitectureRow:
    subnets: tuple[str, ...]
    per_task_nets: bool = False
    model_keys: tuple[str, ...] = ()
    embedding_copies_per_task: bool = False
    shares_a_layer: bool = True


ARCHITECTURES: dict[str, ArchitectureRow] = {
    "shared_bottom": ArchitectureRow(subnets=("shared",)),
    "mmoe": ArchitectureRow(subnets=("experts", "gates"), model_keys=("num_experts", "gate_hidden")),
    "ple": ArchitectureRow(subnets=("experts", "gates"),
                           model_keys=("num_experts", "gate_hidden", "num_specific_experts", "num_levels")),
    "esmm": ArchitectureRow(subnets=(), per_task_nets=True, model_keys=("esmm",)),
    "single_task": ArchitectureRow(subnets=(), per_task_nets=True, embedding_copies_per_task=True,
                                   shares_a_layer=False),
}


def arch_model_keys() -> dict[str, tuple[str, ...]]:
    """`model` key -> the architectures that read it (keys every architecture reads are absent)."""
    keys: dict[str, list[str]] = {}
    for name, row in ARCHITECTURES.items():
        for key in row.model_keys:
            keys.setdefault(key, []).append(name)
    return {key: tuple(names) for key, names in keys.items()}


def subnet_names(arch: str, tasks: list[str]) -> list[str]:
    """The optimizer groups of a model: `embeddings`, the architecture's subnets, heads, `loss`."""
    return ["embeddings", *ARCHITECTURES[arch].subnets, *(f"heads.{t}" for t in tasks), "loss"]
