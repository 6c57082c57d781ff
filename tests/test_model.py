"""The model's building blocks against PyTorch references."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from multikpi.models.blocks import FeatureEmbedding


def test_fused_embedding_matches_per_column_lookup_and_gradient():
    torch.manual_seed(0)
    vocab_sizes = [5, 3, 7]
    embedding = FeatureEmbedding(vocab_sizes, dim=4)
    categorical = torch.tensor([[0, 2, 6], [4, 0, 1], [4, 2, 6]])
    out = embedding(categorical)
    offsets = [0, 5, 8]
    expected = torch.cat([F.embedding(categorical[:, j] + offsets[j], embedding.weight) for j in range(3)], dim=1)
    assert out.shape == (3, 12)
    assert torch.equal(out, expected)
    upstream = torch.randn(3, 12)
    (grad,) = torch.autograd.grad((out * upstream).sum(), embedding.weight)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), embedding.weight)
    assert torch.allclose(grad, expected_grad, atol=1e-6)
    assert torch.count_nonzero(grad[4]) > 0 and torch.count_nonzero(grad[1]) == 0  # row 4 used twice, row 1 never


def test_inference_path_matches_training_path():
    embedding = FeatureEmbedding([10, 10], dim=3)
    categorical = torch.randint(0, 10, (6, 2))
    with torch.no_grad():
        fast = embedding(categorical)
    assert torch.equal(fast, embedding(categorical).detach())
