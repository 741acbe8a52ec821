"""`iot-collector report` as an operator runs it: the real collector (`python -m collector run`) polls
its embedded simulator into a real InfluxDB 1.6; the report of the current month comes from the
running collector (no database), the same month from InfluxDB gives the same figures, a restart in
the middle of the month loses nothing, and the CSV and xlsx files open and read back.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from tests.daemon_run import REPO, DaemonProcess, demo_config, wait_for
from tests.servers import InfluxServer, free_port

pytestmark = pytest.mark.integration


def cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([sys.executable, "-m", "collector", "report", "-c", str(config), *args],
                          capture_output=True, cwd=REPO, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"report {args} exited {proc.returncode}:\n{proc.stderr.decode()}")
    return proc


def csv_sections(data: bytes) -> dict[str, list[dict[str, str]]]:
    """The CSV's tables by their first header cell after the report line."""
    assert data.startswith(b"\xef\xbb\xbf"), "CSV without a UTF-8 byte order mark"
    text = data.decode("utf-8-sig")
    blocks = [b for b in text.split("\r\n\r\n") if b.strip()]
    out: dict[str, list[dict[str, str]]] = {}
    for block in blocks[1:]:
        table = list(csv.DictReader(io.StringIO(block)))
        header = block.split("\r\n", 1)[0]
        out[header.split(",")[1]] = table  # devices | iccid | device_no
    return out


@dataclass
class Run:
    daemon: DaemonProcess
    config: Path
    sim: str
    influx: InfluxServer
    db: str
    offline: str
    suspended: str


@pytest.fixture(scope="module")
def run(influxd_server: InfluxServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if not influxd_server.running:
        influxd_server.start()
    tmp = tmp_path_factory.mktemp("report")
    db = f"report_{uuid.uuid4().hex[:10]}"
    sim_port = free_port()
    config = demo_config(
        tmp, simulator={"embedded": True, "devices": 12, "seed": 11, "speed": 600, "port": sim_port},
        sinks={"file": {"enabled": False}, "influxdb_v1": {"enabled": True, "url": influxd_server.url, "database": db},
               "flush_interval": "200ms"},
        jobs={"device_status": {"interval": "2s"}, "device_flow": {"interval": "2s"},
              "card_status": {"interval": "2s"}, "card_usage": {"interval": "2s"},
              "card_info": {"interval": "3s"}, "account_assets": {"interval": "3s"},
              "card_month_usage": {"enabled": True, "interval": "3s"},
              "card_actions": {"enabled": False, "interval": "1h"}})
    daemon = DaemonProcess(tmp, config)
    daemon.start()
    sim = f"http://127.0.0.1:{sim_port}/_sim"
    devices = httpx.get(f"{sim}/inventory", timeout=10).json()["devices"]
    offline = devices[1]["deviceNo"]
    suspended = next(d for d in devices if d["iccids"])["iccids"][0]
    for url in (f"{sim}/devices/{offline}/offline", f"{sim}/sims/{suspended}/suspend"):
        assert httpx.post(url, json={}, timeout=10).status_code == 200
    try:
        yield Run(daemon, daemon.config_path, sim, influxd_server, db, offline, suspended)
    finally:
        daemon.stop()


def report_json(run: Run) -> dict[str, Any]:
    response = run.daemon.get("/api/report?by=customer")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for_material(run: Run) -> dict[str, Any]:
    """Until the fleet has used data, a card is suspended and the offline device was seen offline."""
    def ready() -> dict[str, Any] | None:
        report = report_json(run)
        sims = {s["iccid"]: s for s in report["sims"]}
        devices = {d["device_no"]: d for d in report["devices"]}
        if (sims.get(run.suspended, {}).get("suspended") and devices.get(run.offline, {}).get("offline_days")
                and sum(s["billed_bytes"] or 0 for s in report["sims"]) > 0
                and any(s["source"] == "month endpoint" for s in report["sims"])):
            return report
        return None
    return dict(wait_for(ready, 60, "a report with usage, a suspended card and an offline device", 1.0))


def freeze(run: Run) -> None:
    """The platform answers nothing more (every request fails), so no new point arrives; the spool
    has drained once the collector's sink has written everything."""
    assert httpx.post(f"{run.sim}/faults", json={"error_rate": 1.0}, timeout=10).status_code == 200
    time.sleep(2.0)  # polls in flight end
    wait_for(lambda: all(s["pending_bytes"] == 0 for s in run.daemon.get("/api/status").json()["sinks"]["sinks"]
                         .values()), 30, "the spool to drain", 0.5)


def test_current_month_from_the_running_collector(run: Run) -> None:
    report = wait_for_material(run)
    assert report["source"] == "collector" and not report["complete"]
    groups = {g["name"]: g for g in report["groups"]}
    assert set(groups) == {"acme", "globex", "initech", "umbrella"}
    assert sum(g["devices"] for g in groups.values()) == 12
    sims = {s["iccid"]: s for s in report["sims"]}
    suspended = sims[run.suspended]
    assert run.suspended in groups[suspended["group"]]["suspended"]
    offline = next(d for d in report["devices"] if d["device_no"] == run.offline)
    # The day is the report's (Asia/Shanghai, not the test host's); it may have turned since the device was seen.
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    assert offline["offline_days"]
    seen = date.fromisoformat(f"{report['month']}-{offline['offline_days'][-1]:02d}")
    assert seen in {now.date(), (now - timedelta(minutes=10)).date()}, (seen, now)
    assert run.offline in groups[offline["group"]]["offline_devices"]
    # A device's usage is the sum of its SIMs'; a group's top devices are its busiest.
    for device in report["devices"]:
        its = [s["billed_bytes"] or 0 for s in report["sims"] if s["device_no"] == device["device_no"]]
        assert (device["billed_bytes"] or 0) == sum(its)
    for g in groups.values():
        tops = [sims[i]["billed_bytes"] for i in g["top_sims"]]
        assert tops == sorted(tops, reverse=True) and len(tops) <= 5

    table = cli(run.config).stdout.decode()
    assert table.startswith(f"Report of {report['month']} by customer (Asia/Shanghai), from the running collector")
    assert "Suspended SIMs" in table and run.suspended in table and "Days offline" in table and run.offline in table


def test_the_same_month_from_influxdb_gives_the_same_figures(run: Run, tmp_path: Path) -> None:
    wait_for_material(run)
    freeze(run)
    live = report_json(run)
    proc = cli(run.config, "--source", "influxdb", "--format", "csv", "--out", str(tmp_path / "r.csv"))
    assert b"wrote" in proc.stderr
    sections = csv_sections((tmp_path / "r.csv").read_bytes())
    from_db = {row["iccid"]: row for row in sections["iccid"]}
    live_sims = {s["iccid"]: s for s in live["sims"]}
    assert set(from_db) == set(live_sims)
    for iccid, s in live_sims.items():
        row = from_db[iccid]
        assert (row["group"], row["device_no"]) == (s["group"], s["device_no"]), iccid
        assert row["billed_bytes"] == ("" if s["billed_bytes"] is None else str(s["billed_bytes"])), iccid
        assert row["real_bytes"] == ("" if s["real_bytes"] is None else str(s["real_bytes"])), iccid
        assert row["figure"] == s["source"], iccid
        assert row["suspended"] == str(int(s["suspended"])), iccid
    db_devices = {row["device_no"]: row for row in sections["device_no"]}
    for d in live["devices"]:
        row = db_devices[d["device_no"]]
        assert row["offline_days"] == " ".join(f"{live['month']}-{day:02d}" for day in d["offline_days"])
        assert row["group"] == d["group"]
    assert any(row["offline_days"] for row in db_devices.values())
    assert any(int(row["billed_bytes"] or 0) > 0 for row in from_db.values())


def test_xlsx_is_a_workbook_that_reads_back(run: Run, tmp_path: Path) -> None:
    import openpyxl

    out = tmp_path / "report.xlsx"
    cli(run.config, "--format", "xlsx", "--out", str(out))
    book = openpyxl.load_workbook(out, read_only=True)
    assert book.sheetnames == ["Summary", "SIMs", "Devices"]
    summary = [row for row in book["Summary"].iter_rows(values_only=True)]
    assert str(summary[0][0]).startswith("Report of ")
    header = summary[2]
    assert header[:3] == ("group", "devices", "sims")
    groups = {row[0]: row for row in summary[3:]}
    assert set(groups) == {"acme", "globex", "initech", "umbrella"}
    assert sum(row[1] for row in groups.values()) == 12
    sims = list(book["SIMs"].iter_rows(values_only=True))
    assert sims[0][:4] == ("group", "iccid", "sim_no", "device_no")
    billed = [row[4] for row in sims[1:] if row[4] is not None]
    assert billed and all(isinstance(v, int) for v in billed)
    assert abs(sum(billed) - sum(row[3] for row in groups.values())) == 0


def test_a_past_month_comes_from_influxdb_and_a_future_one_is_refused(run: Run) -> None:
    proc = cli(run.config, "--month", "2001-02")
    assert proc.returncode == 0
    assert b"Report of 2001-02 by customer (Asia/Shanghai), from InfluxDB: complete" in proc.stdout
    proc = cli(run.config, "--month", "2999-01", check=False)
    assert proc.returncode == 2 and b"has not begun" in proc.stderr
    proc = cli(run.config, "--month", "2025-13", check=False)
    assert proc.returncode == 2 and b"YYYY-MM" in proc.stderr
    proc = cli(run.config, "--by", 'x" OR 1=1', check=False)
    assert proc.returncode == 2 and b"label name" in proc.stderr
    # The collector keeps the current month only.
    response = run.daemon.get("/api/report?month=2001-02")
    assert response.status_code == 404 and "InfluxDB" in response.json()["error"]


def test_without_a_collector_or_an_influxdb_the_report_says_why(tmp_path: Path) -> None:
    config = demo_config(tmp_path, http={"port": free_port()})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = cli(path, check=False)
    assert proc.returncode == 1 and b"cannot reach the collector" in proc.stderr, proc.stderr
    proc = cli(path, "--month", "2001-02", check=False)
    assert proc.returncode == 1 and b"no InfluxDB sink is enabled" in proc.stderr, proc.stderr


def test_a_restart_in_the_middle_of_the_month_loses_nothing(run: Run) -> None:
    wait_for_material(run)
    before = report_json(run)
    run.daemon.stop()
    # The embedded simulator stops with the collector; the restarted one is a healthy platform again.
    run.daemon.start()
    after = report_json(run)
    sims = {s["iccid"]: s for s in after["sims"]}
    # The counters' growth kept in the ledger (the month endpoint's figure is the platform's latest word,
    # and the restarted simulator's platform starts its day again).
    assert any(s["real_bytes"] for s in before["sims"])
    for s in before["sims"]:
        assert (sims[s["iccid"]]["real_bytes"] or 0) >= (s["real_bytes"] or 0), s["iccid"]
    days = {d["device_no"]: set(d["offline_days"]) for d in after["devices"]}
    for d in before["devices"]:
        assert set(d["offline_days"]) <= days[d["device_no"]], d["device_no"]
    assert any(d["offline_days"] for d in before["devices"])
