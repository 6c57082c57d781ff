"""Per-subnet parameter groups, learning rates and schedules (lesson 3)."""
from __future__ import annotations

import math

import pytest
import torch

from model_fixtures import build_all, first_batch
from multikpi.config.schema import ScheduleSpec
from multikpi.errors import ConfigError
from multikpi.losses import task_losses
from multikpi.optim import build_optimizers, build_param_groups
from multikpi.optim.build import schedule_factor
from multikpi.optim.param_groups import assign_groups, group_prefixes


def _train_steps(config, data, model, combiner, steps=3):
    groups = build_param_groups(config, model, combiner)
    optimizers = build_optimizers(groups, total_steps=steps)
    kinds = {t: s.kind for t, s in config.tasks.items()}
    for _ in range(steps):
        batch = first_batch(data)
        total = combiner(task_losses(model(batch), batch.labels, kinds))
        optimizers.zero_grad()
        total.backward()
        optimizers.step()
    return groups, optimizers


def test_lr_zero_freezes_one_head_only(tiny_config):
    tiny_config["optim"] = {"groups": {"heads.dwell": {"lr": 0.0}}}
    config, _, data, model, combiner = build_all(tiny_config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train_steps(config, data, model, combiner)
    for name, param in model.named_parameters():
        if name.startswith("heads.dwell."):
            assert torch.equal(param, before[name]), name
        elif name.startswith(("heads.click.", "shared.", "embeddings.")):
            assert not torch.equal(param, before[name]), name


def test_every_parameter_in_exactly_one_named_group(tiny_config):
    tiny_config["loss"] = {"combine": "uncertainty", "uncertainty": {"update": "gradient"}}
    config, _, _, model, combiner = build_all(tiny_config)
    groups = build_param_groups(config, model, combiner)
    names = [n for g in groups for n in g.param_names]
    expected = [n for n, _ in model.named_parameters()] + [f"loss.{n}" for n, _ in combiner.named_parameters()]
    assert sorted(names) == sorted(expected)
    assert {g.name for g in groups} == {"embeddings", "shared", "heads.click", "heads.dwell", "heads.convert", "loss"}


def test_closed_form_uncertainty_has_no_loss_group(tiny_config):
    tiny_config["loss"] = {"combine": "uncertainty"}  # update closed_form by default: nothing to learn
    config, _, _, model, combiner = build_all(tiny_config)
    assert "loss" not in {g.name for g in build_param_groups(config, model, combiner)}


def test_group_settings_resolution(tiny_config):
    tiny_config["loss"] = {"combine": "uncertainty", "uncertainty": {"update": "gradient"}}
    tiny_config["optim"] = {
        "default": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-5},
        "groups": {"shared": {"lr": 3e-4}, "heads.convert": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                   "loss": {"lr": 1e-2}},
    }
    config, _, _, model, combiner = build_all(tiny_config)
    groups = build_param_groups(config, model, combiner)
    optimizers = build_optimizers(groups, total_steps=10)
    lrs = optimizers.learning_rates()
    assert lrs == {"embeddings": 3e-4, "shared": 3e-4, "heads.click": 1e-3, "heads.dwell": 1e-3,
                   "loss": 1e-2, "heads.convert": 0.05}
    by_name = {g.name: g.settings for g in groups}
    assert by_name["loss"].weight_decay == 0.0  # the loss weights are never decayed
    assert by_name["heads.click"].weight_decay == 1e-5
    assert sorted(type(o).__name__ for o in optimizers.optimizers) == ["Adam", "SGD"]


def test_unassigned_and_doubly_assigned_parameters_are_named():
    params = [("shared.mlp.0.weight", None), ("mystery.weight", None)]
    with pytest.raises(ConfigError, match=r"'mystery.weight' belongs to no optimizer group"):
        assign_groups(params, {"shared.": "shared"})
    with pytest.raises(ConfigError, match=r"'shared.mlp.0.weight' belongs to several optimizer groups"):
        assign_groups(params[:1], {"shared.": "shared", "shared.mlp.": "experts"})


def test_prefixes_cover_heads_by_task_name(tiny_config):
    config, *_ = build_all(tiny_config)
    assert group_prefixes(config)["heads.convert."] == "heads.convert"


def test_warmup_cosine_schedule_closed_form():
    spec = ScheduleSpec(name="warmup_cosine", warmup_steps=10, min_lr_ratio=0.1)
    factor = schedule_factor(spec, total_steps=110)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(110) == pytest.approx(0.1)


def test_step_schedule_closed_form():
    factor = schedule_factor(ScheduleSpec(name="step", step_size=5, gamma=0.5), total_steps=100)
    assert [factor(s) for s in (0, 4, 5, 10, 14)] == [1.0, 1.0, 0.5, 0.25, 0.25]


def test_schedules_are_per_group(tiny_config):
    tiny_config["optim"] = {"groups": {"heads.click": {"schedule": {"name": "step", "step_size": 1, "gamma": 0.5}}}}
    config, _, data, model, combiner = build_all(tiny_config)
    _, optimizers = _train_steps(config, data, model, combiner, steps=2)
    lrs = optimizers.learning_rates()
    assert lrs["heads.click"] == pytest.approx(1e-3 * 0.25)
    assert lrs["heads.dwell"] == pytest.approx(1e-3)


def test_auto_learning_rate_follows_the_square_root_rule(tiny_config):
    from multikpi.optim.param_groups import auto_learning_rate

    assert [auto_learning_rate(b) for b in (256, 512)] == [1e-3, 1e-3]  # small data keeps the reference rate
    assert auto_learning_rate(4096) == pytest.approx(1e-3 * 8 ** 0.5)  # 8x the batch: sqrt(8)x the rate
    tiny_config["optim"] = {"groups": {"heads.click": {"lr": 0.05}}}  # a set rate is kept as set
    config, _, _, model, combiner = build_all(tiny_config)
    groups = {g.name: g.lr for g in build_param_groups(config, model, combiner, batch_size=2048)}
    assert groups["shared"] == pytest.approx(2e-3) and groups["heads.click"] == 0.05
    tiny_config["optim"] = {"default": {"lr": 3e-4}}
    config, _, _, model, combiner = build_all(tiny_config)
    assert {g.lr for g in build_param_groups(config, model, combiner, batch_size=4096)} == {3e-4}
