"""The rule expression language: a small, safe subset of Python expressions over an entity's fields,
parsed with simpleeval's parser and operator table, then compiled once into nested closures.

Nothing here calls `eval`, `exec` or `compile`: the parsed tree is walked once at load, each node is
checked against a whitelist and turned into a Python closure, so evaluating it for one record is a
few closure calls: no dict of fields is built, a field is read straight from the state object through
its attribute path (`collector.state.FIELDS`). The same tree is also compiled into array operations
over a batch of entities (`alerts/vector.py`) when it can be: that is how the engine evaluates
conditions; the closures serve templates, annotation values, `alerts test`, and the rules the vector
form cannot take (text fields, labels, clock-dependent fields).

Semantics (documented in docs/alerts.md):

- names are the entity's fields (`collector.state.FIELDS[kind]`) or named constants (`alerts.params`);
  an unknown name is an error at load, naming the field and the kind;
- `labels.customer` and `labels["customer"]` read an entity label (missing label: None);
- a missing value is None. Any comparison (`<`, `<=`, `>`, `>=`, `==`, `!=`, `in`, `not in`) with a
  None operand is false, except explicit tests against the literal None (`x == None`, `x is None`,
  `x != None`, `x is not None`); arithmetic with None gives None; division by zero gives None;
- `and`, `or`, `not` and `a if c else b` follow Python (None is falsy);
- helpers: abs, min, max, round, coalesce(a, b, ...) (first non-None), and, for annotation templates,
  human_bytes, human_duration, percent.
"""

from __future__ import annotations

import ast
import functools
import operator as op
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import simpleeval

from collector.alerts.vector import VecFn, vector_fn
from collector.state import TIME_FIELDS, field_reader

# A compiled expression: fn(record, now). The record is the entity's state object (or a FieldRecord);
# `now` is only read by the clock-dependent fields (TIME_FIELDS).
Fn = Callable[[Any, float], Any]


def _labels(r: Any, _now: float) -> Any:
    return getattr(r, "labels", None) or {}


class ExprError(ValueError):
    """An expression that cannot be used: bad syntax, a forbidden construct, an unknown name."""


# Operators come from simpleeval's table (its safe_add / safe_mult / safe_power bound the size of
# results); only the ones listed here are allowed.
_OPS = simpleeval.DEFAULT_OPERATORS
_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    k: _OPS[k] for k in (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
}
# With a small numeric constant on one side, the plain operator is as safe as simpleeval's guarded one
# (no huge string repetition, no huge power) and much cheaper.
_PLAIN_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: op.add, ast.Sub: op.sub, ast.Mult: op.mul, ast.Div: op.truediv, ast.FloorDiv: op.floordiv,
    ast.Mod: op.mod, ast.Pow: op.pow,
}
_SMALL_CONSTANT = 1000
_CMP: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    k: _OPS[k] for k in (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
}


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")


def human_bytes(value: Any) -> str | None:
    """1536 -> '1.5 KiB'."""
    if value is None:
        return None
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{_fmt_number(round(size, 1))} {unit}"
        size /= 1024
    return None  # pragma: no cover - the loop always returns


def human_duration(value: Any) -> str | None:
    """3725 -> '1h 2m'; durations over a day show days and hours."""
    if value is None:
        return None
    seconds = int(float(value))
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{sign}{d}d {h}h"
    if h:
        return f"{sign}{h}h {m}m"
    if m:
        return f"{sign}{m}m {s}s"
    return f"{sign}{s}s"


def percent(value: Any) -> str | None:
    """0.075 -> '7.5%'."""
    return None if value is None else f"{_fmt_number(round(float(value) * 100, 1))}%"


def _none_safe(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return None if any(a is None for a in args) else fn(*args)
    return call


def _coalesce(*args: Any) -> Any:
    for a in args:
        if a is not None:
            return a
    return None


HELPERS: dict[str, Callable[..., Any]] = {
    "abs": _none_safe(abs),
    "min": _none_safe(min),
    "max": _none_safe(max),
    "round": _none_safe(round),
    "coalesce": _coalesce,
    "human_bytes": human_bytes,
    "human_duration": human_duration,
    "percent": percent,
}


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled expression: `fn(record, now)` evaluates it for one record; `fields` are the entity
    fields it reads. `vector`, when the expression can be vectorised (`alerts/vector.py`), evaluates
    its truth over a batch of columns: `vector(columns, n)`, reading the numeric `vector_fields`."""

    text: str
    fn: Fn
    fields: frozenset[str]
    vector: VecFn | None = None
    vector_fields: frozenset[str] = frozenset()


# (getter, test): the comparison holds when the field's value is not None and test(value) is true
Pred = tuple[Callable[[Any], Any], Callable[[Any], Any]]
# (getter, operator, constant, constant on the left)
_Linear = tuple[Callable[[Any], Any], Callable[[Any, Any], Any], Any, bool]


class _Node:
    """Compilation result of one AST node: a closure, or a constant folded at load."""

    __slots__ = ("const", "fn", "get", "is_const", "linear", "pred")

    def __init__(self, fn: Fn | None = None, *, const: Any = None, is_const: bool = False,
                 get: Callable[[Any], Any] | None = None, pred: Pred | None = None,
                 linear: _Linear | None = None) -> None:
        self.fn = fn
        self.const = const
        self.is_const = is_const
        # For specialisation by the parent node:
        self.get = get  # a plain field read: an attribute getter of the record (AttributeError: None)
        self.pred = pred  # `field <op> constant`, a missing value making it false
        self.linear = linear  # `field <op> constant` or `constant <op> field` arithmetic

    def closure(self) -> Fn:
        if self.is_const:
            value = self.const
            return lambda _r, _now: value
        assert self.fn is not None
        return self.fn


def _field_compare(get: Callable[[Any], Any], opcls: type[ast.cmpop], c: Any) -> Fn:
    """`field <op> constant` as one closure (the shape of nearly every rule)."""
    if opcls is ast.Lt:
        def f(r: Any, _now: float) -> bool:
            try:
                v = get(r)
            except AttributeError:
                return False
            return v is not None and v < c
    elif opcls is ast.LtE:
        def f(r: Any, _now: float) -> bool:
            try:
                v = get(r)
            except AttributeError:
                return False
            return v is not None and v <= c
    elif opcls is ast.Gt:
        def f(r: Any, _now: float) -> bool:
            try:
                v = get(r)
            except AttributeError:
                return False
            return v is not None and v > c
    elif opcls is ast.GtE:
        def f(r: Any, _now: float) -> bool:
            try:
                v = get(r)
            except AttributeError:
                return False
            return v is not None and v >= c
    elif opcls is ast.Eq:
        def f(r: Any, _now: float) -> bool:
            try:
                v = get(r)
            except AttributeError:
                return False
            return v is not None and v == c
    elif opcls is ast.NotEq:
        def f(r: Any, _now: float) -> bool:
            try:
                v = get(r)
            except AttributeError:
                return False
            return v is not None and v != c
    elif opcls is ast.In:
        def f(r: Any, _now: float) -> bool:
            try:
                v = get(r)
            except AttributeError:
                return False
            return v is not None and v in c
    else:
        def f(r: Any, _now: float) -> bool:
            try:
                v = get(r)
            except AttributeError:
                return False
            return v is not None and v not in c
    return f


# `value <op> c` as `c <reflected op> value`, so that functools.partial(reflected, c) tests a value.
_REFLECTED: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: op.gt, ast.LtE: op.ge, ast.Gt: op.lt, ast.GtE: op.le, ast.Eq: op.eq, ast.NotEq: op.ne,
}


def _preds_closure(preds: tuple[Pred, ...], conjunction: bool) -> Fn:
    """`p1 and p2 ...` / `p1 or p2 ...` over `field <op> constant` comparisons, in one closure
    (unrolled for two, the common case: Python-level calls cost more than the comparisons)."""
    if len(preds) == 2:
        (g1, t1), (g2, t2) = preds
        if conjunction:
            def both(r: Any, _now: float) -> Any:
                try:
                    v = g1(r)
                    if v is None or not t1(v):
                        return False
                    v = g2(r)
                except AttributeError:
                    return False
                return v is not None and t2(v)
            return both

        def either(r: Any, _now: float) -> Any:
            try:
                v = g1(r)
            except AttributeError:
                v = None
            if v is not None and t1(v):
                return True
            try:
                v = g2(r)
            except AttributeError:
                return False
            return v is not None and t2(v)
        return either
    if conjunction:
        def all_hold(r: Any, _now: float) -> bool:
            for get, test in preds:
                try:
                    v = get(r)
                except AttributeError:
                    return False
                if v is None or not test(v):
                    return False
            return True
        return all_hold

    def any_holds(r: Any, _now: float) -> bool:
        for get, test in preds:
            try:
                v = get(r)
            except AttributeError:
                continue
            if v is not None and test(v):
                return True
        return False
    return any_holds


def _field_compare_linear(get: Callable[[Any], Any], opcls: type[ast.cmpop], linear: _Linear) -> Fn:
    """`field <op> constant * other_field` (any arithmetic operator) in one closure."""
    cmp = _CMP[opcls]
    other, arith, c, const_left = linear

    def f(r: Any, _now: float) -> bool:
        try:
            a = get(r)
            if a is None:
                return False
            b = other(r)
        except AttributeError:
            return False
        if b is None:
            return False
        try:
            x = arith(c, b) if const_left else arith(b, c)
        except ZeroDivisionError:
            return False
        return bool(cmp(a, x))
    return f


def _field_compare_expr(get: Callable[[Any], Any], opcls: type[ast.cmpop], right: Fn) -> Fn:
    """`field <op> expression`, e.g. `staleness_seconds > 3 * poll_interval_seconds`."""
    fn = _CMP[opcls]

    def f(r: Any, now: float) -> bool:
        try:
            a = get(r)
        except AttributeError:
            return False
        if a is None:
            return False
        b = right(r, now)
        return b is not None and bool(fn(a, b))
    return f


def _compare_pair(left: Fn, opcls: type[ast.cmpop], right: Fn) -> Fn:
    fn = _CMP[opcls]

    def f(r: Any, now: float) -> bool:
        a = left(r, now)
        if a is None:
            return False
        b = right(r, now)
        return b is not None and bool(fn(a, b))
    return f


class _Compiler:
    def __init__(self, kind: str, fields: Mapping[str, str], params: Mapping[str, Any]) -> None:
        self.kind = kind
        self.known = fields
        self.params = params
        self.used: set[str] = set()

    def compile(self, node: ast.AST) -> _Node:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise ExprError(f"{_describe(node)} is not allowed")
        result: _Node = method(node)
        return result

    # --- leaves -----------------------------------------------------------------------------------

    def _Constant(self, node: ast.Constant) -> _Node:
        if not isinstance(node.value, int | float | str | bool | type(None)):
            raise ExprError(f"constant {node.value!r} is not allowed")
        return _Node(const=node.value, is_const=True)

    def _Name(self, node: ast.Name) -> _Node:
        name = node.id
        if any(name.startswith(p) for p in simpleeval.DISALLOW_PREFIXES):
            raise ExprError(f"name {name!r} is not allowed")
        if name in self.known:
            self.used.add(name)
            if name == "labels":
                return _Node(_labels)
            path = self.known[name]
            # A clock-dependent field is a method of the record: no getter to specialise on.
            get = None if name in TIME_FIELDS else op.attrgetter(path)
            return _Node(field_reader(name, path), get=get)
        if name in self.params:
            value = self.params[name]
            if isinstance(value, list | tuple | set):
                value = frozenset(value)
            return _Node(const=value, is_const=True)
        if name in HELPERS:
            raise ExprError(f"{name} is a function: call it, e.g. {name}(...)")
        raise ExprError(f"unknown field {name!r} for kind {self.kind}")

    def _label(self, node: ast.AST, label: Any) -> _Node:
        if isinstance(node, ast.Name) and node.id != "labels":
            self._Name(node)  # an unknown name is reported as such
        if not isinstance(node, ast.Name) or node.id != "labels" or "labels" not in self.known:
            raise ExprError(f"only entity labels can be read by key (labels.name), not {ast.unparse(node)}")
        if not isinstance(label, str):
            raise ExprError("a label name must be a string")
        self.used.add("labels")
        return _Node(lambda r, _now: (getattr(r, "labels", None) or {}).get(label))

    def _Attribute(self, node: ast.Attribute) -> _Node:
        return self._label(node.value, node.attr)

    def _Subscript(self, node: ast.Subscript) -> _Node:
        key = node.slice
        if not isinstance(key, ast.Constant):
            raise ExprError("a label must be read with a constant name: labels[\"customer\"]")
        return self._label(node.value, key.value)

    def _sequence(self, node: ast.List | ast.Tuple | ast.Set) -> _Node:
        items = [self.compile(e) for e in node.elts]
        if not all(i.is_const for i in items):
            raise ExprError("list, tuple and set literals may only hold constants")
        values = [i.const for i in items]
        try:
            return _Node(const=frozenset(values), is_const=True)
        except TypeError:  # pragma: no cover - constants are hashable
            return _Node(const=tuple(values), is_const=True)

    _List = _Tuple = _Set = _sequence

    # --- operators ----------------------------------------------------------------------------------

    def _BoolOp(self, node: ast.BoolOp) -> _Node:
        parts = [self.compile(v) for v in node.values]
        preds = [p.pred for p in parts]
        if all(p is not None for p in preds):  # only `field <op> constant` operands: one closure
            tests = tuple(p for p in preds if p is not None)
            return _Node(_preds_closure(tests, isinstance(node.op, ast.And)))
        fns = [p.closure() for p in parts]
        if isinstance(node.op, ast.And):
            if len(fns) == 2:
                a, b = fns
                return _Node(lambda r, now: a(r, now) and b(r, now))

            def all_of(r: Any, now: float) -> Any:
                v: Any = True
                for fn in fns:
                    v = fn(r, now)
                    if not v:
                        return v
                return v
            return _Node(all_of)
        if len(fns) == 2:
            a, b = fns
            return _Node(lambda r, now: a(r, now) or b(r, now))

        def any_of(r: Any, now: float) -> Any:
            v: Any = False
            for fn in fns:
                v = fn(r, now)
                if v:
                    return v
            return v
        return _Node(any_of)

    def _UnaryOp(self, node: ast.UnaryOp) -> _Node:
        inner = self.compile(node.operand)
        if isinstance(node.op, ast.Not):
            if inner.is_const:
                return _Node(const=not inner.const, is_const=True)
            f = inner.closure()
            return _Node(lambda r, now: not f(r, now))
        if isinstance(node.op, ast.USub | ast.UAdd):
            fn = op.neg if isinstance(node.op, ast.USub) else op.pos
            if inner.is_const:
                return self._fold(fn, inner.const)
            g = inner.closure()

            def unary(r: Any, now: float) -> Any:
                v = g(r, now)
                return None if v is None else fn(v)
            return _Node(unary)
        raise ExprError(f"operator {type(node.op).__name__} is not allowed")

    def _fold(self, fn: Callable[..., Any], *args: Any) -> _Node:
        if any(a is None for a in args):
            return _Node(const=None, is_const=True)
        try:
            return _Node(const=fn(*args), is_const=True)
        except ZeroDivisionError:
            return _Node(const=None, is_const=True)
        except (TypeError, ValueError, simpleeval.InvalidExpression) as exc:
            raise ExprError(f"cannot compute constant: {exc}") from None

    def _BinOp(self, node: ast.BinOp) -> _Node:
        fn = _BINOPS.get(type(node.op))
        if fn is None:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed")
        left, right = self.compile(node.left), self.compile(node.right)
        if left.is_const and right.is_const:
            return self._fold(fn, left.const, right.const)
        small = left if left.is_const else right if right.is_const else None
        if (small is not None and isinstance(small.const, int | float) and not isinstance(small.const, bool)
                and abs(small.const) <= _SMALL_CONSTANT):
            fn = _PLAIN_BINOPS[type(node.op)]
            other = right if small is left else left
            get = other.get
            if get is not None:  # `constant <op> field` / `field <op> constant`: one closure
                c = small.const
                linear = (get, fn, c, small is left)
                if small is left:
                    def const_field(r: Any, _now: float) -> Any:
                        try:
                            v = get(r)
                        except AttributeError:
                            return None
                        if v is None:
                            return None
                        try:
                            return fn(c, v)
                        except ZeroDivisionError:
                            return None
                    return _Node(const_field, linear=linear)

                def field_const(r: Any, _now: float) -> Any:
                    try:
                        v = get(r)
                    except AttributeError:
                        return None
                    if v is None:
                        return None
                    try:
                        return fn(v, c)
                    except ZeroDivisionError:
                        return None
                return _Node(field_const, linear=linear)
        a, b = left.closure(), right.closure()

        def binop(r: Any, now: float) -> Any:
            x = a(r, now)
            if x is None:
                return None
            y = b(r, now)
            if y is None:
                return None
            try:
                return fn(x, y)
            except ZeroDivisionError:
                return None
        return _Node(binop)

    def _Compare(self, node: ast.Compare) -> _Node:
        operands = [self.compile(node.left)] + [self.compile(c) for c in node.comparators]
        pairs: list[Fn] = []
        for i, opnode in enumerate(node.ops):
            left, right = operands[i], operands[i + 1]
            pairs.append(self._compare(left, opnode, right))
        if len(pairs) == 1:
            left, right, opcls = operands[0], operands[1], type(node.ops[0])
            if left.is_const and right.get is not None and opcls in _MIRROR:
                left, right, opcls = right, left, _MIRROR[opcls]
            pred: Pred | None = None
            if left.get is not None and right.is_const and right.const is not None:
                if opcls in _REFLECTED:  # `value < c` is `c > value`: a C callable of the value
                    pred = (left.get, functools.partial(_REFLECTED[opcls], right.const))
                elif opcls is ast.In and isinstance(right.const, frozenset | tuple):
                    pred = (left.get, right.const.__contains__)
            return _Node(pairs[0], pred=pred)

        def chain(r: Any, now: float) -> bool:
            return all(p(r, now) for p in pairs)
        return _Node(chain)

    def _compare(self, left: _Node, opnode: ast.cmpop, right: _Node) -> Fn:
        opcls = type(opnode)
        if opcls in (ast.Is, ast.IsNot) or (opcls in (ast.Eq, ast.NotEq)
                                            and (_is_none(left) or _is_none(right))):
            # Explicit missing-value tests: the only comparisons that see None.
            if not (_is_none(left) or _is_none(right)):
                raise ExprError("`is` / `is not` may only compare with None")
            other = right if _is_none(left) else left
            g = other.closure()
            if opcls in (ast.Is, ast.Eq):
                return lambda r, now: g(r, now) is None
            return lambda r, now: g(r, now) is not None
        if opcls not in _CMP:
            raise ExprError(f"operator {opcls.__name__} is not allowed")
        if _is_none(left) or _is_none(right):  # with a missing operand no comparison holds
            return lambda _r, _now: False
        if left.get is not None and right.is_const:
            return _field_compare(left.get, opcls, right.const)
        if left.is_const and right.get is not None and opcls in _MIRROR:
            return _field_compare(right.get, _MIRROR[opcls], left.const)
        if left.get is not None and right.linear is not None:
            return _field_compare_linear(left.get, opcls, right.linear)
        if left.get is not None and not right.is_const:
            return _field_compare_expr(left.get, opcls, right.closure())
        return _compare_pair(left.closure(), opcls, right.closure())

    def _IfExp(self, node: ast.IfExp) -> _Node:
        t, a, b = (self.compile(n).closure() for n in (node.test, node.body, node.orelse))
        return _Node(lambda r, now: a(r, now) if t(r, now) else b(r, now))

    def _Call(self, node: ast.Call) -> _Node:
        if not isinstance(node.func, ast.Name) or node.func.id not in HELPERS:
            name = node.func.id if isinstance(node.func, ast.Name) else _describe(node.func)
            raise ExprError(f"unknown function {name!r}; allowed: {', '.join(sorted(HELPERS))}")
        if node.keywords:
            raise ExprError(f"{node.func.id}() takes no keyword arguments")
        fn = HELPERS[node.func.id]
        args = [self.compile(a) for a in node.args]
        if not args:
            raise ExprError(f"{node.func.id}() needs arguments")
        if all(a.is_const for a in args):
            return self._fold(fn, *(a.const for a in args))
        fns = [a.closure() for a in args]
        if len(fns) == 1:
            f0 = fns[0]

            def call1(r: Any, now: float) -> Any:
                try:
                    return fn(f0(r, now))
                except (TypeError, ValueError):
                    return None
            return _Node(call1)

        def call(r: Any, now: float) -> Any:
            try:
                return fn(*(f(r, now) for f in fns))
            except (TypeError, ValueError):
                return None
        return _Node(call)


_MIRROR: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE, ast.Eq: ast.Eq, ast.NotEq: ast.NotEq,
}


def _is_none(node: _Node) -> bool:
    return node.is_const and node.const is None


def _describe(node: ast.AST) -> str:
    names = {"Lambda": "lambda", "ListComp": "a comprehension", "GeneratorExp": "a comprehension",
             "DictComp": "a comprehension", "SetComp": "a comprehension", "Dict": "a dict literal",
             "JoinedStr": "an f-string", "NamedExpr": "assignment (:=)", "Starred": "unpacking",
             "Await": "await", "Slice": "slicing", "Assign": "assignment", "AugAssign": "assignment"}
    name = type(node).__name__
    return names.get(name, name)


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
    params = params or {}
    tree = parse(text)
    compiler = _Compiler(kind, fields, params)
    node = compiler.compile(tree)

    def fold(sub: ast.AST) -> tuple[bool, Any]:
        try:
            folded = _Compiler(kind, fields, params).compile(sub)
        except ExprError:
            return False, None
        return folded.is_const, folded.const

    vector = vector_fn(tree, fields, params, fold)
    return Compiled(text=text, fn=node.closure(), fields=frozenset(compiler.used),
                    vector=vector[0] if vector else None, vector_fields=vector[1] if vector else frozenset())
