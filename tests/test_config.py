"""Tests of config loading and validation: every user mistake is a one-line ConfigError that names
the key, what is allowed and what was given; several mistakes are reported together."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from multikpi.config import RunConfig, apply_overrides, config_from_dict, load_config
from multikpi.errors import ConfigError, MultiKPIError

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

BASE = {
    "data": {
        "train": "train.parquet",
        "categorical": ["user_id", "item_id"],
        "dense": ["price", "affinity"],
        "log1p": ["price"],
    },
    "tasks": {
        "click": {"kind": "binary", "label": "click"},
        "dwell": {"kind": "regression", "label": "dwell", "transform": "log1p"},
        "convert": {"kind": "binary", "label": "convert", "train_on": "click"},
    },
}


def raw(**sections) -> dict:
    """A deep copy of BASE with sections merged in (one level deep)."""
    out = copy.deepcopy(BASE)
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name].update(value)
        else:
            out[name] = value
    return out


def problems_of(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(config)
    err = info.value
    assert isinstance(err.problems, list) and err.problems
    assert "\n" not in str(err) and "\r" not in str(err)
    return err.problems


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- a valid config --------------------------------------------------------------------------

def test_valid_config_parses_with_defaults():
    config = config_from_dict(raw())
    assert isinstance(config, RunConfig)
    assert config.tasks["dwell"].transform == "log1p"
    assert config.tasks["convert"].train_on == "click"
    assert config.train.epochs == "auto" and config.loss.combine == "sum" and config.optim.default.lr == "auto"
    assert config.train.batch_size == "auto" and config.data.valid_fraction == 0.1
    assert config.model.shared == [256, 128]


def test_config_error_is_a_multikpi_error():
    assert issubclass(ConfigError, MultiKPIError)


# --- single problems, one line each ----------------------------------------------------------

def test_unknown_key_suggests_the_closest_name():
    with pytest.raises(ConfigError, match=r"unknown key `model\.sharde`; did you mean `shared`\?"):
        config_from_dict(raw(model={"sharde": [64]}))


def test_unknown_key_inside_a_task_suggests_a_task_field():
    with pytest.raises(ConfigError, match=r"unknown key `tasks\.click\.lable`; did you mean `label`\?"):
        config_from_dict(raw(tasks={"click": {"kind": "binary", "label": "click", "lable": "x"}}))


def test_unknown_top_level_key_without_close_match_lists_allowed_keys():
    with pytest.raises(ConfigError, match=r"unknown key `zzzz`; allowed: " + ", ".join(RunConfig.model_fields)):
        config_from_dict(raw(zzzz=1))


def test_literal_error_in_sklearn_style():
    expected = "`loss.combine` must be one of sum, weighted, uncertainty, gradnorm, dwa. Got 'uncertanty'."
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
        config_from_dict(raw(loss={"combine": "uncertanty"}))
    assert info.value.problems == [expected]
    assert str(info.value) == f"config: {expected}"


def test_missing_required_key():
    config = raw()
    del config["tasks"]["click"]["label"]
    with pytest.raises(ConfigError, match=r"`tasks\.click\.label` is required"):
        config_from_dict(config)


def test_missing_required_section():
    config = raw()
    del config["data"]
    with pytest.raises(ConfigError, match=r"`data` is required"):
        config_from_dict(config)


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"`train\.epochs`: input should be a valid integer.*Got 'many'\."):
        config_from_dict(raw(train={"epochs": "many"}))


def test_zero_epochs_rejected():
    with pytest.raises(ConfigError, match=r"`train\.epochs`: input should be greater than 0, or auto\. Got 0\."):
        config_from_dict(raw(train={"epochs": 0}))


def test_negative_lr():
    with pytest.raises(ConfigError, match=r"`optim\.default\.lr`: input should be greater than or equal to 0, or auto\. Got -0\.1\."):
        config_from_dict(raw(optim={"default": {"lr": -0.1}}))


def test_negative_group_lr():
    with pytest.raises(ConfigError, match=r"`optim\.groups\.shared\.lr`: input should be greater than or equal to 0"):
        config_from_dict(raw(optim={"groups": {"shared": {"lr": -1.0}}}))


def test_unknown_task_in_inputs_from():
    config = raw()
    config["tasks"]["dwell"]["inputs_from"] = ["clik"]
    with pytest.raises(ConfigError, match=re.escape(
            "`tasks.dwell.inputs_from` must name tasks among ['click', 'convert', 'dwell']. Got 'clik'")):
        config_from_dict(config)


def test_unknown_task_in_loss_weights():
    weights = {"click": 1.0, "dwell": 1.0, "convert": 1.0, "ctr": 2.0}
    with pytest.raises(ConfigError, match=re.escape(
            "`loss.weights` must name tasks among ['click', 'convert', 'dwell']. Got ['ctr']")):
        config_from_dict(raw(loss={"combine": "weighted", "weights": weights}))


def test_weighted_needs_a_weight_for_every_task():
    with pytest.raises(ConfigError, match=re.escape(
            "`loss.weights` must give a weight for every task ['click', 'convert', 'dwell']. Missing ['convert', 'dwell']")):
        config_from_dict(raw(loss={"combine": "weighted", "weights": {"click": 1.0}}))


def test_weighted_with_every_weight_is_valid():
    config = config_from_dict(raw(loss={"combine": "weighted", "weights": {"click": 1.0, "dwell": 0.5, "convert": 2.0}}))
    assert config.loss.weights == {"click": 1.0, "dwell": 0.5, "convert": 2.0}


def test_weights_without_weighted_combine():
    with pytest.raises(ConfigError, match=r"`loss\.weights` is only used with `loss\.combine: weighted`\. Got combine 'sum'"):
        config_from_dict(raw(loss={"weights": {"click": 1.0, "dwell": 1.0, "convert": 1.0}}))


def test_closed_form_uncertainty_rejects_what_only_a_learned_weight_uses():
    problems = problems_of(raw(loss={"combine": "uncertainty", "uncertainty": {"init": 0.5}},
                               optim={"groups": {"loss": {"lr": 0.01}}}))
    assert problems == [
        "`loss.uncertainty.init` is where a learned log-variance starts: it needs "
        "`loss.uncertainty.update: gradient`. Got init 0.5 with update closed_form",
        "`optim.groups.loss` trains learned loss weights, but `loss.uncertainty.update: closed_form` "
        "sets them to their optimum: set `loss.uncertainty.update: gradient` to train them"]
    config = config_from_dict(raw(loss={"combine": "uncertainty", "uncertainty": {"update": "gradient", "init": 0.5}},
                                  optim={"groups": {"loss": {"lr": 0.01}}}))
    assert config.loss.uncertainty.init == 0.5


def test_negative_loss_weight():
    weights = {"click": 1.0, "dwell": -1.0, "convert": 1.0}
    with pytest.raises(ConfigError, match=re.escape("`loss.weights` must be >= 0. Got negative weights for ['dwell']")):
        config_from_dict(raw(loss={"combine": "weighted", "weights": weights}))


def test_cycle_in_inputs_from_names_the_path():
    config = raw()
    config["tasks"]["click"]["inputs_from"] = ["dwell"]
    config["tasks"]["dwell"]["inputs_from"] = ["convert"]
    config["tasks"]["convert"]["inputs_from"] = ["click"]
    with pytest.raises(ConfigError, match=r"must not form a cycle\. Got click -> dwell -> convert -> click$"):
        config_from_dict(config)


def test_self_loop_is_a_cycle():
    config = raw()
    config["tasks"]["dwell"]["inputs_from"] = ["dwell"]
    with pytest.raises(ConfigError, match=r"must not form a cycle\. Got dwell -> dwell$"):
        config_from_dict(config)


def test_train_on_a_regression_task():
    config = raw()
    config["tasks"]["convert"]["train_on"] = "dwell"
    with pytest.raises(ConfigError, match=re.escape("`tasks.convert.train_on` must name a binary task. Got 'dwell' (regression)")):
        config_from_dict(config)


def test_train_on_itself_or_unknown():
    config = raw()
    config["tasks"]["convert"]["train_on"] = "convert"
    with pytest.raises(ConfigError, match=re.escape(
            "`tasks.convert.train_on` must be another task among ['click', 'dwell']. Got 'convert'")):
        config_from_dict(config)
    config["tasks"]["convert"]["train_on"] = "clicks"
    with pytest.raises(ConfigError, match=r"train_on` must be another task.*Got 'clicks'"):
        config_from_dict(config)


def test_log1p_on_a_non_dense_column():
    with pytest.raises(ConfigError, match=re.escape("`data.log1p` must name columns of `data.dense`. Got ['user_id']")):
        config_from_dict(raw(data={"log1p": ["price", "user_id"]}))


def test_label_column_used_as_a_feature():
    with pytest.raises(ConfigError, match=re.escape("label columns must not also be input features. Got ['click', 'dwell']")):
        config_from_dict(raw(data={"categorical": ["user_id", "click"], "dense": ["price", "dwell"]}))


def test_column_both_categorical_and_dense():
    with pytest.raises(ConfigError, match=re.escape("columns must be either categorical or dense, not both. Got ['price']")):
        config_from_dict(raw(data={"categorical": ["user_id", "price"]}))


def test_no_features():
    with pytest.raises(ConfigError, match=r"`data\.categorical` and `data\.dense` are both empty"):
        config_from_dict(raw(data={"categorical": [], "dense": [], "log1p": []}))


def test_no_tasks():
    config = raw()
    config["tasks"] = {}
    with pytest.raises(ConfigError, match=r"`tasks` must name at least one task"):
        config_from_dict(config)


@pytest.mark.parametrize("name", ["2click", "click-through", "click\n", "a b"])
def test_bad_task_names(name):
    config = raw()
    config["tasks"][name] = {"kind": "binary", "label": "other"}
    with pytest.raises(ConfigError, match=r"task name must be a letter or _"):
        config_from_dict(config)


def test_unknown_optim_group_key():
    with pytest.raises(ConfigError, match=re.escape(
            "`optim.groups` keys must be among ['embeddings', 'shared', 'heads.click', 'heads.dwell', "
            "'heads.convert', 'loss']. Got ['tower']")):
        config_from_dict(raw(optim={"groups": {"tower": {"lr": 0.1}}}))


def test_known_optim_groups_are_accepted():
    config = config_from_dict(raw(optim={"groups": {"embeddings": {"name": "adagrad", "lr": 0.05},
                                                    "heads.dwell": {"lr": 1e-4}}}))
    assert config.optim.groups["embeddings"].name == "adagrad"
    assert config.optim.groups["heads.dwell"].lr == 1e-4
    assert config.optim.groups["heads.dwell"].name is None  # falls back to optim.default


def test_loss_group_weight_decay_must_be_zero():
    with pytest.raises(ConfigError, match=r"`optim\.groups\.loss\.weight_decay` must be 0.*Got 0\.1"):
        config_from_dict(raw(optim={"groups": {"loss": {"weight_decay": 0.1}}}))


# --- several problems in one error -----------------------------------------------------------

def test_several_schema_problems_reported_together():
    config = raw(model={"sharde": [64]}, loss={"combine": "uncertanty"}, train={"epochs": "many"})
    del config["tasks"]["click"]["label"]
    problems = problems_of(config)
    assert len(problems) >= 4
    text = " | ".join(problems)
    for fragment in ("`model.sharde`", "`loss.combine`", "`train.epochs`", "`tasks.click.label` is required"):
        assert fragment in text


def test_several_cross_field_problems_reported_together():
    config = raw(data={"log1p": ["user_id"], "dense": ["price", "click"]},
                 optim={"groups": {"tower": {}}})
    config["tasks"]["dwell"]["inputs_from"] = ["nope"]
    with pytest.raises(ConfigError) as info:
        config_from_dict(config)
    err = info.value
    assert len(err.problems) == 4
    message = str(err)
    assert "\n" not in message
    assert message.startswith("config: 4 problems: (1) ")
    for i, problem in enumerate(err.problems, 1):
        assert f"({i}) {problem}" in message


def test_newline_in_a_key_keeps_the_error_on_one_line():
    config = raw()
    config["bad\nkey"] = 1  # a schema problem
    assert problems_of(config) == ["unknown key `bad\\nkey`; allowed: " + ", ".join(RunConfig.model_fields)]
    config = raw()
    config["tasks"]["a\nb"] = {"kind": "binary", "label": "other", "inputs_from": ["zz"]}  # cross-field problems
    problems = problems_of(config)
    assert len(problems) == 2
    assert problems[1].startswith("`tasks.a\\nb.inputs_from` must name tasks among")


# --- overrides -------------------------------------------------------------------------------

def test_override_scalar_parsed_as_yaml(tmp_path):
    path = write(tmp_path, yaml.safe_dump(raw()))
    config = load_config(path, ["train.epochs=3", "optim.default.lr=0.01", "out_dir=runs/x"])
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.optim.default.lr == pytest.approx(0.01)
    assert config.out_dir == "runs/x"


def test_override_task_field(tmp_path):
    config = raw()
    config["tasks"]["dwell"] = {"kind": "regression", "label": "dwell"}
    path = write(tmp_path, yaml.safe_dump(config))
    assert load_config(path, ["tasks.dwell.kind=binary"]).tasks["dwell"].kind == "binary"
    assert load_config(path).tasks["dwell"].kind == "regression"


def test_override_creates_nested_new_keys():
    config = raw()
    out = apply_overrides(config, ["model.dropout=0.25", "optim.groups.shared.lr=0.5", "tasks.ctr.kind=binary"])
    assert out["model"] == {"dropout": 0.25}
    assert out["optim"] == {"groups": {"shared": {"lr": 0.5}}}
    assert out["tasks"]["ctr"] == {"kind": "binary"}
    assert "model" not in config and "ctr" not in config["tasks"]  # input is not modified
    parsed = config_from_dict(apply_overrides(config, ["model.dropout=0.25", "optim.groups.shared.lr=0.5"]))
    assert parsed.model.dropout == 0.25 and parsed.optim.groups["shared"].lr == 0.5


def test_override_list_value():
    out = config_from_dict(apply_overrides(raw(), ["model.shared=[32, 16]"]))
    assert out.model.shared == [32, 16]


def test_override_result_is_validated(tmp_path):
    path = write(tmp_path, yaml.safe_dump(raw()))
    with pytest.raises(ConfigError, match=r"`tasks\.click\.kind` must be one of binary, regression\. Got 'multiclass'\."):
        load_config(path, ["tasks.click.kind=multiclass"])
    with pytest.raises(ConfigError, match=r"unknown key `train\.epoch`; did you mean `epochs`\?"):
        load_config(path, ["train.epoch=3"])


@pytest.mark.parametrize("item", ["train.epochs", "=3", "epochs3"])
def test_malformed_override(item):
    with pytest.raises(ConfigError, match=re.escape(f"override must look like key.path=value. Got {item!r}")) as info:
        apply_overrides(raw(), [item])
    assert info.value.source == "overrides"


def test_override_through_a_scalar():
    with pytest.raises(ConfigError, match=r"override 'train\.epochs\.x': 'epochs' is not a section"):
        apply_overrides(raw(train={"epochs": 2}), ["train.epochs.x=1"])


def test_override_with_invalid_yaml_value():
    with pytest.raises(ConfigError, match=r"override 'model\.shared': the value is not valid YAML.*Got '\[1'") as info:
        apply_overrides(raw(), ["model.shared=[1"])
    assert "\n" not in str(info.value)


def test_several_bad_overrides_reported_together():
    with pytest.raises(ConfigError) as info:
        apply_overrides(raw(), ["a", "b", "train.epochs=2"])
    assert len(info.value.problems) == 2


# --- files -----------------------------------------------------------------------------------

def test_yaml_syntax_error(tmp_path):
    path = write(tmp_path, "data:\n  train: [a, b\ntasks: {}\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML") as info:
        load_config(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match=r"must be a mapping of sections\. Got list"):
        load_config(path)


def test_empty_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match=r"must be a mapping of sections\. Got NoneType"):
        load_config(write(tmp_path, ""))


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"file not found: .*nope\.yaml"):
        load_config(path)


def test_several_problems_in_one_file(tmp_path):
    text = """\
data:
  train: t.parquet
  categorical: [user_id]
  dense: [price]
tasks:
  click: {kind: binary, label: click}
model:
  sharde: [64]
loss:
  combine: uncertanty
train:
  epochs: many
"""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert len(err.problems) >= 3
    assert "\n" not in str(err)
    assert str(err).startswith(f"{path}: {len(err.problems)} problems: ")
    assert "did you mean `shared`" in str(err) and "'uncertanty'" in str(err) and "'many'" in str(err)


def test_file_problem_is_reported_with_the_file_name(tmp_path):
    path = write(tmp_path, yaml.safe_dump(raw(loss={"combine": "dwa", "weights": {"click": 1.0}})))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: `loss\.weights` is only used"):
        load_config(path)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)
    assert config.tasks and (config.data.categorical or config.data.dense)
    # And the override path on a real file.
    assert load_config(path, ["train.epochs=2"]).train.epochs == 2


def test_there_are_shipped_configs():
    assert len(SHIPPED_CONFIGS) >= 2


def test_override_reaches_a_head_group(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "t.parquet", "dense": ["x"]},
                                    "tasks": {"click": {"kind": "binary", "label": "y"}}}))
    config = load_config(path, ["optim.groups.heads.click.lr=0.003", "optim.groups.shared.lr=0.0001"])
    assert config.optim.groups["heads.click"].lr == 0.003
    assert config.optim.groups["shared"].lr == 0.0001


def test_empty_shared_layers_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"`model.shared`: list should have at least 1 item"):
        config_from_dict({"data": {"train": "t.parquet", "dense": ["x"]},
                          "tasks": {"click": {"kind": "binary", "label": "y"}}, "model": {"shared": []}})


@pytest.mark.parametrize("written, parsed", [(False, "off"), (True, "on"), ("auto", "auto")])
def test_progress_accepts_yaml_on_off(written, parsed):
    config = config_from_dict({"data": {"train": "t.parquet", "dense": ["x"]},
                               "tasks": {"click": {"kind": "binary", "label": "y"}}, "train": {"progress": written}})
    assert config.train.progress == parsed
