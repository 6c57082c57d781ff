"""The MMoE paper's synthetic data (Ma et al., KDD 2018, §3.2): weight cosine, label formula, CLI."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from multikpi.cli.main import main
from multikpi.synthetic.mmoe import make_mmoe_synthetic, mmoe_synthetic_arrays, mmoe_synthetic_world


@pytest.mark.parametrize("p", [-1.0, -0.3, 0.0, 0.5, 0.9, 1.0])
def test_weight_cosine_is_the_correlation(p):
    world = mmoe_synthetic_world(p, world_seed=7)
    cosine = world.w1 @ world.w2 / (np.linalg.norm(world.w1) * np.linalg.norm(world.w2))
    assert cosine == pytest.approx(p, abs=1e-12)
    assert world.u1 @ world.u2 == pytest.approx(0.0, abs=1e-12)
    assert np.linalg.norm(world.u1) == pytest.approx(1.0) and np.linalg.norm(world.w2) == pytest.approx(1.0)  # c = 1
    assert world.w1.shape == (100,) and world.alpha.shape == world.beta.shape == (10,)


def test_labels_follow_the_formula_plus_small_noise():
    world = mmoe_synthetic_world(0.5, world_seed=3)
    x, y = mmoe_synthetic_arrays(20_000, world, seed=1)
    assert x.shape == (20_000, 100) and y.shape == (20_000, 2)
    for task, w in enumerate((world.w1, world.w2)):
        for row in range(3):  # the formula written out, row by row
            wx = float(w @ x[row].astype(np.float64))
            mean = wx + sum(np.sin(a * wx + b) for a, b in zip(world.alpha, world.beta))
            assert abs(y[row, task] - mean) < 0.5
        residual = y[:, task] - world.label_means(x.astype(np.float64))[task]
        assert residual.std() == pytest.approx(0.1, rel=0.05)  # ε ~ N(0, 0.01)
        assert abs(residual.mean()) < 0.005
    assert np.std(x) == pytest.approx(1.0, rel=0.01)
    assert abs(world.alpha).max() < 0.5 and abs(world.beta).max() < 0.5  # α, β ~ N(0, 0.01)


def test_same_world_for_every_row_seed_and_correlation():
    a, b = mmoe_synthetic_world(0.9, 11), mmoe_synthetic_world(0.2, 11)
    assert np.array_equal(a.w1, b.w1) and np.array_equal(a.alpha, b.alpha)
    table = make_mmoe_synthetic(50, 0.9, seed=4, world_seed=11)
    assert table.column_names == [f"x{j}" for j in range(100)] + ["y1", "y2"]


def test_make_data_cli(tmp_path, capsys):
    out = tmp_path / "syn.parquet"
    assert main(["make-data", "mmoe-synthetic", "--rows", "200", "--correlation", "0.5", "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 200 and table.num_columns == 102


@pytest.mark.parametrize("args, message", [
    (["mmoe-synthetic", "--correlation", "1.5"], "--correlation must be in [-1, 1]. Got 1.5"),
    (["mmoe-synthetic", "--correlation", "nan"], "--correlation must be in [-1, 1]. Got nan"),
    (["mmoe-synthetic"], "--correlation is required for mmoe-synthetic"),
    (["feed", "--correlation", "0.5"], "--correlation is only used by mmoe-synthetic. Got kind 'feed'"),
])
def test_make_data_correlation_errors(tmp_path, capsys, args, message):
    assert main(["make-data", *args, "--rows", "10", "--out", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "x.parquet").exists()
