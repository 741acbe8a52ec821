"""The simulator's answers have exactly the wire shape of the vendor's sample: same keys (same order),
same JSON types, nulls where the sample has nulls, ids as strings; card records are consistent with
the SIMs inside devices. Shapes are checked on the bytes a client receives, decoded by the stdlib."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import PlatformConfig
from collector.simulator.fleet import Fleet
from collector.simulator.wire import WireFormat

SAMPLE = json.loads((Path(__file__).parent / "data" / "sample-queryDeviceFlow.json").read_text("utf-8"))
START = 1758192050.0  # the sample's own envelope timestamp


def json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "int", float: "float",
            type(None): "null"}[type(value)]


def shape(value: Any) -> Any:
    """Keys and JSON types, recursively (int and float told apart, like a strict client would)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return json_type(value)


def on_the_wire(data: Any) -> Any:
    return json.loads(orjson.dumps(data))


def sample_sim_types() -> dict[str, set[str]]:
    """For each SIM key, the JSON types the sample's SIMs use (a key null in one SIM and a string in the
    other may be either; a key null in both must be null)."""
    types: dict[str, set[str]] = {}
    for sim in SAMPLE["data"]["sims"]:
        for key, value in sim.items():
            types.setdefault(key, set()).add(json_type(value))
    return types


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet(120, seed=5, start=START)


@pytest.fixture(scope="module")
def wire(fleet: Fleet) -> WireFormat:
    return WireFormat(fleet.face)


def device_answers(fleet: Fleet, wire: WireFormat) -> list[dict[str, Any]]:
    times = (START, START + 3.3 * 86400, START + 17.9 * 86400)  # across a cycle boundary, too
    return [on_the_wire(wire.device(fleet.device_state(i, t))) for t in times for i in range(len(fleet))]


def test_device_record_has_exactly_the_samples_keys_types_and_nulls(fleet: Fleet, wire: WireFormat) -> None:
    expected = shape(SAMPLE["data"]["device"])
    expected_event = expected.pop("controlResponse")[0]
    seen_events = 0
    for answer in device_answers(fleet, wire):
        assert list(answer) == ["device", "sims"]
        device = shape(answer["device"])
        events = device.pop("controlResponse")
        assert device == expected
        assert list(answer["device"]) == list(SAMPLE["data"]["device"]), "same key order as the sample"
        for event in events:
            assert event == expected_event
            seen_events += 1
    assert seen_events > 50, "multi-SIM devices log their SIM switches"


def test_sim_records_have_exactly_the_samples_keys_and_types(fleet: Fleet, wire: WireFormat) -> None:
    allowed = sample_sim_types()
    seen: dict[str, set[str]] = {key: set() for key in allowed}
    for answer in device_answers(fleet, wire):
        for sim in answer["sims"]:
            assert list(sim) == list(SAMPLE["data"]["sims"][0])
            for key, value in sim.items():
                assert json_type(value) in allowed[key], f"{key}: {value!r} not {allowed[key]}"
                seen[key].add(json_type(value))
    # Nullable keys do take both forms across a fleet, as in the sample.
    for key in ("breakAt", "breakRemoveAt", "authAt"):
        assert seen[key] == {"string", "null"}, key


def test_ids_are_strings_and_some_are_awkward(fleet: Fleet, wire: WireFormat) -> None:
    iccids = fleet.iccids()
    numbers = fleet.device_numbers()
    assert len(set(iccids)) == len(iccids) and len(set(numbers)) == len(numbers)
    assert any(not i.isdigit() for i in iccids), "ICCIDs with letters, like the sample's"
    assert {len(i) for i in iccids} >= {19, 20}
    assert any(len(n) == 10 for n in Fleet(400, seed=5, start=START).device_numbers())
    answer = on_the_wire(wire.device(fleet.device_state(0, START)))
    device = answer["device"]
    for key in ("deviceNo", "imei", "mainIccid", "mainSimNo", "position"):
        assert device[key] != ""
    assert device["warrantyExpire"] == "2000-01-01 00:00:00"
    assert [s["vice"] for s in answer["sims"]] == list(range(1, len(answer["sims"]) + 1))
    slot_keys = ["mainIccid", "vice1Iccid", "vice2Iccid", "usimIccid"]
    assert [device[k] for k in slot_keys[:len(answer["sims"])]] == [s["iccid"] for s in answer["sims"]]
    assert all(device[k] == "" for k in slot_keys[len(answer["sims"]):])


def test_secrets_are_present_like_upstream(fleet: Fleet, wire: WireFormat) -> None:
    answer = on_the_wire(wire.device(fleet.device_state(3, START)))
    assert answer["device"]["wifiPass"] and answer["device"]["webPassword"]
    assert all("payPassword" in sim for sim in answer["sims"])


def test_times_are_local_platform_time_without_zone(fleet: Fleet, wire: WireFormat) -> None:
    answer = on_the_wire(wire.device(fleet.device_state(0, START)))
    # 1758192050 is 2025-09-18 18:40:50 in Asia/Shanghai; status refreshes every 5 minutes.
    assert "2025-09-18 18:35:50" <= answer["device"]["lastDeviceStatusAt"] <= "2025-09-18 18:40:50"
    assert answer["sims"][0]["dockResetDate"] == "2025-09-01 00:00:00"
    berlin = Fleet(5, seed=5, start=START, zone="Europe/Berlin")
    assert WireFormat(berlin.face).device(berlin.device_state(0, START))["sims"][0]["dockResetDate"] == \
        "2025-09-01 00:00:00"


def test_flow_values_follow_the_configured_unit(fleet: Fleet) -> None:
    state = fleet.device_state(1, START)
    kib = WireFormat(fleet.face, PlatformConfig(flow_unit="KiB").flow_unit_bytes).device(state)
    mib = WireFormat(fleet.face, PlatformConfig(flow_unit="MiB").flow_unit_bytes).device(state)
    raw = WireFormat(fleet.face, PlatformConfig(flow_unit="B").flow_unit_bytes).device(state)
    for a, b, c in zip(kib["sims"], mib["sims"], raw["sims"], strict=True):
        assert a["totalFlow"] in {g * 1024 * 1024 for g in (10, 30, 50, 100, 200, 300)}  # KiB of whole GiB
        assert b["totalFlow"] == a["totalFlow"] // 1024 and c["totalFlow"] == a["totalFlow"] * 1024
        assert b["useFlow"] == a["useFlow"] // 1024 and c["useFlow"] == a["useFlow"] * 1024


def test_card_records_repeat_the_sims_inside_devices(fleet: Fleet, wire: WireFormat) -> None:
    state = fleet.device_state(2, START)
    device = wire.device(state)
    for sim_state, sim in zip(state.sims, device["sims"], strict=True):
        assert wire.sim(sim_state) == sim  # querySimInfo's record is the same object
        status = wire.card_status(sim_state)
        assert list(status) == ["iccid", "simNo", "simStatus", "onlineStatus", "internetStatus", "lastSimStatusAt"]
        assert {k: sim[k] for k in status} == status
        usage = wire.card_usage(sim_state)
        assert list(usage) == ["iccid", "simNo", "totalFlow", "useFlow", "realUseFlow", "dockUserFlow",
                               "dockResetDate", "endAt", "lastFlowAt"]
        assert {k: sim[k] for k in usage if k != "lastFlowAt"} == {k: v for k, v in usage.items() if k != "lastFlowAt"}
        assert usage["lastFlowAt"] == device["device"]["lastDeviceFlowAt"]
    assert shape(wire.account(12.5, 0.0, 3.25)) == {"balance": "float", "arrearsBalance": "float",
                                                    "frozenBalance": "float"}
