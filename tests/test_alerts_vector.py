"""The vectorised form of rule expressions (alerts/vector.py) against the closures (alerts/expr.py):
for any expression both can take and any batch of records (missing values, booleans, zeros), the
truth of the condition is the same, record by record."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.alerts.expr import compile_expr
from collector.state import FIELDS, FieldRecord

DEVICE = FIELDS["device"]
NUMERIC = ["rssi_dbm", "battery_percent", "online", "wifi_clients", "staleness_seconds"]
PARAMS = {"weak": -105, "statuses": [5, 2]}

values = st.one_of(st.none(), st.booleans(), st.integers(-130, 130),
                   st.sampled_from([0.0, -0.0, 0.5, -2.5, 3.25, 1e9, -110.5]))
leaves = st.one_of(st.sampled_from(NUMERIC), st.sampled_from(["0", "1", "-1", "2.5", "-105", "True", "None", "weak"]))


def _numbers(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(inner, inner)
    return st.one_of(
        pair.map(lambda p: f"({p[0]} + {p[1]})"), pair.map(lambda p: f"({p[0]} - {p[1]})"),
        pair.map(lambda p: f"({p[0]} * {p[1]})"), pair.map(lambda p: f"({p[0]} / {p[1]})"),
        pair.map(lambda p: f"({p[0]} // {p[1]})"), pair.map(lambda p: f"({p[0]} % {p[1]})"),
        inner.map(lambda a: f"(-{a})"), inner.map(lambda a: f"abs({a})"), inner.map(lambda a: f"round({a})"),
        pair.map(lambda p: f"min({p[0]}, {p[1]})"), pair.map(lambda p: f"max({p[0]}, {p[1]})"),
        pair.map(lambda p: f"coalesce({p[0]}, {p[1]})"),
        st.tuples(inner, _conditions(leaves), inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
    )


def _conditions(num: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(num, num)
    ops = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])
    return st.one_of(
        st.tuples(num, ops, num).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(num, ops, num, ops, num).map(lambda t: f"({t[0]} {t[1]} {t[2]} {t[3]} {t[4]})"),
        num.map(lambda a: f"({a} in [1, 2, -105, True])"), num.map(lambda a: f"({a} not in statuses)"),
        num.map(lambda a: f"({a} in ['a', 5])"),
        num.map(lambda a: f"({a} is None)"), num.map(lambda a: f"({a} is not None)"),
        num.map(lambda a: f"({a} == None)"), num.map(lambda a: f"(None != {a})"),
        num, pair.map(lambda p: f"(not {p[0]})"),
    )


numbers = st.recursive(leaves, _numbers, max_leaves=6)
conditions = st.recursive(_conditions(numbers),
                          lambda inner: st.one_of(
                              st.tuples(inner, inner).map(lambda p: f"({p[0]} and {p[1]})"),
                              st.tuples(inner, inner).map(lambda p: f"({p[0]} or {p[1]})"),
                              inner.map(lambda a: f"(not {a})")),
                          max_leaves=4)
records = st.lists(st.fixed_dictionaries({name: values for name in NUMERIC}), min_size=1, max_size=12)


def closure_truth(fn: Any, fields: dict[str, Any]) -> bool:
    try:
        return bool(fn(FieldRecord("device", fields), 0.0))
    except Exception:  # the engine counts an error and reads "does not hold"
        return False


def columns(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {name: np.array([r[name] for r in batch], dtype=np.float64) for name in NUMERIC}


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(max_examples=400, deadline=None)
@given(text=conditions, batch=records)
def test_vector_form_agrees_with_the_closures(text: str, batch: list[dict[str, Any]]) -> None:
    compiled = compile_expr(text, "device", DEVICE, PARAMS)
    if compiled.vector is None:
        return  # the engine evaluates it with the closures
    got = compiled.vector(columns(batch), len(batch)).tolist()
    assert got == [closure_truth(compiled.fn, r) for r in batch], text
    assert compiled.vector_fields <= set(NUMERIC)


@pytest.mark.parametrize("text", [
    "online == False", "rssi_dbm < weak and online == True", "staleness_seconds > 3 * wifi_clients",
    "battery_percent in statuses or not online", "coalesce(rssi_dbm, 0) < -5", "rssi_dbm is None",
    "(rssi_dbm if online else battery_percent) > 10", "max(rssi_dbm, battery_percent, -1) // 2 != 0",
])
def test_the_shapes_of_real_rules_are_vectorised(text: str) -> None:
    assert compile_expr(text, "device", DEVICE, PARAMS).vector is not None


@pytest.mark.parametrize("text", [
    "labels.customer == 'acme'", "device_no == '1'", "status_age_seconds > 60", "rssi_dbm ** 2 > 4",
    "round(rssi_dbm, 1) < 3", "(rssi_dbm or 0) + 1 > 0", "rssi_dbm < 'a'", "human_bytes(rssi_dbm) == '1 B'",
])
def test_what_needs_the_closures_has_no_vector_form(text: str) -> None:
    compiled = compile_expr(text, "device", DEVICE, PARAMS)
    assert compiled.vector is None and compiled.vector_fields == frozenset()


def test_missing_values_and_division_by_zero() -> None:
    batch = [{"rssi_dbm": None, "battery_percent": 0}, {"rssi_dbm": -90, "battery_percent": 0},
             {"rssi_dbm": -90, "battery_percent": 3}]
    cols = {"rssi_dbm": np.array([r["rssi_dbm"] for r in batch], dtype=np.float64),
            "battery_percent": np.array([r["battery_percent"] for r in batch], dtype=np.float64)}

    def truth(text: str) -> list[bool]:
        vector = compile_expr(text, "device", DEVICE).vector
        assert vector is not None
        return vector(cols, 3).tolist()  # type: ignore[no-any-return]

    assert truth("rssi_dbm != -80") == [False, True, True]  # missing: every comparison is false
    assert truth("rssi_dbm == None") == [True, False, False]
    assert truth("not rssi_dbm") == [True, False, False]  # missing is falsy
    assert truth("rssi_dbm / battery_percent < 0") == [False, False, True]  # x / 0 is missing
    assert truth("coalesce(rssi_dbm / battery_percent, 7) == 7") == [True, True, False]
