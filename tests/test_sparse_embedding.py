"""Row-sparse embedding updates against their dense references: the coalesced gradient is the
dense gradient's rows, sparse SGD is dense SGD on the touched rows (exactly), lazy Adam is
torch.optim.SparseAdam, row-wise Adagrad its formula, and clipping the dense global norm."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from multikpi.models.embedding import FeatureEmbedding, coalesce_rows
from multikpi.optim.sparse import LazyAdam, RowSparseSGD, RowwiseAdagrad, clip_grad_norm

VOCABS = [50, 7, 300]


def _batch(seed: int, rows: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    zipf = torch.distributions.Categorical(probs=1.0 / torch.arange(1, 51, dtype=torch.float64))
    first = zipf.sample((rows,))  # repeats, as real ids have
    return torch.stack([first, torch.randint(0, 7, (rows,), generator=generator),
                        torch.randint(0, 300, (rows,), generator=generator)], dim=1)


def _loss(embedding: FeatureEmbedding, categorical: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (embedding(categorical) - target).square().sum()


def test_coalesced_rows_are_bitwise_the_index_add_sums():
    rows = torch.randint(0, 100, (5000,))
    grad = torch.randn(5000, 8)
    unique, summed = coalesce_rows(rows, grad)
    dense = torch.zeros(100, 8).index_add_(0, rows, grad)
    assert torch.equal(unique, torch.unique(rows))
    assert torch.equal(summed, dense[unique])


def test_dense_backward_equals_nn_embedding():
    torch.manual_seed(0)
    ours = FeatureEmbedding(VOCABS, 4)
    reference = nn.Embedding(sum(VOCABS), 4)
    reference.weight.data.copy_(ours.weight.data)
    categorical, target = _batch(1), torch.randn(64, 12)
    _loss(ours, categorical, target).backward()
    offsets = torch.tensor([0, 50, 57])
    (reference(categorical + offsets).flatten(1) - target).square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=1e-6, atol=1e-6)


def _pair(optimizer_class, **settings):
    torch.manual_seed(0)
    dense = FeatureEmbedding(VOCABS, 4)
    sparse = copy.deepcopy(dense)
    sparse.enable_sparse_updates()
    return dense, sparse, optimizer_class(sparse, **settings)


def test_sparse_sgd_equals_dense_sgd_and_leaves_untouched_rows_alone():
    dense, sparse, optimizer = _pair(RowSparseSGD, lr=0.1)
    reference = torch.optim.SGD(dense.parameters(), lr=0.1)
    touched = torch.zeros(sum(VOCABS), dtype=torch.bool)
    start = sparse.weight.detach().clone()
    for step in range(5):
        categorical, target = _batch(step), torch.randn(64, 12)
        for module, opt in ((dense, reference), (sparse, optimizer)):
            opt.zero_grad()
            _loss(module, categorical, target).backward()
            opt.step()
        touched[(categorical + torch.tensor([0, 50, 57])).reshape(-1)] = True
    assert torch.equal(sparse.weight[touched], dense.weight.detach()[touched])
    assert torch.equal(sparse.weight[~touched], start[~touched])
    assert sparse.weight.grad is None  # the table never holds a dense gradient


def test_lazy_adam_equals_torch_sparse_adam():
    torch.manual_seed(0)
    ours = FeatureEmbedding(VOCABS, 4)
    ours.enable_sparse_updates()
    optimizer = LazyAdam(ours, lr=0.01)
    reference = nn.Embedding(sum(VOCABS), 4, sparse=True)
    reference.weight.data.copy_(ours.weight.data)
    reference_opt = torch.optim.SparseAdam(reference.parameters(), lr=0.01)
    offsets = torch.tensor([0, 50, 57])
    for step in range(6):
        categorical, target = _batch(step), torch.randn(64, 12)
        optimizer.zero_grad()
        _loss(ours, categorical, target).backward()
        optimizer.step()
        reference_opt.zero_grad()
        (reference(categorical + offsets).flatten(1) - target).square().sum().backward()
        reference_opt.step()
    torch.testing.assert_close(ours.weight, reference.weight.detach(), rtol=0, atol=2e-6)


def test_rowwise_adagrad_follows_its_formula():
    _, sparse, optimizer = _pair(RowwiseAdagrad, lr=0.05)
    weights = sparse.weight.detach().double().clone()
    accumulator = torch.zeros(sum(VOCABS), dtype=torch.float64)
    offsets = torch.tensor([0, 50, 57])
    for step in range(4):
        categorical, target = _batch(step), torch.randn(64, 12)
        rows = (categorical + offsets).reshape(-1)
        grad_out = 2 * (weights[rows].reshape(64, 12) - target.double()).reshape(-1, 4)
        grad = torch.zeros_like(weights).index_add_(0, rows, grad_out)
        touched = torch.unique(rows)
        accumulator[touched] += grad[touched].pow(2).mean(1)
        weights[touched] -= 0.05 * grad[touched] / (accumulator[touched].sqrt().unsqueeze(1) + 1e-8)
        optimizer.zero_grad()
        _loss(sparse, categorical, target).backward()
        optimizer.step()
    torch.testing.assert_close(sparse.weight.double(), weights, rtol=0, atol=1e-5)


def test_clipping_uses_the_dense_global_norm():
    dense, sparse, _ = _pair(RowSparseSGD, lr=0.1)
    head_dense, head_sparse = nn.Linear(12, 1), nn.Linear(12, 1)
    head_sparse.load_state_dict(head_dense.state_dict())
    categorical = _batch(3)
    head_dense(dense(categorical)).sum().backward()
    head_sparse(sparse(categorical)).sum().backward()
    expected = torch.nn.utils.clip_grad_norm_(list(dense.parameters()) + list(head_dense.parameters()), 0.5)
    total = clip_grad_norm(head_sparse.parameters(), sparse, 0.5)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    rows, grad_rows = sparse.sparse_grad()
    torch.testing.assert_close(grad_rows, dense.weight.grad[rows], rtol=1e-5, atol=1e-7)


def test_row_state_round_trips_through_a_checkpoint():
    _, sparse, optimizer = _pair(LazyAdam, lr=0.01)
    for step in range(3):
        optimizer.zero_grad()
        _loss(sparse, _batch(step), torch.randn(64, 12)).backward()
        optimizer.step()
    saved_weight, saved_state = sparse.weight.detach().clone(), copy.deepcopy(optimizer.state_dict())
    fresh = FeatureEmbedding(VOCABS, 4)
    fresh.enable_sparse_updates()
    fresh.weight.data.copy_(saved_weight)
    restored = LazyAdam(fresh, lr=0.01)
    restored.load_state_dict(saved_state)
    categorical, target = _batch(9), torch.randn(64, 12)
    for module, opt in ((sparse, optimizer), (fresh, restored)):
        opt.zero_grad()
        _loss(module, categorical, target).backward()
        opt.step()
    assert torch.equal(sparse.weight, fresh.weight)


def _item_world(tmp_path) -> dict:
    """Clicks driven by the item alone (500 items, Zipf traffic): an embedding must learn them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    item_logit = rng.normal(-2.0, 1.0, 500)
    paths = {}
    for split, rows in (("train", 20_000), ("valid", 5_000), ("test", 5_000)):
        items = rng.zipf(1.3, rows) % 500
        clicks = rng.random(rows) < 1 / (1 + np.exp(-item_logit[items]))
        paths[split] = str(tmp_path / f"{split}.parquet")
        pq.write_table(pa.table({"item": items, "x": rng.normal(size=rows), "click": clicks.astype(np.int8)}),
                       paths[split])
    return {"data": {**paths, "categorical": ["item"], "dense": ["x"]},
            "tasks": {"click": {"kind": "binary", "label": "click"}},
            "model": {"embedding_dim": 8, "shared": [16], "tower": [8]},
            "train": {"epochs": 4, "batch_size": 256, "threads": 1, "progress": "off", "checkpoint_every": None}}


@pytest.mark.parametrize("name,lr", [("lazy_adam", 0.003), ("rowwise_adagrad", 0.05), ("sparse_sgd", 20.0)])
def test_training_with_a_row_sparse_embeddings_group(tmp_path, name, lr):
    from multikpi import train

    config = _item_world(tmp_path)
    dense = train({**config, "out_dir": str(tmp_path / "dense")})
    config["optim"] = {"groups": {"embeddings": {"name": name, "lr": lr}}, "grad_clip": 10.0}
    run = train({**config, "out_dir": str(tmp_path / name)})
    assert run.model.embeddings.sparse and not dense.model.embeddings.sparse
    auc, dense_auc = run.metrics.splits["test"]["click"]["auc"], dense.metrics.splits["test"]["click"]["auc"]
    assert dense_auc > 0.62 and auc > dense_auc - 0.02, (auc, dense_auc)


def test_a_sparse_optimizer_for_another_group_is_a_config_error(tiny_config):
    from multikpi import ConfigError
    from multikpi.config import config_from_dict

    tiny_config["optim"] = {"groups": {"shared": {"name": "lazy_adam"}}}
    with pytest.raises(ConfigError, match=r"are for the `embeddings` group only. Got them for \['shared'\]"):
        config_from_dict(tiny_config)
