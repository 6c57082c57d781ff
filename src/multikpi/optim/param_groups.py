"""Per-subnet parameter groups (lesson 3): one learning rate for the shared subnet and its own for
each head. The best rate for one task can kill ReLUs or crawl on another, so every subnet is a
named group with its own optimizer settings.

Group names: `embeddings`, the architecture's shared subnets (`shared` for shared_bottom,
`experts` and `gates` for mmoe and ple, none for single_task and esmm), `heads.<task>` per task
(for single_task and esmm also the task's own MLP `shared.nets.<task>`, so that one group holds
all of a task's layers above the embeddings), `position` (the position tower, with `data.position`),
and `loss` (the combiner's learned weights). Groups left out of
`optim.groups` take `optim.default`; `embeddings` first falls back to the `shared` settings.
Every parameter must belong to exactly one group.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from multikpi.config.architectures import ARCHITECTURES, subnet_names
from multikpi.config.schema import GroupOptimizerSpec, OptimizerSpec, RunConfig
from multikpi.errors import ConfigError


@dataclass(frozen=True)
class ParamGroup:
    name: str
    params: tuple[nn.Parameter, ...]
    param_names: tuple[str, ...]
    settings: OptimizerSpec


def group_prefixes(config: RunConfig) -> dict[str, str]:
    """Parameter-name prefix -> group name, for the model plus the combiner (prefixed `loss.`)."""
    row = ARCHITECTURES[config.model.arch]
    prefixes = {"embeddings.": "embeddings", "loss.": "loss", "position_tower.": "position"}
    for subnet in row.subnets:
        prefixes[f"shared.{subnet}." if subnet != "shared" else "shared."] = subnet
    for task in config.tasks:
        prefixes[f"heads.{task}."] = f"heads.{task}"
        if row.per_task_nets:
            prefixes[f"shared.nets.{task}."] = f"heads.{task}"
    return prefixes


def assign_groups(named_params: list[tuple[str, nn.Parameter]], prefixes: dict[str, str]) -> dict[str, list[str]]:
    """Group name -> parameter names. Raises ConfigError naming any parameter matched by no
    group or by more than one."""
    groups: dict[str, list[str]] = {}
    problems = []
    for name, _ in named_params:
        matches = [group for prefix, group in prefixes.items() if name.startswith(prefix)]
        if len(matches) != 1:
            what = "no optimizer group" if not matches else f"several optimizer groups {matches}"
            problems.append(f"parameter {name!r} belongs to {what}; each parameter must belong to exactly one")
            continue
        groups.setdefault(matches[0], []).append(name)
    if problems:
        raise ConfigError(problems, source="optim")
    return groups


# The `loss` group's learning rate when `optim.groups.loss.lr` is not set. Adam moves a parameter
# by about lr per step, so at 1e-3 a log-variance needs a thousand steps to move one unit, and the
# learned weights barely leave their start in a normal run (on RF1: 0.574-0.583 for losses 20x
# apart). The start is the first batch's optimum (init auto), but on RF1 the losses then fall 100x
# (log-variances must travel about 5 units) within 200-500 steps: at 1e-2 they lagged so far that
# the learned sigma^2 ranked the tasks against their validation losses (Spearman -0.90); at 5e-2
# they reach their optimum in about 100 steps (Spearman 0.83; 1e-1: 0.67, noisier).
LOSS_LR = 5e-2


def resolve_settings(config: RunConfig, group: str) -> OptimizerSpec:
    """optim.default, overridden by the group's own fields (embeddings: by `shared` first; loss:
    lr LOSS_LR unless set, and no weight decay)."""
    layers = [config.optim.groups.get("shared")] if group == "embeddings" else []
    layers.append(config.optim.groups.get(group))
    settings = config.optim.default
    if group == "loss":
        settings = settings.model_copy(update={"lr": LOSS_LR})
    for layer in layers:
        if layer is not None:
            settings = _merge(settings, layer)
    if group == "loss":
        settings = settings.model_copy(update={"weight_decay": 0.0})
    return settings


def _merge(base: OptimizerSpec, override: GroupOptimizerSpec) -> OptimizerSpec:
    update = {k: v for k, v in override.model_dump(exclude_none=True).items()}
    if override.schedule is not None:
        update["schedule"] = override.schedule
    return base.model_copy(update=update)


def build_param_groups(config: RunConfig, model: nn.Module, combiner: nn.Module) -> list[ParamGroup]:
    """Every trainable parameter of model and combiner, in named groups with resolved settings."""
    # The embedding table is in its group even when row-sparse (it then has requires_grad False).
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or n == "embeddings.weight"]
    named += [(f"loss.{n}", p) for n, p in combiner.named_parameters() if p.requires_grad]
    by_name = dict(named)
    assigned = assign_groups(named, group_prefixes(config))
    return [
        ParamGroup(group, tuple(by_name[n] for n in names), tuple(names), resolve_settings(config, group))
        for group in subnet_names(config.model.arch, list(config.tasks)) + ["position"]
        if (names := assigned.get(group))
    ]
