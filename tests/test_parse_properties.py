"""Property tests: whatever JSON arrives, every endpoint's parser returns typed observations or raises
ParseError (the envelope also raises the ApiError family, by design). Nothing else may escape, with
the default wire keys and with field-name overrides."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.endpoints import ENDPOINTS, device_flow
from collector.endpoints.base import Query
from collector.platform.errors import ApiError, ParseError
from collector.platform.models import DeviceObservation
from collector.platform.wire import ParseContext, parse_envelope

SAMPLE: dict[str, Any] = orjson.loads((Path(__file__).parent / "data" / "sample-queryDeviceFlow.json").read_bytes())
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
           | st.sampled_from(["", "-84", "12.5", "2000-01-01 00:00:00", "2025-09-18 18:24:10", "1e400",
                              "NaN", "inf", "0000-00-00 00:00:00", "9999-12-31 23:59:59", "0001-01-01 00:00:00"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

# Overrides that move keys onto names the fuzzed records also use, and a record list under a key.
RENAMED = {"device_flow": (("rssi_dbm", "electric"), ("sim.iccid", "simNo"), ("sims", "list")),
           "card_status": (("records", "records"), ("sim_status", "status"))}
CONTEXTS = [ParseContext(location="exact", issues=[]), ParseContext(location="region"),
            ParseContext(location="none", flow_unit_bytes=1), ParseContext(location="exact", fields=RENAMED)]


def _endpoint(name: str) -> Callable[[Any, ParseContext], object]:
    return lambda d, c: ENDPOINTS[name].parse(d, c, Query((), {"month": "202509"}))


PARSERS: list[Callable[[Any, ParseContext], object]] = [
    *(_endpoint(name) for name in ENDPOINTS),
    lambda d, c: device_flow.parse_sim(d, c, device_flow.SIM, "sim", "card_info"),
]
LIST_KEYS = ["iccid", "simNo", "simStatus", "onlineStatus", "internetStatus", "lastSimStatusAt", "totalFlow",
             "useFlow", "realUseFlow", "dockUserFlow", "dockResetDate", "endAt", "lastFlowAt", "month",
             "serialNo", "actionType", "status", "remark", "createdAt"]


contexts = st.sampled_from(CONTEXTS)


def check_all(data: Any, context: ParseContext) -> None:
    for parser in PARSERS:
        try:
            result = parser(data, context)
        except ParseError:
            continue
        assert all(isinstance(e, ParseError) for e in getattr(result, "skipped", ()))


@SETTINGS
@given(json_values, contexts)
def test_any_json_value_parses_or_raises_parse_error(value: Any, context: ParseContext) -> None:
    check_all(value, context)


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(LIST_KEYS), scalars, max_size=8), max_size=4), contexts)
def test_records_with_known_keys_and_random_values(records: list[dict[str, Any]], context: ParseContext) -> None:
    check_all(records, context)
    check_all({"device": records[0] if records else {"deviceNo": "1"}, "sims": records}, context)
    for record in records:
        check_all(record, context)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            out += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            out += _paths(inner, (*prefix, index))
    return out


SAMPLE_PATHS = _paths(SAMPLE["data"])[1:]


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(SAMPLE_PATHS), json_values | st.just("<delete>")), min_size=1,
                max_size=6), contexts)
def test_mutations_of_the_sample(mutations: list[tuple[tuple[Any, ...], Any]], context: ParseContext) -> None:
    data = copy.deepcopy(SAMPLE["data"])
    for path, replacement in mutations:
        parent = data
        try:
            for step in path[:-1]:
                parent = parent[step]
            if replacement == "<delete>":
                del parent[path[-1]]
            else:
                parent[path[-1]] = replacement
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    check_all(data, context)
    check_all(data.get("sims"), context)
    try:
        (device,) = ENDPOINTS["device_flow"].parse(data, context, Query((), {})).items
    except ParseError:
        return
    assert isinstance(device, DeviceObservation)
    assert "1234567890" not in repr(device) and "admin" not in repr(device)


def _encode(value: Any) -> bytes:
    # The stdlib encoder, not orjson: it writes integers wider than 64 bits, which the platform might.
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@SETTINGS
@given(st.binary(max_size=64) | json_values.map(_encode)
       | st.builds(lambda code, data: _encode({"code": code, "message": "m", "data": data}), scalars, json_values))
def test_envelope_parses_or_raises_typed_errors(raw: bytes) -> None:
    with contextlib.suppress(ParseError, ApiError):
        parse_envelope(raw, "device_flow")


SAMPLE_RAW = orjson.dumps(SAMPLE)


@SETTINGS
@given(st.integers(min_value=0, max_value=len(SAMPLE_RAW) - 1), st.binary(min_size=1, max_size=4), contexts)
def test_byte_level_corruption_of_the_sample(cut: int, noise: bytes, context: ParseContext) -> None:
    corrupted = SAMPLE_RAW[:cut] + noise + SAMPLE_RAW[cut + len(noise):]
    try:
        data = parse_envelope(corrupted, "device_flow")
    except (ParseError, ApiError):
        return
    check_all(data, context)
