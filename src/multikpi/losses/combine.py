"""Combining per-task losses into the one scalar that is back-propagated (lesson 2).

A plain sum lets the task with the largest loss scale dominate the shared layers; fixed weights
must be tuned by hand; uncertainty weighting learns the weights. Every combiner is an nn.Module:

    forward(losses: dict[task, scalar Tensor]) -> scalar Tensor   (never calls backward)
    weights() -> dict[task, dict[name, float]]                     (effective weights, for logs)
    end_epoch() -> None                                            (only DWA uses it)

Tasks absent from `losses` (no labelled row in the batch) contribute nothing, so their learned
parameters receive no gradient at all (grad stays None and the optimizer skips them).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import nn

from multikpi.config.schema import RunConfig


class LossCombiner(Protocol):
    """The interface of every combiner (checked by mypy), with the shared no-op `end_epoch`."""

    def __call__(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """task -> scalar loss (only the tasks labelled in the batch) -> the scalar to back-propagate."""
        ...

    def weights(self) -> dict[str, dict[str, float]]:
        """task -> effective weights (and the learned values behind them), for logs."""
        ...

    def end_epoch(self) -> None:
        """Called after every epoch (DWA starts a new period); nothing by default."""
        return None


class SumLoss(nn.Module, LossCombiner):
    """L = Σ_t L_t."""

    def __init__(self, tasks: list[str]):
        super().__init__()
        self.tasks = list(tasks)

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(losses.values())).sum()

    def weights(self) -> dict[str, dict[str, float]]:
        return {t: {"weight": 1.0} for t in self.tasks}


class WeightedLoss(nn.Module, LossCombiner):
    """L = Σ_t w_t · L_t with fixed, hand-set weights w_t."""

    def __init__(self, task_weights: dict[str, float]):
        super().__init__()
        self.task_weights = dict(task_weights)

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.task_weights[t] * loss for t, loss in losses.items()]).sum()

    def weights(self) -> dict[str, dict[str, float]]:
        return {t: {"weight": w} for t, w in self.task_weights.items()}


class UncertaintyWeighting(nn.Module, LossCombiner):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    One learned log-variance s_t = log σ_t² per task, initialised to `init`.

    form "kendall" (the paper's likelihoods, eqs. 7 and 10):
        regression     ½·exp(−s_t)·L_t + ½·s_t      (= L/(2σ²) + log σ)
        classification   exp(−s_t)·L_t + ½·s_t      (≈ L/σ² + log σ)
    form "plain" (the paper's toy code, yaringal/multi-task-learning-example):
        every task       exp(−s_t)·L_t + s_t

    For a fixed network the optimum of the regression term is s_t = log L_t (σ² = the mean squared
    residual). Regression losses here are on the standardized target, so σ is in standard units.

    update "gradient" (the paper): s_t is a parameter, learned by the optimizer's `loss` group.
    update "closed_form" (the config's default): s_t is set before every training step to the optimum of its
    term for the current network, estimated by an exponential moving average of the task's loss:
        m_t ← decay·m_t + (1 − decay)·L_t   (m_t starts at the first loss)
        s_t = log m_t,  or log 2·m_t for kendall's classification term
    This is coordinate descent on s, exact for the network of the last ~1/(1 − decay) steps. A
    gradient step on s lags behind a falling loss (on RF1 the losses fall 100x within a few hundred
    steps), so the learned σ² end up ranking the tasks by where their losses were, not where they
    are; the closed form tracks them. The network's gradient is then Σ_t c_t·∇L_t / m_t: each task
    is divided by its own recent loss, the scale-free weighting the paper's optimum implies.
    """

    pending_init: torch.Tensor
    loss_average: torch.Tensor

    def __init__(self, kinds: Mapping[str, str], form: str = "kendall", init: float | str = 0.0,
                 update: str = "gradient", decay: float = 0.98):
        super().__init__()
        self.kinds = dict(kinds)
        self.form = form
        self.closed_form = update == "closed_form"
        self.decay = decay
        start = 0.0 if init == "auto" else float(init)
        # One scalar parameter per task, so that a task missing from a batch gets grad None. In
        # closed form they are set, not learned: requires_grad False keeps them out of the optimizer.
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.tensor(start), requires_grad=not self.closed_form)
                                          for t in kinds})
        # init "auto": each s starts at the optimum for the task's first loss (a buffer: checkpointed).
        self.register_buffer("pending_init", torch.full((len(kinds),), init == "auto"))
        # closed form: the moving average m_t of each task's loss (NaN until its first loss; checkpointed)
        self.register_buffer("loss_average", torch.full((len(kinds),), float("nan"), dtype=torch.float64))
        self.tasks = list(kinds)

    def optimum(self, task: str, loss: float) -> float:
        """argmin_s of the task's term for a fixed loss L: log L, or log 2L for kendall's classification term."""
        factor = 2.0 if self.form == "kendall" and self.kinds[task] != "regression" else 1.0
        return math.log(max(factor * loss, 1e-12))

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.closed_form and self.training:
            self._closed_form_step(losses)
        terms = []
        for task, loss in losses.items():
            s = self.log_vars[task]
            index = self.tasks.index(task)
            if bool(self.pending_init[index]) and not self.closed_form:
                with torch.no_grad():
                    s.fill_(self.optimum(task, float(loss.detach())))
                    self.pending_init[index] = False
            if self.form == "plain":
                terms.append(torch.exp(-s) * loss + s)
            elif self.kinds[task] == "regression":
                terms.append(0.5 * torch.exp(-s) * loss + 0.5 * s)
            else:
                terms.append(torch.exp(-s) * loss + 0.5 * s)
        return torch.stack(terms).sum()

    @torch.no_grad()
    def _closed_form_step(self, losses: dict[str, torch.Tensor]) -> None:
        """m_t ← decay·m_t + (1 − decay)·L_t, s_t = argmin_s of the term at m_t (tasks in the batch only)."""
        for task, loss in losses.items():
            index = self.tasks.index(task)
            value = float(loss.detach())
            previous = float(self.loss_average[index])
            average = value if math.isnan(previous) else self.decay * previous + (1.0 - self.decay) * value
            self.loss_average[index] = average
            self.log_vars[task].fill_(self.optimum(task, average))
            self.pending_init[index] = False

    def weights(self) -> dict[str, dict[str, float]]:
        out = {}
        for task, param in self.log_vars.items():
            s = float(param.detach())
            scale = 0.5 if self.form == "kendall" and self.kinds[task] == "regression" else 1.0
            out[task] = {"weight": scale * math.exp(-s), "exp_neg_s": math.exp(-s),
                         "sigma": math.exp(0.5 * s), "log_var": s}
        return out


class GradNorm(nn.Module, LossCombiner):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

    Learned weights w_t (Σ w_t = T). The network is trained on Σ_t w_t·L_t; the weights are trained on
        L_grad = Σ_t | G_t − mean_j(G_j) · r_t^α |,   G_t = ‖∇_W w_t·L_t‖₂,
        r_t = L̃_t / mean_j(L̃_j),   L̃_t = L_t / L_t(0),
    where W is the last shared layer's weight and the target mean(G)·r^α is a constant. Both terms
    are returned in one scalar: the first is built with w detached (so it only trains the network),
    the second with the gradient norms detached (so it only trains w). The weights are renormalized
    to sum to T before each use.
    """

    initial_losses: torch.Tensor

    def __init__(self, tasks: list[str], shared_weight: nn.Parameter, alpha: float = 1.5):
        super().__init__()
        self.task_weights = nn.ParameterDict({t: nn.Parameter(torch.tensor(1.0)) for t in tasks})
        self.shared_weight = [shared_weight]  # a list: not registered as this module's parameter
        self.alpha = alpha
        self.register_buffer("initial_losses", torch.full((len(tasks),), float("nan")))
        self.tasks = list(tasks)
        # Under DDP (training/distributed.py): (T, *W.shape) per-task gradients -> their mean over
        # the processes, so that every process computes the same G_t, hence the same weights.
        self.average_gradient: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        self._renormalize()
        present = list(losses)
        index = [self.tasks.index(t) for t in present]
        current = torch.stack([losses[t].detach() for t in present])
        first = torch.isnan(self.initial_losses[index])
        self.initial_losses[index] = torch.where(first, current, self.initial_losses[index])
        weights = torch.stack([self.task_weights[t] for t in present])
        if self.average_gradient is None:
            norms = torch.stack([
                torch.autograd.grad(losses[t], self.shared_weight[0], retain_graph=True)[0].norm() for t in present
            ])
        else:  # distributed: ‖∇_W L_t‖ of the global loss, from the mean of every process's gradient
            grads = torch.stack([torch.autograd.grad(losses[t], self.shared_weight[0], retain_graph=True)[0]
                                 for t in present])
            norms = self.average_gradient(grads).flatten(1).norm(dim=1)
        grad_norms = weights * norms  # G_t, differentiable in w only
        ratios = current / self.initial_losses[index].clamp_min(1e-12)
        relative = ratios / ratios.mean()
        target = (grad_norms.mean() * relative.pow(self.alpha)).detach()
        balance = (grad_norms - target).abs().sum()
        network = (weights.detach() * torch.stack([losses[t] for t in present])).sum()
        return network + balance

    @torch.no_grad()
    def _renormalize(self) -> None:
        total = sum(float(w.clamp_(min=1e-4)) for w in self.task_weights.values())
        for w in self.task_weights.values():
            w.mul_(len(self.tasks) / total)

    def weights(self) -> dict[str, dict[str, float]]:
        """The weights the next step uses: renormalized to sum to T (the last optimizer step moved them)."""
        raw = {t: max(float(w.detach()), 1e-4) for t, w in self.task_weights.items()}
        total = sum(raw.values())
        return {t: {"weight": len(raw) * w / total} for t, w in raw.items()}


class DynamicWeightAverage(nn.Module, LossCombiner):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

        w_t(k) = T · exp(r_t(k−1)/τ) / Σ_j exp(r_j(k−1)/τ),   r_t(k−1) = L̄_t(k−1) / L̄_t(k−2)

    where L̄_t(k) is task t's mean loss over period k (an epoch, or `window` steps) and τ the
    temperature. The first two periods use w = 1. The loss is Σ_t w_t·L_t with w constant.
    """

    history: torch.Tensor
    running: torch.Tensor
    current: torch.Tensor
    steps_in_period: torch.Tensor

    def __init__(self, tasks: list[str], temperature: float = 2.0, window: int | None = None):
        super().__init__()
        self.tasks = list(tasks)
        self.temperature = temperature
        self.window = window
        self.register_buffer("history", torch.full((2, len(tasks)), float("nan")))  # periods k-2, k-1
        self.register_buffer("running", torch.zeros(2, len(tasks)))  # loss sum, count this period
        self.register_buffer("current", torch.ones(len(tasks)))
        self.register_buffer("steps_in_period", torch.zeros((), dtype=torch.int64))  # a buffer: checkpointed

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        for t, loss in losses.items():
            i = self.tasks.index(t)
            self.running[0, i] += float(loss.detach())
            self.running[1, i] += 1
        total = torch.stack([float(self.current[self.tasks.index(t)]) * loss for t, loss in losses.items()]).sum()
        self.steps_in_period += 1
        if self.window is not None and int(self.steps_in_period) >= self.window:
            self.end_period()
        return total

    @torch.no_grad()
    def end_period(self) -> None:
        mean = self.running[0] / self.running[1].clamp_min(1)
        mean = torch.where(self.running[1] > 0, mean, self.history[1])
        self.history = torch.stack([self.history[1], mean])
        self.running.zero_()
        self.steps_in_period.zero_()
        ratio = self.history[1] / self.history[0]
        if torch.isfinite(ratio).all():
            self.current = len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0)

    def weights(self) -> dict[str, dict[str, float]]:
        return {t: {"weight": float(self.current[i])} for i, t in enumerate(self.tasks)}

    def end_epoch(self) -> None:
        if self.window is None:
            self.end_period()


def _sum(config: RunConfig, shared_weight: nn.Parameter | None) -> nn.Module:
    return SumLoss(list(config.tasks))


def _weighted(config: RunConfig, shared_weight: nn.Parameter | None) -> nn.Module:
    return WeightedLoss({t: config.loss.weights[t] for t in config.tasks})


def _uncertainty(config: RunConfig, shared_weight: nn.Parameter | None) -> nn.Module:
    kinds = {t: spec.kind for t, spec in config.tasks.items()}
    spec = config.loss.uncertainty
    return UncertaintyWeighting(kinds, spec.form, spec.init, spec.update, spec.decay)


def _gradnorm(config: RunConfig, shared_weight: nn.Parameter | None) -> nn.Module:
    if shared_weight is None:
        raise ValueError("gradnorm needs the weight of the last shared layer")
    return GradNorm(list(config.tasks), shared_weight, config.loss.gradnorm_alpha)


def _dwa(config: RunConfig, shared_weight: nn.Parameter | None) -> nn.Module:
    return DynamicWeightAverage(list(config.tasks), config.loss.dwa_temperature, config.loss.dwa_window)


COMBINERS: dict[str, Callable[[RunConfig, nn.Parameter | None], nn.Module]] = {
    "sum": _sum,
    "weighted": _weighted,
    "uncertainty": _uncertainty,
    "gradnorm": _gradnorm,
    "dwa": _dwa,
}


def build_combiner(config: RunConfig, shared_weight: nn.Parameter | None = None) -> nn.Module:
    """The combiner named by `loss.combine`. `shared_weight` (last shared layer) is used by gradnorm."""
    return COMBINERS[config.loss.combine](config, shared_weight)
