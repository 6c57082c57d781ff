"""Estimates as features (lesson 4): one task's estimate feeds another task's tower.

With `stop_gradient` (the default) the upstream estimate is detached, so the downstream task's
loss never trains the upstream tower or anything below it through this edge: task A has its own
label, and task B must not bend A's estimate to suit B.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from multikpi.models.esmm import ctcvr_logit, cvr_output_key


@dataclass(frozen=True)
class Edge:
    upstream: str
    stop_gradient: bool
    as_prob: bool  # binary upstream: feed sigmoid(logit) instead of the logit


@dataclass(frozen=True)
class TaskGraph:
    """Tasks in topological order, each with the edges that feed its tower.

    `entire_space` maps ESMM's CTCVR task to its CTR task (`model.arch: esmm`): that task's output
    is logit(pCTR · pCVR) and its tower's own logit (pCVR) a side output (see models/esmm.py). The
    order puts the CTR task first."""

    order: tuple[str, ...]
    edges: dict[str, tuple[Edge, ...]]
    entire_space: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_edges(cls, tasks: Sequence[str], edges: Mapping[str, Sequence[Edge]],
                   entire_space: Mapping[str, str] | None = None) -> TaskGraph:
        """tasks: every task, in config order; edges: task -> the edges feeding its tower (tasks
        without any may be left out); entire_space: ESMM's CTCVR task -> its CTR task. The edges
        must not form a cycle (the config validation rejects one)."""
        entire_space = dict(entire_space or {})
        all_edges = {t: tuple(edges.get(t, ())) for t in tasks}
        upstream = {t: [e.upstream for e in all_edges[t]] + ([entire_space[t]] if t in entire_space else [])
                    for t in tasks}
        return cls(order=topological_order(list(tasks), upstream), edges=all_edges, entire_space=entire_space)

    def task_outputs(self, task: str, logit: torch.Tensor, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The outputs that `task`'s tower logit (B,) gives: {task: logit}, or for ESMM's CTCVR task
        {task: logit(σ(ctr)·σ(logit)), "<task>.given_<ctr>": logit}. `outputs` holds the CTR output."""
        ctr = self.entire_space.get(task)
        if ctr is None:
            return {task: logit}
        return {task: ctcvr_logit(outputs[ctr], logit), cvr_output_key(ctr, task): logit}

    def num_inputs(self, task: str) -> int:
        return len(self.edges[task])

    def upstream_features(self, task: str, outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, k) estimates of the k upstream tasks of `task`, or None when it has none.

        `outputs` holds the already computed (B,) outputs of the upstream tasks."""
        if not self.edges[task]:
            return None
        columns = []
        for edge in self.edges[task]:
            estimate = outputs[edge.upstream]
            if edge.stop_gradient:
                estimate = estimate.detach()
            columns.append(torch.sigmoid(estimate) if edge.as_prob else estimate)
        return torch.stack(columns, dim=1)


def topological_order(tasks: list[str], upstream: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """Tasks with every upstream task before the tasks it feeds; otherwise in the given order."""
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for parent in upstream.get(name, ()):
            visit(parent)
        order.append(name)

    for name in tasks:
        visit(name)
    return tuple(order)
