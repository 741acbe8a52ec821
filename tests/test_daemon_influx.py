"""The daemon against real databases: Debian's InfluxDB 1.6 (v1 write API) and VictoriaMetrics (v2 write
API), an InfluxDB outage mid-run, and a SIGKILL of the daemon mid-run."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from collector.endpoints import SCHEMA
from tests.daemon_run import DaemonProcess, demo_config, wait_for
from tests.servers import InfluxServer, VictoriaMetricsServer

pytestmark = pytest.mark.integration

KINDS = ("device", "sim", "card_status", "card_usage", "card_month_usage", "account")
INFLUX_TYPES = {"int": "integer", "float": "float", "str": "string", "string": "string", "integer": "integer"}


def lp_keys(path: Path, measurement: str) -> list[tuple[str, int]]:
    """(series key, timestamp) of every line of a measurement in a line-protocol file sink."""
    keys = []
    for line in path.read_text().splitlines():
        if not line.startswith(measurement + ",") and not line.startswith(measurement + " "):
            continue
        series = line.split(" ", 1)[0]
        keys.append((series, int(line.rsplit(" ", 1)[1])))
    return keys


def influx_count(influxd: InfluxServer, db: str, measurement: str) -> int:
    rows = influxd.rows(f'SELECT count("staleness_seconds") FROM "{measurement}"', db) if measurement == "device" \
        else influxd.rows(f'SELECT count(*) FROM "{measurement}"', db)
    return max((v for r in rows for k, v in r.items() if k.startswith("count") and isinstance(v, int)), default=0)


def device_times(influxd: InfluxServer, db: str) -> set[tuple[str, int]]:
    rows = influxd.rows('SELECT "rssi_dbm", "online" FROM "device" GROUP BY "device_no"', db)
    return {(r["device_no"], r["time"]) for r in rows}


def file_device_times(path: Path) -> set[tuple[str, int]]:
    out = set()
    for series, ts in lp_keys(path, "device"):
        tags = dict(part.split("=", 1) for part in series.split(",")[1:])
        out.add((tags["device_no"], ts))
    return out


def influx_config(tmp: Path, influxd: InfluxServer, db: str, **extra: object) -> dict:
    return demo_config(tmp, sinks={"file": {"enabled": True, "path": str(tmp / "points.lp")},
                                   "influxdb_v1": {"enabled": True, "url": influxd.url, "database": db},
                                   "flush_interval": "200ms", "retry_max_backoff": "1s", **extra})


def test_every_kind_reaches_influxdb_v1_and_victoriametrics_with_the_documented_schema(
        tmp_path: Path, influxd: InfluxServer, influx_db: str, victoria_metrics: VictoriaMetricsServer) -> None:
    config = influx_config(tmp_path, influxd, influx_db,
                           influxdb_v2={"enabled": True, "url": victoria_metrics.url, "org": "iot",
                                        "bucket": "iot", "token": "unused-by-vm"})
    # VictoriaMetrics is shared by the session: this run's series carry a label of their own.
    run = uuid.uuid4().hex[:12]
    config["inventory"] = {"labels": {"test_run": run}}
    daemon = DaemonProcess(tmp_path, config).start()
    try:
        def measurements() -> set[str]:
            return {row["name"] for row in influxd.rows("SHOW MEASUREMENTS", influx_db)}

        wait_for(lambda: set(KINDS) <= measurements(), 60, f"{KINDS} in InfluxDB")
    finally:
        assert daemon.stop() == 0

    for kind in KINDS:
        spec = SCHEMA[kind]
        fields = {r["fieldKey"]: r["fieldType"] for r in influxd.rows(f'SHOW FIELD KEYS FROM "{kind}"', influx_db)}
        assert fields, kind
        for name, influx_type in fields.items():
            assert name in spec.fields, f"{kind}.{name} is not documented in the schema"
            assert INFLUX_TYPES[str(spec.fields[name].type)] == influx_type, f"{kind}.{name}"
        tags = {r["tagKey"] for r in influxd.rows(f'SHOW TAG KEYS FROM "{kind}"', influx_db)}
        assert set(spec.tags) <= tags, kind
        if kind != "account":
            assert "customer" in tags, kind  # inventory labels travel with every point

    # The same points through the v2 write API into VictoriaMetrics (measurement_field series names).
    series = victoria_metrics.export(f'{{__name__=~"(device|sim|card_status|card_usage)_.*",test_run="{run}"}}',
                                     until=lambda s: {x["metric"]["__name__"].split("_")[0] for x in s}
                                     >= {"device", "sim", "card"}, timeout=30)
    series += victoria_metrics.export('{__name__="account_balance"}')  # the account has no inventory labels
    names = {s["metric"]["__name__"] for s in series}
    assert {"device_rssi_dbm", "sim_used_bytes", "card_status_sim_status", "account_balance"} <= names
    rssi = [s for s in series if s["metric"]["__name__"] == "device_rssi_dbm"]
    assert all(-130 <= v <= -40 for s in rssi for v in s["values"])
    assert all("customer" in s["metric"] and "device_no" in s["metric"] for s in rssi)


def test_an_influxdb_outage_loses_no_poll(tmp_path: Path, influxd: InfluxServer, influx_db: str) -> None:
    points = tmp_path / "points.lp"
    daemon = DaemonProcess(tmp_path, influx_config(tmp_path, influxd, influx_db)).start()
    try:
        wait_for(lambda: len(device_times(influxd, influx_db)) >= 20, 30, "device points before the outage")
        influxd.stop()
        outage_start = time.monotonic()
        before = len(file_device_times(points))
        # Polling goes on during the outage; the spool keeps every point.
        wait_for(lambda: len(file_device_times(points)) >= before + 40, 30, "polls during the outage")
        status = daemon.get("/api/status").json()
        assert status["sinks"]["sinks"]["influxdb_v1"]["up"] is False
        assert status["sinks"]["spool"]["oldest_age_seconds"] > 0
        time.sleep(max(0.0, 6 - (time.monotonic() - outage_start)))
        influxd.start()
        wait_for(lambda: file_device_times(points) <= device_times(influxd, influx_db), 60,
                 "the spool to drain into InfluxDB")
    finally:
        if not influxd.running:
            influxd.start()
        assert daemon.stop() == 0
    spooled = file_device_times(points)
    stored = device_times(influxd, influx_db)
    assert spooled == stored, f"missing in InfluxDB: {len(spooled - stored)}"


def test_sigkill_mid_run_loses_no_spooled_point_and_duplicates_none(
        tmp_path: Path, influxd: InfluxServer, influx_db: str) -> None:
    points = tmp_path / "points.lp"
    config = influx_config(tmp_path, influxd, influx_db)
    daemon = DaemonProcess(tmp_path, config).start()
    wait_for(lambda: len(file_device_times(points)) >= 30, 30, "points before the kill")
    daemon.kill()  # SIGKILL: no flush, no goodbye
    restarted = DaemonProcess(tmp_path, config, name="restarted").start()
    try:
        wait_for(lambda: len(file_device_times(points)) >= 80, 40, "points after the restart")
    finally:
        assert restarted.stop() == 0
    # Every line the spool ever took reached the file sink (it drains the same spool) and InfluxDB.
    spooled = file_device_times(points)
    assert spooled == device_times(influxd, influx_db)
    # A replay after the kill may send a batch twice, but byte-identical: one series+timestamp, one line.
    lines = [line for line in points.read_text().splitlines() if line.startswith("device,")]
    by_key: dict[tuple[str, str], set[str]] = {}
    for line in lines:
        by_key.setdefault((line.split(" ", 1)[0], line.rsplit(" ", 1)[1]), set()).add(line)
    assert all(len(v) == 1 for v in by_key.values()), "a replay produced a different line for the same point"
    assert influx_count(influxd, influx_db, "device") == len(by_key)
