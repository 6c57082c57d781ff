"""Training on several processes with torch.distributed (`torchrun ... -m multikpi train CONFIG`).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `distributed_context`
joins the process group (gloo on CPU, nccl on CUDA) when WORLD_SIZE > 1, or uses one the caller
already created. What each part of a run does on several processes:

- data: every rank reads its own contiguous block of the dataset's row intervals (data/streaming.py),
  so a step's global batch is the same rows for any number of processes that divides `data.shards`;
- the model: DistributedDataParallel wraps the training module (model, losses, combiner: learned
  loss weights included). `find_unused_parameters=True`, because a task without a label anywhere
  in a global batch leaves its tower out of that step on every rank (as on one process); its
  once-per-process warning "did not find any unused parameters" is a false positive here. Buffers
  (combiner state) are not re-broadcast each step: every rank updates them from the same values;
- losses: each task's loss is the mean over its labelled rows of the *global* batch, not a mean of
  per-rank means: the per-task weight sums are all-reduced first (`GlobalTaskLosses`), so uneven
  last batches, empty batches and batches where a rank has no label for a task are all exact;
- GradNorm all-reduces its per-task gradients, DWA and uncertainty weighting see the global losses:
  every rank holds the same loss weights;
- metrics: accumulators gathered to rank 0 and merged (eval/streamed.py), then broadcast;
- rank 0 alone takes the run directory's lock, writes checkpoints and the run, and reads the
  checkpoint to resume (its bytes are broadcast), so only rank 0's machine needs the run directory.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from multikpi.data.batches import Batch
from multikpi.errors import ConfigError, MultiKPIError, PeerFailed
from multikpi.losses.combine import GradNorm
from multikpi.losses.task_losses import task_loss_sums
from multikpi.models.multitask import MultiTaskModel
from multikpi.training.module import MultiTaskTraining, StepOutput, TrainingModule

T = TypeVar("T")
TIMEOUT = timedelta(minutes=60)  # a collective waits this long (rank 0 evaluates and writes alone)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank, world size, local rank (the GPU index on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def gather(self, value: T) -> list[T] | None:
        """Every rank's `value` on rank 0 (None elsewhere)."""
        if not self.active:
            return [value]
        out: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(value, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def on_writer(self, job: Callable[[], T]) -> T | None:
        """Run `job` on rank 0 only. If it raises a MultiKPIError, every other rank raises PeerFailed
        (the CLI prints rank 0's line once), instead of waiting at its next collective."""
        if not self.active:
            return job()
        result, failure = None, None
        if self.is_writer:
            try:
                result = job()
            except MultiKPIError as err:
                failure = str(err)
                self.broadcast(failure)
                raise
        failure = self.broadcast(failure)
        if failure is not None:
            raise PeerFailed(f"rank 0 failed: {failure}")
        return result


@contextlib.contextmanager
def distributed_context(device: str) -> Iterator[DistContext]:
    """The DistContext of this process: single (WORLD_SIZE unset or 1), or a member of the process
    group torchrun describes (joined here and left at the end) or the caller created."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_available() or (world_size <= 1 and not dist.is_initialized()):
        yield DistContext()
        return
    joined = not dist.is_initialized()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if joined:
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=TIMEOUT)
    context = DistContext(dist.get_rank(), dist.get_world_size(), local_rank,
                          int(os.environ.get("LOCAL_WORLD_SIZE", str(dist.get_world_size()))))
    try:
        yield context
    finally:
        if joined:
            dist.destroy_process_group()


def check_shards(shards: int, world_size: int) -> None:
    """`data.shards` must be a multiple of the number of processes."""
    if shards % world_size:
        raise ConfigError([f"`data.shards` must be a multiple of the number of processes ({world_size}): each "
                           f"process streams the same number of row intervals. Got {shards}"], source="distributed")


class GlobalTaskLosses:
    """Per-task losses over the global batch of all processes (a MultiTaskTraining.loss_reduction).

    With s_r = Σ w·loss and n_r = Σ w over rank r's labelled rows and D = Σ_r n_r, rank r returns
    L = W·s_r/D + (Σ_r s_r/D − W·s_r/D).detach(): its value is the global mean Σ_r s_r / D on every
    rank (so combiners that read loss values — uncertainty's init, DWA, GradNorm's ratios — agree),
    and DDP's gradient average (1/W)·Σ_r ∇(W·s_r/D) = ∇(Σ_r s_r)/D is the global mean's gradient.
    A task with D = 0 is absent on every rank, as on one process."""

    def __init__(self, world_size: int):
        self.world_size = world_size

    def __call__(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, kinds: Mapping[str, str],
                 weights: torch.Tensor | None, tweedie_power: Mapping[str, float]) -> dict[str, torch.Tensor]:
        sums, totals = task_loss_sums(outputs, labels, kinds, weights, tweedie_power)
        pooled = torch.cat([totals, sums.detach()]).double()
        dist.all_reduce(pooled)
        count = len(kinds)
        global_totals, global_sums = pooled[:count], pooled[count:]
        losses = {}
        for i, task in enumerate(kinds):
            if float(global_totals[i]) <= 0:
                continue
            local = sums[i] * (self.world_size / float(global_totals[i]))
            value = (global_sums[i] / global_totals[i]).to(local.dtype)
            losses[task] = local + (value - local).detach()
        return losses


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over the processes (a new tensor)."""
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


class DataParallelTraining(nn.Module):
    """The training module under DistributedDataParallel, with the `model` train_step clips."""

    def __init__(self, ddp: DistributedDataParallel):
        super().__init__()
        self.ddp = ddp

    @property
    def model(self) -> MultiTaskModel:
        inner: MultiTaskTraining = self.ddp.module
        return inner.model

    def forward(self, batch: Batch) -> StepOutput:
        return self.ddp(batch)


def data_parallel(training: MultiTaskTraining, context: DistContext) -> TrainingModule:
    """`training` itself on one process; under DDP, wrapped, with global losses and (GradNorm)
    averaged gradients."""
    if not context.active:
        return training
    if training.model.embeddings.sparse:
        raise ConfigError(["`optim.groups.embeddings.name` lazy_adam / rowwise_adagrad / sparse_sgd update the "
                           "embedding table outside autograd, which DistributedDataParallel does not synchronise; "
                           "under torchrun use a dense optimizer (adam, adamw, sgd, adagrad) for the embeddings"],
                          source="distributed")
    training.loss_reduction = GlobalTaskLosses(context.world_size)
    if isinstance(training.combiner, GradNorm):
        training.combiner.average_gradient = all_reduce_mean
    device = next(training.parameters()).device
    ddp = DistributedDataParallel(training, device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=True, forward_sync_buffers=False)
    return DataParallelTraining(ddp)


def broadcast_bytes(context: DistContext, read: Callable[[], bytes]) -> bytes:
    """`read()` on rank 0 (e.g. a checkpoint file), its bytes on every rank."""
    return context.broadcast(context.on_writer(read))


def rng_states(context: DistContext) -> list[torch.Tensor]:
    """Every rank's torch RNG state, in rank order (a checkpoint keeps them all)."""
    return context.all_gather(torch.get_rng_state())
