"""Estimates as features (lesson 4): the downstream loss must not train the upstream tower when
the edge stops the gradient, and must when it does not."""
from __future__ import annotations

import pytest
import torch

from model_fixtures import build_all, first_batch
from multikpi.config import config_from_dict
from multikpi.errors import ConfigError
from multikpi.losses import task_losses


def _upstream_grads(tiny_config, stop_gradient: bool, upstream_as: str = "prob"):
    tiny_config["tasks"]["dwell"].update(
        {"inputs_from": ["click"], "stop_gradient": stop_gradient, "upstream_as": upstream_as})
    config, _, data, model, _ = build_all(tiny_config)
    batch = first_batch(data)
    kinds = {t: s.kind for t, s in config.tasks.items()}
    dwell_loss = task_losses(model(batch), batch.labels, kinds)["dwell"]
    params = list(model.heads["click"].parameters())
    return model, torch.autograd.grad(dwell_loss, params, allow_unused=True)


@pytest.mark.parametrize("upstream_as", ["prob", "logit"])
def test_stop_gradient_gives_exactly_zero_gradient_to_upstream_tower(tiny_config, upstream_as):
    _, grads = _upstream_grads(tiny_config, stop_gradient=True, upstream_as=upstream_as)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


def test_without_stop_gradient_the_upstream_tower_is_trained(tiny_config):
    _, grads = _upstream_grads(tiny_config, stop_gradient=False)
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_downstream_tower_reads_one_more_input_and_heads_run_upstream_first(tiny_config):
    tiny_config["tasks"] = {"dwell": {**tiny_config["tasks"]["dwell"], "inputs_from": ["click"]},
                            "click": tiny_config["tasks"]["click"]}
    model, _ = _upstream_grads(tiny_config, stop_gradient=True)
    assert model.graph.order == ("click", "dwell")
    widths = {t: model.heads[t].body[0].in_features for t in ("click", "dwell")}
    assert widths["dwell"] == widths["click"] + 1


def test_upstream_estimate_is_the_probability(tiny_config):
    tiny_config["tasks"]["dwell"].update({"inputs_from": ["click"]})
    _, _, data, model, _ = build_all(tiny_config)
    batch = first_batch(data, 8)
    outputs = model(batch)
    fed = model.graph.upstream_features("dwell", outputs)
    assert torch.allclose(fed[:, 0], torch.sigmoid(outputs["click"]))


def test_cycle_is_a_config_error(tiny_config):
    tiny_config["tasks"]["click"]["inputs_from"] = ["dwell"]
    tiny_config["tasks"]["dwell"]["inputs_from"] = ["click"]
    with pytest.raises(ConfigError, match=r"cycle\. Got click -> dwell -> click"):
        config_from_dict(tiny_config)


def test_task_order_puts_upstream_first(tiny_config):
    # moved from test_config.py: the order is the task graph's, computed from its edges
    from multikpi.models.build import task_graph

    tiny_config["tasks"]["click"]["inputs_from"] = ["dwell"]
    tiny_config["tasks"]["convert"]["inputs_from"] = ["click", "dwell"]
    config = config_from_dict(tiny_config)
    order = task_graph(config.model, config.tasks).order
    assert sorted(order) == ["click", "convert", "dwell"]
    assert order.index("dwell") < order.index("click") < order.index("convert")
