"""Docs as tests: the README quick start runs as written; every YAML block of the README and
docs/ is a valid config (or a fragment of one); every documented `multikpi` command line parses
with the real CLI parser, every `make` target exists and every script it names is there.

A block preceded by `<!-- docs-test: skip -->` is not checked (say why next to it)."""
from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from multikpi.cli.main import parse_args
from multikpi.config import config_from_dict
from multikpi.config.yaml_loader import load_yaml

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(<!-- docs-test: skip -->\s*)?```(\w+)\n(.*?)```", re.S)
SHELL = ("bash", "sh", "shell", "console")
BASE = {"data": {"train": "t.parquet", "categorical": ["user_id"], "dense": ["price"]},
        "tasks": {"click": {"kind": "binary", "label": "click"}, "convert": {"kind": "binary", "label": "convert"},
                  "dwell": {"kind": "regression", "label": "dwell"}}}


def blocks(page: Path, languages: tuple[str, ...], text: str | None = None) -> list[tuple[str, str]]:
    """(language, body) of the page's fenced blocks in `languages`, without the skipped ones."""
    text = page.read_text() if text is None else text
    return [(m.group(2), m.group(3)) for m in BLOCK.finditer(text) if m.group(2) in languages and not m.group(1)]


def commands(body: str) -> list[str]:
    """The command lines of a shell block: continuations joined, comments and prompts removed."""
    out, heredoc_end = [], None
    for raw in body.replace("\\\n", " ").splitlines():
        line = raw.strip().removeprefix("$ ")
        if heredoc_end is not None:  # the lines of a here-document are its command's input
            heredoc_end = None if line == heredoc_end else heredoc_end
            continue
        if line and not line.startswith("#"):
            out.append(line)
            marker = re.search(r"<<-?\s*['\"]?(\w+)", line)
            heredoc_end = marker.group(1) if marker else None
    return out


def _cases(languages: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(f"{page.relative_to(ROOT)}:{i}", body) for page in PAGES
            for i, (_, body) in enumerate(blocks(page, languages))]


def _merge(base: dict, fragment: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in fragment.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize(("where", "body"), _cases(("yaml", "yml")))
def test_every_yaml_block_is_a_valid_config_or_fragment(where, body):
    raw = load_yaml(body)
    assert isinstance(raw, dict), where
    config_from_dict(raw if {"data", "tasks"} <= set(raw) else _merge(BASE, raw), source=where)


def _shell_lines() -> list[tuple[str, str]]:
    return [(where, line) for where, body in _cases(SHELL) for line in commands(body)]


MAKE_TARGETS = set(re.findall(r"^([A-Za-z][\w.-]*):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize(("where", "line"), _shell_lines())
def test_every_documented_command_parses(where, line):
    """`multikpi ...` through the real parser (options, choices, required arguments); `make X`:
    a Makefile target; `python path.py`: the script exists."""
    for command in re.split(r"\s*(?:&&|;|\|)\s*", line.split("  #")[0].split(" # ")[0]):
        words = shlex.split(command)
        if not words:
            continue
        if words[0] == "multikpi" or words[:3] == ["python", "-m", "multikpi"]:
            argv = words[1:] if words[0] == "multikpi" else words[3:]
            try:
                parse_args(argv)
            except SystemExit as stop:
                assert stop.code == 0, f"{where}: {command!r} does not parse"
        elif words[0] == "make":
            assert all(t in MAKE_TARGETS for t in words[1:] if "=" not in t), f"{where}: {command!r}"
        elif words[0] in ("python", ".venv/bin/python") and words[1].endswith(".py"):
            assert (ROOT / words[1]).is_file() or words[1].startswith("../"), f"{where}: {command!r}"


def _quick_start() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Quick start")
    return text[start:text.index("\n## ", start + 1)]


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written(tmp_path):
    """Every block of the quick start, in order, in an empty directory: the YAML block is the file
    its first line names, shell blocks run in bash -e, Python blocks in this interpreter."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    section = _quick_start()
    ran = []
    for language, body in blocks(ROOT / "README.md", ("yaml", "python") + SHELL, section):
        if language == "yaml":
            name = body.splitlines()[0].removeprefix("#").strip()
            (tmp_path / name).write_text(body)
            continue
        argv = [sys.executable, "-c", body] if language == "python" else ["bash", "-e", "-o", "pipefail", "-c", body]
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{language} block failed:\n{body}\n{result.stderr[-3000:]}"
        ran.append(language)
    assert ran.count("bash") >= 2 and "python" in ran
    for produced in ("runs/my/metrics.json", "preds.parquet", "ranked.parquet", "runs/my/tune-decision/decide.yaml",
                     "runs/my/report.html", "runs/py/metrics.json"):
        assert (tmp_path / produced).is_file(), produced
