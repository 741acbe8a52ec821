"""The points each endpoint writes: schema, fixed field types, escaping, determinism."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from collector.endpoints import ENDPOINTS, SCHEMA, account_assets, card_actions, card_month_usage
from collector.endpoints.account_assets import account_line
from collector.endpoints.card_actions import CardAction, action_line
from collector.endpoints.card_month_usage import CardMonthUsage, month_line
from collector.endpoints.card_status import status_line
from collector.endpoints.card_usage import usage_line
from collector.endpoints.device_flow import device_line, event_line, sim_line
from collector.platform.models import AccountAssets, DeviceEvent, DeviceObservation, Location, SimObservation
from collector.sinks import points
from collector.state import FleetState, SimState
from tests.lineproto import Line, parse_line

POLLED = 1_758_192_050.123456
DOC = Path(__file__).resolve().parent.parent / "docs" / "schema.md"


def sample_sim(**overrides: object) -> SimObservation:
    values: dict[str, object] = dict(
        iccid="898608841925D2210999", sim_no="1440000000001", device_no="865214078636124", slot=1,
        total_bytes=100 * 1024**3, used_bytes=20 * 1024**3, real_used_bytes=20 * 1024**3,
        carrier_used_bytes=4374736 * 1024, cycle_start=1754006400.0, expires_at=1760716800.0, sim_status=4,
        activate_status=2, auth_status=2, internet_status=1, online_status=2, cancel_status=1, pool_id=0,
        balance=0.0, speed_code="", status_at=POLLED - 30, last_active_at=1758190000.0, polled_at=POLLED)
    values.update(overrides)
    return SimObservation(**values)  # type: ignore[arg-type]


def sample_device(**overrides: object) -> DeviceObservation:
    values: dict[str, object] = dict(
        device_no="865214078636124", imei="865214078636124", online_status=1, rssi_dbm=-84,
        battery_percent=100, effective_sim=1, device_status=3, wisdom_network=0, wifi_clients=2,
        wifi_clients_max=10, wifi_clients_5g=0, wifi_clients_5g_max=10, soft_version="V1.0.3",
        status_at=POLLED - 120, flow_at=POLLED - 600,
        location=Location(province_code="44", city_code="4403", region_name="广东省 深圳市"),
        events=(DeviceEvent("865214078636124", 1758190000.0, 251, "2", "1"),),
        sims=(sample_sim(), sample_sim(iccid="89860000000000000002", slot=2)), polled_at=POLLED)
    values.update(overrides)
    return DeviceObservation(**values)  # type: ignore[arg-type]


def sim_state(sim: SimObservation, labels: dict[str, str] | None = None, rate: float | None = None,
              effective: bool | None = None) -> SimState:
    """A SIM as the fleet state holds it right after an observation."""
    state = SimState(sim.iccid, labels or {}, sim.device_no, obs=sim, effective=effective)
    state.usage_rate_bytes_per_second = rate
    return state


def every_kind_lines(labels: dict[str, str] | None = None) -> dict[str, str]:
    """One line of every measurement, built from realistic observations."""
    labels = labels or {}
    out = {
        "device": device_line(sample_device(), labels),
        "sim": sim_line(sim_state(sample_sim(), labels, rate=1234.5, effective=True)),
        "card_status": status_line(
            SimObservation("898608841925D2210999", "1440000000001", sim_status=4, online_status=2, internet_status=1,
                           status_at=POLLED - 5, polled_at=POLLED), labels, "865214078636124"),
        "card_usage": usage_line(
            SimObservation("898608841925D2210999", "1440000000001", total_bytes=1000, used_bytes=250,
                           real_used_bytes=260, carrier_used_bytes=240, cycle_start=1754006400.0,
                           expires_at=1760716800.0, flow_at=POLLED - 60, polled_at=POLLED), labels, 0.5,
            "865214078636124"),
        "card_month_usage": month_line(
            CardMonthUsage("898608841925D2210999", "202509", 123456, "1440000000001", POLLED), labels,
            "865214078636124"),
        "card_action": action_line(
            CardAction("898608841925D2210999", POLLED - 10, "suspend", 1, serial_no="SN1", sim_no="1440000000001",
                       remark="ok"),
            labels, "865214078636124"),
        "account": account_line(AccountAssets(1520.5, 0.0, 12.0, POLLED, {"coupon": 3.0}), labels),
        "device_event": event_line(DeviceEvent("865214078636124", 1758190000.0, 251, "2", "1"), labels),
        "alerts": points.alert_point(rule="low_balance", state="firing", at=POLLED, severity="warning",
                                     kind="sim", entity="898608841925D2210999", labels=labels, value=0.05,
                                     summary="5% left"),
    }
    assert all(line is not None for line in out.values())
    return {k: v for k, v in out.items() if v is not None}


def assert_schema(line: str) -> None:
    parsed = parse_line(line)
    spec = SCHEMA[parsed.measurement]
    for name, (kind, _value) in parsed.fields.items():
        expected = spec.fields[name].type if name in spec.fields else spec.open_fields
        assert kind == expected, f"{parsed.measurement}.{name} written as {kind}, schema says {expected}"


def test_every_measurement_has_a_builder_and_matches_the_schema() -> None:
    lines = every_kind_lines({"site": "north"})
    # An endpoint added later has its own test of its points; these are the measurements shipped.
    assert set(lines) == {"device", "sim", "card_status", "card_usage", "card_month_usage", "card_action",
                          "account", "device_event", "alerts"} <= set(SCHEMA)
    for line in lines.values():
        assert_schema(line)
        parsed = parse_line(line)
        assert parsed.tags["site"] == "north"
        assert set(SCHEMA[parsed.measurement].tags) <= set(parsed.tags)


def test_device_line_has_derived_and_typed_fields() -> None:
    parsed = parse_line(device_line(sample_device(), {"site": "north"}) or "")
    assert parsed.measurement == "device"
    assert parsed.tags == {"device_no": "865214078636124", "site": "north"}
    assert parsed.fields["online"] == ("int", 1)
    assert parsed.fields["rssi_dbm"] == ("int", -84)
    assert parsed.fields["staleness_seconds"] == ("float", 120.0)
    assert parsed.fields["region_name"] == ("string", "广东省 深圳市")
    assert "lat" not in parsed.fields  # not present: omitted, never written as something else
    assert parsed.timestamp == 1_758_192_050_123_000_000  # ns, rounded to the millisecond


def test_sim_line_derives_remaining_expiry_and_rate() -> None:
    parsed = parse_line(sim_line(sim_state(sample_sim(), rate=10, effective=False)) or "")
    assert parsed.tags == {"iccid": "898608841925D2210999", "device_no": "865214078636124", "slot": "1"}
    assert parsed.fields["remaining_bytes"] == ("int", 80 * 1024**3)
    assert parsed.fields["remaining_ratio"] == ("float", 0.8)
    assert parsed.fields["usage_rate_bytes_per_second"] == ("float", 10.0)
    assert parsed.fields["effective"] == ("int", 0)
    assert parsed.fields["expires_at"] == ("int", 1760716800)
    assert math.isclose(parsed.fields["days_to_expiry"][1], (1760716800.0 - POLLED) / 86400)


def test_integral_floats_stay_floats_and_bools_become_integers() -> None:
    line = sim_line(sim_state(sample_sim(balance=3), rate=0, effective=True)) or ""
    parsed = parse_line(line)
    assert parsed.fields["balance"] == ("float", 3.0)
    assert parsed.fields["usage_rate_bytes_per_second"] == ("float", 0.0)
    assert parsed.fields["effective"] == ("int", 1)


def test_missing_nan_and_out_of_range_values_are_omitted() -> None:
    sim = sample_sim(total_bytes=None, balance=math.nan, used_bytes=2**70, expires_at=None, sim_status="n/a",
                     pool_id=math.inf, last_active_at=10**400)
    parsed = parse_line(sim_line(sim_state(sim, rate=math.inf)) or "")
    for absent in ("total_bytes", "balance", "used_bytes", "remaining_bytes", "remaining_ratio",
                   "days_to_expiry", "usage_rate_bytes_per_second", "effective", "expires_at", "sim_status",
                   "pool_id", "last_active_at"):
        assert absent not in parsed.fields


def test_an_observation_without_values_gives_no_line() -> None:
    assert status_line(SimObservation("8986", polled_at=POLLED), {}) is None
    assert action_line(CardAction("8986"), {}) is None


def test_same_observation_gives_byte_identical_lines() -> None:
    assert every_kind_lines({"a": "1"}) == every_kind_lines({"a": "1"})


ODD = ["north east", "a,b", "k=v", "广东省 深圳市", "trailing\\", 'quote"d', "tab\there", "é,= mix"]


def test_odd_tag_and_string_values_survive_escaping() -> None:
    for value in ODD:
        labels = {"site": value}
        device = sample_device(soft_version=value + "\nnext", device_no=value)
        parsed = parse_line(device_line(device, labels) or "")
        assert "\n" not in (device_line(device, labels) or "")
        assert parsed.fields["soft_version"] == ("string", value + " next")
        if not value.endswith("\\") and "\t" not in value:
            assert parsed.tags["site"] == value
            assert parsed.tags["device_no"] == value


def test_builtin_tags_win_over_labels_of_the_same_name() -> None:
    line = event_line(DeviceEvent("D1", POLLED, 251), {"event_type": "x", "site": "s"}) or ""
    assert parse_line(line).tags == {"device_no": "D1", "event_type": "251", "site": "s"}


def test_a_device_poll_writes_its_sims_with_effective_flag_and_only_new_events() -> None:
    state = FleetState()
    state.sync_inventory({"865214078636124": {"site": "n"}}, {"89860000000000000002": {"plan": "big"}})
    endpoint = ENDPOINTS["device_flow"]

    def poll(device: DeviceObservation) -> list[Line]:
        change = endpoint.observe(state, [device])
        return [parse_line(line) for line in endpoint.points(state, [device], change)]

    old, new = DeviceEvent("865214078636124", 100.0, 251, "2"), DeviceEvent("865214078636124", 200.0, 251, "1")
    earlier = sample_device(events=(old,), polled_at=POLLED - 600)
    main, vice = earlier.sims
    poll(replace(earlier, sims=(replace(main, used_bytes=19 * 1024**3, polled_at=POLLED - 600),
                                replace(vice, polled_at=POLLED - 600))))
    lines = poll(sample_device(events=(old, new)))
    kinds = [line.measurement for line in lines]
    assert kinds == ["device", "sim", "sim", "device_event"]
    assert lines[0].fields["sim_count"] == ("int", 2)
    first_sim, second_sim = lines[1], lines[2]
    assert first_sim.fields["effective"] == ("int", 1) and second_sim.fields["effective"] == ("int", 0)
    assert first_sim.fields["usage_rate_bytes_per_second"] == ("float", 1024**3 / 600)
    assert second_sim.tags["plan"] == "big" and second_sim.tags["site"] == "n"
    assert lines[3].timestamp == 200 * 10**9


def test_alert_point_fields() -> None:
    parsed = parse_line(points.alert_point(rule="offline", state="resolved", at=POLLED, kind="device",
                                           entity="D1", labels={"site": "n"}))
    assert parsed.measurement == "alerts"
    assert parsed.tags == {"rule": "offline", "kind": "device", "entity": "D1", "site": "n"}
    assert parsed.fields == {"state": ("string", "resolved"), "firing": ("int", 0)}


def test_unknown_field_is_a_programming_error() -> None:
    try:
        SCHEMA["device"].line({"device_no": "x"}, None, {"nope": 1}, POLLED)
    except KeyError:
        return
    raise AssertionError("an undeclared field must not be written")


def test_docs_schema_documents_every_measurement_tag_and_field() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name, spec in SCHEMA.items():
        section = re.search(rf"^### `{name}`\n(.*?)(?=^### |\Z)", text, flags=re.M | re.S)
        assert section, f"docs/schema.md has no section for {name}"
        body = section.group(1)
        for tag in spec.tags:
            assert f"`{tag}`" in body, f"tag {name}.{tag} undocumented"
        for field, fspec in spec.fields.items():
            row = re.search(rf"^\| `{field}` \| (\w+) \|", body, flags=re.M)
            assert row, f"field {name}.{field} undocumented"
            assert row.group(1) == fspec.type, f"{name}.{field}: docs say {row.group(1)}, code {fspec.type}"


# --- property: any values -> the same field types -----------------------------------------------------

ints = st.one_of(st.none(), st.integers(min_value=-(2**66), max_value=2**66), st.booleans())
floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6))
texts = st.text(max_size=20)


@st.composite
def sims(draw: st.DrawFn) -> SimObservation:
    return SimObservation(
        iccid=draw(st.text(min_size=1, max_size=20)), sim_no=draw(texts), device_no=draw(texts),
        slot=draw(st.one_of(st.none(), st.integers(0, 9))), total_bytes=draw(ints), used_bytes=draw(ints),
        real_used_bytes=draw(ints), carrier_used_bytes=draw(ints), cycle_start=draw(floats),
        expires_at=draw(floats), sim_status=draw(ints), activate_status=draw(ints), auth_status=draw(ints),
        internet_status=draw(ints), online_status=draw(ints), cancel_status=draw(ints), pool_id=draw(ints),
        balance=draw(floats), speed_code=draw(texts), break_at=draw(floats), status_at=draw(floats),
        polled_at=draw(st.floats(0, 4e9)))


@st.composite
def devices(draw: st.DrawFn) -> DeviceObservation:
    location = draw(st.one_of(st.none(), st.builds(
        Location, province_code=texts, city_code=texts, region_name=texts, lat=floats, lng=floats,
        cell_id=texts)))
    return DeviceObservation(
        device_no=draw(st.text(min_size=1, max_size=20)), online_status=draw(ints), rssi_dbm=draw(ints),
        battery_percent=draw(ints), effective_sim=draw(ints), device_status=draw(ints),
        wifi_clients=draw(ints), wifi_clients_max=draw(ints), soft_version=draw(texts),
        status_at=draw(floats), flow_at=draw(floats), warranty_expires_at=draw(floats),
        location=location, sims=tuple(draw(st.lists(sims(), max_size=2))), polled_at=draw(st.floats(0, 4e9)))


labels_st = st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.text(max_size=10),
                            max_size=3)


@settings(max_examples=60, deadline=None)
@given(devices(), labels_st)
def test_any_device_poll_writes_each_field_with_its_schema_type(device: DeviceObservation,
                                                               labels: dict[str, str]) -> None:
    state = FleetState()
    state.sync_inventory({device.device_no: labels}, {})
    endpoint = ENDPOINTS["device_flow"]
    lines = endpoint.points(state, [device], endpoint.observe(state, [device]))
    assert lines, "a device poll always writes at least sim_count"
    for line in lines:
        assert "\n" not in line
        assert_schema(line)


@settings(max_examples=50, deadline=None)
@given(st.builds(SimObservation, iccid=st.text(min_size=1, max_size=10), total_bytes=ints, used_bytes=ints,
                 expires_at=floats, flow_at=floats, polled_at=st.floats(0, 4e9)),
       st.builds(AccountAssets, balance=floats, arrears_balance=floats, polled_at=st.floats(0, 4e9),
                 extra=st.dictionaries(st.sampled_from(["coupon", "integral", "bad key"]), floats)),
       floats)
def test_any_card_or_account_values_keep_field_types(card: SimObservation, account: AccountAssets,
                                                     rate: object) -> None:
    for line in (usage_line(card, {}, rate), account_line(account, {})):  # type: ignore[arg-type]
        if line is not None:
            assert_schema(line)


def test_every_measurement_belongs_to_one_endpoint_module() -> None:
    owners = {m.name: ep.name for ep in ENDPOINTS.values() for m in ep.measurements}
    assert set(owners) | {"alerts"} == set(SCHEMA)
    assert owners["card_month_usage"] == card_month_usage.ENDPOINT.name
    assert owners["card_action"] == card_actions.ENDPOINT.name and owners["account"] == account_assets.ENDPOINT.name
