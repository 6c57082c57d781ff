"""ESMM (Ma et al., SIGIR 2018): the stable CTCVR logit, the model's outputs, CVR metrics on
clicked rows, and the config and data checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import build_all, first_batch
from multikpi.config import config_from_dict
from multikpi.errors import ConfigError, DataError
from multikpi.eval import model_outputs, task_metrics
from multikpi.eval.metrics import binary_metrics
from multikpi.models.esmm import check_entire_space_labels, ctcvr_logit, parse_cvr_output_key

ESMM = {"arch": "esmm", "esmm": {"ctr": "click", "ctcvr": "convert"}}


def test_ctcvr_logit_matches_naive_formula_and_product_identity():
    a = torch.linspace(-8, 8, 41, dtype=torch.float64).repeat_interleave(41)
    b = torch.linspace(-8, 8, 41, dtype=torch.float64).repeat(41)
    logit = ctcvr_logit(a, b)
    product = torch.sigmoid(a) * torch.sigmoid(b)
    assert torch.allclose(logit, torch.logit(product), atol=1e-9)
    assert torch.allclose(torch.sigmoid(logit), product, rtol=1e-12, atol=1e-15)
    assert torch.allclose(ctcvr_logit(b, a), logit, atol=1e-12)  # symmetric in a, b


def test_ctcvr_logit_is_finite_with_finite_gradients_where_the_naive_one_is_not():
    a = torch.tensor([60.0, 60.0, -60.0, -60.0, 0.0], requires_grad=True)
    b = torch.tensor([60.0, -60.0, 60.0, -60.0, 30.0], requires_grad=True)
    naive = torch.logit(torch.sigmoid(a) * torch.sigmoid(b))
    assert not torch.isfinite(naive).all()
    logit = ctcvr_logit(a, b)
    assert torch.isfinite(logit).all()
    target = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
    grad_a, grad_b = torch.autograd.grad(loss, [a, b])
    assert torch.isfinite(grad_a).all() and torch.isfinite(grad_b).all()
    # pCTCVR ≈ min(pCTR, pCVR)-limited: both very likely -> logit ≈ 60 - log 2; one very unlikely -> ≈ -60.
    assert logit[0].item() == pytest.approx(60 - np.log(2), abs=1e-4)
    assert logit[1].item() == pytest.approx(-60, abs=1e-4) and logit[3].item() == pytest.approx(-120, abs=1e-4)


def test_model_outputs_pctcvr_and_the_cvr_tower_as_side_output(tiny_config):
    tiny_config["model"].update(ESMM)
    _, _, data, model, _ = build_all(tiny_config)
    outputs = model(first_batch(data, 64))
    assert parse_cvr_output_key("convert.given_click") == ("click", "convert")
    assert parse_cvr_output_key("convert") is None
    expected = ctcvr_logit(outputs["click"], outputs["convert.given_click"])
    assert torch.equal(outputs["convert"], expected)
    # The CVR tower starts at logit(rate(convert) / rate(click)), so the product starts at the convert rate.
    click_rate = float(torch.nanmean(data.labels[:, 0]))
    convert_rate = float(torch.nanmean(data.labels[:, 2]))
    bias = model.heads["convert"].out.bias.item()
    assert torch.sigmoid(torch.tensor(bias)).item() == pytest.approx(convert_rate / click_rate, rel=1e-4)


def test_ctcvr_loss_trains_both_towers(tiny_config):
    tiny_config["model"].update(ESMM)
    config, _, data, model, _ = build_all(tiny_config)
    from multikpi.losses import task_losses

    batch = first_batch(data, 512)
    kinds = {t: s.kind for t, s in config.tasks.items()}
    loss = task_losses(model(batch), batch.labels, kinds)["convert"]
    for task in ("click", "convert"):
        grads = torch.autograd.grad(loss, list(model.heads[task].parameters()), retain_graph=True)
        assert all(torch.count_nonzero(g) > 0 for g in grads), task


def test_cvr_auc_on_clicked_rows(tiny_config):
    tiny_config["model"].update(ESMM)
    _, encoder, data, model, _ = build_all(tiny_config)
    outputs = model_outputs(model, data, batch_size=1024)
    metrics = task_metrics(outputs, data, encoder)
    labels = data.labels.numpy()
    clicked = labels[:, 0] == 1
    expected = binary_metrics(labels[clicked, 2], 1 / (1 + np.exp(-outputs["convert.given_click"][clicked])))
    assert metrics["convert"]["cvr_auc_on_clicked"] == pytest.approx(expected["auc"])
    assert metrics["convert"]["count"] == data.num_rows  # pCTCVR is evaluated on every row
    assert "cvr_auc_on_clicked" not in metrics["click"]


def test_conversions_without_click_are_a_data_error():
    labels = np.array([[1, 1], [0, 0], [0, 1], [np.nan, 1]], dtype=np.float32)
    with pytest.raises(DataError, match=r"label of 'convert' to be 1 only where the label of 'click' is 1.*"
                                        r"Got 1 valid rows with convert=1 and click=0"):
        check_entire_space_labels(labels, ["click", "convert"], "click", "convert", "valid")
    check_entire_space_labels(labels[:2], ["click", "convert"], "click", "convert", "valid")


def _errors(tiny_config, model=None, tasks=None, loss=None) -> list[str]:
    tiny_config["model"].update(model or {})
    for name, update in (tasks or {}).items():
        tiny_config["tasks"][name].update(update)
    if loss:
        tiny_config["loss"] = loss
    with pytest.raises(ConfigError) as info:
        config_from_dict(tiny_config)
    return info.value.problems


def test_esmm_needs_its_task_mapping(tiny_config):
    with pytest.raises(ConfigError, match=r"`model.esmm` is required with `model.arch: esmm`.*"
                                          r"among \['click', 'convert'\]"):
        config_from_dict({**tiny_config, "model": {"arch": "esmm"}})


def test_esmm_tasks_must_be_binary_and_distinct(tiny_config):
    problems = _errors(tiny_config, model={"arch": "esmm", "esmm": {"ctr": "dwell", "ctcvr": "clik"}})
    assert "`model.esmm.ctr` must name a binary task among ['click', 'convert']. Got 'dwell'" in problems
    assert "`model.esmm.ctcvr` must name a binary task among ['click', 'convert']. Got 'clik'" in problems
    with pytest.raises(ConfigError, match=r"`model.esmm.ctcvr` must be another task than `model.esmm.ctr`"):
        config_from_dict({**tiny_config, "model": {"arch": "esmm", "esmm": {"ctr": "click", "ctcvr": "click"}}})


def test_esmm_ctcvr_task_must_train_on_every_row(tiny_config):
    tiny_config["model"].update(ESMM)
    tiny_config["tasks"]["convert"]["train_on"] = "click"
    with pytest.raises(ConfigError, match=r"`tasks.convert.train_on` must be unset with `model.arch: esmm`, "
                                          r"which trains 'convert' as pCTR \* pCVR on every row. Got 'click'"):
        config_from_dict(tiny_config)


def test_esmm_edge_counts_in_cycle_detection(tiny_config):
    problems = _errors(tiny_config, model=ESMM, tasks={"click": {"inputs_from": ["convert"]}})
    assert any("must not form a cycle. Got" in p and "click" in p and "convert" in p for p in problems)


@pytest.mark.parametrize("model, message", [
    ({"arch": "mmoe", "esmm": {"ctr": "click", "ctcvr": "convert"}},
     r"`model.esmm` is only used with `model.arch` esmm. Got arch 'mmoe'"),
    ({"arch": "mmoe", "num_levels": 2}, r"`model.num_levels` is only used with `model.arch` ple. Got arch 'mmoe'"),
    ({"num_experts": 8}, r"`model.num_experts` is only used with `model.arch` mmoe or ple. Got arch 'shared_bottom'"),
    ({"arch": "moe"}, r"`model.arch` must be one of shared_bottom, mmoe, ple, esmm, single_task. Got 'moe'"),
])
def test_model_keys_of_another_arch_are_config_errors(tiny_config, model, message):
    tiny_config["model"].update(model)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(tiny_config)
