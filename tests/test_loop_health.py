"""The process's own health: event-loop lag as a histogram, process memory on /metrics, the heap
frozen out of the garbage collector's scans, and the memory diagnosis that is off unless asked for."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from collector.metrics import REGISTRY
from collector.telemetry import watch_loop_lag
from tests.daemon_run import DaemonProcess, demo_config, wait_for

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
    finally:
        assert daemon.stop() == 0
    assert first["rss_bytes"] > 10e6 and first["traced_bytes"] > 0
    assert len(report["top"]) == 5 and all(":" in site["where"][0] for site in report["top"])
    assert report["seconds"] < first["seconds"]  # the second one counts from the rebase
    # The heap alive after start-up is out of the garbage collector's scans.
    assert report["gc_frozen"] > 10_000
    assert set(report["gc_pauses"]) == {"0", "1", "2"}
