"""Oracle: the uncertainty-weighting toy example of Kendall, Gal & Cipolla (2018), reproduced
through the library's own combiner (../shared/bench/kendall_toy.md). The notebook learns
σ = [8.59, 0.92] for true noise [10, 1]; σ1 is still rising at 2000 epochs, σ2 has converged."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from multikpi.losses import UncertaintyWeighting


def _toy_data():
    np.random.seed(0)
    n, q = 100, 1
    x = np.random.randn(n, q)
    y1 = x.dot(2.0) + 8.0 + 10.0 * np.random.randn(n, 1)
    y2 = x.dot(3) + 3.0 + 1.0 * np.random.randn(n, 1)
    return x.astype(np.float32), y1.astype(np.float32), y2.astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("update", ["gradient", "closed_form"])
def test_kendall_toy_learns_the_papers_sigmas(update):
    # gradient: the notebook itself; closed_form (multikpi's default): s set to the optimum of a
    # moving average of the loss must reach the same σ, since both converge to the RMS residual.
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y1, y2 = _toy_data()
    shared = nn.Sequential(nn.Linear(1, 1024), nn.ReLU())
    heads = nn.ModuleList([nn.Linear(1024, 1), nn.Linear(1024, 1)])
    combiner = UncertaintyWeighting({"y1": "regression", "y2": "regression"}, form="plain",
                                    init=0.0 if update == "gradient" else "auto", update=update)
    params = list(shared.parameters()) + list(heads.parameters()) + [p for p in combiner.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)  # one optimizer, as in the notebook
    xt, targets = torch.from_numpy(x), [torch.from_numpy(y1), torch.from_numpy(y2)]
    order = np.arange(len(x))
    for _ in range(2000):
        np.random.shuffle(order)
        for start in range(0, len(x), 20):
            index = torch.from_numpy(order[start:start + 20])
            h = shared(xt[index])
            losses = {name: (head(h) - y[index]).square().mean()
                      for name, head, y in zip(("y1", "y2"), heads, targets)}
            optimizer.zero_grad()
            combiner(losses).backward()
            optimizer.step()
    sigma = [combiner.weights()[t]["sigma"] for t in ("y1", "y2")]
    assert 8.0 <= sigma[0] <= 10.5, sigma
    assert 0.85 <= sigma[1] <= 1.05, sigma
    # σ2 converges to the network's RMS training residual (the optimum s = log mean r²)
    with torch.no_grad():
        residual = (heads[1](shared(xt)) - targets[1]).square().mean().sqrt().item()
    assert sigma[1] == pytest.approx(residual, rel=0.05)
