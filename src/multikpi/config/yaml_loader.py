"""A YAML loader for configs that a hostile file cannot turn against the machine or the user.

PyYAML's safe loader builds no objects, but it still expands aliases: a 600-byte "billion laughs"
file (anchors referring to anchors) becomes gigabytes in memory, and a self-referencing alias is a
recursive structure that no copy or message can walk. A config never needs either, so aliases are
refused outright. A duplicated key would silently keep only the last value (and drop a task):
refused too, naming the key and the line.
"""
from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a config is a few kilobytes


class ConfigYAMLError(ValueError):
    """A YAML construct a config may not use; the message names it and where it is."""


class _ConfigLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigYAMLError(f"uses the YAML alias *{event.anchor} at line {event.start_mark.line + 1}; "
                                  f"aliases and anchors are not allowed in a config: write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigYAMLError(f"has the key {short(key)} twice (lines {seen[key]} and "
                                      f"{key_node.start_mark.line + 1}); a key may appear once per section")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML text with the restrictions of the module docstring. Raises ConfigYAMLError or
    yaml.YAMLError."""
    if len(text) > MAX_BYTES:
        raise ConfigYAMLError(f"is {len(text):,} characters long; a config may have at most {MAX_BYTES:,}")
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: messages quote what the user wrote, not megabytes of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 12] + f"... ({len(text):,} chars)"
