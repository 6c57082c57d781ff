"""YAML -> dict -> RunConfig, with `key.path=value` overrides. Every problem in the file is
collected into one ConfigError, with a suggestion for misspelt keys."""
from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from multikpi.config.schema import RunConfig
from multikpi.config.validate import validate_config
from multikpi.config.yaml_loader import ConfigYAMLError, load_yaml, short
from multikpi.errors import ConfigError


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config, apply `key.path=value` overrides, parse and validate it.

    Raises ConfigError listing every problem found."""
    return config_from_dict(load_raw_config(path, overrides), source=str(path))


def load_raw_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML mapping with the overrides applied, not yet parsed (`multikpi compare` derives one
    config per architecture from it). Raises ConfigError for a missing file or invalid YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"file not found: {str(path)!r}"], source="config")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except ConfigYAMLError as err:
        raise ConfigError([str(err)], source=str(path)) from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        reason = " ".join(str(err).split())[:300]
        raise ConfigError([f"is not valid YAML: {reason}"], source=str(path)) from None
    except OSError as err:
        raise ConfigError([f"cannot be read: {err.strerror or err}"], source=str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"must be a mapping of sections. Got {type(raw).__name__}"], source=str(path))
    return apply_overrides(raw, overrides)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Parse and validate an already-loaded mapping (the Python API's entry point)."""
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError([_one_line(m) for m in _messages(list(err.errors()))], source=source) from None
    problems = validate_config(config)
    if problems:
        raise ConfigError([_one_line(p) for p in problems], source=source)
    return config


def _one_line(message: str) -> str:
    """Escape line breaks (a YAML key may hold one) so that the error stays on one line."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `raw` with each `a.b.c=value` set; the value is parsed as YAML."""
    out = _deep_copy(raw)
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"override must look like key.path=value. Got {item!r}")
            continue
        node = out
        parts = _key_parts(key)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"override {key!r}: {part!r} is not a section")
                break
        else:
            try:
                node[parts[-1]] = load_yaml(value) if value != "" else None
            except (yaml.YAMLError, ConfigYAMLError) as err:
                reason = " ".join(str(err).split())[:200]
                problems.append(f"override {key!r}: the value is not valid YAML: {reason}. Got {short(value)}")
    if problems:
        raise ConfigError(problems, source="overrides")
    return out


def _key_parts(key: str) -> list[str]:
    """Split `a.b.c` on dots, keeping the optimizer group names `heads.<task>` in one piece:
    `optim.groups.heads.click.lr` -> optim, groups, heads.click, lr."""
    parts = key.split(".")
    if parts[:3] == ["optim", "groups", "heads"] and len(parts) > 3:
        parts = parts[:2] + [f"heads.{parts[3]}"] + parts[4:]
    return parts


def _deep_copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _deep_copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_deep_copy(v) for v in node]
    return node


# The location entries pydantic adds for the branches of a union (`int | Literal["auto"]`).
_UNION_BRANCH = re.compile(r"^(constrained-\w+|literal\[.*\]|int|float|str|bool|none|list\[.*\]|dict\[.*\]|"
                           r"tuple\[.*\]|function-\w+\[.*\]|[A-Z]\w*Spec)$")


def _messages(errors: list[Any]) -> list[str]:
    """One message per key: the errors of a union's branches (`train.epochs` got neither a positive
    integer nor auto) are merged into one, "`train.epochs`: input should be greater than 0, or auto."."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for error in errors:
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and _UNION_BRANCH.match(p)))
        groups.setdefault(loc, []).append({**error, "loc": loc})
    messages = []
    for group in groups.values():
        literals = [e for e in group if e["type"] == "literal_error"]
        others = [e for e in group if e["type"] != "literal_error"]
        if not literals or not others:
            messages += [_describe(e) for e in group]
            continue
        allowed = ", ".join(e["ctx"]["expected"].replace("'", "").replace(" or ", ", ") for e in literals)
        path = ".".join(str(p) for p in group[0]["loc"])
        messages.append(f"`{path}`: {others[0]['msg'][0].lower() + others[0]['msg'][1:]}, or {allowed}. "
                        f"Got {short(group[0].get('input'))}.")
    return messages


def _describe(error: Any) -> str:
    """One pydantic error -> a message that names the key, what is allowed and what was given."""
    loc = [str(p) for p in error["loc"]]
    path = ".".join(loc)
    if len(path) > 100:  # a key is user text too
        path = path[:88] + f"... ({len(path):,} chars)"
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        allowed = _fields_at(error["loc"][:-1])
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        suggestion = f"; did you mean `{hint[0]}`?" if hint else f"; allowed: {', '.join(allowed)}"
        return f"unknown key `{path}`{suggestion}"
    if kind == "missing":
        return f"`{path}` is required"
    if kind == "literal_error":
        expected = error["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return f"`{path}` must be one of {expected}. Got {short(given)}."
    message = error["msg"][0].lower() + error["msg"][1:]
    return f"`{path}`: {message}. Got {short(given)}."


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Names of the keys allowed at `loc` in RunConfig (walks models, dicts and optionals)."""
    annotation: Any = RunConfig
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return options[0] if len(options) == 1 else annotation
    return annotation
