"""The rule expression language: a small, safe subset of Python expressions over an entity's fields,
parsed with simpleeval's parser and compiled once into nested closures.

Nothing here calls `eval`, `exec` or `compile`: the parsed tree is walked once at load, each node is
checked against a whitelist and becomes a closure `fn(record, now)`. A field is read straight from
the entity's record through its attribute path (`collector.state.FIELDS`); a missing object on the
path reads as None.

Semantics (documented in docs/alerts.md):

- names are the entity's fields (`FIELDS[kind]`) or named constants (`alerts.params`); an unknown
  name is an error at load, naming the field and the kind;
- `labels.customer` and `labels["customer"]` read an entity label (missing label: None);
- a missing value is None, and a number field holding NaN reads as None. Any comparison with a None
  operand is false, except explicit tests against the literal None (`x == None`, `x is None`,
  `x != None`, `x is not None`); arithmetic with None gives None, and so does a division by zero;
- `and`, `or`, `not` and `a if c else b` follow Python (None is falsy);
- helpers: abs, min, max, round, coalesce(a, b, ...) (first non-None), and for annotation templates
  human_bytes, human_duration, percent (`collector.formats`).

An expression that fails at run time (a string compared with a number) raises; the engine counts
that as an evaluation error and reads it as false.
"""

from __future__ import annotations

import ast
import operator as op
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import simpleeval

from collector import formats
from collector.state import TIME_FIELDS, field_reader

# A compiled expression: fn(record, now). The record is the entity's state object (or a FieldRecord);
# `now` is only read by the clock-dependent fields (TIME_FIELDS).
Fn = Callable[[Any, float], Any]


class ExprError(ValueError):
    """An expression that cannot be used: bad syntax, a forbidden construct, an unknown name."""


# simpleeval's guarded operators bound the size of results (string repetition, huge powers); with a
# small number on one side the plain operator is as safe.
_GUARDED: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    k: simpleeval.DEFAULT_OPERATORS[k] for k in (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
}
_PLAIN: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: op.add, ast.Sub: op.sub, ast.Mult: op.mul, ast.Div: op.truediv, ast.FloorDiv: op.floordiv,
    ast.Mod: op.mod, ast.Pow: op.pow,
}
_SMALL = 1000
_MIRRORED: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE, ast.Eq: ast.Eq, ast.NotEq: ast.NotEq,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: op.eq, ast.NotEq: op.ne, ast.Lt: op.lt, ast.LtE: op.le, ast.Gt: op.gt, ast.GtE: op.ge,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
# `a <op> b` as `<op'>(b, a)`: a field against a constant calls a C function with the constant first.
_REVERSED: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: op.eq, ast.NotEq: op.ne, ast.Lt: op.gt, ast.LtE: op.ge, ast.Gt: op.lt, ast.GtE: op.le,
    ast.In: op.contains, ast.NotIn: lambda b, a: a not in b,
}


def _none_safe(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return None if any(a is None for a in args) else fn(*args)
    return call


def _coalesce(*args: Any) -> Any:
    return next((a for a in args if a is not None), None)


HELPERS: dict[str, Callable[..., Any]] = {
    "abs": _none_safe(abs),
    "min": _none_safe(min),
    "max": _none_safe(max),
    "round": _none_safe(round),
    "coalesce": _coalesce,
    "human_bytes": formats.human_bytes,
    "human_duration": formats.human_duration,
    "percent": formats.percent,
}


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled expression: `fn(record, now)` evaluates it for one record; `fields` are the entity
    fields it reads."""

    text: str
    fn: Fn
    fields: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Const:
    """A node whose value is known at load (literals, params, folded arithmetic)."""

    value: Any


class _Field:
    """A field read through its attribute path (a missing object on the path, or NaN, reads None).
    Kept as a node of its own so that `field <op> constant`, the shape of most rules, reads and
    compares in one closure."""

    __slots__ = ("get", "read")

    def __init__(self, path: str) -> None:
        get = self.get = op.attrgetter(path)

        def read(record: Any, _now: float) -> Any:
            try:
                value = get(record)
            except AttributeError:  # a missing object on the path (no observation yet)
                return None
            return None if value != value else value  # NaN reads as missing
        self.read = read


_Node = Fn | _Const | _Field


def _closure(node: _Node) -> Fn:
    if isinstance(node, _Const):
        value = node.value
        return lambda _r, _now: value
    if isinstance(node, _Field):
        return node.read
    return node


def _is_none(node: _Node) -> bool:
    return isinstance(node, _Const) and node.value is None


def _labels(record: Any, _now: float) -> Any:
    return getattr(record, "labels", None) or {}


def _fold(fn: Callable[..., Any], *args: Any) -> _Const:
    if any(a is None for a in args):
        return _Const(None)
    try:
        return _Const(fn(*args))
    except ZeroDivisionError:
        return _Const(None)
    except (TypeError, ValueError, simpleeval.InvalidExpression) as exc:
        raise ExprError(f"cannot compute constant: {exc}") from None


def _both(left: _Node, right: _Node, fn: Callable[[Any, Any], Any], missing: Any = None) -> Fn:
    """`fn` of both operands' values; `missing` when either is missing, or on a division by zero."""
    a_fn, b_fn = _closure(left), _closure(right)

    def both(r: Any, now: float) -> Any:
        a = a_fn(r, now)
        if a is None:
            return missing
        b = b_fn(r, now)
        if b is None:
            return missing
        try:
            return fn(a, b)
        except ZeroDivisionError:
            return missing
    return both


class _Compiler:
    """Walks the parsed tree once; each `_<NodeType>` method returns a closure or a constant."""

    def __init__(self, kind: str, fields: Mapping[str, str], params: Mapping[str, Any]) -> None:
        self.kind = kind
        self.fields = fields
        self.params = params
        self.used: set[str] = set()

    def compile(self, node: ast.AST) -> _Node:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise ExprError(f"{_describe(node)} is not allowed")
        result: _Node = method(node)
        return result

    # --- leaves ---

    def _Constant(self, node: ast.Constant) -> _Node:
        if not isinstance(node.value, int | float | str | bool | type(None)):
            raise ExprError(f"constant {node.value!r} is not allowed")
        return _Const(node.value)

    def _Name(self, node: ast.Name) -> _Node:
        name = node.id
        if name.startswith(tuple(simpleeval.DISALLOW_PREFIXES)):
            raise ExprError(f"name {name!r} is not allowed")
        if name in self.fields:
            self.used.add(name)
            if name == "labels":
                return _labels
            if name in TIME_FIELDS:
                return field_reader(name, self.fields[name])
            return _Field(self.fields[name])
        if name in self.params:
            value = self.params[name]
            return _Const(frozenset(value) if isinstance(value, list | tuple | set) else value)
        if name in HELPERS:
            raise ExprError(f"{name} is a function: call it, e.g. {name}(...)")
        raise ExprError(f"unknown field {name!r} for kind {self.kind}")

    def _label(self, node: ast.AST, label: Any) -> _Node:
        if isinstance(node, ast.Name) and node.id != "labels":
            self._Name(node)  # an unknown name is reported as such
        if not isinstance(node, ast.Name) or node.id != "labels" or "labels" not in self.fields:
            raise ExprError(f"only entity labels can be read by key (labels.name), not {ast.unparse(node)}")
        if not isinstance(label, str):
            raise ExprError("a label name must be a string")
        self.used.add("labels")
        return lambda r, _now: (getattr(r, "labels", None) or {}).get(label)

    def _Attribute(self, node: ast.Attribute) -> _Node:
        return self._label(node.value, node.attr)

    def _Subscript(self, node: ast.Subscript) -> _Node:
        if not isinstance(node.slice, ast.Constant):
            raise ExprError("a label must be read with a constant name: labels[\"customer\"]")
        return self._label(node.value, node.slice.value)

    def _sequence(self, node: ast.List | ast.Tuple | ast.Set) -> _Node:
        items = [self.compile(e) for e in node.elts]
        values = [i.value for i in items if isinstance(i, _Const)]
        if len(values) != len(items):
            raise ExprError("list, tuple and set literals may only hold constants")
        return _Const(frozenset(values))

    _List = _Tuple = _Set = _sequence

    # --- operators ---

    def _BoolOp(self, node: ast.BoolOp) -> _Node:
        parts = [_closure(self.compile(v)) for v in node.values]
        if len(parts) == 2:  # most rules: no loop
            a, b = parts
            if isinstance(node.op, ast.And):
                return lambda r, now: a(r, now) and b(r, now)
            return lambda r, now: a(r, now) or b(r, now)
        if isinstance(node.op, ast.And):
            def all_of(r: Any, now: float) -> Any:
                value: Any = True
                for part in parts:
                    value = part(r, now)
                    if not value:
                        return value
                return value
            return all_of

        def any_of(r: Any, now: float) -> Any:
            value: Any = False
            for part in parts:
                value = part(r, now)
                if value:
                    return value
            return value
        return any_of

    def _UnaryOp(self, node: ast.UnaryOp) -> _Node:
        inner = self.compile(node.operand)
        if not isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
            raise ExprError(f"operator {type(node.op).__name__} is not allowed")
        if isinstance(inner, _Const):
            return _Const(not inner.value) if isinstance(node.op, ast.Not) else _fold(
                op.neg if isinstance(node.op, ast.USub) else op.pos, inner.value)
        operand = _closure(inner)
        if isinstance(node.op, ast.Not):
            return lambda r, now: not operand(r, now)
        sign = op.neg if isinstance(node.op, ast.USub) else op.pos

        def unary(r: Any, now: float) -> Any:
            value = operand(r, now)
            return None if value is None else sign(value)
        return unary

    def _BinOp(self, node: ast.BinOp) -> _Node:
        if type(node.op) not in _GUARDED:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed")
        left, right = self.compile(node.left), self.compile(node.right)
        if isinstance(left, _Const) and isinstance(right, _Const):
            return _fold(_GUARDED[type(node.op)], left.value, right.value)
        small = any(isinstance(n, _Const) and isinstance(n.value, int | float) and not isinstance(n.value, bool)
                    and abs(n.value) <= _SMALL for n in (left, right))
        return _both(left, right, (_PLAIN if small else _GUARDED)[type(node.op)])

    def _Compare(self, node: ast.Compare) -> _Node:
        sides = (node.left, *node.comparators)
        operands = [self.compile(side) for side in sides]
        literal = [isinstance(side, ast.Constant) and side.value is None for side in sides]
        if isinstance(operands[0], _Const) and len(operands) == 2 and type(node.ops[0]) in _MIRRORED:
            # `-105 > rssi_dbm` is `rssi_dbm < -105`
            return self._compare(operands[1], _MIRRORED[type(node.ops[0])](), operands[0], (literal[1], literal[0]))
        pairs = [self._compare(operands[i], opnode, operands[i + 1], (literal[i], literal[i + 1]))
                 for i, opnode in enumerate(node.ops)]
        if len(pairs) == 1:
            return pairs[0]
        return lambda r, now: all(pair(r, now) for pair in pairs)

    def _compare(self, left: _Node, opnode: ast.cmpop, right: _Node, literal_none: tuple[bool, bool]) -> Fn:
        """One comparison; `literal_none`: which side is written `None` (not merely computed as None)."""
        opcls = type(opnode)
        if opcls in (ast.Is, ast.IsNot) or (opcls in (ast.Eq, ast.NotEq) and any(literal_none)):
            # Explicit missing-value tests: the only comparisons that see None.
            if not any(literal_none):
                raise ExprError("`is` / `is not` may only compare with None")
            other = _closure(right if literal_none[0] else left)
            if opcls in (ast.Is, ast.Eq):
                return lambda r, now: other(r, now) is None
            return lambda r, now: other(r, now) is not None
        if opcls not in _COMPARE:
            raise ExprError(f"operator {opcls.__name__} is not allowed")
        if _is_none(left) or _is_none(right):  # with a missing operand no comparison holds
            return lambda _r, _now: False
        compare = _COMPARE[opcls]
        if isinstance(right, _Const) and isinstance(left, _Field):  # `rssi_dbm < -105`
            value, attribute, reversed_compare = right.value, left.get, _REVERSED[opcls]

            def field_against_constant(r: Any, _now: float) -> bool:
                try:
                    a = attribute(r)
                except AttributeError:
                    return False
                return a is not None and a == a and reversed_compare(value, a)  # a != a: NaN, missing
            return field_against_constant
        if isinstance(right, _Const):
            value, get = right.value, _closure(left)

            def against_constant(r: Any, now: float) -> bool:
                a = get(r, now)
                return a is not None and compare(a, value)
            return against_constant
        return _both(left, right, compare, missing=False)

    def _IfExp(self, node: ast.IfExp) -> _Node:
        test, body, orelse = (_closure(self.compile(n)) for n in (node.test, node.body, node.orelse))
        return lambda r, now: body(r, now) if test(r, now) else orelse(r, now)

    def _Call(self, node: ast.Call) -> _Node:
        if not isinstance(node.func, ast.Name) or node.func.id not in HELPERS:
            name = node.func.id if isinstance(node.func, ast.Name) else _describe(node.func)
            raise ExprError(f"unknown function {name!r}; allowed: {', '.join(sorted(HELPERS))}")
        if node.keywords:
            raise ExprError(f"{node.func.id}() takes no keyword arguments")
        if not node.args:
            raise ExprError(f"{node.func.id}() needs arguments")
        helper = HELPERS[node.func.id]
        args = [self.compile(a) for a in node.args]
        if all(isinstance(a, _Const) for a in args):
            try:  # the helpers take None themselves (coalesce(None, 1) is 1)
                return _Const(helper(*(a.value for a in args if isinstance(a, _Const))))
            except (TypeError, ValueError) as exc:
                raise ExprError(f"cannot compute constant: {exc}") from None
        fns = [_closure(a) for a in args]

        def call(r: Any, now: float) -> Any:
            try:
                return helper(*(f(r, now) for f in fns))
            except (TypeError, ValueError):
                return None
        return call


def _describe(node: ast.AST) -> str:
    names = {"Lambda": "lambda", "ListComp": "a comprehension", "GeneratorExp": "a comprehension",
             "DictComp": "a comprehension", "SetComp": "a comprehension", "Dict": "a dict literal",
             "JoinedStr": "an f-string", "NamedExpr": "assignment (:=)", "Starred": "unpacking",
             "Await": "await", "Slice": "slicing", "Assign": "assignment", "AugAssign": "assignment"}
    return names.get(type(node).__name__, type(node).__name__)


def parse(text: str) -> ast.expr:
    """Parse one expression (simpleeval's parser); syntax errors become ExprError."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("empty expression")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", simpleeval.MultipleExpressions)
            node = simpleeval.SimpleEval.parse(text.strip())
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise ExprError(f"syntax error{where}: {exc.msg}") from None
    except simpleeval.MultipleExpressions:
        raise ExprError("only one expression is allowed") from None
    except simpleeval.InvalidExpression as exc:
        raise ExprError(str(exc)) from None
    if not isinstance(node, ast.Expr):
        raise ExprError(f"{_describe(node)} is not allowed: write an expression")
    return node.value


def compile_expr(text: str, kind: str, fields: Mapping[str, str], params: Mapping[str, Any] | None = None) -> Compiled:
    """Compile `text` for records of entities of `kind`, whose fields are `fields` (name -> attribute
    path on the record, `collector.state.FIELDS[kind]`). Raises ExprError."""
    compiler = _Compiler(kind, fields, params or {})
    node = compiler.compile(parse(text))
    return Compiled(text=text, fn=_closure(node), fields=frozenset(compiler.used))
