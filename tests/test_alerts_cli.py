"""`alerts test`, `alerts list` / `silence` output and errors, and the alert routes of the HTTP API."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from collector.alerts.cli import print_alerts
from collector.alerts.config import AlertsConfig
from collector.alerts.engine import AlertEngine
from collector.alerts.http import alert_routes, parse_time
from collector.cli import main
from collector.state import FieldRecord

REPO = Path(__file__).resolve().parent.parent


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def write_config(tmp_path: Path, **alerts: Any) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump({"simulator": {"embedded": True, "devices": 6, "seed": 3},
                                    "state_dir": str(tmp_path / "state"),
                                    "alerts": {"enabled": True, **alerts}}))
    return path


def test_alerts_test_with_an_observation_file_of_entity_fields(tmp_path: Path) -> None:
    config = write_config(tmp_path, language="en")
    observations = tmp_path / "obs.json"
    observations.write_text(json.dumps({
        "device": [{"device_no": "d1", "online": False, "labels": {"customer": "acme"}},
                   {"device_no": "d2", "online": True, "rssi_dbm": -111, "battery_percent": 80}],
        "sim": [{"iccid": "8986A", "device_no": "d2", "remaining_ratio": 0.05, "remaining_bytes": 5,
                 "total_bytes": 100}],
        "account": {"balance": 12.5},
    }))
    code, out, err = run("alerts", "test", "-c", str(config), "--observations", str(observations))
    assert code == 0, err
    assert f"fleet: observations in {observations}" in out
    assert "evaluated against 2 devices, 1 sim, 1 account (ignoring `for`)" in out
    assert "Device d1 is offline" in out
    assert "Weak signal on device d2: -111 dBm" in out
    assert "SIM 8986A (device d2) has 5 B (5%) of its data left" in out
    assert "Reseller account balance is low: 12.5" in out
    code, out, _ = run("alerts", "test", "-c", str(config), "--observations", str(observations), "--json")
    result = json.loads(out)
    found = {(f["rule"], f["entity"]) for f in result["would_fire"]}
    assert found == {("DeviceOffline", "d1"), ("WeakSignal", "d2"), ("SimDataLow", "8986A"),
                     ("AccountBalanceLow", "account")}
    [sim] = [f for f in result["would_fire"] if f["kind"] == "sim"]
    assert sim["labels"]["device_no"] == "d2" and sim["labels"]["iccid"] == "8986A"


def test_alerts_test_speaks_the_configured_language(tmp_path: Path) -> None:
    observations = tmp_path / "obs.json"
    observations.write_text(json.dumps({"sim": [{"iccid": "8986A", "device_no": "d2", "remaining_ratio": 0.05,
                                                 "remaining_bytes": 5 * 2**20, "total_bytes": 100 * 2**20}]}))
    code, out, err = run("alerts", "test", "-c", str(write_config(tmp_path)), "--observations", str(observations))
    assert code == 0, err
    assert "SIM 8986A（设备 d2）剩余流量 5 MiB（5%）" in out


def test_alerts_test_with_a_saved_platform_answer(tmp_path: Path) -> None:
    config = write_config(tmp_path, params={"sim_expiry_days": 100000})
    code, out, err = run("alerts", "test", "-c", str(config), "--observations",
                         str(REPO / "tests" / "data" / "sample-queryDeviceFlow.json"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["entities"] == {"device": 1, "sim": 2}
    assert {f["rule"] for f in result["would_fire"]} >= {"SimPackageExpiring"}


def test_alerts_test_poll_polls_the_embedded_simulator_only_when_configured(tmp_path: Path) -> None:
    config = write_config(tmp_path, params={"low_battery_percent": 101, "low_battery_clear_percent": 101})
    code, out, err = run("alerts", "test", "-c", str(config), "--poll", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["source"] == "one poll of the built-in simulator"
    assert result["entities"]["device"] == 6 and result["entities"]["sim"] >= 6
    low = [f for f in result["would_fire"] if f["rule"] == "LowBattery"]
    assert len(low) == 6 and all(f["labels"]["customer"] for f in low)


def test_alerts_test_without_a_running_collector_says_so_and_suggests_poll(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    code, out, err = run("alerts", "test", "-c", str(config), "--url", "http://127.0.0.1:9")
    assert code == 1 and out == ""
    assert err.startswith("error: cannot reach the collector at http://127.0.0.1:9/api/entities")
    assert f"iot-collector alerts test -c {config} --poll" in err
    # No --url and no runtime file of a collector that took a free port: not running either.
    path = tmp_path / "port0.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "http": {"port": 0}}))
    code, _out, err = run("alerts", "test", "-c", str(path))
    assert code == 1 and "cannot find the running collector" in err and "--poll" in err
    assert "Traceback" not in err


def test_alerts_test_reports_an_unreadable_observation_file(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "bad.json").write_text("{nope")
    code, _out, err = run("alerts", "test", "-c", str(config), "--observations", str(tmp_path / "bad.json"))
    assert code == 2 and err.startswith("error: cannot use ")


def test_a_bad_rule_stops_alerts_test_like_check_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, rules=[{"name": "X", "kind": "sim", "condition": "rssi_dbm < 0"}])
    code, _out, err = run("alerts", "test", "-c", str(config))
    assert code == 2
    assert "alerts.rules[0] (X).condition: unknown field 'rssi_dbm' for kind sim" in err


def test_commands_against_no_running_collector_fail_cleanly(tmp_path: Path) -> None:
    for args in (["alerts", "list"], ["silence", "list"], ["silence", "remove", "x"],
                 ["silence", "add", "customer=acme", "--comment", "c"]):
        code, _out, err = run(*args, "--url", "http://127.0.0.1:9")
        assert code == 1, args
        assert err.startswith("error: cannot reach the collector at http://127.0.0.1:9/api/")
        assert "Traceback" not in err


def test_alerts_table() -> None:
    out = io.StringIO()
    print_alerts([{"state": "firing", "severity": "critical", "rule": "DeviceOffline", "entity": "d1",
                   "active_since": "2025-01-01T00:00:00.000Z", "annotations": {"summary": "d1 offline"},
                   "silenced_by": "abc"}], out, now=1735693200.0)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["STATE", "SEVERITY", "RULE", "ENTITY", "SINCE", "SUMMARY"]
    assert lines[1].split() == ["firing", "(silenced)", "critical", "DeviceOffline", "d1", "1h", "d1", "offline"]
    out = io.StringIO()
    print_alerts([], out)
    assert out.getvalue() == "no active alerts\n"


@pytest.fixture
async def api(tmp_path: Path) -> Any:
    config = AlertsConfig.model_validate({
        "enabled": True, "default_rules": False,
        "rules": [{"name": "Off", "kind": "device", "condition": "online == False"}],
        "silences": [{"matchers": ["customer=x"], "ends_at": "2999-01-01T00:00:00Z"}]})
    engine = AlertEngine(config, tmp_path, clock=lambda: 1_750_000_000.0)
    app = web.Application()
    app.add_routes(alert_routes(engine))
    async with TestClient(TestServer(app)) as client:
        yield engine, client


async def test_http_alerts_and_silences(api: Any) -> None:
    engine, client = api
    engine.evaluate("device", "d1", FieldRecord("device", {"device_no": "d1", "online": False}), 1_750_000_000.0)
    body = await (await client.get("/api/alerts")).json()
    assert [a["id"] for a in body["alerts"]] == ["Off/d1"]
    assert (await (await client.get("/api/alerts?state=pending")).json())["alerts"] == []

    response = await client.post("/api/silences", json={"matchers": ["device_no=d1"], "duration": "2h",
                                                        "comment": "c", "created_by": "me"})
    assert response.status == 201
    sid = (await response.json())["id"]
    silences = (await (await client.get("/api/silences")).json())["silences"]
    assert {s["id"]: s["source"] for s in silences}[sid] == "api"
    mine = next(s for s in silences if s["id"] == sid)
    assert mine["ends_at"] - mine["starts_at"] == 7200 and mine["status"] == "active"
    assert (await (await client.get("/api/alerts")).json())["alerts"][0]["silenced_by"] == sid

    config_silence = next(s["id"] for s in silences if s["source"] == "config")
    assert (await client.delete(f"/api/silences/{config_silence}")).status == 409
    assert (await client.delete(f"/api/silences/{sid}")).status == 204
    assert (await client.delete(f"/api/silences/{sid}")).status == 404

    for bad in ({"matchers": "device_no=d1", "duration": "1h"}, {"matchers": ["d1"], "duration": "1h"},
                {"matchers": ["a=b"]}, {"matchers": ["a=b"], "ends_at": "yesterday"}, [1, 2]):
        response = await client.post("/api/silences", json=bad)
        assert response.status == 400, bad
        assert (await response.json())["error"]


def test_parse_time() -> None:
    assert parse_time(10) == 10.0
    assert parse_time("2025-01-01T08:00:00+08:00") == parse_time("2025-01-01T00:00:00Z") == 1735689600.0
    assert parse_time("2025-01-01T00:00:00") == 1735689600.0
    with pytest.raises(ValueError):
        parse_time("soon")


async def test_the_entities_route_serves_the_fields_rules_read() -> None:
    from collector.alerts.entities import entity_routes, records_from_document
    from collector.platform.models import DeviceObservation
    from collector.state import FleetState

    state = FleetState(device_interval=60.0)
    state.sync_inventory({"d1": {"customer": "acme"}, "d2": {}}, {})
    state.observe_device(DeviceObservation(device_no="d1", polled_at=1000.0, online_status=2, rssi_dbm=-99))
    collector = FieldRecord("collector", {"upstream_requests": 12, "upstream_error_ratio": 0.5})
    app = web.Application()
    app.add_routes(entity_routes(lambda: state, lambda: collector))
    async with TestClient(TestServer(app)) as client:
        doc = await (await client.get("/api/entities")).json()
        devices = doc["entities"]["device"]
        assert [d["device_no"] for d in devices] == ["d1"]  # d2 was never polled: it says nothing
        assert devices[0]["online"] is False and devices[0]["rssi_dbm"] == -99
        assert devices[0]["labels"] == {"customer": "acme"} and devices[0]["poll_age_seconds"] > 0
        assert doc["entities"]["collector"] == [{**{k: None for k in doc["entities"]["collector"][0]},
                                                 "upstream_requests": 12, "upstream_error_ratio": 0.5,
                                                 "labels": {}}]
        only = await (await client.get("/api/entities?kind=sim,account")).json()
        assert set(only["entities"]) == {"sim", "account"}
        bad = await client.get("/api/entities?kind=devices")
        assert bad.status == 400 and "unknown kind 'devices'" in (await bad.json())["error"]
    records = records_from_document(doc)
    assert set(records["device"]) == {"d1"} and records["collector"]["collector"].upstream_requests == 12
