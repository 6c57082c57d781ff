"""A small, safe formula language for fusing per-KPI estimates into one score.

    score = click * (1 + 0.5 * dwell) * convert^0.3

The text is tokenized and parsed by hand (recursive descent) into a tiny AST, which is evaluated
with NumPy over whole columns. Nothing is ever passed to `eval`, `exec` or `getattr`: a name is
only ever looked up in the dict of columns the caller hands in, and a function only in the
literal `FUNCTIONS` table below.

Grammar (lowest precedence first; `^` is right-associative and binds tighter than unary minus,
so `-x^2` is `-(x^2)` and `2^-1` is `0.5`)::

    formula := sum END
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/") unary)*
    unary   := "-" unary | "+" unary | power
    power   := atom ("^" unary)?
    atom    := NUMBER | NAME | FUNC "(" sum ("," sum)* ")" | "(" sum ")"

NUMBER is decimal with an optional exponent (`2`, `0.5`, `.5`, `1e-3`); NAME is a letter or `_`
followed by letters, digits or `_` (the task names, plus tune-decision's weight names). `**` is
accepted for `^`, and the typographic `−`, `×`, `·`, `÷` for `-`, `*`, `*`, `/`.
Functions: log (natural), exp, sqrt (one argument each), min and max (two or more).
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from multikpi.errors import ConfigError

MAX_LENGTH = 2000
MAX_DEPTH = 60
# name -> (function, fewest arguments, most arguments or None for any number)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "log": (np.log, 1, 1),
    "exp": (np.exp, 1, 1),
    "sqrt": (np.sqrt, 1, 1),
    "min": (np.minimum.reduce, 2, None),
    "max": (np.maximum.reduce, 2, None),
}
_ALIASES = {"−": "-", "×": "*", "·": "*", "÷": "/", "**": "^"}
_TOKEN = re.compile(r"""
    (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\*\*|[-+*/^(),−×·÷])
  | (?P<space>\s+)
""", re.VERBOSE)


class FormulaError(ConfigError):
    """A formula that cannot be parsed or names something unknown. `detail` is the message
    without the `what:` prefix, e.g. "unknown name 'clik' at position 0; names are click, dwell"."""

    def __init__(self, detail: str, what: str = "formula", source: str = "config"):
        self.detail = detail
        super().__init__([f"{what}: {detail}"], source=source)


@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "op" or "end"
    text: str
    pos: int


@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Name:
    name: str
    pos: int


@dataclass(frozen=True, repr=False, eq=False)
class Unary:
    op: str
    operand: Node


@dataclass(frozen=True, repr=False, eq=False)
class Binary:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, repr=False, eq=False)
class Call:
    func: str
    args: tuple[Node, ...]


Node = Num | Name | Unary | Binary | Call


@dataclass(frozen=True, repr=False, eq=False)
class Formula:
    """A parsed formula. `evaluate({"click": (N,) array, ...})` -> (N,) float64 scores."""

    text: str
    root: Node
    tokens: tuple[Token, ...]

    def __repr__(self) -> str:
        return f"Formula({self.text!r})"

    @property
    def names(self) -> frozenset[str]:
        """Every name the formula uses (tasks and parameters)."""
        return frozenset(t.text for t in self.tokens if t.kind == "name" and t.text not in FUNCTIONS)

    def evaluate(self, values: Mapping[str, np.ndarray | float], rows: int | None = None) -> np.ndarray:
        """values: name -> (N,) array or a scalar. Returns (N,) float64; `rows` sizes a formula
        made of numbers only. Invalid operations (log of 0, 0/0) give -inf/NaN, not errors."""
        with np.errstate(all="ignore"):
            out = np.asarray(_evaluate(self.root, values), dtype=np.float64)
        if out.ndim == 0:
            size = rows if rows is not None else _length(values)
            out = np.full(size, float(out))
        return out

    def substitute(self, params: Mapping[str, float], digits: int = 4) -> str:
        """The formula's text with each parameter name replaced by its value (negative values in
        parentheses), keeping the user's spacing: `click^w` with w=0.5 -> `click^0.5`."""
        parts, last = [], 0
        for token in self.tokens:
            if token.kind == "name" and token.text in params:
                value = round(float(params[token.text]), digits)
                text = f"{value:g}" if value >= 0 else f"({value:g})"
                parts += [self.text[last:token.pos], text]
                last = token.pos + len(token.text)
        return "".join(parts) + self.text[last:]


def parse_formula(text: str, names: Iterable[str], what: str = "formula", source: str = "config",
                  kind: str = "names") -> Formula:
    """Parse `text`, allowing only `names` as variables. Raises FormulaError naming the position
    and the token. `kind` words the list of allowed names in messages ("tasks", "names")."""
    allowed = list(names)
    if not isinstance(text, str) or not text.strip():
        example = " * ".join(allowed[:2]) or "click"
        raise FormulaError(f"is empty; write a formula of the {kind} {', '.join(allowed)}, e.g. {example!r}",
                           what, source)
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"is {len(text)} characters long; at most {MAX_LENGTH} are allowed", what, source)
    parser = _Parser(text, _tokenize(text, what, source), allowed, what, source, kind)
    root = parser.parse()
    return Formula(text, root, tuple(parser.tokens))


def _tokenize(text: str, what: str, source: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FormulaError(f"unexpected character {text[pos]!r} at position {pos}", what, source)
        kind, value = match.lastgroup or "", match.group()
        if kind == "number":
            end = match.end()
            if end < len(text) and (text[end].isalnum() or text[end] in "_."):
                bad = re.sub(r"[^\w.].*", "", text[pos:])
                raise FormulaError(f"malformed number {bad!r} at position {pos}; put an operator between a "
                                   f"number and a name, e.g. 2 * x", what, source)
            if not math.isfinite(float(value)):
                raise FormulaError(f"number {value!r} at position {pos} is out of range", what, source)
        if kind != "space":
            tokens.append(Token(kind, _ALIASES.get(value, value), pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent over the token list; one method per grammar rule."""

    def __init__(self, text: str, tokens: list[Token], allowed: list[str], what: str, source: str, kind: str):
        self.text, self.tokens, self.allowed = text, tokens, allowed
        self.what, self.source, self.kind = what, source, kind
        self.i, self.depth = 0, 0

    def error(self, detail: str) -> FormulaError:
        return FormulaError(detail, self.what, self.source)

    @property
    def token(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def parse(self) -> Node:
        node = self.sum()
        token = self.token
        if token.kind != "end":
            if token.text == ")":
                raise self.error(f"unmatched ')' at position {token.pos}")
            raise self.error(f"expected an operator or the end at position {token.pos}. Got {token.text!r}")
        return node

    def sum(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"is nested more than {MAX_DEPTH} levels deep at position {self.token.pos}")
        node = self.product()
        while self.token.text in ("+", "-") and self.token.kind == "op":
            op = self.take().text
            node = Binary(op, node, self.product())
        self.depth -= 1
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.token.text in ("*", "/") and self.token.kind == "op":
            op = self.take().text
            node = Binary(op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.token.kind == "op" and self.token.text in ("-", "+"):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"is nested more than {MAX_DEPTH} levels deep at position {self.token.pos}")
            op = self.take().text
            operand = self.unary()
            self.depth -= 1
            return Unary("-", operand) if op == "-" else operand
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.token.kind == "op" and self.token.text == "^":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"is nested more than {MAX_DEPTH} levels deep at position {self.token.pos}")
            exponent = self.unary()  # right-associative: a^b^c = a^(b^c); a^-1 is allowed
            self.depth -= 1
            return Binary("^", base, exponent)
        return base

    def atom(self) -> Node:
        token = self.take()
        if token.kind == "number":
            return Num(float(token.text))
        if token.kind == "name":
            if self.token.text == "(" and self.token.kind == "op":
                return self.call(token)
            if token.text in FUNCTIONS:
                raise self.error(f"function {token.text!r} at position {token.pos} needs arguments in "
                                 f"parentheses, e.g. {token.text}(x)")
            if token.text not in self.allowed:
                raise self.error(self.unknown_name(token))
            return Name(token.text, token.pos)
        if token.text == "(":
            node = self.sum()
            if self.token.text != ")":
                raise self.error(f"unclosed '(' at position {token.pos}")
            self.take()
            return node
        if token.kind == "end":
            after = self.tokens[self.i - 2].text if self.i >= 2 else ""
            raise self.error(f"ends after {after!r}: expected a number, a name or '(' at position {token.pos}")
        raise self.error(f"expected a number, a name or '(' at position {token.pos}. Got {token.text!r}")

    def call(self, name: Token) -> Node:
        if name.text not in FUNCTIONS:
            what = f"{name.text!r} is a {self.kind[:-1]}, not a function" if name.text in self.allowed \
                else f"unknown function {name.text!r}"
            raise self.error(f"{what} at position {name.pos}; functions are {', '.join(sorted(FUNCTIONS))}")
        opening = self.take()
        args = [self.sum()]
        while self.token.text == ",":
            self.take()
            args.append(self.sum())
        if self.token.text != ")":
            if self.token.kind == "end":
                raise self.error(f"unclosed '(' at position {opening.pos}")
            raise self.error(f"expected ',' or ')' at position {self.token.pos}. Got {self.token.text!r}")
        self.take()
        _, fewest, most = FUNCTIONS[name.text]
        if len(args) < fewest or (most is not None and len(args) > most):
            wanted = f"{fewest} argument" if most == fewest == 1 else f"{fewest} or more arguments"
            raise self.error(f"{name.text}() at position {name.pos} takes {wanted}. Got {len(args)}")
        return Call(name.text, tuple(args))

    def unknown_name(self, token: Token) -> str:
        hint = difflib.get_close_matches(token.text, self.allowed, n=1)
        suggestion = f"did you mean {hint[0]!r}? " if hint else ""
        return (f"unknown name {token.text!r} at position {token.pos}; {suggestion}"
                f"{self.kind} are {', '.join(self.allowed) or '(none)'}")


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Call):
        return node.args
    return ()


def _evaluate(root: Node, values: Mapping[str, np.ndarray | float]) -> np.ndarray | float:
    """Evaluate the tree without recursion (post-order with an explicit stack): a flat chain such as
    `1 + 1 + ... + click` is a tree as deep as it is long, which recursion could not walk."""
    results: list[np.ndarray | float] = []
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        children = _children(node)
        if children and not expanded:
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(children))
            continue
        args = [results.pop() for _ in children][::-1]
        results.append(_apply(node, args, values))
    return results[0]


def _apply(node: Node, args: list[np.ndarray | float], values: Mapping[str, np.ndarray | float]) -> np.ndarray | float:
    """One node's value from its children's values."""
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Name):
        return np.asarray(values[node.name], dtype=np.float64)
    if isinstance(node, Unary):
        return -args[0]
    if isinstance(node, Call):
        func, _, _ = FUNCTIONS[node.func]
        if node.func in ("min", "max"):
            return func(np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in args]))
        return func(np.asarray(args[0], dtype=np.float64))
    assert isinstance(node, Binary)
    left, right = args
    if node.op == "+":
        return np.add(left, right)
    if node.op == "-":
        return np.subtract(left, right)
    if node.op == "*":
        return np.multiply(left, right)
    if node.op == "/":
        return np.divide(left, right)
    return np.power(np.asarray(left, dtype=np.float64), right)


def _length(values: Mapping[str, np.ndarray | float]) -> int:
    sizes = [np.size(v) for v in values.values() if np.ndim(v) > 0]
    return sizes[0] if sizes else 1
