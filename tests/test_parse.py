"""Parsing through the endpoint modules and the wire format: the seed sample field by field, the
envelope's error codes, and awkward inputs."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from collector.config import ErrorCodesConfig, PlatformConfig, PrivacyConfig
from collector.endpoints import ENDPOINTS, device_flow
from collector.endpoints.base import Query
from collector.platform.errors import ApiError, AuthError, ParseError, RateLimitedError
from collector.platform.models import AccountAssets, DeviceObservation, Location, SimObservation
from collector.platform.wire import ParseContext, Parsed, parse_envelope

SAMPLE_BYTES = (Path(__file__).parent / "data" / "sample-queryDeviceFlow.json").read_bytes()
SAMPLE: dict[str, Any] = orjson.loads(SAMPLE_BYTES)
CST = ZoneInfo("Asia/Shanghai")
KIB = 1024


def cst(text: str) -> float:
    """Independent reference: a China Standard Time wall-clock string as Unix seconds."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST).timestamp()


def data() -> dict[str, Any]:
    return copy.deepcopy(SAMPLE["data"])


def ctx(**kwargs: Any) -> ParseContext:
    return ParseContext(**{"polled_at": 1758192100.0, **kwargs})


def parse_device(data: Any, context: ParseContext, device_no: str | None = None) -> DeviceObservation:
    query = Query((device_no,) if device_no else (), {})
    (device,) = device_flow.ENDPOINT.parse(data, context, query).items
    return device


def parse_sim(rec: Any, context: ParseContext, path: str = "sim") -> SimObservation:
    return device_flow.parse_sim(rec, context, device_flow.SIM, path, "card_info")


def parse_list(endpoint: str, data: Any, context: ParseContext, month: str = "") -> Parsed[Any]:
    return ENDPOINTS[endpoint].parse(data, context, Query((), {"month": month} if month else {}))


def parse_account_assets(data: Any, context: ParseContext) -> AccountAssets:
    (assets,) = ENDPOINTS["account_assets"].parse(data, context, Query((), {})).items
    return assets


# --- the seed sample ------------------------------------------------------------------------------


def test_envelope_of_the_sample_returns_data() -> None:
    assert parse_envelope(SAMPLE_BYTES, "device_flow") == SAMPLE["data"]


def test_sample_device_fields() -> None:
    device = parse_device(parse_envelope(SAMPLE_BYTES, "device_flow"), ctx())
    assert device.device_no == "865214078636124"
    assert device.imei == "865214078636124"
    assert device.online_status == 1 and device.online is True
    assert device.rssi_dbm == -84
    assert device.battery_percent == 100
    assert device.effective_sim == 2
    assert device.device_status == 3
    assert device.wisdom_network == 0
    assert (device.wifi_clients, device.wifi_clients_max) == (0, 10)
    assert (device.wifi_clients_5g, device.wifi_clients_5g_max) == (0, 0)
    assert device.wifi_name == "MIFI-059D"
    assert device.soft_version.startswith("UZ901LD1.0_")
    assert device.mac == "3C:68:01:97:05:9D"
    assert device.status_at == cst("2025-09-18 18:24:10")
    assert device.flow_at == cst("2025-08-20 18:25:19")
    assert device.warranty_expires_at is None  # the 2000-01-01 00:00:00 sentinel
    assert device.polled_at == 1758192100.0
    assert [(e.at, e.event_type, e.value1, e.value2) for e in device.events] == [
        (cst("2025-08-01 13:44:57"), 251, "1", ""),
        (cst("2025-08-01 22:45:25"), 251, "2", ""),
        (cst("2025-08-01 22:46:25"), 251, "2", ""),
    ]
    assert {e.device_no for e in device.events} == {"865214078636124"}


def test_cst_timestamps_are_utc_epoch_seconds() -> None:
    device = parse_device(data(), ctx())
    # 18:24:10 in UTC+8 is 10:24:10 UTC; the envelope's own server timestamp is 1758192050 (10:40:50Z).
    assert device.status_at == 1758191050.0
    assert 0 < 1758192050 - device.status_at < 3600


def test_sample_sims_field_by_field() -> None:
    main, vice1 = parse_device(data(), ctx()).sims
    assert main.iccid == "898608841925D2210999"  # letters survive
    assert main.sim_no == "1064939169796"
    assert main.imsi == ""
    assert main.device_no == "865214078636124"
    assert main.slot == 1 and vice1.slot == 2
    # Flow unit KiB: 104857600 KiB = 100 GiB.
    assert main.total_bytes == 104857600 * KIB == 100 * 1024**3
    assert main.used_bytes == 20971520 * KIB
    assert main.real_used_bytes == 20971520 * KIB
    assert main.carrier_used_bytes == 4374736 * KIB
    assert vice1.used_bytes == 24117248 * KIB
    assert main.remaining_bytes == (104857600 - 20971520) * KIB
    assert main.cycle_start == cst("2025-08-01 00:00:00")
    assert main.expires_at == cst("2025-10-18 00:00:00")
    assert (main.sim_status, main.activate_status, main.auth_status) == (4, 2, 2)
    assert (main.internet_status, main.online_status, main.cancel_status) == (2, 2, 1)
    assert main.pool_id == 0
    assert main.balance == 0.0
    assert main.speed_code == ""
    assert main.break_at == cst("2025-08-20 18:25:19")
    assert main.break_remove_at == cst("2025-08-21 09:59:59")
    assert vice1.break_at is None and vice1.break_remove_at is None
    assert main.status_at == cst("2025-09-18 18:24:09")
    assert main.last_active_at == cst("2025-09-09 23:24:53")
    assert main.polled_at == 1758192100.0


@pytest.mark.parametrize("mode", ["none", "region", "exact"])
def test_secrets_appear_nowhere(mode: str) -> None:
    device = parse_device(data(), ctx(location=mode))
    text = repr(device)
    assert "admin" not in text  # webPassword
    assert "1234567890" not in text  # wifiPass
    for name in ("wifiPass", "webPassword", "payPassword", "password"):
        assert name.lower() not in text.lower()


def test_location_none() -> None:
    assert parse_device(data(), ctx(location="none")).location is None


def test_location_region_keeps_only_region() -> None:
    location = parse_device(data(), ctx(location="region")).location
    assert location == Location(province_code="440000", city_code="441900",
                                region_name="广东省 东莞市 高园路 靠近石鼓广场")
    assert location.lat is None and location.cell_id == ""


def test_location_exact_keeps_coordinates_and_cell() -> None:
    location = parse_device(data(), ctx(location="exact")).location
    assert location is not None
    assert (location.lat, location.lng) == (22.7617255, 114.1027542)
    assert (location.cell_id, location.lac, location.mcc, location.mnc) == ("151007697", "9083", "460", "0")
    assert location.province_code == "440000"


def test_location_zero_zero_is_no_fix() -> None:
    d = data()
    d["device"]["position"].update(lat=0, lng="0")
    location = parse_device(d, ctx(location="exact")).location
    assert location is not None and location.lat is None and location.lng is None


def test_empty_position_is_no_location() -> None:
    d = data()
    d["device"]["position"] = {"cellId": "", "provinceCode": None}
    assert parse_device(d, ctx(location="exact")).location is None
    d["device"]["position"] = None
    assert parse_device(d, ctx(location="region")).location is None


def test_context_from_config() -> None:
    platform = PlatformConfig.model_validate({"app_id": "a", "flow_unit": "MiB", "timezone": "UTC"})
    context = ParseContext.from_config(platform, PrivacyConfig(location="none"), polled_at=5.0)
    assert context.flow_unit_bytes == 1024**2
    assert context.location == "none" and context.polled_at == 5.0
    sim = parse_sim({"iccid": "x", "totalFlow": 2, "endAt": "2025-10-18 00:00:00"}, context)
    assert sim.total_bytes == 2 * 1024**2
    assert sim.expires_at == datetime(2025, 10, 18, tzinfo=ZoneInfo("UTC")).timestamp()


def test_requested_device_no_wins_over_the_echoed_one() -> None:
    # The vendor's example asks for 9176069816 and gets deviceNo 865214078636124 back.
    device = parse_device(data(), ctx(), device_no="9176069816")
    assert device.device_no == "9176069816"
    assert {s.device_no for s in device.sims} == {"9176069816"}
    assert device.imei == "865214078636124"


# --- the envelope -----------------------------------------------------------------------------------


def envelope(code: Any, message: str = "nope", **extra: Any) -> bytes:
    return orjson.dumps({"code": code, "message": message, "data": None, "traceID": "t-answer", **extra})


@pytest.mark.parametrize("raw", [b"", b"<html>502 Bad Gateway</html>", b'{"code": 0, "data": {',
                                 b"[1, 2]", b'"text"', b"null", b'{"message": "no code"}',
                                 b'{"code": "zero"}', b'{"code": true}', b'{"code": 1.5}'])
def test_envelope_rejects_what_is_not_an_envelope(raw: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_envelope(raw, "device_flow", trace_id="t-request")
    assert info.value.endpoint == "device_flow"
    assert info.value.trace_id == "t-request"


def test_broken_json_is_never_quoted_in_the_error() -> None:
    with pytest.raises(ParseError) as info:
        parse_envelope(b'{"code": 0, "data": {"device": {"wifiPass": "hunter22", ', "device_flow")
    assert "hunter22" not in str(info.value) and "malformed JSON" in str(info.value)
    with pytest.raises(ParseError) as info:
        parse_envelope(b"<html>502 Bad Gateway</html>", "device_flow")
    assert "502 Bad Gateway" in str(info.value)


def test_undecodable_body_is_transient_but_wrong_shape_is_not() -> None:
    with pytest.raises(ParseError) as info:
        parse_envelope(b'{"code": 0, "da', "device_flow")
    assert info.value.transient is True
    with pytest.raises(ParseError) as info:
        parse_envelope(b"[]", "device_flow")
    assert info.value.transient is False


def test_envelope_codes_map_to_error_types() -> None:
    codes = ErrorCodesConfig()
    with pytest.raises(RateLimitedError) as rate:
        parse_envelope(envelope(42900, "slow down"), "card_status", codes=codes)
    assert rate.value.transient and rate.value.code == 42900 and rate.value.trace_id == "t-answer"
    with pytest.raises(AuthError) as auth:
        parse_envelope(envelope(40001, "签名错误"), "device_flow", codes=codes)
    assert not auth.value.transient
    assert auth.value.platform_message == "签名错误"
    assert "platform.app_secret" in str(auth.value) and "platform.sign" in str(auth.value)
    with pytest.raises(ApiError) as missing:
        parse_envelope(envelope(40404, "设备不存在"), "device_flow", codes=codes)
    assert type(missing.value) is ApiError and not missing.value.transient
    with pytest.raises(ApiError) as transient:
        parse_envelope(envelope("50300", "busy"), "device_flow", codes=codes)
    assert transient.value.transient and transient.value.code == 50300
    with pytest.raises(ApiError) as bad_request:
        parse_envelope(envelope(40000, "too many cards"), "card_status", codes=codes)
    assert not bad_request.value.transient and bad_request.value.outcome == "api_error"


def test_error_codes_are_configuration() -> None:
    codes = ErrorCodesConfig(auth=[1001], rate_limited=[1002])
    with pytest.raises(AuthError):
        parse_envelope(envelope(1001), "x", codes=codes)
    with pytest.raises(RateLimitedError):
        parse_envelope(envelope(1002), "x", codes=codes)


def test_envelope_code_as_string_zero_and_missing_data() -> None:
    assert parse_envelope(b'{"code": "0", "message": "ok"}', "x") is None


def test_invalid_utf8_in_a_field_is_rescued() -> None:
    raw = SAMPLE_BYTES.replace(b'"MIFI-059D"', b'"MIFI-\xc4\xe3"')  # GBK bytes, not UTF-8
    device = parse_device(parse_envelope(raw, "device_flow"), ctx())
    assert device.wifi_name.startswith("MIFI-") and device.rssi_dbm == -84


def test_twenty_digit_numeric_iccid_keeps_every_digit() -> None:
    raw = SAMPLE_BYTES.replace(b'"iccid": "8986032142201828602"', b'"iccid": 89860321422018286021')
    device = parse_device(parse_envelope(raw, "device_flow"), ctx())
    assert device.sims[1].iccid == "89860321422018286021"


# --- awkward inputs -----------------------------------------------------------------------------------


def test_numbers_sent_as_strings() -> None:
    d = data()
    d["device"].update(rssi="-84", electric=" 55 ", effectiveSim="1", onlineStatus="1")
    d["sims"][0].update(totalFlow="104857600", useFlow="12.5", balance="3.75", vice="1")
    device = parse_device(d, ctx())
    assert (device.rssi_dbm, device.battery_percent, device.effective_sim) == (-84, 55, 1)
    sim = device.sims[0]
    assert sim.total_bytes == 104857600 * KIB
    assert sim.used_bytes == 12800  # 12.5 KiB
    assert sim.balance == 3.75 and sim.slot == 1


def test_nulls_and_empty_strings_mean_unknown() -> None:
    d = data()
    d["device"].update(rssi=None, electric="", lastDeviceStatusAt="", controlResponse=None, wifiName=None)
    d["sims"][0].update(totalFlow=None, useFlow="", endAt=None, simStatus="", balance=None)
    issues: list[str] = []
    device = parse_device(d, ctx(issues=issues))
    assert device.rssi_dbm is None and device.battery_percent is None and device.status_at is None
    assert device.events == () and device.wifi_name == ""
    sim = device.sims[0]
    assert sim.total_bytes is None and sim.used_bytes is None and sim.expires_at is None
    assert sim.sim_status is None and sim.balance is None
    assert sim.remaining_bytes is None and sim.remaining_ratio is None
    assert issues == []  # absent is not a problem


def test_garbage_optional_values_become_none_and_are_reported() -> None:
    d = data()
    d["device"].update(rssi="strong", electric=True, effectiveSim=[2], lastDeviceFlowAt="yesterday",
                       wifiName={"x": 1}, electricity=5)
    d["sims"][1].update(totalFlow=-1, useFlow=False, endAt="2025-13-45 99:00:00", simStatus={"a": 1})
    issues: list[str] = []
    device = parse_device(d, ctx(issues=issues))
    assert device.rssi_dbm is None and device.battery_percent is None and device.effective_sim is None
    assert device.flow_at is None and device.wifi_name == ""
    assert device.status_at == cst("2025-09-18 18:24:10")  # the rest survives
    sim = device.sims[1]
    assert sim.total_bytes is None and sim.used_bytes is None and sim.expires_at is None
    assert sim.sim_status is None and sim.iccid == "8986032142201828602"
    assert set(issues) >= {"rssi", "electric", "effectiveSim", "lastDeviceFlowAt", "wifiName",
                           "totalFlow", "useFlow", "endAt", "simStatus"}


def test_booleans_are_not_numbers() -> None:
    sim = parse_sim({"iccid": "x", "totalFlow": True, "simStatus": False, "balance": True}, ctx())
    assert sim.total_bytes is None and sim.sim_status is None and sim.balance is None


def test_battery_out_of_range_is_unknown() -> None:
    d = data()
    d["device"]["electric"] = 255
    assert parse_device(d, ctx()).battery_percent is None


def test_ids_are_strings_and_numeric_ids_become_decimal_text() -> None:
    d = data()
    d["device"].update(deviceNo="0012345", imei=865214078636124)
    d["sims"][0].update(iccid=8986032142201828602, simNo=1064939169796, deviceNo="0012345")
    d["sims"][1].update(iccid="89860ABCDEF000000001", simNo="00123")
    device = parse_device(d, ctx())
    assert device.device_no == "0012345"  # leading zeros kept
    assert device.imei == "865214078636124"
    assert device.sims[0].iccid == "8986032142201828602"
    assert device.sims[0].sim_no == "1064939169796"
    assert device.sims[1].iccid == "89860ABCDEF000000001"
    assert device.sims[1].sim_no == "00123"


def test_numeric_device_no() -> None:
    d = data()
    d["device"]["deviceNo"] = 9176069816
    assert parse_device(d, ctx()).device_no == "9176069816"


def test_float_id_is_not_an_id() -> None:
    with pytest.raises(ParseError) as info:
        parse_sim({"iccid": 8.986e19}, ctx(), path="data.sims[0]")
    assert info.value.path == "data.sims[0].iccid"


def test_extra_fields_are_ignored() -> None:
    d = data()
    d["device"]["brandNewField"] = {"nested": [1, 2]}
    d["sims"][0]["anotherOne"] = "x"
    d["unexpected"] = 1
    assert parse_device(d, ctx()) == parse_device(data(), ctx())


def test_timestamp_variants() -> None:
    sim = parse_sim({"iccid": "x", "endAt": "2025-10-18T00:00:00+00:00", "dockResetDate": "2025-08-01",
                     "lastSimStatusAt": 1758191050, "lastActiveAt": 1758191050123,
                     "breakAt": "0000-00-00 00:00:00"}, ctx())
    assert sim.expires_at == datetime(2025, 10, 18, tzinfo=ZoneInfo("UTC")).timestamp()  # zone in text wins
    assert sim.cycle_start == cst("2025-08-01 00:00:00")
    assert sim.status_at == 1758191050.0
    assert sim.last_active_at == 1758191050.123  # milliseconds
    assert sim.break_at is None


def test_bad_event_entries_are_dropped_not_fatal() -> None:
    d = data()
    d["device"]["controlResponse"] = [{"controlAt": "", "eventType": 251}, "junk",
                                      {"controlAt": "2025-08-01 13:44:57", "eventType": "251", "eventValue1": 1}]
    events = parse_device(d, ctx()).events
    assert len(events) == 1 and events[0].event_type == 251 and events[0].value1 == "1"


# --- structure errors carry a path --------------------------------------------------------------------


def test_sim_that_is_not_an_object_names_its_path() -> None:
    d = data()
    d["sims"][1] = "oops"
    with pytest.raises(ParseError) as info:
        parse_device(d, ctx())
    assert info.value.path == "data.sims[1]"


def test_sim_without_iccid_names_its_path() -> None:
    d = data()
    d["sims"][1]["iccid"] = ""
    with pytest.raises(ParseError) as info:
        parse_device(d, ctx())
    assert info.value.path == "data.sims[1].iccid"


@pytest.mark.parametrize(("mutate", "path"), [
    (lambda d: d.pop("device"), "data.device"),
    (lambda d: d["device"].pop("deviceNo"), "data.device.deviceNo"),
    (lambda d: d["device"].update(deviceNo=None), "data.device.deviceNo"),
    (lambda d: d.update(sims={"a": 1}), "data.sims"),
])
def test_device_structure_errors(mutate: Any, path: str) -> None:
    d = data()
    mutate(d)
    with pytest.raises(ParseError) as info:
        parse_device(d, ctx())
    assert info.value.path == path


def test_device_data_not_an_object() -> None:
    with pytest.raises(ParseError) as info:
        parse_device([1], ctx())
    assert info.value.path == "data"


def test_missing_sims_is_no_sims() -> None:
    d = data()
    del d["sims"]
    assert parse_device(d, ctx()).sims == ()


# --- list endpoints (inferred shapes) ---------------------------------------------------------------


def test_card_info_uses_the_sim_record_shape_and_skips_bad_records() -> None:
    records = [*data()["sims"], {"simNo": "no iccid"}, 42]
    parsed = parse_list("card_info", records, ctx())
    assert [s.iccid for s in parsed.items] == ["898608841925D2210999", "8986032142201828602"]
    assert parsed.items[0].device_no == "865214078636124"
    assert [e.path for e in parsed.skipped] == ["data[2].iccid", "data[3]"]
    assert all(e.endpoint == "card_info" for e in parsed.skipped)


def test_card_status_list() -> None:
    parsed = parse_list("card_status", [
        {"iccid": "898608841925D2210999", "simNo": "1064939169796", "simStatus": 4, "onlineStatus": "2",
         "internetStatus": 1, "lastSimStatusAt": "2025-09-18 18:24:09"},
        {"iccid": 8986032142201828602, "simStatus": "x"},
    ], ctx())
    first, second = parsed.items
    assert (first.sim_status, first.online_status, first.internet_status) == (4, 2, 1)
    assert first.status_at == cst("2025-09-18 18:24:09") and first.polled_at == 1758192100.0
    assert second.iccid == "8986032142201828602" and second.sim_status is None
    assert parsed.skipped == []


def test_card_usage_list_converts_flow() -> None:
    parsed = parse_list("card_usage", [{"iccid": "a", "totalFlow": "1024", "useFlow": 512, "realUseFlow": 512,
                                     "dockUserFlow": 100, "dockResetDate": "2025-08-01 00:00:00",
                                     "endAt": "2000-01-01 00:00:00", "lastFlowAt": "2025-08-20 18:25:19"}],
                                   ctx(flow_unit_bytes=1))
    usage = parsed.items[0]
    assert (usage.total_bytes, usage.used_bytes, usage.carrier_used_bytes) == (1024, 512, 100)
    assert usage.expires_at is None and usage.flow_at == cst("2025-08-20 18:25:19")


def test_card_month_usage_list_month_fallback() -> None:
    parsed = parse_list("card_month_usage", [{"iccid": "a", "month": "202508", "useFlow": 1},
                                          {"iccid": "b", "month": 202507, "useFlow": 2},
                                          {"iccid": "c", "useFlow": 3},
                                          {"iccid": "d", "month": "2025-06"}], ctx(), month="202509")
    assert [(m.iccid, m.month, m.used_bytes) for m in parsed.items] == [
        ("a", "202508", 1024), ("b", "202507", 2048), ("c", "202509", 3072), ("d", "202506", None)]
    no_month = parse_list("card_month_usage", [{"iccid": "c"}], ctx())
    assert no_month.items == [] and no_month.skipped[0].path == "data[0].month"


def test_card_actions_list() -> None:
    parsed = parse_list("card_actions", [{"serialNo": 20250801001, "iccid": "a", "simNo": "1", "actionType": 1,
                                  "status": "2", "remark": "submitted", "createdAt": "2025-08-01 00:00:00"}],
                                ctx())
    action = parsed.items[0]
    assert (action.serial_no, action.action, action.status, action.remark) == ("20250801001", "1", 2, "submitted")
    assert action.created_at == cst("2025-08-01 00:00:00")


@pytest.mark.parametrize("data_value", [None, [], {"list": []}])
def test_empty_lists(data_value: Any) -> None:
    assert parse_list("card_status", data_value, ctx()).items == []


def test_wrapped_list_is_accepted() -> None:
    parsed = parse_list("card_status", {"total": 1, "records": [{"iccid": "a"}]}, ctx())
    assert [s.iccid for s in parsed.items] == ["a"]


def test_list_endpoint_with_an_object_that_is_not_a_list_raises() -> None:
    with pytest.raises(ParseError) as info:
        parse_list("card_usage", {"iccid": "a"}, ctx())
    assert info.value.path == "data"


def test_account_assets_strings_and_extra_without_secrets() -> None:
    assets = parse_account_assets({"balance": "1234.50", "arrearsBalance": 0, "frozenBalance": None,
                                   "creditLimit": 500, "payPassword": 123456, "flag": True, "name": "x"},
                                  ctx())
    assert assets.balance == 1234.5 and assets.arrears_balance == 0.0 and assets.frozen_balance is None
    assert assets.extra == {"creditLimit": 500.0}
    assert assets.polled_at == 1758192100.0
    assert "123456" not in repr(assets)


def test_account_assets_not_an_object() -> None:
    with pytest.raises(ParseError):
        parse_account_assets([], ctx())


def test_the_sample_round_trips_through_stdlib_json_too() -> None:
    # The exact (big integer) decoding path gives the same observation as the fast one.
    fast = parse_device(parse_envelope(SAMPLE_BYTES, "x"), ctx())
    exact = parse_device(json.loads(SAMPLE_BYTES)["data"], ctx())
    assert fast == exact


# --- the wire tables ----------------------------------------------------------------------------------


def test_wire_fields_list_every_key_read_with_its_json_type_and_overrides_applied() -> None:
    from collector.endpoints import wire_fields
    from collector.platform.wire import SECRET_FIELDS

    listed = wire_fields()
    device = {f.path: f for f in listed["device_flow"]}
    assert device["data.device.rssi"][1:] == ("device", "rssi_dbm", "rssi", "integer", "int")
    assert device["data.sims[].useFlow"].coercion == "flow"
    assert device["data.sims[].totalFlow"].json_type == "number"
    assert device["data.device.position.lat"].record == "location"
    assert device["data.device.controlResponse[].controlAt"].json_type == "string"
    assert {f.path for f in listed["card_status"]} >= {"data[].iccid", "data[].simStatus", "data[].lastSimStatusAt"}
    assert not {f.key for fields in listed.values() for f in fields} & SECRET_FIELDS
    renamed = {f.path for f in wire_fields({"device_flow": {"rssi_dbm": "signal", "sims": "simList"}})["device_flow"]}
    assert {"data.device.signal", "data.simList[].iccid"} <= renamed and "data.device.rssi" not in renamed


def test_every_key_the_sample_holds_for_a_field_we_read_is_in_the_table() -> None:
    """The table and the documented answer agree: each wire key the device_flow table names for the
    device and its SIMs is present in the vendor's sample, with the JSON type the table expects
    (or null)."""
    from collector.endpoints import wire_fields

    sample = SAMPLE["data"]
    for f in wire_fields()["device_flow"]:
        if f.record not in ("device", "sim"):
            continue
        holder = sample["device"] if f.record == "device" else sample["sims"][0]
        assert f.key in holder, f.path
        value = holder[f.key]
        expected = {"integer": int, "number": (int, float), "string": str, "object": dict, "array": list}[f.json_type]
        assert value is None or isinstance(value, expected), f"{f.path}: {value!r}"


def test_a_month_usage_poll_asks_for_the_current_month_in_the_platforms_time_zone() -> None:
    endpoint = ENDPOINTS["card_month_usage"]
    first_of_september_cst = datetime(2025, 9, 1, 0, 30, tzinfo=CST).timestamp()  # still August in UTC
    assert endpoint.extra_form(first_of_september_cst, CST) == {"month": "202509"}
    assert endpoint.extra_form(first_of_september_cst, ZoneInfo("UTC")) == {"month": "202508"}
    assert endpoint.extra_form(0.0, CST, {"month": "202501"}) == {"month": "202501"}
    with pytest.raises(ValueError, match="YYYYMM"):
        endpoint.extra_form(0.0, CST, {"month": "2025-01"})
