"""The rule expression language: what it allows, what it refuses at load, and how missing values
behave at run time."""

from __future__ import annotations

import ast
import functools
import math
import operator
from typing import Any

import pytest
import simpleeval
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.alerts.expr import ExprError, compile_expr
from collector.formats import human_bytes, human_duration, percent
from collector.state import FIELDS, FieldRecord

DEVICE = FIELDS["device"]
SIM = FIELDS["sim"]


def run(text: str, fields: dict[str, Any], kind: str = "device", params: dict[str, Any] | None = None) -> Any:
    return compile_expr(text, kind, FIELDS[kind], params).fn(FieldRecord(kind, fields), 0.0)


def on(kind: str, fn: Any) -> Any:
    """A compiled expression as a function of a fields dict (the record is built from the dict)."""
    return lambda fields: fn(FieldRecord(kind, fields), 0.0)


@pytest.mark.parametrize(("text", "fields", "expected"), [
    ("rssi_dbm < -105", {"rssi_dbm": -110}, True),
    ("rssi_dbm < -105", {"rssi_dbm": -100}, False),
    ("-105 > rssi_dbm", {"rssi_dbm": -110}, True),
    ("rssi_dbm <= -105 and battery_percent > 10", {"rssi_dbm": -105, "battery_percent": 50}, True),
    ("rssi_dbm < -105 or battery_percent < 10", {"rssi_dbm": -90, "battery_percent": 5}, True),
    ("not online", {"online": False}, True),
    ("online == False", {"online": False}, True),
    ("-110 < rssi_dbm < -100", {"rssi_dbm": -105}, True),
    ("-110 < rssi_dbm < -100", {"rssi_dbm": -99}, False),
    ("abs(rssi_dbm) > 100", {"rssi_dbm": -101}, True),
    ("max(rssi_dbm, -90) == -90", {"rssi_dbm": -101}, True),
    ("battery_percent * 2 + 1 == 21", {"battery_percent": 10}, True),
    ("battery_percent % 3", {"battery_percent": 10}, 1),
    ("device_status in [1, 2, 3]", {"device_status": 3}, True),
    ("device_status not in (1, 2)", {"device_status": 3}, True),
    ("labels.customer == 'acme'", {"labels": {"customer": "acme"}}, True),
    ("labels['customer'] == 'acme'", {"labels": {"customer": "globex"}}, False),
    ("'customer' in labels", {"labels": {"customer": "x"}}, True),
    ("1 if online else 2", {"online": True}, 1),
    ("coalesce(rssi_dbm, -999)", {"rssi_dbm": None}, -999),
    ("coalesce(None, 1) == 1", {}, True),
])
def test_expressions_evaluate_like_python(text: str, fields: dict[str, Any], expected: Any) -> None:
    assert run(text, fields) == expected


@pytest.mark.parametrize("text", [
    "rssi_dbm < -105", "rssi_dbm > -105", "rssi_dbm == -105", "rssi_dbm != -105", "rssi_dbm >= 0",
    "-105 > rssi_dbm", "rssi_dbm in [1, 2]", "rssi_dbm not in [1, 2]", "rssi_dbm < battery_percent",
    "rssi_dbm + 1 < 0", "labels.customer == 'acme'", "labels.customer != 'acme'", "-1 < rssi_dbm < 1",
])
def test_a_comparison_with_a_missing_value_is_false(text: str) -> None:
    assert run(text, {"rssi_dbm": None, "battery_percent": None, "labels": {}}) is False


def test_explicit_missing_value_tests_see_none() -> None:
    assert run("rssi_dbm is None", {"rssi_dbm": None}) is True
    assert run("rssi_dbm == None", {}) is True
    assert run("rssi_dbm is not None", {"rssi_dbm": -80}) is True
    assert run("rssi_dbm != None", {"rssi_dbm": None}) is False


def test_arithmetic_with_missing_values_or_division_by_zero_gives_none() -> None:
    assert run("rssi_dbm + 1", {"rssi_dbm": None}) is None
    assert run("battery_percent / wifi_clients", {"battery_percent": 5, "wifi_clients": 0}) is None
    assert run("battery_percent / wifi_clients > 1", {"battery_percent": 5, "wifi_clients": 0}) is False
    assert run("abs(rssi_dbm)", {"rssi_dbm": None}) is None


def test_params_are_named_constants_and_lists_become_sets() -> None:
    params = {"weak": -105, "bad": [5, 6]}
    assert run("rssi_dbm < weak", {"rssi_dbm": -110}, params=params) is True
    assert run("sim_status in bad", {"sim_status": 6}, kind="sim", params=params) is True


def test_constants_are_folded_at_load() -> None:
    compiled = compile_expr("rssi_dbm < -100 - 5", "device", DEVICE)
    assert on("device", compiled.fn)({"rssi_dbm": -106}) is True
    assert on("device", compiled.fn)({"rssi_dbm": -105}) is False
    assert compiled.fields == {"rssi_dbm"}


@pytest.mark.parametrize(("text", "message"), [
    ("rsi_dbm < -105", "unknown field 'rsi_dbm' for kind device"),
    ("remaining_ratio < 0.1", "unknown field 'remaining_ratio' for kind device"),
    ("rssi_dbm <", "syntax error"),
    ("", "empty expression"),
    ("x = 1", "assignment is not allowed"),
    ("rssi_dbm; battery_percent", "only one expression"),
    ("rssi_dbm.__class__", "only entity labels"),
    ("labels.__class__.__mro__", "only entity labels"),
    ("__import__('os')", "unknown function '__import__'"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("(lambda: 1)()", "unknown function"),
    ("[x for x in labels]", "a comprehension is not allowed"),
    ("f'{rssi_dbm}'", "an f-string is not allowed"),
    ("{'a': 1}", "a dict literal is not allowed"),
    ("rssi_dbm << 2", "operator LShift is not allowed"),
    ("rssi_dbm is 3", "`is` / `is not` may only compare with None"),
    ("labels[device_no]", "constant name"),
    ("[rssi_dbm, 1]", "only hold constants"),
    ("abs", "abs is a function"),
    ("max(rssi_dbm, key=1)", "no keyword arguments"),
    ("_secret", "not allowed"),
])
def test_bad_expressions_are_refused_at_load(text: str, message: str) -> None:
    with pytest.raises(ExprError, match=None) as info:
        compile_expr(text, "device", DEVICE)
    assert message in str(info.value)


def test_sim_fields_are_their_own_namespace() -> None:
    compiled = compile_expr("remaining_ratio < 0.1 and exhausts_before_cycle_end == True", "sim", SIM)
    assert on("sim", compiled.fn)({"remaining_ratio": 0.05, "exhausts_before_cycle_end": True}) is True
    assert compiled.fields == {"remaining_ratio", "exhausts_before_cycle_end"}


def test_combined_comparisons_keep_missing_value_semantics() -> None:
    either = on("device", compile_expr("rssi_dbm < -105 or battery_percent in [1, 2]", "device", DEVICE).fn)
    both = on("device", compile_expr("rssi_dbm < -105 and battery_percent < 10", "device", DEVICE).fn)
    linear = on("device", compile_expr("staleness_seconds > 3 * poll_interval_seconds", "device", DEVICE).fn)
    assert either({"rssi_dbm": None, "battery_percent": 2}) is True
    assert either({"rssi_dbm": None, "battery_percent": None}) is False
    assert both({"rssi_dbm": -110, "battery_percent": None}) is False
    assert both({"rssi_dbm": -110, "battery_percent": 5}) is True
    assert linear({"staleness_seconds": 901, "poll_interval_seconds": 300}) is True
    assert linear({"staleness_seconds": 900, "poll_interval_seconds": 300}) is False
    assert linear({"staleness_seconds": 901, "poll_interval_seconds": None}) is False


def test_type_errors_surface_to_the_caller_who_treats_them_as_false() -> None:
    compiled = compile_expr("device_status < 3", "device", DEVICE)
    with pytest.raises(TypeError):
        on("device", compiled.fn)({"device_status": "three"})


def test_formatting_helpers() -> None:
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(100 * 1024**3) == "100 GiB"
    assert human_duration(3725) == "1h 2m"
    assert human_duration(2 * 86400 + 7200) == "2d 2h"
    assert human_duration(-90) == "-1m 30s"
    assert percent(0.075) == "7.5%"
    assert human_bytes(None) is None


_EXPRESSIONS = [
    "rssi_dbm < -105", "rssi_dbm <= battery_percent", "rssi_dbm + battery_percent * 2 > 10",
    "not (rssi_dbm > -90) or battery_percent < 20", "-110 < rssi_dbm < -100 and battery_percent != 50",
    "abs(rssi_dbm) - battery_percent", "max(rssi_dbm, battery_percent) % 7", "battery_percent in [1, 2, 3]",
    "rssi_dbm if battery_percent > 50 else battery_percent",
    "rssi_dbm < -100 or battery_percent > 50 or battery_percent in [7, 8]",
    "rssi_dbm > -100 and battery_percent in [1, 2, 3] and -50 > rssi_dbm",
    "battery_percent > 3 * rssi_dbm + 400", "rssi_dbm <= battery_percent / 2 - 100",
    "battery_percent >= rssi_dbm * -1 - 60",
]


@given(rssi=st.integers(-130, 0), battery=st.integers(0, 100), index=st.integers(0, len(_EXPRESSIONS) - 1))
def test_compiled_closures_agree_with_simpleeval_on_present_values(rssi: int, battery: int, index: int) -> None:
    text = _EXPRESSIONS[index]
    names = {"rssi_dbm": rssi, "battery_percent": battery}
    expected = simpleeval.EvalWithCompoundTypes(names=names, functions={"abs": abs, "max": max}).eval(text)
    assert on("device", compile_expr(text, "device", DEVICE).fn)(names) == expected


def test_an_ordering_against_the_literal_none_is_false_for_any_value() -> None:
    """`x < None` is false (not an error, which would make `not (x < None)` false too)."""
    for text, expected in (("rssi_dbm < None", False), ("None >= rssi_dbm", False), ("rssi_dbm in None", False),
                           ("not (rssi_dbm < None)", True), ("(rssi_dbm + 1) > None", False)):
        compiled = compile_expr(text, "device", FIELDS["device"], {})
        for value in (-90, False, 2.5, None):
            assert compiled.fn(FieldRecord("device", {"rssi_dbm": value}), 0.0) is expected, (text, value)


def test_a_number_field_holding_nan_reads_as_missing() -> None:
    nan = float("nan")
    assert run("rssi_dbm", {"rssi_dbm": nan}) is None
    assert run("rssi_dbm is None", {"rssi_dbm": nan}) is True
    assert run("rssi_dbm != -80", {"rssi_dbm": nan}) is False
    assert run("coalesce(rssi_dbm, 7)", {"rssi_dbm": nan}) == 7


def test_a_field_behind_a_missing_object_reads_as_none() -> None:
    """A path through an object the record does not have yet (`obs.rssi_dbm` before the first poll)."""
    class NeverPolled:
        obs = None
        labels: dict[str, str] = {}

    fields = {**DEVICE, "rssi_dbm": "obs.rssi_dbm"}
    assert compile_expr("rssi_dbm", "device", fields).fn(NeverPolled(), 0.0) is None
    assert compile_expr("rssi_dbm < -105 or rssi_dbm >= -105", "device", fields).fn(NeverPolled(), 0.0) is False
    assert compile_expr("rssi_dbm is None", "device", fields).fn(NeverPolled(), 0.0) is True


# --- property: any expression follows the documented semantics ----------------------------------------------
#
# `reference` below is a second, deliberately naive implementation of docs/alerts.md's rules (an
# interpreter over the parsed tree, no closures, no folding); for random expressions over random
# records (missing values, booleans, zeros, NaN), the compiled closures give the same value or raise
# where it raises.

NUMERIC = ["rssi_dbm", "battery_percent", "online", "wifi_clients", "staleness_seconds"]
PARAMS = {"weak": -105, "statuses": [5, 2]}

_values = st.one_of(st.none(), st.booleans(), st.integers(-130, 130),
                    st.sampled_from([0.0, -0.0, 0.5, -2.5, 3.25, 1e9, -110.5, float("nan")]))
_leaves = st.one_of(st.sampled_from(NUMERIC),
                    st.sampled_from(["0", "1", "-1", "2.5", "-105", "True", "None", "weak"]))


def _numbers(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(inner, inner)
    return st.one_of(
        pair.map(lambda p: f"({p[0]} + {p[1]})"), pair.map(lambda p: f"({p[0]} - {p[1]})"),
        pair.map(lambda p: f"({p[0]} * {p[1]})"), pair.map(lambda p: f"({p[0]} / {p[1]})"),
        pair.map(lambda p: f"({p[0]} // {p[1]})"), pair.map(lambda p: f"({p[0]} % {p[1]})"),
        inner.map(lambda a: f"(-{a})"), inner.map(lambda a: f"abs({a})"), inner.map(lambda a: f"round({a})"),
        pair.map(lambda p: f"min({p[0]}, {p[1]})"), pair.map(lambda p: f"max({p[0]}, {p[1]})"),
        pair.map(lambda p: f"coalesce({p[0]}, {p[1]})"),
        st.tuples(inner, _conditions(_leaves), inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
    )


def _conditions(num: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ops = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])
    return st.one_of(
        st.tuples(num, ops, num).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(num, ops, num, ops, num).map(lambda t: f"({t[0]} {t[1]} {t[2]} {t[3]} {t[4]})"),
        num.map(lambda a: f"({a} in [1, 2, -105, True])"), num.map(lambda a: f"({a} not in statuses)"),
        num.map(lambda a: f"({a} is None)"), num.map(lambda a: f"({a} is not None)"),
        num.map(lambda a: f"({a} == None)"), num.map(lambda a: f"(None != {a})"),
        num, num.map(lambda a: f"(not {a})"),
    )


_expressions = st.recursive(_conditions(st.recursive(_leaves, _numbers, max_leaves=6)),
                            lambda inner: st.one_of(
                                st.tuples(inner, inner).map(lambda p: f"({p[0]} and {p[1]})"),
                                st.tuples(inner, inner).map(lambda p: f"({p[0]} or {p[1]})"),
                                inner.map(lambda a: f"(not {a})")),
                            max_leaves=4)


def reference(node: ast.AST, fields: dict[str, Any]) -> Any:
    """docs/alerts.md's semantics, spelled out node by node."""
    ev = functools.partial(reference, fields=fields)
    if isinstance(node, ast.Expression):
        return ev(node.body)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in fields:
            value = fields[node.id]
            return None if isinstance(value, float) and math.isnan(value) else value
        value = PARAMS[node.id]
        return frozenset(value) if isinstance(value, list) else value
    if isinstance(node, ast.List):
        return frozenset(ev(e) for e in node.elts)
    if isinstance(node, ast.BoolOp):
        value: Any = isinstance(node.op, ast.And)
        for part in node.values:
            value = ev(part)
            if bool(value) != isinstance(node.op, ast.And):
                return value
        return value
    if isinstance(node, ast.UnaryOp):
        value = ev(node.operand)
        if isinstance(node.op, ast.Not):
            return not value
        return None if value is None else -value
    if isinstance(node, ast.BinOp):
        a, b = ev(node.left), ev(node.right)
        if a is None or b is None:
            return None
        try:
            return {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
                    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}[type(node.op)](a, b)
        except ZeroDivisionError:
            return None
    if isinstance(node, ast.IfExp):
        return ev(node.body) if ev(node.test) else ev(node.orelse)
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        args = [ev(a) for a in node.args]
        if node.func.id == "coalesce":
            return next((a for a in args if a is not None), None)
        return None if None in args else {"abs": abs, "round": round, "min": min, "max": max}[node.func.id](*args)
    assert isinstance(node, ast.Compare)
    sides = [node.left, *node.comparators]
    for i, opnode in enumerate(node.ops):
        left, right = sides[i], sides[i + 1]
        literal_none = any(isinstance(s, ast.Constant) and s.value is None for s in (left, right))
        if isinstance(opnode, ast.Is | ast.IsNot) or (literal_none and isinstance(opnode, ast.Eq | ast.NotEq)):
            other = ev(right if isinstance(left, ast.Constant) and left.value is None else left)
            holds = (other is None) == isinstance(opnode, ast.Is | ast.Eq)
        else:
            a, b = ev(left), ev(right)
            holds = a is not None and b is not None and {
                ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
                ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.In: lambda x, y: x in y,
                ast.NotIn: lambda x, y: x not in y}[type(opnode)](a, b)
        if not holds:
            return False
    return True


def _outcome(fn: Any) -> Any:
    try:
        value = fn()
    except Exception as exc:
        return type(exc).__name__
    return "nan" if isinstance(value, float) and math.isnan(value) else value


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(max_examples=400, deadline=None)
@given(text=_expressions, records=st.lists(st.fixed_dictionaries({n: _values for n in NUMERIC}), min_size=1,
                                           max_size=6))
def test_compiled_expressions_follow_the_documented_semantics(text: str, records: list[dict[str, Any]]) -> None:
    fn = compile_expr(text, "device", DEVICE, PARAMS).fn
    tree = ast.parse(text, mode="eval")
    for fields in records:
        expected = _outcome(lambda f=fields: reference(tree, f))
        got = _outcome(lambda f=fields: fn(FieldRecord("device", f), 0.0))
        assert got == expected, (text, fields)
