"""`multikpi compare` end to end on the tiny feed: runs per (arch, seed), the table with mean ± std
and the MTL gain over single_task, gate usage in the run records, and the one-line errors."""
from __future__ import annotations

import json

import pytest
import yaml

from multikpi.api.compare import _gain, arch_config, arch_configs, compare, parse_archs
from multikpi.cli.main import main
from multikpi.config import config_from_dict
from multikpi.errors import ConfigError
from multikpi.serve.predictor import Predictor


def _write(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_compare_two_archs_two_seeds(tmp_path, tiny_config, capsys):
    tiny_config["model"].update({"arch": "mmoe", "num_experts": 2})
    tiny_config["optim"] = {"groups": {"experts": {"lr": 2e-3}}}
    out = tmp_path / "cmp"
    code = main(["compare", str(_write(tmp_path, tiny_config)), "--archs", "single_task,mmoe", "--seeds", "2",
                 "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["mmoe_seed0", "mmoe_seed1", "single_task_seed0",
                                                                  "single_task_seed1"]
    table = (out / "compare.md").read_text()
    assert table == capsys.readouterr().out.split("table written to")[0]
    assert "| arch | task | metric | mean ± std | gain vs single_task | gain % | negative transfer |" in table
    assert "| mmoe | dwell | pearson_log1p | " in table and "| single_task | click | auc | " in table
    result = json.loads((out / "compare.json").read_text())
    assert result["split"] == "test" and result["seeds"] == [0, 1]
    rows = {(r["arch"], r["task"]): r for r in result["rows"]}
    mmoe_click, single_click = rows["mmoe", "click"], rows["single_task", "click"]
    assert len(mmoe_click["values"]) == 2 and "gain" not in single_click
    assert mmoe_click["gain"] == pytest.approx(mmoe_click["mean"] - single_click["mean"])
    assert f"{mmoe_click['mean']:.4f} ± {mmoe_click['std']:.4f}" in table
    # mmoe runs record gate usage per step and over the last epoch; their weights load back.
    history = [json.loads(line) for line in (out / "mmoe_seed0" / "history.jsonl").read_text().splitlines()]
    assert set(history[-1]["gates"]) == {"click", "dwell", "convert"} and len(history[-1]["gates"]["click"]) == 2
    metrics = json.loads((out / "mmoe_seed0" / "metrics.json").read_text())
    assert sum(metrics["gate_usage"]["dwell"]) == pytest.approx(1.0, abs=1e-5)
    assert len(result["gate_usage"]["mmoe"]) == 2
    assert Predictor.load(out / "mmoe_seed1").config.model.arch == "mmoe"


def test_compare_without_single_task_skips_the_gain(tmp_path, tiny_config, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(_write(tmp_path, tiny_config)), "--archs", "shared_bottom", "--seeds", "1",
                 "--out", str(out)]) == 0
    table = (out / "compare.md").read_text()
    assert "gain" not in table.splitlines()[2]
    assert "single_task is not among the archs: no MTL gain columns" in table
    assert " ± – |" in table  # one seed: no std


def test_unknown_arch_is_one_line_exit_2(tmp_path, tiny_config, capsys):
    code = main(["compare", str(_write(tmp_path, tiny_config)), "--archs", "mmoe,moe", "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert ("`--archs` must be a comma-separated list of ['shared_bottom', 'mmoe', 'ple', 'esmm', 'single_task']. "
            "Got ['moe']") in err
    assert not (tmp_path / "x").exists()


def test_every_arch_config_is_validated_before_training(tmp_path, tiny_config):
    tiny_config["loss"] = {"combine": "gradnorm", "weights": {"click": 1.0}}
    with pytest.raises(ConfigError, match=r"3 problems: \(1\) single_task, esmm: `loss.weights` is only used.*"
                                          r"\(2\) single_task: `loss.combine` must not be gradnorm.*"
                                          r"\(3\) esmm: `model.esmm` is required"):
        compare(tiny_config, ["single_task", "esmm"], 1, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_one_mapping_may_hold_the_keys_of_several_archs(tiny_config):
    tiny_config["model"].update({"num_experts": 3, "esmm": {"ctr": "click", "ctcvr": "convert"}})
    with pytest.raises(ConfigError):  # as a single config it is invalid: shared_bottom reads neither key
        config_from_dict(tiny_config)
    configs = arch_configs(tiny_config, ["mmoe", "esmm", "shared_bottom"], [0, 1])
    assert configs["mmoe"][1].model.num_experts == 3 and configs["mmoe"][1].model.esmm is None
    assert configs["esmm"][0].model.esmm.ctcvr == "convert" and configs["esmm"][0].model.num_experts == 4
    assert [c.train.seed for c in configs["shared_bottom"]] == [0, 1]
    assert tiny_config["model"]["num_experts"] == 3 and "arch" not in tiny_config["model"]  # not mutated


def test_arch_config_resets_keys_and_groups_the_arch_does_not_have(tiny_config):
    tiny_config["model"].update({"arch": "ple", "num_levels": 2, "num_experts": 3})
    tiny_config["optim"] = {"groups": {"gates": {"lr": 0.01}, "heads.click": {"lr": 0.002}}}
    config = arch_config(config_from_dict(tiny_config), "shared_bottom", seed=5)
    assert (config.model.arch, config.model.num_levels, config.model.num_experts, config.train.seed) == \
        ("shared_bottom", 1, 4, 5)
    assert set(config.optim.groups) == {"heads.click"}
    assert arch_config(config_from_dict(tiny_config), "mmoe", seed=0).model.num_experts == 3


def test_parse_archs():
    assert parse_archs(" single_task, ple ") == ["single_task", "ple"]
    with pytest.raises(ConfigError, match=r"must name each arch once. Got \['ple'\]"):
        parse_archs("ple,ple")
    with pytest.raises(ConfigError, match=r"Got ','"):
        parse_archs(",")


def test_negative_transfer_needs_the_gain_below_zero_by_more_than_one_std():
    assert _gain([0.70, 0.71], [0.72, 0.73])["negative_transfer"]  # gains -0.02, -0.02: std 0
    assert not _gain([0.70, 0.74], [0.72, 0.73])["negative_transfer"]  # gains -0.02, +0.01: mean within 1 std
    assert _gain([0.70], [0.72])["negative_transfer"]  # one seed: any negative gain
    assert _gain([0.75], [0.60])["gain_pct"] == pytest.approx(25.0)
