"""Failing entities cost little, seen as an operator sees them: a real daemon polling the simulator
(its own process), a device the platform does not know, and a device whose answer hangs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.daemon_run import REPO, DaemonProcess, wait_for
from tests.platform_run import SimulatorProcess, SlowProxy, collector_config

DEVICE_JOBS = ("device_status", "device_flow")


def jobs(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    return {j["name"]: j for j in daemon.get("/api/status").json()["jobs"]}


def sample(metrics: str, series: str) -> float | None:
    """The value of one series (`name{labels}` as exposed) on a /metrics page, None when absent."""
    for line in metrics.splitlines():
        if line.rsplit(" ", 1)[0] == series:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_device_the_platform_does_not_know_is_asked_for_once_then_backs_off(tmp_path: Path) -> None:
    unknown = "000000000000042"
    with SimulatorProcess(devices=10) as sim:
        daemon = DaemonProcess(tmp_path, collector_config(tmp_path, sim.url, [*sim.devices, unknown])).start()
        try:
            # device_status runs every 3 s and device_flow every 4 s: five cycles each.
            wait_for(lambda: all(jobs(daemon)[j]["runs"] >= 5 for j in DEVICE_JOBS), 60, "five device cycles")
            # Once per device job (both may ask before the first answer), then never again within the
            # first back-off (10 minutes by default).
            assert 1 <= sim.served("unknown_device") <= 2, sim.stats()
            status = daemon.get("/api/status").json()
            (entry,) = status["backing_off"]
            assert entry["kind"] == "device" and entry["id"] == unknown and entry["not_found"] >= 1
            assert entry["until"] - time.time() > 200  # the first pause is 5-10 minutes
            assert status["entities"]["device"]["not_found"] == 1
            metrics = daemon.get("/metrics").text
            assert 'iot_collector_entities{kind="device",state="not_found"} 1\n' in metrics
            text = subprocess.run([sys.executable, "-m", "collector", "status", "--url", daemon.url],
                                  capture_output=True, text=True, cwd=REPO, timeout=30).stdout
            assert unknown in text and "not found" in text
        finally:
            assert daemon.stop() == 0
    started = [e for e in daemon.log_events() if e["event"].startswith("the platform does not know")]
    assert len(started) == 1 and started[0]["ids"] == [unknown] and started[0]["level"] == "warning"
    assert not [e for e in daemon.log_events() if e["event"] == "poll failed" and unknown in e.get("ids", [])]


def test_a_device_whose_answer_hangs_is_not_an_overrun_and_does_not_hold_readyz(tmp_path: Path) -> None:
    with SimulatorProcess(devices=10) as sim:
        slow = sim.devices[0]
        with SlowProxy(sim.url, {slow}) as proxy:
            # Each attempt times out after 2 s; six attempts with their back-off take 27 s or more, three
            # cycles of device_status and device_flow.
            config = collector_config(tmp_path, proxy.url, sim.devices, timeout="2s", connect_timeout="1s",
                                     retries={"max_attempts": 6, "backoff_initial": "1s", "backoff_max": "30s"})
            config["jobs"].update({"device_status": {"interval": "8s"}, "device_flow": {"interval": "10s"}})
            daemon = DaemonProcess(tmp_path, config).start(wait_ready=False)
            try:
                started = time.monotonic()
                reason = daemon.get("/readyz").json()["reason"]
                daemon.wait_ready(timeout=30)
                ready_after = time.monotonic() - started
                assert proxy.held and proxy.held[0] == slow
                assert reason.startswith("first polling cycle")
                # Ready once the first cycle started its last poll (within 8-10 s) and one request
                # timeout (2 s) passed, while the slow device's poll still retries: before a second
                # cycle could have finished (16 s or more).
                assert ready_after < 15, ready_after
                wait_for(lambda: jobs(daemon)["device_status"]["runs"] >= 4, 60, "four device_status cycles")
                status = jobs(daemon)["device_status"]
                assert status["overruns"] == 0, status
                assert status["skipped_in_flight"] >= 2, status  # the slow device's turns while it hangs
                metrics = daemon.get("/metrics").text
                assert not sample(metrics, 'iot_collector_job_overruns_total{poll_job="device_status"}')
                skipped = sample(metrics, 'iot_collector_job_polls_skipped_in_flight_total{poll_job="device_status"}')
                assert (skipped or 0) >= 2
            finally:
                assert daemon.stop() == 0
    assert not [e for e in daemon.log_events() if "overrun" in e["event"]]
