"""The report's figures (collector/report/model.py) and the month ledger the running collector keeps,
without servers: usage from cycle counters across billing cycles and month boundaries, the month
endpoint's figure preferred, offline days, the ledger saved and read back, the renderers.
(tests/test_report_e2e.py runs the real CLI against a real collector and a real InfluxDB.)"""

from __future__ import annotations

import asyncio
import io
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.platform.models import SimObservation
from collector.report.influx import check_label
from collector.report.ledger import LEDGER_FILE, Ledger
from collector.report.model import (
    CycleRange,
    DeviceFacts,
    Month,
    ReportError,
    SimFacts,
    build_report,
    cycle_key,
    month_growth,
)
from collector.report.render import write_csv, write_table
from collector.state import FleetState
from tests.loop_turns import loop_turns

TZ = ZoneInfo("Asia/Shanghai")
SEP = Month(2025, 9, TZ)


def at(day: int, hour: int = 12, month: int = 9) -> float:
    return datetime(2025, month, day, hour, tzinfo=TZ).timestamp()


def test_months_are_calendar_months_in_the_platform_time_zone() -> None:
    assert SEP.start == datetime(2025, 9, 1, tzinfo=TZ).timestamp()
    assert SEP.end == datetime(2025, 10, 1, tzinfo=TZ).timestamp()
    # 2025-08-31 17:00 UTC is already September 1st in Shanghai.
    assert Month.of(datetime(2025, 8, 31, 17, tzinfo=ZoneInfo("UTC")).timestamp(), TZ).key == "2025-09"
    assert Month(2025, 12, TZ).next().key == "2026-01" and Month(2025, 1, TZ).previous().key == "2024-12"


def test_usage_of_a_cycle_that_began_before_the_month_counts_from_its_last_value_before_it() -> None:
    cycle = cycle_key(at(15, 0, month=8))
    table = {"2025-08": {cycle: CycleRange(100, 400, 110, 420)}, "2025-09": {cycle: CycleRange(450, 900, 470, 950)}}
    growth = month_growth(table, SEP)
    assert (growth.billed, growth.real, growth.partial) == (500, 530, False)


def test_a_cycle_that_began_in_the_month_counts_from_zero_and_adds_to_the_one_it_ended() -> None:
    old, new = cycle_key(at(15, 0, month=8)), cycle_key(at(15, 0))
    table = {"2025-08": {old: CycleRange(100, 400)},
             "2025-09": {old: CycleRange(450, 700), new: CycleRange(20, 250)}}
    assert month_growth(table, SEP).billed == (700 - 400) + 250


def test_a_cycle_never_seen_before_the_month_counts_from_the_first_poll_and_says_partial() -> None:
    table = {"2025-09": {cycle_key(at(15, 0, month=8)): CycleRange(300, 800)}}
    growth = month_growth(table, SEP)
    assert growth.billed == 500 and growth.partial


def test_a_stale_lower_value_does_not_count_twice() -> None:
    """Two endpoints refresh at different times: a lower value after a higher one of the same cycle
    is not a new cycle, so the growth is highest minus baseline, once."""
    ledger = Ledger(TZ)
    cycle = at(1, 0)
    for when, used in ((at(2), 100), (at(3), 300), (at(3, 13), 250), (at(4), 400)):
        ledger.sim("A", SimObservation("A", used_bytes=used, cycle_start=cycle, polled_at=when), "D1")
    assert month_growth(ledger.usage_table("A"), SEP).billed == 400


def test_the_month_endpoint_figure_wins_over_the_counters_for_billed_usage() -> None:
    sim = SimFacts("A", "acme", "D1", usage={"2025-09": {cycle_key(at(1, 0)): CycleRange(0, 1000, 0, 900)}},
                   month_figure=1234)
    report = build_report(SEP, "customer", "Asia/Shanghai", "collector", [sim], [DeviceFacts("D1", "acme")],
                          as_of=at(20), now=at(20))
    line = report.sims[0]
    assert (line.billed_bytes, line.real_bytes, line.source) == (1234, 900, "month endpoint")
    assert report.devices[0].billed_bytes == 1234 and report.groups[0].top_devices == ["D1"]


def test_expiring_running_out_suspended_and_offline_per_group() -> None:
    sims = [
        SimFacts("A", "acme", "D1", sim_status=4, expires_at=at(25), remaining_bytes=10**9, usage_rate=10**9 / 86400),
        SimFacts("B", "acme", "D1", sim_status=5, expires_at=at(5, month=10), remaining_bytes=0, ran_out=True),
        SimFacts("C", "", "", sim_status=4, expires_at=at(1, month=11), remaining_bytes=10**12, usage_rate=1.0),
    ]
    devices = [DeviceFacts("D1", "acme", [3, 1, 3]), DeviceFacts("D2", "globex")]
    report = build_report(SEP, "customer", "Asia/Shanghai", "collector", sims, devices, as_of=at(20), now=at(20))
    groups = {g.name: g for g in report.groups}
    assert set(groups) == {"acme", "globex", "(none)"}
    acme = groups["acme"]
    assert (acme.devices, acme.sims) == (1, 2)
    assert acme.expiring == ["A"] and acme.suspended == ["B"]
    assert acme.running_out == ["A", "B"]
    assert report.sim("A").runs_out == "projected" and report.sim("B").runs_out == "ran out"
    assert report.device("D1").offline_days == [1, 3] and acme.offline_devices == ["D1"]
    assert groups["(none)"].sims == 1 and not groups["globex"].offline_devices
    # A past month projects nothing.
    past = build_report(SEP, "customer", "Asia/Shanghai", "influxdb", sims, devices, as_of=at(20, month=10),
                        now=at(20, month=10))
    assert past.complete and past.sim("A").runs_out == ""


def test_offline_days_are_the_platform_days_on_which_a_poll_saw_the_device_offline() -> None:
    state = FleetState()
    ledger = Ledger(TZ)
    state.recorder = ledger
    ledger.device("D1", True, at(2))
    ledger.device("D1", False, at(3, 1))
    ledger.device("D1", False, at(3, 23))
    ledger.device("D1", None, at(4))  # unknown is not offline
    ledger.device("D1", False, datetime(2025, 9, 5, 16, 30, tzinfo=ZoneInfo("UTC")).timestamp())  # 6th in Shanghai
    assert ledger.months["2025-09"].offline["D1"] == {3, 6}


def test_the_ledger_is_saved_and_read_back_and_keeps_two_months(tmp_path: Path) -> None:
    ledger = Ledger(TZ)
    for month in (7, 8, 9):
        ledger.device("D1", False, at(2, month=month))
        ledger.sim("A", SimObservation("A", used_bytes=month * 100, real_used_bytes=month * 90,
                                       cycle_start=at(1, 0, month=month), polled_at=at(2, month=month)), "D1")
    ledger.month_figure("A", "202509", 777)
    assert set(ledger.months) == {"2025-08", "2025-09"}
    assert ledger.save(tmp_path) and not ledger.dirty
    again = Ledger(TZ)
    again.load(tmp_path)
    assert again.to_json() == ledger.to_json()
    assert again.months["2025-09"].month_figures == {"A": 777} and again.months["2025-09"].sims["A"].device_no == "D1"



async def test_the_running_daemon_saves_a_large_ledger_in_slices_to_the_same_file(tmp_path: Path) -> None:
    ledger = Ledger(TZ)
    for i in range(60_000):
        iccid = f"898600{i:08d}"
        ledger.sim(iccid, SimObservation(iccid, used_bytes=i, real_used_bytes=i, cycle_start=at(1, 0),
                                         polled_at=at(2)), f"D{i // 2}")
        if i % 3 == 0:
            ledger.device(f"D{i // 2}", False, at(2 + i % 5))
    ledger.month_figure("89860000000007", "202509", 777)
    ledger.sim("客户", SimObservation("客户", used_bytes=1, cycle_start=at(1, 0), polled_at=at(2)), "设备")
    async with loop_turns() as gaps:
        started = time.perf_counter()
        saving = asyncio.create_task(ledger.save_in_slices(tmp_path))
        await asyncio.sleep(0)
        ledger.device("D-late", False, at(9))  # while it is being saved
        assert await saving
        took = time.perf_counter() - started
    # The loop had turns all along, none as long as the save; the late change waits for the next save.
    assert len(gaps) > 5 and max(gaps) < took / 3, (max(gaps), len(gaps), took)
    assert ledger.dirty
    again = Ledger(TZ)
    again.load(tmp_path)
    assert again.months["2025-09"].sims.keys() == ledger.months["2025-09"].sims.keys()
    del ledger.months["2025-09"].offline["D-late"]
    assert again.to_json() == ledger.to_json()
    assert again.months["2025-09"].sims["客户"].device_no == "设备"
    # A save cancelled midway (a stop) leaves the ledger dirty, so the save at stop still writes it.
    assert ledger.save(tmp_path) and not ledger.dirty
    ledger.device("D-later", False, at(10))
    cancelled = asyncio.create_task(ledger.save_in_slices(tmp_path))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert ledger.dirty

def test_an_unreadable_ledger_is_set_aside_and_the_collector_starts_empty(tmp_path: Path) -> None:
    (tmp_path / LEDGER_FILE).write_text("{not json")
    ledger = Ledger(TZ)
    ledger.load(tmp_path)
    assert ledger.months == {}
    assert (tmp_path / "report-ledger.bad").read_text() == "{not json"


def sample_report() -> object:
    sims = [SimFacts("89860000000000000001", "客户甲", "D1", sim_no="1440000000001", sim_status=5,
                     usage={"2025-09": {cycle_key(at(1, 0)): CycleRange(0, 3 * 1024**3, 0, 3 * 1024**3)}})]
    return build_report(SEP, "customer", "Asia/Shanghai", "collector", sims, [DeviceFacts("D1", "客户甲", [2])],
                        as_of=at(20), now=at(20))


def test_csv_is_utf8_with_a_byte_order_mark_for_excel() -> None:
    out = io.BytesIO()
    write_csv(sample_report(), out)  # type: ignore[arg-type]
    data = out.getvalue()
    assert data.startswith(b"\xef\xbb\xbf")
    text = data.decode("utf-8-sig")
    assert "客户甲" in text and "\r\n\r\ngroup,iccid,sim_no,device_no,billed_bytes,billed_gib" in text
    assert ",3221225472,3.0,3221225472,3.0,counter,1,5,1," in text
    assert "2025-09-02" in text


def test_table_reads_in_a_terminal() -> None:
    out = io.StringIO()
    write_table(sample_report(), out)  # type: ignore[arg-type]
    text = out.getvalue()
    assert text.splitlines()[0] == ("Report of 2025-09 by customer (Asia/Shanghai), from the running collector: "
                                    "in progress, as of 2025-09-20 12:00")
    assert "== customer 客户甲: 1 devices, 1 SIMs, 3 GiB billed, 3 GiB real ==" in text
    assert "Suspended SIMs" in text and "Days offline" in text and "2025-09-02" in text


def test_grouping_takes_inventory_labels_only() -> None:
    assert check_label("site") == "site"
    for bad in ('x" OR 1=1', "device_no", "iccid", ""):
        with pytest.raises(ReportError):
            check_label(bad)
