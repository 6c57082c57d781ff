"""Small building blocks: the MLP (the fused embedding table is in embedding.py)."""
from __future__ import annotations

from torch import nn

from multikpi.models.embedding import FeatureEmbedding

__all__ = ["FeatureEmbedding", "last_linear", "mlp", "mlp_out_dim"]


def mlp(in_dim: int, hidden: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear -> ReLU (-> Dropout) for each width in `hidden`. (B, in_dim) -> (B, hidden[-1])."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


def mlp_out_dim(in_dim: int, hidden: list[int]) -> int:
    return hidden[-1] if hidden else in_dim


def last_linear(module: nn.Module) -> nn.Linear:
    """The last nn.Linear inside `module` (GradNorm measures gradient norms on it)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no linear layer")
    return linears[-1]
