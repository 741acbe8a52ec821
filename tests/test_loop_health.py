"""The process's own health: event-loop lag as a histogram, process memory on /metrics, the heap
frozen out of the garbage collector's scans, the memory diagnosis that is off unless asked for, and
a scrape of a large fleet that does not stall the loop."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx

from collector.config import HttpConfig
from collector.metrics import REGISTRY
from collector.platform.models import DeviceObservation, SimObservation
from collector.state import FleetState
from collector.telemetry import FleetMetrics, HttpServer, watch_loop_lag
from tests.daemon_run import DaemonProcess, demo_config, wait_for
from tests.loop_turns import loop_turns
from tests.servers import require

LAG = "iot_collector_event_loop_lag_seconds"


def lag_sample(suffix: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(LAG + suffix, labels) or 0.0


async def test_a_stalled_event_loop_shows_in_the_lag_histogram() -> None:
    count, within = lag_sample("_count"), lag_sample("_bucket", le="0.25")
    probe = asyncio.create_task(watch_loop_lag(interval=0.02))
    try:
        await asyncio.sleep(0.2)
        time.sleep(0.4)  # noqa: ASYNC251 - the stall being measured
        await asyncio.sleep(0.2)
    finally:
        probe.cancel()
    probes = lag_sample("_count") - count
    late = probes - (lag_sample("_bucket", le="0.25") - within)
    assert probes >= 5
    assert late == 1, f"{late} of {probes} probes later than 250 ms; one stall of 400 ms happened"
    assert lag_sample("_sum") >= 0.3


def metric_value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def test_the_daemon_reports_loop_lag_and_memory_and_keeps_diagnosis_off(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, demo_config(tmp_path)).start()
    try:
        wait_for(lambda: (metric_value(daemon.get("/metrics").text, LAG + "_count") or 0) >= 4, 20,
                 "lag probes")
        text = daemon.get("/metrics").text
        assert (metric_value(text, "process_resident_memory_bytes") or 0) > 10e6
        assert f'{LAG}_bucket{{le="0.1"}}' in text
        assert daemon.get("/debug/memory").status_code == 404
    finally:
        assert daemon.stop() == 0


def test_memory_diagnosis_lists_growing_sites_and_the_frozen_heap(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, demo_config(tmp_path), env={"IOT_COLLECTOR_TRACEMALLOC": "1"}).start()
    try:
        first = daemon.get("/debug/memory?rebase=1").json()
        report = daemon.get("/debug/memory?top=5").json()
        wait_for(lambda: daemon.get("/readyz").status_code == 200, 30, "first cycle")
        every_type = daemon.get("/debug/memory?types=100000").json()
        bad = daemon.get("/debug/memory?types=many")
    finally:
        assert daemon.stop() == 0
    assert first["rss_bytes"] > 10e6 and first["traced_bytes"] > 0
    assert len(report["top"]) == 5 and all(":" in site["where"][0] for site in report["top"])
    assert report["seconds"] < first["seconds"]  # the second one counts from the rebase
    # The heap alive after start-up is out of the garbage collector's scans.
    assert report["gc_frozen"] > 10_000
    assert set(report["gc_pauses"]) == {"0", "1", "2"}
    assert "types" not in report  # counting every object walks the heap: only when asked
    # What full collections scan, by type: every tracked object outside the frozen heap is counted once.
    kinds = {kind["type"]: kind["count"] for kind in every_type["types"]}
    assert sum(kinds.values()) == every_type["gc_tracked"] > 0
    counts = [kind["count"] for kind in every_type["types"]]
    assert counts == sorted(counts, reverse=True)
    assert kinds.get("collector.platform.models.DeviceObservation", 0) >= 1  # polled after the freeze
    assert bad.status_code == 400


async def test_a_scrape_of_a_large_fleet_gives_the_event_loop_turns() -> None:
    # 20,000 devices with two SIMs each: a scrape is a good fraction of a second of Python.
    state = FleetState()
    state.sync_inventory({f"D{i:06d}": {"customer": f"c{i % 7}"} for i in range(20_000)}, {})
    for i, no in enumerate(state.devices):
        sims = tuple(SimObservation(f"8986{i:07d}{j}", total_bytes=10**9, used_bytes=i, polled_at=1.0) for j in (1, 2))
        state.observe_device(DeviceObservation(no, online_status=1, rssi_dbm=-70, battery_percent=50,
                                               sims=sims, polled_at=1.0))
    server = HttpServer(HttpConfig(port=0), status=dict, ready=lambda: (True, "ok"))
    server.fleet = FleetMetrics(lambda: state, lambda: (0, None),
                                lambda: HttpConfig(entity_metrics_limit=100_000, entity_metrics_labels=["customer"]))
    await server.start()
    try:
        async with loop_turns() as turns, httpx.AsyncClient() as client:
            started = time.perf_counter()
            answer = await client.get(f"http://127.0.0.1:{server.port}/metrics", timeout=60)
            took = time.perf_counter() - started
    finally:
        await server.stop()
    assert answer.status_code == 200
    text = answer.text
    assert text.count("iot_collector_sim_used_bytes{") == 40_000
    assert 'iot_collector_sim_used_bytes{iccid="898600000421",device_no="D000042",customer="c0"} 42\n' in text
    assert 'iot_collector_device_battery_ratio{device_no="D000007",customer="c0"} 0.5\n' in text
    assert 'iot_collector_entities{kind="device",state="online"} 20000\n' in text
    # The process's own metrics come first, the fleet after: one exposition.
    assert text.index("process_resident_memory_bytes") < text.index("# TYPE iot_collector_entities gauge")
    # Rendered a slice at a time on the loop: the loop had many turns, none as long as the scrape.
    assert took > 0.05 and len(turns) > 10 and max(turns) < took / 3, (max(turns), len(turns), took)


def test_a_scrape_escapes_label_values_as_the_text_format_requires() -> None:
    state = FleetState()
    state.sync_inventory({'D"1\\x\nend': {"customer": 'a "b"'}}, {})
    (no,) = state.devices
    state.observe_device(DeviceObservation(no, online_status=1, rssi_dbm=-70, polled_at=1.0))
    fleet = FleetMetrics(lambda: state, lambda: (0, None), lambda: HttpConfig(entity_metrics_labels=["customer"]))
    text = asyncio.run(fleet.render())
    assert 'iot_collector_device_rssi_dbm{device_no="D\\"1\\\\x\\nend",customer="a \\"b\\""} -70\n' in text
    check = subprocess.run([require("promtool", "prometheus"), "check", "metrics"], input=text,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
