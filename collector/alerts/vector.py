"""Rule expressions evaluated over a batch of entities at once, with numpy.

The engine keeps, for every entity an observation changed, the numeric fields its kind's rules read
(one tuple per entity, taken when the observation arrives), and evaluates each rule over the whole
batch as a few array operations instead of one closure call per entity: a full cycle of 300k
entities costs milliseconds of evaluation, the rest is reading the fields once.

The same parsed expression is compiled twice: into closures (`expr.py`, one record at a time: for
templates, annotation values, `alerts test`, and rules this module cannot take) and here. Both give
the same answer; a property test holds them to it. Semantics, as in `expr.py`:

- a missing value is NaN in a column (so a field whose value is NaN reads as missing);
- comparisons with a missing operand are false, except the explicit `x == None` / `x is None`
  tests; arithmetic with a missing operand, and division or modulo by zero, give a missing value;
- `and`, `or`, `not`, `a if c else b` use truthiness (missing is falsy); the value of `a or b` is
  only used as a truth value here (arithmetic on it is left to the closures);
- helpers: abs, min, max (two arguments or more), round (no digits), coalesce.

Not vectorised (the engine evaluates the rule with its closures instead, one record at a time):
text fields and labels, string constants outside `in` lists, clock-dependent fields (TIME_FIELDS),
`**`, round with digits, and the formatting helpers. `vector_fn` returns None for those.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from collector.state import TEXT_FIELDS, TIME_FIELDS

Array = NDArray[Any]
Columns = Mapping[str, Array]  # field name -> float64 column of the batch, NaN where missing
# A compiled condition: fn(columns, n) -> bool array of length n, where the expression is truthy.
VecFn = Callable[[Columns, int], NDArray[np.bool_]]
_Part = Callable[[Columns], Any]  # an array (or a numpy scalar, broadcast) per node

NUM, BOOL, LOGIC = "num", "bool", "logic"


class NotVectorizable(Exception):
    """The expression uses something only the closures evaluate."""


class _V:
    """One compiled node: a numeric value (NaN missing), a genuine bool (comparisons, `not`), or the
    truth of an `and` / `or` (LOGIC: its Python value is an operand, not a bool); or a constant."""

    __slots__ = ("const", "fn", "is_const", "kind")

    def __init__(self, kind: str, fn: _Part | None = None, *, const: Any = None, is_const: bool = False) -> None:
        self.kind = kind
        self.fn = fn
        self.const = const
        self.is_const = is_const


def _number(value: Any) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, bool | int | float):
        return float(value)
    raise NotVectorizable(f"constant {value!r}")


def _num(node: _V) -> _Part:
    """The node as a float64 value (True is 1.0, missing is NaN)."""
    if node.is_const:
        value = np.float64(_number(node.const))
        return lambda _c: value
    fn = node.fn
    assert fn is not None
    if node.kind == NUM:
        return fn
    if node.kind == BOOL:
        return lambda c: np.asarray(fn(c), dtype=np.float64)
    raise NotVectorizable("the value of `and` / `or` used as a number")


def _truth(node: _V) -> _Part:
    """Where the node is truthy (missing and zero are falsy)."""
    if node.is_const:
        value = np.bool_(bool(node.const))
        return lambda _c: value
    fn = node.fn
    assert fn is not None
    if node.kind in (BOOL, LOGIC):
        return fn

    def truth(c: Columns) -> Any:
        x = fn(c)
        return (x != 0) & ~np.isnan(x)
    return truth


def _present(x: Any) -> Any:
    return ~np.isnan(x)


def _compare(opcls: type[ast.cmpop], left: _V, right: _V) -> _Part:
    if left.is_const and right.is_const:
        raise NotVectorizable("comparison of constants")
    if opcls in (ast.Is, ast.IsNot, ast.Eq, ast.NotEq) and any(
            n.is_const and n.const is None for n in (left, right)):
        other = _num(right if left.is_const and left.const is None else left)
        if opcls in (ast.Is, ast.Eq):
            return lambda c: np.isnan(other(c))
        return lambda c: ~np.isnan(other(c))
    if opcls in (ast.In, ast.NotIn):
        if not right.is_const or not isinstance(right.const, frozenset | tuple):
            raise NotVectorizable("`in` a non-constant")
        # A number is never equal to a string, and None never matches: keep the numbers.
        values = sorted({float(v) for v in right.const if isinstance(v, bool | int | float)})
        member = _member(values)
        a = _num(left)
        if opcls is ast.In:
            return lambda c: member(a(c))  # NaN equals nothing
        return lambda c: ~member(x := a(c)) & _present(x)
    ops: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
        ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal, ast.Eq: np.equal}
    a, b = _num(left), _num(right)
    if opcls is ast.NotEq:
        return lambda c: _not_equal(a(c), b(c))
    fn = ops.get(opcls)
    if fn is None:
        raise NotVectorizable(f"operator {opcls.__name__}")
    return lambda c: fn(a(c), b(c))  # a NaN operand compares false


def _member(values: list[float]) -> Callable[[Any], Any]:
    """x in values: a few comparisons for a short list (np.isin sorts, slower below ~8 values)."""
    if not values:
        return lambda x: np.zeros(np.shape(x), dtype=np.bool_)
    if len(values) <= 8:
        first, rest = values[0], values[1:]

        def few(x: Any) -> Any:
            result = x == first
            for v in rest:
                result = result | (x == v)
            return result
        return few
    table = np.array(values, dtype=np.float64)
    return lambda x: np.isin(x, table)


def _not_equal(x: Any, y: Any) -> Any:
    return (x != y) & _present(x) & _present(y)


def _divide(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """x op y, missing where y is zero (Python raises ZeroDivisionError there; the closures give None)."""
    def op(x: Any, y: Any) -> Any:
        return np.where(y == 0, np.nan, fn(x, y))
    return op


_ARITH: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: _divide(np.true_divide),
    ast.FloorDiv: _divide(np.floor_divide), ast.Mod: _divide(np.mod),
}


# The closures' constant folding: (True, value) when a subtree is a constant there (`0 / 0` is None,
# so `x != 0 / 0` is an explicit missing-value test in both forms), else (False, None).
Fold = Callable[[ast.AST], tuple[bool, Any]]


class _Compiler:
    def __init__(self, fields: Mapping[str, str], params: Mapping[str, Any], fold: Fold) -> None:
        self.fields = fields
        self.params = params
        self.fold = fold
        self.used: set[str] = set()

    def compile(self, node: ast.AST) -> _V:
        if isinstance(node, ast.BinOp | ast.UnaryOp | ast.Call | ast.IfExp | ast.BoolOp):
            is_const, value = self.fold(node)
            if is_const:
                return _V(NUM, const=value, is_const=True)
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise NotVectorizable(type(node).__name__)
        result: _V = method(node)
        return result

    def _Constant(self, node: ast.Constant) -> _V:
        return _V(NUM, const=node.value, is_const=True)

    def _Name(self, node: ast.Name) -> _V:
        name = node.id
        if name in self.fields:
            if name in TEXT_FIELDS or name in TIME_FIELDS:
                raise NotVectorizable(f"field {name}")
            self.used.add(name)
            return _V(NUM, lambda c: c[name])
        if name in self.params:
            value = self.params[name]
            return _V(NUM, const=frozenset(value) if isinstance(value, list | tuple | set) else value,
                      is_const=True)
        raise NotVectorizable(f"name {name}")

    def _sequence(self, node: ast.List | ast.Tuple | ast.Set) -> _V:
        if not all(isinstance(e, ast.Constant) for e in node.elts):
            raise NotVectorizable("non-constant sequence")
        return _V(NUM, const=frozenset(e.value for e in node.elts if isinstance(e, ast.Constant)), is_const=True)

    _List = _Tuple = _Set = _sequence

    def _BoolOp(self, node: ast.BoolOp) -> _V:
        parts = [_truth(self.compile(v)) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or

        def logic(c: Columns) -> Any:
            result = parts[0](c)
            for part in parts[1:]:
                result = combine(result, part(c))
            return result
        return _V(LOGIC, logic)

    def _UnaryOp(self, node: ast.UnaryOp) -> _V:
        inner = self.compile(node.operand)
        if isinstance(node.op, ast.Not):
            t = _truth(inner)
            return _V(BOOL, lambda c: ~np.asarray(t(c), dtype=np.bool_))
        if isinstance(node.op, ast.USub):
            a = _num(inner)
            return _V(NUM, lambda c: -a(c))
        if isinstance(node.op, ast.UAdd):
            return _V(NUM, _num(inner))
        raise NotVectorizable(type(node.op).__name__)

    def _BinOp(self, node: ast.BinOp) -> _V:
        fn = _ARITH.get(type(node.op))
        if fn is None:
            raise NotVectorizable(type(node.op).__name__)
        a, b = _num(self.compile(node.left)), _num(self.compile(node.right))
        return _V(NUM, lambda c: fn(a(c), b(c)))

    def _Compare(self, node: ast.Compare) -> _V:
        operands = [self.compile(node.left)] + [self.compile(c) for c in node.comparators]
        pairs = [_compare(type(o), operands[i], operands[i + 1]) for i, o in enumerate(node.ops)]
        if len(pairs) == 1:
            return _V(BOOL, pairs[0])

        def chain(c: Columns) -> Any:
            result = pairs[0](c)
            for pair in pairs[1:]:
                result = result & pair(c)
            return result
        return _V(BOOL, chain)

    def _IfExp(self, node: ast.IfExp) -> _V:
        t = _truth(self.compile(node.test))
        a, b = _num(self.compile(node.body)), _num(self.compile(node.orelse))
        return _V(NUM, lambda c: np.where(t(c), a(c), b(c)))

    def _Call(self, node: ast.Call) -> _V:
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        args = [_num(self.compile(a)) for a in node.args]
        if name == "abs" and len(args) == 1:
            (a,) = args
            return _V(NUM, lambda c: np.abs(a(c)))
        if name == "round" and len(args) == 1:
            (a,) = args
            return _V(NUM, lambda c: np.round(a(c)))  # half to even, as Python's round
        if name in ("min", "max") and len(args) >= 2:
            reduce = np.minimum if name == "min" else np.maximum  # a missing argument: missing

            def extreme(c: Columns) -> Any:
                result = args[0](c)
                for arg in args[1:]:
                    result = reduce(result, arg(c))
                return result
            return _V(NUM, extreme)
        if name == "coalesce" and args:
            def coalesce(c: Columns) -> Any:
                result = args[-1](c)
                for arg in reversed(args[:-1]):
                    x = arg(c)
                    result = np.where(np.isnan(x), result, x)
                return result
            return _V(NUM, coalesce)
        raise NotVectorizable(f"call of {name or 'a non-name'}")


def vector_fn(tree: ast.expr, fields: Mapping[str, str], params: Mapping[str, Any],
              fold: Fold) -> tuple[VecFn, frozenset[str]] | None:
    """The expression (already checked by `expr.compile_expr`) over columns, and the numeric fields it
    reads; None when it needs the closures."""
    compiler = _Compiler(fields, params, fold)
    try:
        node = compiler.compile(tree)
        truth = _truth(node)
    except NotVectorizable:
        return None

    def fn(columns: Columns, n: int) -> NDArray[np.bool_]:
        with np.errstate(all="ignore"):
            result = truth(columns)
        if isinstance(result, np.ndarray) and result.shape == (n,) and result.dtype == np.bool_:
            return result
        return np.broadcast_to(np.asarray(result, dtype=np.bool_), (n,))  # a constant
    return fn, frozenset(compiler.used)
