"""The fusion-formula parser: values against hand computation, precedence and associativity, and
one clear one-line ConfigError per kind of invalid input (never eval)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from multikpi.config import config_from_dict
from multikpi.errors import ConfigError
from multikpi.formula import FormulaError, parse_formula

TASKS = ["click", "dwell", "convert"]
VALUES = {"click": np.array([0.1, 0.5]), "dwell": np.array([10.0, 20.0]), "convert": np.array([0.01, 0.04])}


def value(text: str, names=TASKS) -> np.ndarray:
    return parse_formula(text, names).evaluate(VALUES)


@pytest.mark.parametrize("text, expected", [
    ("click", [0.1, 0.5]),
    ("0.3 * click + 0.7 * convert", [0.3 * 0.1 + 0.7 * 0.01, 0.3 * 0.5 + 0.7 * 0.04]),
    ("click^0.5 * convert^2", [0.1**0.5 * 0.01**2, 0.5**0.5 * 0.04**2]),
    ("click * (1 + 0.05 * dwell)", [0.1 * 1.5, 0.5 * 2.0]),
    ("log(dwell) - 1", [np.log(10) - 1, np.log(20) - 1]),
    ("min(click, convert * 10, 0.2)", [0.1, 0.2]),
    ("max(click, 0.3)", [0.3, 0.5]),
    ("exp(0) + sqrt(dwell / 10)", [2.0, 1 + np.sqrt(2)]),
    ("1e-3 * dwell + .5", [0.51, 0.52]),
    ("click ** 2", [0.01, 0.25]),
    ("click × 2 − convert ÷ 0.01", [-0.8, -3.0]),
    ("2", [2.0, 2.0]),
])
def test_values(text, expected):
    assert value(text) == pytest.approx(expected)


@pytest.mark.parametrize("text, expected", [
    ("2 + 3 * 4", 14.0),        # * before +
    ("2 * 3 ^ 2", 18.0),        # ^ before *
    ("2 ^ 3 ^ 2", 512.0),       # ^ is right-associative
    ("-2 ^ 2", -4.0),           # ^ binds tighter than unary minus
    ("2 ^ -1", 0.5),            # a unary minus in the exponent
    ("8 / 4 / 2", 1.0),         # / is left-associative
    ("10 - 4 - 3", 3.0),        # - is left-associative
    ("(2 + 3) * 4", 20.0),
    ("--3", 3.0),
    ("+3 - -3", 6.0),
])
def test_precedence_and_associativity(text, expected):
    assert value(text) == pytest.approx([expected, expected])


def test_names_and_weights_substitution():
    formula = parse_formula("click^w_a * (1 - w_b*dwell)", TASKS + ["w_a", "w_b"])
    assert formula.names == {"click", "dwell", "w_a", "w_b"}
    text = formula.substitute({"w_a": 0.5, "w_b": -0.25})
    assert text == "click^0.5 * (1 - (-0.25)*dwell)"
    assert parse_formula(text, TASKS).evaluate(VALUES) == pytest.approx(
        formula.evaluate({**VALUES, "w_a": 0.5, "w_b": -0.25}))


def test_invalid_operations_give_inf_or_nan_not_errors():
    scores = parse_formula("log(click - 0.1)", TASKS).evaluate(VALUES)
    assert scores[0] == -np.inf and np.isfinite(scores[1])


@pytest.mark.parametrize("text, message", [
    ("", r"is empty; write a formula of the names click, dwell, convert"),
    ("   ", r"is empty"),
    ("clik * 2", r"unknown name 'clik' at position 0; did you mean 'click'\? names are click, dwell, convert"),
    ("click * (dwell + 1", r"unclosed '\(' at position 8"),
    ("click * dwell)", r"unmatched '\)' at position 13"),
    ("click *", r"ends after '\*': expected a number, a name or '\(' at position 7"),
    ("click + ", r"ends after '\+'"),
    ("sin(click)", r"unknown function 'sin' at position 0; functions are exp, log, max, min, sqrt"),
    ("log(click, dwell)", r"log\(\) at position 0 takes 1 argument. Got 2"),
    ("max(click)", r"max\(\) at position 0 takes 2 or more arguments. Got 1"),
    ("__import__('os')", r"unexpected character \"'\" at position 11"),
    ("__import__", r"unknown name '__import__' at position 0"),
    ("click.__class__", r"unexpected character '\.' at position 5"),
    ("click; 1", r"unexpected character ';' at position 5"),
    ("2click", r"malformed number '2click' at position 0"),
    ("click dwell", r"expected an operator or the end at position 6. Got 'dwell'"),
    ("click(2)", r"'click' is a name, not a function at position 0"),
    ("log", r"function 'log' at position 0 needs arguments"),
    ("* click", r"expected a number, a name or '\(' at position 0. Got '\*'"),
    ("1e999 * click", r"number '1e999' at position 0 is out of range"),
    ("(" * 80 + "click" + ")" * 80, r"nested more than 60 levels deep"),
    ("-" * 200 + "click", r"nested more than 60 levels deep"),
])
def test_invalid_input_is_one_clear_error(text, message):
    with pytest.raises(FormulaError, match=message) as info:
        parse_formula(text, TASKS)
    assert isinstance(info.value, ConfigError)
    assert "\n" not in str(info.value)


def test_error_names_what_it_parses():
    with pytest.raises(ConfigError, match=r"^rank: --score: unknown name 'clik' at position 0; did you mean "
                                          r"'click'\? tasks are click, dwell, convert$"):
        parse_formula("clik", TASKS, what="--score", source="rank", kind="tasks")


BASE = {
    "data": {"train": "t.parquet", "valid": "v.parquet", "dense": ["price"]},
    "tasks": {"click": {"kind": "binary", "label": "click"}, "dwell": {"kind": "regression", "label": "dwell"}},
}


def config_with(**decide) -> dict:
    raw = copy.deepcopy(BASE)
    raw["decide"] = decide
    return raw


def test_config_validates_the_score_against_the_tasks():
    config = config_from_dict(config_with(score="click * (1 + 0.1 * dwell)", calibration="platt", top_k=5))
    assert config.decide.score == "click * (1 + 0.1 * dwell)" and config.decide.top_k == 5
    assert config_from_dict(BASE).decide.calibration == "auto"
    with pytest.raises(ConfigError, match=r"`decide.score`: unknown name 'convert' at position 8; tasks are "
                                          r"click, dwell"):
        config_from_dict(config_with(score="click * convert"))
    with pytest.raises(ConfigError, match=r"`decide.score` must use at least one of the tasks"):
        config_from_dict(config_with(score="2 * 3"))
    with pytest.raises(ConfigError, match=r"`decide.calibration` must be one of auto, none, isotonic, platt"):
        config_from_dict(config_with(calibration="beta"))


def test_config_calibration_needs_a_valid_split():
    raw = config_with(calibration="isotonic")
    del raw["data"]["valid"]
    with pytest.raises(ConfigError, match=r"`decide.calibration: isotonic` needs `data.valid`"):
        config_from_dict(raw)
    del raw["decide"]["calibration"]
    assert config_from_dict(raw).decide.calibration == "auto"  # auto: platt if fitted, else none
