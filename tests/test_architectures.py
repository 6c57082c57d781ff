"""Sharing architectures (shared_bottom, mmoe, ple, esmm, single_task): shapes, gates, optimizer
groups, composition with task edges, masks and GradNorm, and single-task independence."""
from __future__ import annotations

import inspect

import pytest
import torch

from model_fixtures import build_all, first_batch
from multikpi.losses import task_losses
from multikpi.models.architectures import SeparateNets, SharedBottom
from multikpi.models.experts import PLE, BatchedLinear, ExpertBank, Gate, GateBank, MMoE
from multikpi.optim import build_optimizers, build_param_groups

ARCHS = {
    "shared_bottom": {},
    "mmoe": {"num_experts": 3},
    "ple": {"num_experts": 2, "num_specific_experts": 2, "num_levels": 2, "gate_hidden": [4]},
    "esmm": {"esmm": {"ctr": "click", "ctcvr": "convert"}},
    "single_task": {},
}
TASKS = ("click", "dwell", "convert")


def _config(tiny_config: dict, arch: str, **loss) -> dict:
    tiny_config["model"].update({"arch": arch, **ARCHS[arch]})
    if loss:
        tiny_config["loss"] = loss
    return tiny_config


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_shapes(tiny_config, arch):
    _, _, data, model, _ = build_all(_config(tiny_config, arch))
    outputs = model(first_batch(data, 64))
    expected = set(TASKS) | ({"convert.given_click"} if arch == "esmm" else set())
    assert set(outputs) == expected
    assert all(v.shape == (64,) and v.dtype == torch.float32 for v in outputs.values())
    representations = model.shared(torch.randn(5, model.input_dim))
    assert {t: r.shape for t, r in representations.items()} == {t: (5, model.shared.out_dim) for t in TASKS}


@pytest.mark.parametrize("arch", ["mmoe", "ple"])
def test_gates_sum_to_one_per_row_and_usage_is_recorded(tiny_config, arch):
    _, _, data, model, _ = build_all(_config(tiny_config, arch))
    inputs = torch.randn(32, model.input_dim)
    weights = model.shared.gate_weights(inputs)
    experts = 3 if arch == "mmoe" else 2 + 2  # ple: task-specific then shared experts of the last level
    for w in weights.values():
        assert w.shape == (32, experts)
        assert torch.allclose(w.sum(dim=1), torch.ones(32)) and (w >= 0).all()
    model.shared(inputs)
    usage = model.shared.gate_usage()
    assert set(usage) == set(TASKS)
    for task, mean in usage.items():
        assert mean == pytest.approx(weights[task].mean(dim=0).tolist(), abs=1e-6)


@pytest.mark.parametrize("arch", ["shared_bottom", "esmm", "single_task"])
def test_archs_without_gates_report_no_usage(tiny_config, arch):
    _, _, data, model, _ = build_all(_config(tiny_config, arch))
    model(first_batch(data, 8))
    assert model.shared.gate_usage() == {}


EXPECTED_GROUPS = {
    "shared_bottom": {"shared"},
    "mmoe": {"experts", "gates"},
    "ple": {"experts", "gates"},
    "esmm": set(),
    "single_task": set(),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_parameter_in_exactly_one_group(tiny_config, arch):
    config, _, _, model, combiner = build_all(_config(tiny_config, arch, combine="uncertainty",
                                                      uncertainty={"update": "gradient"}))
    groups = build_param_groups(config, model, combiner)
    names = [n for g in groups for n in g.param_names]
    expected = [n for n, _ in model.named_parameters()] + [f"loss.{n}" for n, _ in combiner.named_parameters()]
    assert sorted(names) == sorted(expected) and len(names) == len(set(names))
    heads = {f"heads.{t}" for t in TASKS}
    assert {g.name for g in groups} == {"embeddings", "loss"} | heads | EXPECTED_GROUPS[arch]
    by_group = {g.name: g.param_names for g in groups}
    if arch in ("mmoe", "ple"):
        assert all(n.startswith("shared.experts.") for n in by_group["experts"])
        assert all(n.startswith("shared.gates.") for n in by_group["gates"])
    if arch in ("esmm", "single_task"):  # the task's own MLP belongs to its head group
        assert any(n.startswith("shared.nets.dwell.") for n in by_group["heads.dwell"])


def test_experts_and_gates_get_their_own_learning_rates(tiny_config):
    tiny_config["optim"] = {"groups": {"experts": {"lr": 0.0}, "gates": {"lr": 0.01}}}
    config, _, data, model, combiner = build_all(_config(tiny_config, "mmoe"))
    optimizers = build_optimizers(build_param_groups(config, model, combiner), total_steps=2)
    assert optimizers.learning_rates()["gates"] == 0.01
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    kinds = {t: s.kind for t, s in config.tasks.items()}
    batch = first_batch(data)
    combiner(task_losses(model(batch), batch.labels, kinds)).backward()
    optimizers.step()
    for name, param in model.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved == (not name.startswith("shared.experts.")), name


@pytest.mark.parametrize("arch", ["mmoe", "ple", "esmm"])
def test_gradnorm_trains_on_the_last_shared_layer(tiny_config, arch):
    config, _, data, model, combiner = build_all(_config(tiny_config, arch, combine="gradnorm"))
    shared_weight = model.shared.last_shared_layer().weight
    assert any(shared_weight is p for p in model.parameters())
    optimizers = build_optimizers(build_param_groups(config, model, combiner), total_steps=2)
    kinds = {t: s.kind for t, s in config.tasks.items()}
    for _ in range(2):
        batch = first_batch(data)
        total = combiner(task_losses(model(batch), batch.labels, kinds))
        optimizers.zero_grad()
        total.backward()
        optimizers.step()
    assert torch.isfinite(total)
    assert sum(w["weight"] for w in combiner.weights().values()) == pytest.approx(3.0, rel=1e-3)


@pytest.mark.parametrize("arch", ["mmoe", "ple"])
def test_stop_gradient_edge_still_gives_zero_gradient(tiny_config, arch):
    tiny_config["tasks"]["dwell"].update({"inputs_from": ["click"], "stop_gradient": True})
    config, _, data, model, _ = build_all(_config(tiny_config, arch))
    batch = first_batch(data)
    kinds = {t: s.kind for t, s in config.tasks.items()}
    dwell_loss = task_losses(model(batch), batch.labels, kinds)["dwell"]
    grads = torch.autograd.grad(dwell_loss, list(model.heads["click"].parameters()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    assert model.heads["dwell"].body[0].in_features == model.shared.out_dim + 1


@pytest.mark.parametrize("arch", ["mmoe", "ple"])
def test_masked_task_learns_only_from_rows_of_its_parent(tiny_config, arch):
    tiny_config["tasks"]["convert"]["train_on"] = "click"
    config, _, data, model, _ = build_all(_config(tiny_config, arch))
    batch = first_batch(data, 512)
    kinds = {t: s.kind for t, s in config.tasks.items()}
    outputs = model(batch)
    click, convert = batch.labels[:, 0], batch.labels[:, 2]
    assert torch.isnan(convert[click == 0]).all() and not torch.isnan(convert[click == 1]).any()
    clicked = click == 1
    expected = torch.nn.functional.binary_cross_entropy_with_logits(outputs["convert"][clicked], convert[clicked])
    loss = task_losses(outputs, batch.labels, kinds)["convert"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_single_task_networks_are_independent(tiny_config):
    config, _, data, model, _ = build_all(_config(tiny_config, "single_task"))
    batch = first_batch(data)
    kinds = {t: s.kind for t, s in config.tasks.items()}
    click_loss = task_losses(model(batch), batch.labels, kinds)["click"]
    dwell_params = list(model.heads["dwell"].parameters()) + list(model.shared.nets["dwell"].parameters())
    grads = torch.autograd.grad(click_loss, dwell_params + [model.embeddings.weight], allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads[:-1])
    # The embedding table is T slices wide: click's loss reaches only click's slice of each column.
    table_grad = grads[-1].view(grads[-1].shape[0], len(TASKS), -1)  # (V, T, dim)
    assert torch.count_nonzero(table_grad[:, 1:]) == 0
    assert torch.count_nonzero(table_grad[:, 0]) > 0
    assert model.embeddings.dim == len(TASKS) * config.model.embedding_dim


def test_single_task_with_gradnorm_is_a_config_error(tiny_config):
    from multikpi.config import config_from_dict
    from multikpi.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`loss.combine` must not be gradnorm with `model.arch: single_task`"):
        config_from_dict(_config(tiny_config, "single_task", combine="gradnorm"))


def test_ple_levels_chain_shared_and_task_experts(tiny_config):
    _, _, _, model, _ = build_all(_config(tiny_config, "ple"))
    ple = model.shared
    assert len(ple.experts) == 2 and "shared" in ple.gates[0] and "shared" not in ple.gates[1]
    assert ple.gates[0]["shared"].out.out_features == 3 * 2 + 2  # every expert of the level
    assert ple.experts[1]["specific"].layers[0].weight.shape[1] == ple.experts[0]["shared"].out_dim
    assert ple.experts[1]["specific"].num_experts == 3 * 2  # T tasks x K task-specific experts, one bank


def _linear_gate(bank: GateBank, g: int, inputs: torch.Tensor) -> torch.Tensor:
    """Gate g of a bank written out as the papers' formula, softmax(W_g x + b_g), layer by layer."""
    hidden = inputs
    for i, layer in enumerate(bank.layers):
        hidden = hidden @ layer.weight[g] + layer.bias[g]
        hidden = torch.relu(hidden) if i < len(bank.layers) - 1 else hidden
    return torch.softmax(hidden, dim=-1)


def _expert(bank: ExpertBank, e: int, inputs: torch.Tensor) -> torch.Tensor:
    """Expert e of a bank as its own MLP."""
    hidden = inputs
    for layer in bank.layers:
        hidden = torch.relu(hidden @ layer.weight[e] + layer.bias[e])
    return hidden


def test_fused_mmoe_equals_the_papers_per_task_sum(tiny_config):
    """f^t(x) = Σ_e softmax(W_t x)_e f_e(x) (Ma et al. 2018, eq. 5-6), one task and expert at a time."""
    tiny_config["model"]["gate_hidden"] = [5]
    _, _, data, model, _ = build_all(_config(tiny_config, "mmoe"))
    mmoe = model.shared
    x = torch.randn(9, model.input_dim)
    fused = mmoe(x)
    for t, task in enumerate(TASKS):
        gate = _linear_gate(mmoe.gates, t, x)
        expected = sum(gate[:, e:e + 1] * _expert(mmoe.experts, e, x) for e in range(3))
        assert torch.allclose(fused[task], expected, atol=1e-5), task


def test_fused_ple_equals_the_papers_per_task_levels(tiny_config):
    """CGC levels (Tang et al. 2020, eq. 2-5) written with one loop per task and expert."""
    _, _, data, model, _ = build_all(_config(tiny_config, "ple"))
    ple, k = model.shared, 2
    x = torch.randn(6, model.input_dim)
    task_in, shared_in = {t: x for t in TASKS}, x
    for experts, gates in zip(ple.experts, ple.gates):
        shared = [_expert(experts["shared"], s, shared_in) for s in range(2)]
        own = {t: [_expert(experts["specific"], i * k + j, task_in[t]) for j in range(k)] for i, t in enumerate(TASKS)}
        outputs = {}
        for i, t in enumerate(TASKS):
            w = _linear_gate(gates["tasks"], i, task_in[t])
            outputs[t] = sum(w[:, e:e + 1] * h for e, h in enumerate(own[t] + shared))
        if "shared" in gates:
            w = gates["shared"](shared_in)
            pool = [h for t in TASKS for h in own[t]] + shared
            shared_in = sum(w[:, e:e + 1] * h for e, h in enumerate(pool))
        task_in = outputs
    fused = ple(x)
    for task in TASKS:
        assert torch.allclose(fused[task], task_in[task], atol=1e-5), task


def test_batched_experts_equal_separate_linear_layers():
    torch.manual_seed(0)
    layer = BatchedLinear(3, 4, 5)
    x = torch.randn(7, 4)
    out = layer(x)
    for e in range(3):
        assert torch.allclose(out[:, e], x @ layer.weight[e] + layer.bias[e], atol=1e-6)
    per_expert = torch.randn(7, 3, 4)
    out = layer(per_expert)
    assert torch.allclose(out[:, 1], per_expert[:, 1] @ layer.weight[1] + layer.bias[1], atol=1e-6)


@pytest.mark.parametrize("module", [SharedBottom, SeparateNets, MMoE, PLE, BatchedLinear, ExpertBank, Gate, GateBank])
def test_module_constructors_take_at_most_five_arguments(module):
    params = [p for p in inspect.signature(module.__init__).parameters if p != "self"]
    assert len(params) <= 5, params


def _first_layer_padding_weights(model: torch.nn.Module, arch: str) -> torch.Tensor:
    """The first layer's weights that multiply the padding columns (a view)."""
    real = model.input_dim - model.input_padding
    if arch == "mmoe":
        return model.shared.experts.layers[0].weight[:, real:, :]  # (E, in, out)
    return model.shared.mlp[0].weight[:, real:]  # (out, in)


@pytest.mark.parametrize("arch", ["shared_bottom", "mmoe"])
def test_input_is_padded_to_a_multiple_of_16_with_columns_that_change_nothing(tiny_config, arch):
    """The zero columns that align the input width (models/build.py) never change an output and
    never get a gradient, so the padded model is the unpadded one."""
    _, _, data, model, _ = build_all(_config(tiny_config, arch))
    real = model.embeddings.out_dim + data.dense.shape[1]
    assert model.input_dim % 16 == 0 and real < model.input_dim < real + 16  # the tiny config is not aligned
    batch = first_batch(data, 32)
    before = model(batch)
    padding = _first_layer_padding_weights(model, arch)
    with torch.no_grad():
        padding.copy_(torch.randn_like(padding) * 100)
    after = model(batch)
    assert all(torch.equal(before[t], after[t]) for t in before)
    sum(v.sum() for v in after.values()).backward()
    first = model.shared.experts.layers[0].weight if arch == "mmoe" else model.shared.mlp[0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    padding_grad = first.grad[:, real:, :] if arch == "mmoe" else first.grad[:, real:]
    assert padding_grad.numel() > 0 and torch.count_nonzero(padding_grad) == 0


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_is_forward_projected_of_the_input_layers(tiny_config, arch):
    """forward(x) == forward_projected([layer(x) for layer in input_layers()]), bitwise; the
    architectures without input layers (ple, esmm, single_task) never take that path."""
    _, _, data, model, _ = build_all(_config(tiny_config, arch))
    layers = model.shared.input_layers()
    assert bool(layers) == (arch in ("shared_bottom", "mmoe"))
    if layers:
        x = torch.randn(7, model.input_dim)
        direct, projected = model.shared(x), model.shared.forward_projected([layer(x) for layer in layers])
        assert all(torch.equal(direct[t], projected[t]) for t in TASKS)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_request_computes_the_context_once_and_gives_the_same_outputs(tiny_config, arch):
    """One ranking request: the user-side columns hold one value in every row. forward_request
    splits the input layers into the context's share (once) and each row's own share; the outputs
    equal forward_features' up to float rounding, for a categorical and a dense context column."""
    tiny_config["model"]["dropout"] = 0.0
    _, _, data, model, _ = build_all(_config(tiny_config, arch))
    model.eval()
    batch = first_batch(data, 40)
    categorical, dense = batch.categorical.clone(), batch.dense.clone()
    categorical[:, 0] = categorical[0, 0]  # user_id, the same user for every candidate
    dense[:, 2] = dense[0, 2]  # affinity, a dense column as context
    with torch.no_grad():
        expected = model.forward_features(categorical, dense)
        got = model.forward_request(categorical, dense, (0,), (2,))
        none = model.forward_request(categorical, dense, (), ())
    for task in expected:
        assert torch.allclose(got[task], expected[task], atol=1e-5, rtol=1e-5), task
        assert torch.equal(none[task], expected[task])
    if model.shared.input_layers():  # the context is read from the first row only: computed once
        other = categorical.clone()
        other[1:, 0] = (categorical[0, 0] + 1) % model.embeddings.weight.shape[0]
        with torch.no_grad():
            again = model.forward_request(other, dense, (0,), (2,))
        assert all(torch.equal(again[t], got[t]) for t in got)
