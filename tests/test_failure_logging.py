"""One warning line per failed poll, read from the daemon's own log: the simulator (its own process)
fails every device_flow request on purpose, the daemon retries each poll to `platform.retries`, and
logs the poll once (what failed, the last error, how many attempts), each attempt at debug, and counts
the retries in `iot_collector_upstream_retries_total`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.daemon_run import REPO, DaemonProcess, demo_config, wait_for
from tests.servers import free_port

ATTEMPTS = 3


def sample(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def mentions(event: dict[str, Any], device_no: str) -> bool:
    return event.get("device_no") == device_no or device_no in (event.get("ids") or [])


def test_a_failing_poll_is_one_warning_with_its_attempts_and_each_attempt_is_debug(tmp_path: Path) -> None:
    port = free_port()
    simulator = subprocess.Popen([sys.executable, "-m", "collector", "simulate", "--devices", "3", "--seed", "5",
                                  "--port", str(port), "--error-rate", "1", "--fault-endpoint", "device_flow"],
                                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sim_url = f"http://127.0.0.1:{port}"
    try:
        listing = subprocess.run([sys.executable, "-m", "collector", "simulate", "--devices", "3", "--seed", "5",
                                  "--print-inventory"], capture_output=True, text=True, cwd=REPO, timeout=60)
        devices = [str(d) for d in yaml.safe_load(listing.stdout)["devices"]]
        config = demo_config(tmp_path, simulator={"embedded": False},
                             platform={"base_url": sim_url, "app_id": "demo", "app_secret": "demo-secret",
                                       "rate_limit": 100,
                                       "retries": {"max_attempts": ATTEMPTS, "backoff_initial": "20ms",
                                                   "backoff_max": "50ms"}},
                             logging={"level": "debug", "format": "json"})
        config["inventory"] = {"devices": devices}
        wait_for(lambda: _answers(sim_url), 30, "the simulator to listen")
        daemon = DaemonProcess(tmp_path, config).start(wait_ready=False)
        try:
            wait_for(lambda: sum(1 for e in daemon.log_events() if e["event"] == "poll failed") >= 2 * len(devices),
                     40, "two failed device_flow polls per device")
            # The platform heals; once a whole device_flow cycle has gone by without a retry, the
            # retry counter holds every retry the log shows.
            httpx.delete(f"{sim_url}/_sim/faults", timeout=5).raise_for_status()
            retries = "iot_collector_upstream_retries_total{endpoint=\"device_flow\"}"
            settled = wait_for(lambda: _settled(daemon, retries), 40, "retries to stop")
        finally:
            assert daemon.stop() == 0
    finally:
        simulator.terminate()
        simulator.wait(10)

    events = daemon.log_events()
    polls = [e for e in events if e["event"] == "poll failed"]
    attempts = [e for e in events if e["event"] == "upstream request failed"]
    assert polls and attempts
    for poll in polls:
        assert poll["level"] == "warning" and poll["endpoint"] == "device_flow"
        assert poll["attempts"] == ATTEMPTS and poll["error"] == "HTTP 500" and poll["error_type"] == "HttpStatusError"
        # The poll's line carries the last attempt's trace id: that attempt is at debug, giving up.
        (last,) = [a for a in attempts if a["trace_id"] == poll["trace_id"]]
        assert last["attempt"] == ATTEMPTS and last["retrying"] is False
    assert {e["level"] for e in attempts} == {"debug"}
    assert sum(1 for a in attempts if not a["retrying"]) == len(polls)
    assert sum(1 for a in attempts if a["retrying"]) == settled
    for device_no in devices:
        warnings = [e for e in events if e["level"] in ("warning", "error") and mentions(e, device_no)]
        failed = [e for e in polls if mentions(e, device_no)]
        assert failed and warnings == failed, [e["event"] for e in warnings]
        tries = [a for a in attempts if mentions(a, device_no)]
        assert len(tries) >= ATTEMPTS * len(failed)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/_sim/state", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _settled(daemon: DaemonProcess, series: str) -> float | None:
    """The retry count once it has stopped moving over a device_flow interval (4 s) and more."""
    first = sample(daemon.get("/metrics").text, series)
    time.sleep(5)
    second = sample(daemon.get("/metrics").text, series)
    return second if first == second and first > 0 else None
