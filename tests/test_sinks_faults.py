"""The daemon on a real small disk (a 2 MiB tmpfs as its state directory), polling the simulator and
writing to a real InfluxDB 1.x that is stopped and started again: a database outage that fills the
disk, a disk full from the start, SIGTERM after spool errors, and a state directory that cannot hold
the spool. What the operator would see: /readyz, /metrics, the log lines, the exit code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_run import REPO, DaemonProcess, demo_config, wait_for
from tests.servers import InfluxServer, free_port
from tests.tmpfs import fill, mounted

pytestmark = pytest.mark.integration

TRACEBACK = re.compile(r"Traceback|never retrieved|raised an exception")


def config_for(tmp: Path, state: Path, port: int, influx_url: str, db: str, **extra: Any) -> dict[str, Any]:
    """200 simulated devices polled every 2-6 s, written to InfluxDB only, the default spool (1 GiB
    in 8 MiB segments) in `state`."""
    config = demo_config(tmp, simulator={"embedded": True, "devices": 200, "seed": 7, "speed": 60},
                         sinks={"file": {"enabled": False}, "flush_interval": "200ms", "retry_max_backoff": "1s",
                                "influxdb_v1": {"enabled": True, "url": influx_url, "database": db}},
                         http={"port": port}, state_dir=str(state), **extra)
    config["jobs"]["device_status"] = {"interval": "2s"}
    return config


def launch(tmp: Path, config: dict[str, Any]) -> DaemonProcess:
    """The daemon, found through its configured port (on a full disk it cannot write collector.json)."""
    daemon = DaemonProcess(tmp, config)
    daemon.write_config()
    with daemon.log_path.open("ab") as log:
        daemon.proc = subprocess.Popen([sys.executable, "-m", "collector", "run", "-c", str(daemon.config_path)],
                                       cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    daemon.url = f"http://127.0.0.1:{config['http']['port']}"

    def alive() -> bool:
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.logs()[-3000:]}")
        try:
            return daemon.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(alive, 60, "the daemon to serve /healthz")
    return daemon


def sample(daemon: DaemonProcess, name: str, **labels: str) -> float:
    """A sample of the daemon's /metrics (0 when absent)."""
    for family in text_string_to_metric_families(daemon.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def dropped(daemon: DaemonProcess, reason: str) -> float:
    return sample(daemon, "iot_collector_points_dropped_total", reason=reason)


def pending_bytes(daemon: DaemonProcess, sink: str) -> int:
    return int(daemon.get("/api/status").json()["sinks"]["sinks"][sink]["pending_bytes"])


def ready(daemon: DaemonProcess) -> bool:
    return daemon.get("/readyz").status_code == 200


def steady(read: Any, seconds: float = 3.0) -> bool:
    """True when `read()` gives the same value `seconds` apart."""
    first = read()
    time.sleep(seconds)
    return bool(read() == first)


def device_points(influxd: InfluxServer, db: str) -> int:
    rows = influxd.rows('SELECT count("staleness_seconds") FROM "device"', db)
    return int(rows[0]["count"]) if rows else 0


def events(daemon: DaemonProcess, prefix: str) -> list[dict[str, Any]]:
    return [e for e in daemon.log_events() if str(e.get("event", "")).startswith(prefix)]


def at_most_once_a_minute(lines: list[dict[str, Any]], started: float) -> bool:
    return len(lines) <= 1 + int((time.monotonic() - started) // 60)


def test_a_database_outage_that_fills_the_disk_recovers_without_a_restart(
        tmp_path: Path, influxd: InfluxServer, influx_db: str) -> None:
    with mounted(tmp_path / "state", "2m") as state:
        daemon = launch(tmp_path, config_for(tmp_path, state, free_port(), influxd.url, influx_db))
        started = time.monotonic()
        try:
            wait_for(lambda: ready(daemon), 60, "ready before the outage")
            influxd.stop()
            wait_for(lambda: dropped(daemon, "disk_full") > 0, 120, "the spool to fill the disk")
            assert ready(daemon)  # still storing the newest points, oldest first dropped
            influxd.start()
            before = device_points(influxd, influx_db)
            wait_for(lambda: ready(daemon) and steady(lambda: dropped(daemon, "disk_full"))
                     and pending_bytes(daemon, "influxdb_v1") < 256 * 1024, 60, "the spool to drain and drops to stop")
            wait_for(lambda: device_points(influxd, influx_db) > before + 200, 30, "new points in InfluxDB")
            assert steady(lambda: dropped(daemon, "disk_full") + dropped(daemon, "spool_error"), 4)
            assert at_most_once_a_minute(events(daemon, "disk full"), started)
        finally:
            if not influxd.running:
                influxd.start()
            assert daemon.stop() == 0
    assert not TRACEBACK.search(daemon.logs())


def test_the_daemon_starts_on_a_full_disk_and_recovers_when_space_returns(
        tmp_path: Path, influxd: InfluxServer, influx_db: str) -> None:
    with mounted(tmp_path / "state", "2m") as state:
        filler = fill(state)
        config = config_for(tmp_path, state, free_port(), influxd.url, influx_db, alerts={"enabled": True})
        daemon = launch(tmp_path, config)
        started = time.monotonic()
        try:
            wait_for(lambda: events(daemon, "collector started"), 30, "the start-up to complete")
            (warning,) = events(daemon, "runtime file not written")
            assert warning["level"] == "warning" and "No space left" in warning["error"]
            time.sleep(3)  # a few poll cycles on the full disk
            assert daemon.proc is not None and daemon.proc.poll() is None
            filler.unlink()
            wait_for(lambda: ready(daemon) and steady(lambda: dropped(daemon, "spool_error")), 60,
                     "ready, and no more points dropped, once space returned")
            before = device_points(influxd, influx_db)
            wait_for(lambda: device_points(influxd, influx_db) > before + 200, 30, "new points in InfluxDB")
            assert at_most_once_a_minute(events(daemon, "spool cannot store points"), started)
        finally:
            assert daemon.stop() == 0
    assert not TRACEBACK.search(daemon.logs())


def test_sigterm_after_spool_errors_stops_quietly(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # the database never answers: nothing leaves the spool
    with mounted(tmp_path / "state", "2m") as state:
        fill(state, leave=64 * 1024)
        daemon = launch(tmp_path, config_for(tmp_path, state, free_port(), down, "iot"))
        started = time.monotonic()
        try:
            wait_for(lambda: dropped(daemon, "spool_error") > 500, 90, "points refused by the full spool")
            wait_for(lambda: daemon.get("/readyz").json()["reason"].startswith("spool not writable"), 30,
                     "/readyz to turn not ready")
            reason = daemon.get("/readyz").json()["reason"]
            time.sleep(3)  # more polls end in a refused submit, some cycles are half dispatched
        finally:
            code = daemon.stop()
    logs = daemon.logs()
    assert code == 0
    assert not TRACEBACK.search(logs), logs[-3000:]
    assert at_most_once_a_minute(events(daemon, "spool cannot store points"), started)
    assert not events(daemon, "poll crashed")
    assert "No space left" in reason
    assert json.loads(next(line for line in logs.splitlines() if '"stopped"' in line))["level"] == "info"


def test_a_state_directory_that_cannot_hold_the_spool_is_a_configuration_error(tmp_path: Path) -> None:
    with mounted(tmp_path / "state", "1m", "ro") as state:
        daemon = DaemonProcess(tmp_path, config_for(tmp_path, state, free_port(), "http://127.0.0.1:9", "iot"))
        daemon.write_config()
        done = subprocess.run([sys.executable, "-m", "collector", "run", "-c", str(daemon.config_path)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "state_dir" in done.stderr and "Read-only file system" in done.stderr
    assert "Traceback" not in done.stderr
