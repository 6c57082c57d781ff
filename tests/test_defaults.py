"""Good models with no tuning: early stopping keeps the best evaluation, a valid split is held out
when none is given, batch sizes scale with the data, estimates are right on average, log-link and
weighted losses, and the run's one-line warnings. Oracles: closed forms and synthetic worlds."""
from __future__ import annotations

import copy
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from multikpi import Predictor, evaluate, train
from multikpi.data.split import holdout_rows
from multikpi.eval.accumulators import BinaryAccumulator, DevianceAccumulator
from multikpi.losses import UncertaintyWeighting, task_losses
from multikpi.training.centering import binary_offset, smearing_factor
from multikpi.training.selection import auto_batch_size


def _auto(tiny_config: dict, **train) -> dict:
    config = copy.deepcopy(tiny_config)
    config["train"] = {"seed": 0, "threads": 1, "progress": "off", "checkpoint_every": None, **train}
    return config


# --- early stopping ---------------------------------------------------------------------------


def test_early_stopping_keeps_the_best_evaluation_and_reports_it(tiny_config):
    # A wide model on 4000 rows overfits within a few epochs; patience 2 stops it.
    config = _auto(tiny_config, epochs="auto", patience=2, max_epochs=40, batch_size=128)
    config["model"] = {"embedding_dim": 16, "shared": [128, 64], "tower": [32]}
    run = train(config)
    selection, log = run.metrics.selection, [e["valid"] for e in _epochs(run)]
    assert run.metrics.training["epochs"] == len(log) < 40  # stopped early
    values = [np.mean([m["relative_loss"] for m in epoch.values()]) for epoch in log]
    best = int(np.argmin(values)) + 1
    assert selection["epoch"] == best and selection["value"] == pytest.approx(values[best - 1])
    assert len(log) == best + 2  # exactly `patience` evaluations without improvement
    assert set(selection["per_task_best_epoch"]) == {"click", "dwell", "convert"}
    # The saved weights are the kept epoch's: their valid metrics are that evaluation's (before the
    # logit offsets fitted afterwards, which leave the AUC alone).
    kept = evaluate(run.run_dir, config["data"]["valid"])
    assert kept["click"]["auc"] == pytest.approx(log[best - 1]["click"]["auc"], abs=1e-9)
    assert kept["dwell"]["pearson_log1p"] == pytest.approx(log[best - 1]["dwell"]["pearson_log1p"], abs=1e-9)


def _epochs(run) -> list[dict]:
    import json

    return [json.loads(line) for line in (run.run_dir / "train_log.jsonl").read_text().splitlines()]


def test_an_integer_epochs_trains_exactly_that_long_and_keeps_the_last_weights(tiny_config):
    config = _auto(tiny_config, epochs=3, batch_size=512)
    run = train(config)
    assert run.metrics.training["epochs"] == 3 and run.metrics.training["steps"] == 3 * 8
    assert run.metrics.selection is not None  # still evaluated, for the report
    last = _epochs(run)[-1]["valid"]
    assert evaluate(run.run_dir, config["data"]["valid"])["click"]["auc"] == pytest.approx(last["click"]["auc"])


def test_a_metric_monitor_is_followed_in_its_direction(tiny_config):
    config = _auto(tiny_config, epochs="auto", patience=1, max_epochs=6, batch_size=512,
                   monitor="valid.click.auc")
    run = train(config)
    aucs = [e["valid"]["click"]["auc"] for e in _epochs(run)]
    assert run.metrics.selection["epoch"] == int(np.argmax(aucs)) + 1
    assert run.metrics.selection["value"] == pytest.approx(max(aucs))


def test_max_steps_stops_mid_epoch(tiny_config):
    run = train(_auto(tiny_config, epochs="auto", max_steps=5, batch_size=512))
    assert run.metrics.training["steps"] == 5


def test_auto_batch_size_scales_with_rows_within_bounds():
    assert auto_batch_size(4_000) == 256 and auto_batch_size(24_421) == 256
    assert auto_batch_size(80_000) == 1024 and auto_batch_size(300_000) == 4096
    assert auto_batch_size(1_000_000) == 4096 and auto_batch_size(10**9) == 4096


# --- the held-out validation split -----------------------------------------------------------------


def test_holdout_by_group_keeps_each_group_on_one_side():
    groups = np.repeat(np.arange(200), 7)
    train_rows, held_rows = holdout_rows(groups.size, 0.1, seed=3, groups=groups)
    assert set(groups[train_rows]).isdisjoint(groups[held_rows])
    assert len(set(groups[held_rows])) == 20 and train_rows.size + held_rows.size == groups.size
    again = holdout_rows(groups.size, 0.1, seed=3, groups=groups)
    assert np.array_equal(again[1], held_rows)  # seeded
    assert not np.array_equal(holdout_rows(groups.size, 0.1, seed=4, groups=groups)[1], held_rows)


def test_training_without_valid_holds_out_a_split_by_group_and_says_so(tiny_config, caplog):
    config = _auto(tiny_config, epochs=1, batch_size=512)
    del config["data"]["valid"]
    config["data"]["group"] = "request_id"
    with caplog.at_level(logging.INFO, logger="multikpi"):
        run = train(config)
    assert "held out" in caplog.text and "by 'request_id'" in caplog.text
    requests = pq.read_table(config["data"]["train"]).column("request_id").to_numpy()
    held = run.metrics.splits["valid"]["click"]["count"]
    assert 0.05 * requests.size < held < 0.15 * requests.size
    assert run.calibration is not None  # the held-out split calibrates too


# --- estimates right on average ----------------------------------------------------------------


def test_binary_offset_solves_the_mean_equation():
    rng = np.random.default_rng(0)
    logits, labels, weights = rng.normal(-2, 1, 5000), (rng.random(5000) < 0.3).astype(float), rng.random(5000)
    delta = binary_offset(logits, labels, weights)
    assert weights @ (1 / (1 + np.exp(-(logits + delta)))) == pytest.approx(weights @ labels, rel=1e-9)


def test_smearing_is_right_on_average_when_the_residual_spread_varies():
    # log1p(y) = ẑ(x) + ε with sd(ε) growing with x (a dwell time: most rows near 0, a wide tail).
    # E[y | x] = exp(ẑ + sd²/2) − 1 exactly, so the oracle mean is known.
    rng = np.random.default_rng(0)
    def world(rows):
        x = rng.random(rows)
        z, sd = 0.5 + x, 0.2 + 1.2 * x
        return z + sd * rng.normal(size=rows), z, np.exp(z + sd**2 / 2) - 1
    t, z, _ = world(200_000)
    w = np.ones_like(t)
    s = smearing_factor(t, z, w)
    assert np.mean(np.exp(z) * s - 1) == pytest.approx(np.mean(np.expm1(t)), rel=1e-12)  # exact on its rows
    t_new, z_new, truth = world(200_000)
    assert np.mean(np.exp(z_new) * s - 1) / np.mean(truth) == pytest.approx(1.0, abs=0.02)  # and out of sample
    duan = np.mean(np.exp(t - z))  # Duan's mean-of-exp factor is biased here, which is why it is not used
    assert abs(np.mean(np.exp(z_new) * duan - 1) / np.mean(truth) - 1) > 0.05


def test_trained_estimates_are_right_on_average(tiny_config):
    run = train(_auto(tiny_config, epochs=2, batch_size=512))
    splits = run.metrics.splits
    for task in ("click", "convert"):
        # The offset solves the pooled equation (train sample + valid) exactly ...
        predicted = sum(splits[s][task]["mean_pred"] * splits[s][task]["count"] for s in ("train", "valid"))
        observed = sum(splits[s][task]["pos_rate"] * splits[s][task]["count"] for s in ("train", "valid"))
        assert predicted / observed == pytest.approx(1.0, abs=2e-3)
        # ... and each split is right on average up to the sampling noise of its label rate
        # (within [0.95, 1.05] once a split has a few thousand positives).
        for split in ("train", "valid"):
            m = splits[split][task]
            noise = 3 * np.sqrt((1 - m["pos_rate"]) / (m["count"] * m["pos_rate"]))
            assert abs(m["calibration"] - 1) <= max(0.05, noise), (split, task, m["calibration"], noise)
    # smearing: the log1p task's mean prediction in seconds is near the mean label on valid
    assert 0.9 <= run.metrics.splits["valid"]["dwell"]["calibration"] <= 1.1
    assert run.encoder.labels["dwell"].smearing > 1.0  # E[exp(residual)] > 1 (Jensen)


def _count_world(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    segment = rng.integers(0, 5, rows)
    mean = np.exp(0.3 + 0.8 * x + 0.2 * segment)
    return pa.table({"x": x, "segment": segment, "count": rng.poisson(mean).astype(np.float64), "mean": mean})


@pytest.mark.parametrize("loss", ["poisson", "tweedie"])
def test_log_link_losses_learn_counts(tmp_path, loss):
    paths = {}
    for split, rows, seed in (("train", 6000, 0), ("valid", 2000, 1), ("test", 2000, 2)):
        paths[split] = str(tmp_path / f"{split}.parquet")
        pq.write_table(_count_world(rows, seed), paths[split])
    run = train({"data": {**paths, "categorical": ["segment"], "dense": ["x"]},
                 "tasks": {"count": {"kind": "regression", "label": "count", "loss": loss}},
                 "train": {"threads": 1, "progress": "off", "checkpoint_every": None, "seed": 0},
                 "out_dir": str(tmp_path / "run")})
    test = run.metrics.splits["test"]["count"]
    assert test["relative_loss"] < 0.6  # far better than the constant mean
    assert 0.95 <= test["calibration"] <= 1.05
    table = pq.read_table(paths["test"])
    preds = Predictor.load(run.run_dir).predict(table).column("count").to_numpy()
    assert np.corrcoef(preds, table.column("mean").to_numpy())[0, 1] > 0.95  # the true mean, recovered


# --- sample weights ---------------------------------------------------------------------------------


def test_weighted_losses_equal_losses_on_duplicated_rows():
    torch.manual_seed(0)
    outputs = {"click": torch.randn(6), "dwell": torch.randn(6)}
    labels = torch.tensor([[1, 0.5], [0, float("nan")], [1, -1.0], [0, 2.0], [float("nan"), 0.1], [1, 0.0]])
    weights = torch.tensor([1.0, 2.0, 0.0, 3.0, 1.0, 1.0])
    kinds = {"click": "binary", "dwell": "regression"}
    weighted = task_losses(outputs, labels, kinds, weights)
    index = torch.repeat_interleave(torch.arange(6), weights.long())
    duplicated = task_losses({t: v[index] for t, v in outputs.items()}, labels[index], kinds)
    for task in kinds:
        assert weighted[task].item() == pytest.approx(duplicated[task].item(), rel=1e-6)


def test_weighted_auc_equals_sklearn():
    rng = np.random.default_rng(1)
    labels, probs, weights = (rng.random(3000) < 0.2).astype(float), rng.random(3000), rng.random(3000) * 3
    acc = BinaryAccumulator()
    acc.update(labels, probs, weights)
    assert acc.auc() == pytest.approx(roc_auc_score(labels, probs, sample_weight=weights), abs=1e-12)


def test_training_with_a_weight_column(tiny_config, tmp_path):
    table = pq.read_table(tiny_config["data"]["train"])
    weighted = table.append_column("w", pa.array(np.where(table.column("click").to_numpy() == 1, 3.0, 1.0)))
    path = tmp_path / "weighted.parquet"
    pq.write_table(weighted, path)
    config = _auto(tiny_config, epochs=1, batch_size=512)
    config["data"].update({"train": str(path), "weight": "w", "valid": str(path), "test": str(path)})
    run = train(config)
    click = run.metrics.splits["test"]["click"]
    weighted_rate = (3 * table.column("click").to_numpy().sum()) / weighted.column("w").to_numpy().sum()
    assert click["pos_rate"] == pytest.approx(weighted_rate)  # metrics are weighted
    assert click["count"] == table.num_rows


# --- relative loss and uncertainty weighting ------------------------------------------------------------


def test_relative_loss_of_the_constant_predictor_is_one():
    labels = np.array([0, 1, 0, 0, 1, 0], dtype=float)
    acc = DevianceAccumulator("binary", constant=labels.mean())
    acc.update(labels, np.full(6, labels.mean()))
    assert acc.relative_loss() == pytest.approx(1.0)
    acc = DevianceAccumulator("poisson", constant=2.0)
    acc.update(np.array([0.0, 1, 5]), np.array([0.0001, 1, 5]))
    assert acc.relative_loss() < 0.01


def test_uncertainty_init_auto_starts_at_the_optimum_of_the_first_losses():
    combiner = UncertaintyWeighting({"y": "regression", "c": "binary"}, form="kendall", init="auto")
    combiner({"y": torch.tensor(0.25), "c": torch.tensor(0.1)})
    assert combiner.log_vars["y"].item() == pytest.approx(np.log(0.25))   # argmin ½e^{-s}L + ½s
    assert combiner.log_vars["c"].item() == pytest.approx(np.log(0.2))    # argmin e^{-s}L + ½s
    combiner({"y": torch.tensor(9.0), "c": torch.tensor(9.0)})
    assert combiner.log_vars["y"].item() == pytest.approx(np.log(0.25))   # only the first loss sets it


@pytest.mark.slow
def test_uncertainty_weights_rank_tasks_like_their_validation_losses(tmp_path):
    # Four regression tasks of one input with noise of different size: at the defaults the learned
    # σ² must order the tasks as their validation losses do.
    rng = np.random.default_rng(0)
    noise = {"a": 0.1, "b": 0.4, "c": 0.8, "d": 1.6}
    paths = {}
    for split, rows in (("train", 8000), ("valid", 2000)):
        x = rng.normal(size=(rows, 3))
        signal = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2]
        columns = {f"x{j}": x[:, j] for j in range(3)}
        columns.update({t: signal + s * rng.normal(size=rows) for t, s in noise.items()})
        paths[split] = str(tmp_path / f"{split}.parquet")
        pq.write_table(pa.table(columns), paths[split])
    run = train({"data": {**paths, "dense": ["x0", "x1", "x2"]},
                 "tasks": {t: {"kind": "regression", "label": t} for t in noise},
                 "loss": {"combine": "uncertainty"}, "train": {"threads": 1, "progress": "off", "seed": 0},
                 "out_dir": str(tmp_path / "run")})
    sigma2 = [run.metrics.loss_weights[t]["sigma"] ** 2 for t in noise]
    losses = [run.metrics.splits["valid"][t]["rmse"] ** 2 for t in noise]
    assert spearmanr(sigma2, losses)[0] >= 0.9
    assert not run.metrics.warnings


# --- warnings -------------------------------------------------------------------------------


def test_run_warnings_name_the_problem(tiny_config, tmp_path):
    table = pq.read_table(tiny_config["data"]["train"])
    table = table.append_column("row_id", pa.array(np.arange(table.num_rows)))
    table = table.set_column(table.schema.get_field_index("convert"), "convert", pa.array(np.zeros(table.num_rows,
                                                                                                   dtype=np.int8)))
    path = tmp_path / "train.parquet"
    pq.write_table(table, path)
    config = _auto(tiny_config, epochs=1, batch_size=512)
    config["data"]["train"] = str(path)
    del config["data"]["valid"], config["data"]["test"]  # the valid split is held out of train
    config["data"]["categorical"] = config["data"]["categorical"] + ["row_id"]
    config["loss"] = {"combine": "uncertainty", "uncertainty": {"update": "gradient"}}
    config["optim"] = {"groups": {"loss": {"lr": 0.0}}}
    warnings = train(config).metrics.warnings
    assert any("task 'convert' has one class in train" in w for w in warnings)
    assert any("'row_id' has 3,600 distinct values in 3,600" in w and "row id" in w for w in warnings)
    # every row id is new in the held-out rows, as Good-Turing expects of a row id: no OOV warning
    assert not any("out of vocabulary" in w for w in warnings)
    assert any("learned loss weights did not move" in w for w in warnings)


def test_predict_warns_when_ids_are_of_another_id_space(tiny_config, caplog):
    run = train(_auto(tiny_config, epochs=1, batch_size=512))
    table = pq.read_table(tiny_config["data"]["test"])
    shifted = table.set_column(table.schema.get_field_index("item_id"), "item_id",
                               pa.array(table.column("item_id").to_numpy() + 10**9))
    import multikpi

    with caplog.at_level(logging.WARNING, logger="multikpi"):
        multikpi.predict(run.run_dir, shifted)
    assert "categorical column 'item_id': 100.0% of the input rows are out of vocabulary" in caplog.text


def test_clip_keeps_regression_estimates_in_the_training_label_range(tiny_config, feed_files):
    from multikpi import Predictor, train
    from multikpi.config import config_from_dict
    from multikpi.errors import ConfigError
    from multikpi.eval import model_outputs

    dwell = pq.read_table(feed_files["train"]).column("dwell").to_numpy()
    low, high = float(np.nanmin(dwell)), float(np.nanmax(dwell))
    tiny_config["tasks"]["dwell"].update({"transform": "none", "clip": True})
    tiny_config["data"]["test"] = None
    predictor = Predictor.load(train(tiny_config).run_dir)
    assert predictor.encoder.labels["dwell"].clip == (low, high)  # saved with the run, read back
    wide = pq.read_table(feed_files["test"])
    for column in ("price", "item_age_h", "affinity"):  # far outside the training inputs
        wide = wide.set_column(wide.schema.get_field_index(column), column,
                               pa.array(wide.column(column).to_numpy() * 1000.0))
    estimates = predictor.predict(wide).column("dwell").to_numpy()
    assert estimates.min() >= low and estimates.max() <= high
    # the network's own estimates (transform none: the transformed scale is label units) leave the range
    outputs = model_outputs(predictor.model, predictor.encoder.encode(wide, with_labels=False), 4096, None)
    raw = predictor.encoder.to_transformed("dwell", outputs["dwell"])
    assert (raw < low).any() or (raw > high).any()
    np.testing.assert_allclose(estimates, np.clip(raw, low, high), rtol=1e-5, atol=1e-6)

    tiny_config["tasks"]["click"]["clip"] = True
    with pytest.raises(ConfigError, match=r"`tasks.click.clip` is for regression tasks"):
        config_from_dict(tiny_config)


def test_numeric_bins_auto_bins_small_data_and_not_large(tiny_config):
    from multikpi.config import config_from_dict
    from multikpi.config.schema import NUMERIC_BINS_AUTO_ROWS
    from multikpi.training.setup import encoder_specs, numeric_bins

    config = config_from_dict(tiny_config)
    assert config.data.numeric_bins == "auto"
    assert numeric_bins(config, 4000) == 128 and numeric_bins(config, NUMERIC_BINS_AUTO_ROWS) == 128
    assert numeric_bins(config, NUMERIC_BINS_AUTO_ROWS + 1) == 0
    assert encoder_specs(config, 10**6)[0].numeric_bins == 0
    explicit = config_from_dict({**tiny_config, "data": {**tiny_config["data"], "numeric_bins": 32}})
    assert numeric_bins(explicit, 10**7) == 32  # an explicit number is kept at any size
    run = train(tiny_config)  # 3,600 training rows: every dense column also enters binned
    assert run.model.embeddings.num_columns == 5 + 3  # 5 categorical columns, then 3 binned dense ones
