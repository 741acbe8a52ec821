"""The golden answer: the vendor's documented queryDeviceFlow sample, parsed with the default settings
(flow in KiB, zone-less times in Asia/Shanghai, privacy.location region), equals this observation,
written out by hand field by field.

How the numbers were checked: flow values are the sample's times 1024 (104857600 KiB = 100 GiB).
Times are the sample's China Standard Time (UTC+8, no daylight saving) minus 8 hours, counted from
the day numbers since 1970-01-01 (2025-01-01 is day 20089): for example 2025-09-18 18:24:10 CST is
2025-09-18 10:24:10 UTC = 20349 * 86400 + 37450 = 1758191050, 1000 s before the envelope's own
server timestamp 1758192050 (10:40:50 UTC).
"""

from __future__ import annotations

from pathlib import Path

from collector.endpoints import ENDPOINTS
from collector.endpoints.base import Query
from collector.platform.models import DeviceEvent, DeviceObservation, Location, SimObservation
from collector.platform.wire import ParseContext, parse_envelope

SAMPLE = (Path(__file__).parent / "data" / "sample-queryDeviceFlow.json").read_bytes()
POLLED = 1758192051.5
ASKED = "9176069816"  # the number of the vendor's documented request; the answer says 865214078636124

GIB = 1024**3
MAIN = SimObservation(
    iccid="898608841925D2210999", sim_no="1064939169796", imsi="", device_no=ASKED, slot=1,
    total_bytes=100 * GIB,  # 104857600 KiB
    used_bytes=20 * GIB,  # 20971520 KiB
    real_used_bytes=20 * GIB,
    carrier_used_bytes=4_479_729_664,  # 4374736 KiB
    cycle_start=1_753_977_600.0,  # 2025-08-01 00:00:00 CST = 2025-07-31 16:00:00 UTC
    expires_at=1_760_716_800.0,  # 2025-10-18 00:00:00 CST = 2025-10-17 16:00:00 UTC
    sim_status=4, activate_status=2, auth_status=2, internet_status=2, online_status=2, cancel_status=1,
    pool_id=0, balance=0.0, speed_code="",
    break_at=1_755_685_519.0,  # 2025-08-20 18:25:19 CST
    break_remove_at=1_755_741_599.0,  # 2025-08-21 09:59:59 CST
    status_at=1_758_191_049.0,  # 2025-09-18 18:24:09 CST
    last_active_at=1_757_431_493.0,  # 2025-09-09 23:24:53 CST
    flow_at=1_755_685_519.0,  # the device's lastDeviceFlowAt: the usage numbers are as of then
    polled_at=POLLED,
)
VICE1 = SimObservation(
    iccid="8986032142201828602", sim_no="1442549810999", imsi="", device_no=ASKED, slot=2,
    total_bytes=100 * GIB,
    used_bytes=24_696_061_952,  # 24117248 KiB = 23 GiB
    real_used_bytes=24_696_061_952,
    carrier_used_bytes=2_856_183_808,  # 2789242 KiB
    cycle_start=1_753_977_600.0, expires_at=1_760_716_800.0,
    sim_status=4, activate_status=2, auth_status=1, internet_status=1, online_status=3, cancel_status=1,
    pool_id=0, balance=0.0, speed_code="",
    break_at=None, break_remove_at=None,  # null in the sample
    status_at=1_758_191_050.0,  # 2025-09-18 18:24:10 CST
    last_active_at=1_755_685_386.0,  # 2025-08-20 18:23:06 CST
    flow_at=1_755_685_519.0,  # the device's lastDeviceFlowAt
    polled_at=POLLED,
)
DEVICE = DeviceObservation(
    device_no=ASKED, imei="865214078636124", online_status=1, rssi_dbm=-84, battery_percent=100,
    effective_sim=2, device_status=3, wisdom_network=0, wifi_clients=0, wifi_clients_max=10,
    wifi_clients_5g=0, wifi_clients_5g_max=0, wifi_name="MIFI-059D",
    soft_version="UZ901LD1.0_KSBC_JINANZHENGYI_SL_V2.01.01.02P42U28P1_02-250730", mac="3C:68:01:97:05:9D",
    status_at=1_758_191_050.0,  # 2025-09-18 18:24:10 CST
    flow_at=1_755_685_519.0,  # 2025-08-20 18:25:19 CST
    warranty_expires_at=None,  # "2000-01-01 00:00:00" is the platform's "unset"
    location=Location(province_code="440000", city_code="441900", region_name="广东省 东莞市 高园路 靠近石鼓广场"),
    events=(
        DeviceEvent(ASKED, 1_754_027_097.0, 251, "1", ""),  # 2025-08-01 13:44:57 CST
        DeviceEvent(ASKED, 1_754_059_525.0, 251, "2", ""),  # 2025-08-01 22:45:25 CST
        DeviceEvent(ASKED, 1_754_059_585.0, 251, "2", ""),  # 2025-08-01 22:46:25 CST
    ),
    sims=(MAIN, VICE1),
    polled_at=POLLED,
)


def test_the_vendor_sample_parses_into_the_hand_checked_observation() -> None:
    data = parse_envelope(SAMPLE, "device_flow")
    parsed = ENDPOINTS["device_flow"].parse(data, ParseContext(polled_at=POLLED), Query((ASKED,), {"deviceNo": ASKED}))
    assert parsed.skipped == []
    assert parsed.items == [DEVICE]


def test_the_golden_observation_holds_no_secret() -> None:
    text = repr(ENDPOINTS["device_flow"].parse(parse_envelope(SAMPLE, "device_flow"), ParseContext(),
                                               Query((ASKED,), {})).items)
    for secret in ("1234567890", "admin"):  # wifiPass, webPassword
        assert secret not in text
    for field in ("wifi_pass", "web_password", "pay_password", "password"):
        assert field not in DeviceObservation.__dataclass_fields__ and field not in SimObservation.__dataclass_fields__


def test_every_day_number_above_is_what_the_calendar_says() -> None:
    """The check of the check: the day numbers used to write the times down by hand."""
    import datetime as dt

    assert (dt.date(2025, 1, 1) - dt.date(1970, 1, 1)).days == 20089
    assert (dt.date(2025, 9, 18) - dt.date(1970, 1, 1)).days == 20349
    assert DEVICE.status_at == 20349 * 86400 + 10 * 3600 + 24 * 60 + 10
