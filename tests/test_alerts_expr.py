"""The rule expression language: what it allows, what it refuses at load, and how missing values
behave at run time."""

from __future__ import annotations

from typing import Any

import pytest
import simpleeval
from hypothesis import given
from hypothesis import strategies as st

from collector.alerts.expr import ExprError, compile_expr, human_bytes, human_duration, percent
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
    """Found by the vector property test: `x < None` raised for a value that was not None (counted as
    an evaluation error, so `not (x < None)` read as false); a comparison with None is false."""
    from collector.alerts.expr import compile_expr
    from collector.state import FIELDS, FieldRecord

    for text, expected in (("rssi_dbm < None", False), ("None >= rssi_dbm", False), ("rssi_dbm in None", False),
                           ("not (rssi_dbm < None)", True), ("(rssi_dbm + 1) > None", False)):
        compiled = compile_expr(text, "device", FIELDS["device"], {})
        for value in (-90, False, 2.5, None):
            assert compiled.fn(FieldRecord("device", {"rssi_dbm": value}), 0.0) is expected, (text, value)
