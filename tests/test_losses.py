"""Per-task masked losses and the loss combiners, against closed forms."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multikpi.config import config_from_dict
from multikpi.losses import (
    DynamicWeightAverage,
    GradNorm,
    SumLoss,
    UncertaintyWeighting,
    WeightedLoss,
    build_combiner,
    task_losses,
)

NAN = float("nan")
KINDS = {"click": "binary", "dwell": "regression"}


def _batch():
    outputs = {"click": torch.tensor([0.5, -1.0, 2.0, 0.0]), "dwell": torch.tensor([1.0, 0.0, -1.0, 2.0])}
    labels = torch.tensor([[1.0, 0.5], [NAN, 1.0], [0.0, NAN], [1.0, NAN]])
    return outputs, labels


def test_task_loss_is_mean_over_labelled_rows_only():
    outputs, labels = _batch()
    losses = task_losses(outputs, labels, KINDS)
    expected_click = F.binary_cross_entropy_with_logits(outputs["click"][[0, 2, 3]], labels[[0, 2, 3], 0])
    expected_dwell = ((outputs["dwell"][[0, 1]] - labels[[0, 1], 1]) ** 2).mean()
    assert torch.allclose(losses["click"], expected_click)
    assert torch.allclose(losses["dwell"], expected_dwell)


def test_task_without_labels_in_batch_is_left_out():
    outputs, labels = _batch()
    labels[:, 1] = NAN
    losses = task_losses(outputs, labels, KINDS)
    assert set(losses) == {"click"}


def test_sum_and_weighted_closed_form():
    losses = {"click": torch.tensor(0.3), "dwell": torch.tensor(2.0)}
    assert float(SumLoss(list(KINDS))(losses)) == pytest.approx(2.3)
    assert float(WeightedLoss({"click": 10.0, "dwell": 0.5})(losses)) == pytest.approx(4.0)


@pytest.mark.parametrize("s_click, s_dwell", [(0.0, 0.0), (0.7, -1.2)])
def test_uncertainty_kendall_closed_form(s_click, s_dwell):
    combiner = UncertaintyWeighting(KINDS, form="kendall")
    with torch.no_grad():
        combiner.log_vars["click"].fill_(s_click)
        combiner.log_vars["dwell"].fill_(s_dwell)
    lc, ld = 0.3, 2.0
    total = combiner({"click": torch.tensor(lc), "dwell": torch.tensor(ld)})
    expected = math.exp(-s_click) * lc + 0.5 * s_click + 0.5 * math.exp(-s_dwell) * ld + 0.5 * s_dwell
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    weights = combiner.weights()
    assert weights["dwell"]["sigma"] == pytest.approx(math.exp(0.5 * s_dwell))
    assert weights["dwell"]["weight"] == pytest.approx(0.5 * math.exp(-s_dwell))


def test_uncertainty_plain_closed_form():
    combiner = UncertaintyWeighting(KINDS, form="plain")
    with torch.no_grad():
        combiner.log_vars["dwell"].fill_(1.5)
    total = combiner({"click": torch.tensor(0.3), "dwell": torch.tensor(2.0)})
    assert float(total.detach()) == pytest.approx(0.3 + 0.0 + math.exp(-1.5) * 2.0 + 1.5, rel=1e-6)


def test_uncertainty_optimum_is_log_of_loss():
    """d/ds [½e^{-s}L + ½s] = 0 at s = log L: gradient descent on s alone must get there."""
    combiner = UncertaintyWeighting({"dwell": "regression"})
    optimizer = torch.optim.SGD(combiner.parameters(), lr=0.5)
    for _ in range(300):
        optimizer.zero_grad()
        combiner({"dwell": torch.tensor(4.0)}).backward()
        optimizer.step()
    assert combiner.log_vars["dwell"].item() == pytest.approx(math.log(4.0), abs=1e-4)


def test_uncertainty_parameter_of_absent_task_does_not_move():
    """A batch without labels for a task must not move its s, not even through Adam's momentum."""
    combiner = UncertaintyWeighting(KINDS)
    optimizer = torch.optim.Adam(combiner.parameters(), lr=0.1, fused=True)
    for _ in range(3):  # build up momentum for both tasks
        optimizer.zero_grad(set_to_none=True)
        combiner({"click": torch.tensor(0.3), "dwell": torch.tensor(2.0)}).backward()
        optimizer.step()
    before = combiner.log_vars["dwell"].item()
    optimizer.zero_grad(set_to_none=True)
    combiner({"click": torch.tensor(0.3)}).backward()
    optimizer.step()
    assert combiner.log_vars["dwell"].grad is None
    assert combiner.log_vars["dwell"].item() == before
    assert combiner.log_vars["click"].item() != 0.0


def test_gradnorm_trains_network_on_weighted_sum_and_weights_on_balance():
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 4)
    heads = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 1), "b": torch.nn.Linear(4, 1)})
    x = torch.randn(16, 3)
    combiner = GradNorm(["a", "b"], shared.weight, alpha=1.5)
    with torch.no_grad():
        combiner.task_weights["a"].fill_(3.0)  # renormalized to sum 2 on use
    h = shared(x)
    losses = {"a": heads["a"](h).square().mean(), "b": 10 * heads["b"](h).square().mean()}
    norms = {t: float(torch.autograd.grad(losses[t], shared.weight, retain_graph=True)[0].norm()) for t in "ab"}
    total = combiner(losses)
    total.backward()
    w = {t: combiner.task_weights[t].item() for t in "ab"}
    assert sum(w.values()) == pytest.approx(2.0)
    # the network's gradient equals that of w_a·L_a + w_b·L_b with w constant
    expected = torch.autograd.grad(w["a"] * heads["a"](shared(x)).square().mean()
                                   + w["b"] * 10 * heads["b"](shared(x)).square().mean(), heads["b"].weight)[0]
    assert torch.allclose(heads["b"].weight.grad, expected, rtol=1e-5)
    # at step 0 all loss ratios are 1: the weight with the larger gradient norm is pushed down
    big = max(norms, key=lambda t: w[t] * norms[t])
    assert combiner.task_weights[big].grad.item() > 0


def test_dwa_weights_follow_loss_ratios():
    combiner = DynamicWeightAverage(["a", "b"], temperature=2.0, window=1)
    for la, lb in ((1.0, 1.0), (0.5, 1.0)):
        combiner({"a": torch.tensor(la), "b": torch.tensor(lb)})
    ra, rb = 0.5 / 1.0, 1.0 / 1.0
    expected_a = 2 * math.exp(ra / 2) / (math.exp(ra / 2) + math.exp(rb / 2))
    assert combiner.weights()["a"]["weight"] == pytest.approx(expected_a)
    total = combiner({"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    assert float(total.detach()) == pytest.approx(expected_a * 2.0 + (2 - expected_a) * 3.0, rel=1e-6)


def test_dwa_first_two_periods_use_unit_weights():
    combiner = DynamicWeightAverage(["a", "b"])
    combiner({"a": torch.tensor(1.0), "b": torch.tensor(4.0)})
    combiner.end_epoch()
    assert combiner.weights() == {"a": {"weight": 1.0}, "b": {"weight": 1.0}}


def test_build_combiner_uses_config(tiny_config):
    tiny_config["loss"] = {"combine": "weighted", "weights": {"click": 1.0, "dwell": 0.1, "convert": 5.0}}
    combiner = build_combiner(config_from_dict(tiny_config))
    assert combiner.weights()["convert"] == {"weight": 5.0}


def test_uncertainty_closed_form_sets_s_to_the_optimum_of_the_loss_average():
    """update closed_form: m ← d·m + (1−d)·L from the first loss, s = log m (regression) / log 2m
    (kendall binary), set in training mode only, never learned, and a task absent keeps its m."""
    combiner = UncertaintyWeighting(KINDS, form="kendall", init="auto", update="closed_form", decay=0.9)
    assert not any(p.requires_grad for p in combiner.parameters())
    sequence = [{"click": 0.5, "dwell": 4.0}, {"click": 0.3, "dwell": 2.0}, {"click": 0.2}]
    expected = {"click": 0.5, "dwell": 4.0}
    for values in sequence:
        losses = {t: torch.tensor(v, requires_grad=True) for t, v in values.items()}
        total = combiner(losses)
        for t, v in values.items():
            if t in expected and values is not sequence[0]:
                expected[t] = 0.9 * expected[t] + 0.1 * v
        total.backward()
        # d total / d L_t = exp(-s_t) · (1 binary, ½ regression) = 1/(2m) for both terms
        for t in values:
            assert float(losses[t].grad) == pytest.approx(0.5 / expected[t], rel=1e-6)
    assert combiner.log_vars["click"].item() == pytest.approx(math.log(2 * expected["click"]))
    assert combiner.log_vars["dwell"].item() == pytest.approx(math.log(4.0 * 0.9 + 2.0 * 0.1))
    combiner.eval()  # evaluation losses must not move the weights
    combiner({"click": torch.tensor(9.0), "dwell": torch.tensor(9.0)})
    assert combiner.log_vars["dwell"].item() == pytest.approx(math.log(4.0 * 0.9 + 2.0 * 0.1))
    state = combiner.state_dict()
    assert float(state["loss_average"][1]) == pytest.approx(3.8)  # checkpointed with the run
