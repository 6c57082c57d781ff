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

import math
from dataclasses import dataclass

from torch import nn

from multikpi.config.architectures import ARCHITECTURES, subnet_names
from multikpi.config.schema import GroupOptimizerSpec, OptimizerSpec, RunConfig
from multikpi.errors import ConfigError


@dataclass(frozen=True)
class ParamGroup:
    """`settings` resolved: every field set, `lr` a number (never auto)."""

    name: str
    params: tuple[nn.Parameter, ...]
    param_names: tuple[str, ...]
    settings: OptimizerSpec

    @property
    def lr(self) -> float:
        return float(self.settings.lr)


# `optim.default.lr: auto`. Adam's step is about lr whatever the batch, so a larger batch, which
# averages away gradient noise, takes the same number of equally small steps per example seen and
# needs more epochs: the square-root rule (Malladi, Lyu, Panigrahi & Arora, NeurIPS 2022, "On the
# SDEs and scaling rules for adaptive gradient algorithms") keeps Adam's dynamics when the batch
# grows k-fold by raising lr sqrt(k)-fold. The reference, 1e-3 at 512, is the rate that trains the
# small datasets (their auto batch is 256-512, so they keep it). On the 1M-row feed (batch 4096)
# the rule gives 2.8e-3; one epoch of defaults there gave click test AUC 0.7653 at 1e-3, 0.7704 at
# 2e-3 and 0.7712 at 4e-3 (docs/defaults.md).
AUTO_LR = 1e-3
AUTO_LR_BATCH = 512


def auto_learning_rate(batch_size: int) -> float:
    """AUTO_LR · sqrt(batch_size / AUTO_LR_BATCH) above the reference batch, AUTO_LR at or below it."""
    return AUTO_LR * math.sqrt(max(batch_size, AUTO_LR_BATCH) / AUTO_LR_BATCH)


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


def resolve_settings(config: RunConfig, group: str, batch_size: int = AUTO_LR_BATCH) -> OptimizerSpec:
    """optim.default, overridden by the group's own fields (embeddings: by `shared` first; loss:
    lr LOSS_LR unless set, and no weight decay); an `auto` lr from `batch_size`."""
    layers = [config.optim.groups.get("shared")] if group == "embeddings" else []
    layers.append(config.optim.groups.get(group))
    settings = config.optim.default
    if settings.lr == "auto":
        settings = settings.model_copy(update={"lr": auto_learning_rate(batch_size)})
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


def build_param_groups(config: RunConfig, model: nn.Module, combiner: nn.Module,
                       batch_size: int = AUTO_LR_BATCH) -> list[ParamGroup]:
    """Every trainable parameter of model and combiner, in named groups with resolved settings
    (`batch_size`: the training batch, which `optim.default.lr: auto` scales with)."""
    # The embedding table is in its group even when row-sparse (it then has requires_grad False).
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or n == "embeddings.weight"]
    named += [(f"loss.{n}", p) for n, p in combiner.named_parameters() if p.requires_grad]
    by_name = dict(named)
    assigned = assign_groups(named, group_prefixes(config))
    return [
        ParamGroup(group, tuple(by_name[n] for n in names), tuple(names), resolve_settings(config, group, batch_size))
        for group in subnet_names(config.model.arch, list(config.tasks)) + ["position"]
        if (names := assigned.get(group))
    ]
