"""Replay: a folder of captured answers in the agreed layout (docs/simulator.md) served as the platform
by device number and ICCID, checked like the live simulator (credentials, recipe, batch limits), with
unknown ids answered as the platform answers them. The folders here are written the way
`iot-collector capture` writes them: from the raw answers of a live simulator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from collector.config import PlatformConfig
from collector.endpoints import ENDPOINTS
from collector.platform.client import PlatformClient
from collector.platform.signing import Signer
from collector.simulator import Capture, CaptureError, ReplayServer
from tests.servers import SimulatorProcess

ROOT = Path(__file__).resolve().parent.parent
DEVICE_ENDPOINTS = ("device_flow", "device_info")
CARD_ENDPOINTS = ("card_info", "card_status", "card_usage", "card_month_usage", "card_actions")


def post(url: str, form: dict[str, str], app_id: str = "demo", secret: str = "demo-secret",
         sign: dict[str, Any] | None = None, trace_id: str | None = None) -> dict[str, Any]:
    headers = {"appID": app_id, "apiVersion": "2.0", "traceID": trace_id or uuid.uuid4().hex,
               "timestamp": str(int(time.time()))}
    signer = Signer.from_config(PlatformConfig.model_validate({"sign": sign or {}}).sign, secret)
    headers["sign"] = signer.sign(headers, form)
    response = httpx.post(url, data=form, headers=headers, timeout=10)
    try:
        body = dict(response.json())
    except ValueError:  # an injected HTTP error's page
        body = {}
    return body | {"_status": response.status_code}


def capture(url: str, out: Path, device_nos: list[str], paths: dict[str, dict[str, Any]],
            month: str = "202509") -> Path:
    """The folder `iot-collector capture` writes: each answer as the platform sent it, a card's record
    taken out of its batch answer and wrapped in an envelope of its own."""
    out.mkdir(parents=True)
    iccids: list[str] = []
    for endpoint in DEVICE_ENDPOINTS:
        (out / endpoint).mkdir()
        for device_no in device_nos:
            headers = {"appID": "demo", "apiVersion": "2.0", "traceID": uuid.uuid4().hex,
                       "timestamp": str(int(time.time()))}
            form = {paths[endpoint]["param"]: device_no}
            headers["sign"] = Signer(secret="demo-secret").sign(headers, form)
            # The answer's bytes as they came, not re-serialized.
            body = httpx.post(url + paths[endpoint]["path"], data=form, headers=headers, timeout=10).content
            (out / endpoint / f"{device_no}.json").write_bytes(body)
            iccids.extend(s["iccid"] for s in json.loads(body)["data"]["sims"] if s["iccid"] not in iccids)
    for endpoint in CARD_ENDPOINTS:
        (out / endpoint).mkdir()
        form = {paths[endpoint]["param"]: ",".join(iccids)}
        if endpoint == "card_month_usage":
            form["month"] = month
        answer = post(url + paths[endpoint]["path"], form)
        assert answer["code"] == 0
        for record in answer["data"]:
            one = {"code": 0, "message": answer["message"], "data": [record], "timestamp": answer["timestamp"],
                   "traceID": answer["traceID"]}
            (out / endpoint / f"{record['iccid']}.json").write_text(json.dumps(one, ensure_ascii=False))
    (out / "account_assets").mkdir()
    account = post(url + paths["account_assets"]["path"], {})
    account.pop("_status")
    (out / "account_assets" / "account.json").write_text(json.dumps(account, ensure_ascii=False))
    (out / "manifest.json").write_text(json.dumps({
        "format": 1, "captured_at": int(time.time()),
        "platform": {"flow_unit": "KiB", "timezone": "Asia/Shanghai", "api_version": "2.0"},
        "endpoints": paths, "pseudonymised": False}))
    return out


def default_paths() -> dict[str, dict[str, Any]]:
    return {name: {"path": ep.call.path, "param": ep.call.param, "batch_limit": ep.call.batch_limit}
            for name, ep in ENDPOINTS.items()}


def once(config: Path) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run([sys.executable, "-m", "collector", "once", "-c", str(config), "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def collector_yaml(path: Path, url: str, devices: list[str]) -> Path:
    path.write_text(yaml.safe_dump({
        "platform": {"base_url": url, "app_id": "demo", "app_secret": "demo-secret"},
        "inventory": {"devices": devices}, "state_dir": str(path.parent / "state"),
        "alerts": {"enabled": False}, "http": {"enabled": False}}))
    return path


def without_poll_times(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("polled_at", "status_age_seconds", "trace_id")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return [strip(r) for r in results]


# --- a capture replayed ----------------------------------------------------------------------------------


def test_once_on_a_replayed_capture_observes_what_the_live_poll_observed(tmp_path: Path) -> None:
    start = ["--devices", "6", "--seed", "12", "--speed", "0", "--start", "2025-09-18 18:40:50"]
    with SimulatorProcess(*start) as live:
        devices = [d["deviceNo"] for d in live.admin("GET", "inventory")["devices"]]
        code, live_results = once(collector_yaml(tmp_path / "live.yaml", live.url, [*devices, "0000000000"]))
        folder = capture(live.url, tmp_path / "capture", devices, default_paths())
    assert code == 1 and live_results[-1]["error"]["code"] == 40404, "an unknown device, on the live platform"
    with SimulatorProcess("--replay", str(folder)) as replay:
        assert any("replaying" in line for line in replay.banner)
        code, replayed = once(collector_yaml(tmp_path / "replay.yaml", replay.url, [*devices, "0000000000"]))
        stats = replay.admin("GET", "stats")["endpoints"]
    assert code == 1 and replayed[-1]["error"]["code"] == 40404, "and on the replay"
    assert without_poll_times(replayed) == without_poll_times(live_results)
    assert len(replayed[0]["sims"]) >= 1 and stats["device_flow"] == {"ok": len(devices), "unknown_device": 1}


async def test_a_replay_serves_each_captured_answer_by_id_checked_like_the_platform(tmp_path: Path) -> None:
    paths = default_paths()
    paths["card_status"] = {"path": "/openapi/iot/card/status", "param": "cardNos", "batch_limit": 3}
    live = SimulatorProcess("--devices", "4", "--seed", "2", "--speed", "0",
                            "--start", "2025-09-18 18:40:50").start()
    try:
        devices = [d["deviceNo"] for d in live.admin("GET", "inventory")["devices"]]
        default = {name: dict(spec) for name, spec in default_paths().items()}
        folder = capture(live.url, tmp_path / "capture", devices[:2], default)
    finally:
        live.stop()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["endpoints"] = paths  # a platform whose card status lives elsewhere
    (folder / "manifest.json").write_text(json.dumps(manifest))
    captured = json.loads((folder / "device_flow" / f"{devices[0]}.json").read_text())
    captured["data"]["device"]["id"] = 123456789012345678901234567890  # wider than 64 bits: kept exactly
    (folder / "device_flow" / f"{devices[0]}.json").write_text(json.dumps(captured, ensure_ascii=False))
    (folder / "card_usage").rename(folder / "not_captured")
    recipe = {"hash": "md5", "template": "{appID}{timestamp}{secret}", "case": "upper"}
    server = ReplayServer(folder, {"app_id": "demo", "app_secret": "demo-secret", "sign": recipe})
    await server.start()
    try:
        base = server.base_url

        async def call(path: str, form: dict[str, str], **kwargs: Any) -> dict[str, Any]:
            return await asyncio.to_thread(post, base + path, form, sign=kwargs.pop("sign", recipe), **kwargs)

        answer = await call("/openapi/iot/queryDeviceFlow", {"deviceNo": devices[0]}, trace_id="t-1")
        assert answer["data"] == captured["data"] and answer["traceID"] == "t-1"
        assert abs(answer["timestamp"] - time.time()) < 2, "the envelope's timestamp is renewed"
        async with httpx.AsyncClient() as client:
            form = {"deviceNo": devices[0]}
            headers = {"appID": "demo", "apiVersion": "2.0", "traceID": "t", "timestamp": str(int(time.time()))}
            headers["sign"] = Signer.from_config(PlatformConfig.model_validate({"sign": recipe}).sign,
                                                 "demo-secret").sign(headers, form)
            raw = (await client.post(base + "/openapi/iot/queryDeviceFlow", data=form, headers=headers)).content
        assert b'"id":123456789012345678901234567890' in raw
        assert (await call("/openapi/iot/queryDeviceFlow", {"deviceNo": "0000000000"}))["code"] == 40404
        assert (await call("/openapi/iot/queryDeviceFlow", {"deviceNo": devices[0]}, sign={}))["code"] == 40001

        iccids = sorted(p.stem for p in (folder / "card_status").glob("*.json"))
        asked = [iccids[1], "89860000000000000000", iccids[0]]
        status = await call("/openapi/iot/card/status", {"cardNos": ",".join(asked)})
        assert [r["iccid"] for r in status["data"]] == [iccids[1], iccids[0]], "in order, unknown left out"
        twice = await call("/openapi/iot/card/status", {"cardNos": f"{iccids[0]},{iccids[0]}"})
        assert [r["iccid"] for r in twice["data"]] == [iccids[0]], "a repeated card answered once"
        four = [*iccids, "8986a", "8986b", "8986c"][:4]
        assert (await call("/openapi/iot/card/status", {"cardNos": ",".join(four)}))["code"] == 40000
        assert (await call("/openapi/iot/querySimStatus", {"iccids": iccids[0]}))["_status"] == 404
        assert (await call("/openapi/iot/querySimRealFlow", {"iccids": iccids[0]}))["_status"] == 404, \
            "an endpoint the folder has no answers for"
        assert (await call("/openapi/iot/querySimMonthFlow", {"iccids": iccids[0]}))["code"] == 40000, "no month"
        month = await call("/openapi/iot/querySimMonthFlow", {"iccids": iccids[0], "month": "202509"})
        assert month["data"][0]["iccid"] == iccids[0]
        account = await call("/openapi/iot/queryAccountAssets", {})
        assert account["data"] == json.loads((folder / "account_assets" / "account.json").read_text())["data"]

        config = PlatformConfig.model_validate({"app_id": "demo", "app_secret": "demo-secret", "sign": recipe,
                                                "endpoints": {"card_status": paths["card_status"]}})
        async with PlatformClient(config, base_url=base) as client:
            observed = (await client.fetch(ENDPOINTS["card_status"], iccids)).unwrap()
        assert sorted(o.iccid for o in observed) == iccids, "split to the captured platform's batch limit"
        stats = server.stats.snapshot()["endpoints"]["card_status"]
        assert stats["over_batch_limit"] == 1 and stats["ok"] >= 3

        async with httpx.AsyncClient() as client:
            inventory = (await client.get(base + "/_sim/inventory")).json()
            refused = await client.post(f"{base}/_sim/devices/{devices[0]}/offline")
            await client.post(f"{base}/_sim/faults", json={"error_rate": 1, "limit": 1})
        assert [d["deviceNo"] for d in inventory["devices"]] == sorted(devices[:2])
        assert set(inventory["cards"]) >= set(iccids)
        assert refused.status_code == 404 and "as captured" in refused.json()["error"]
        assert (await call("/openapi/iot/queryDeviceFlow", {"deviceNo": devices[1]}))["_status"] == 500
    finally:
        await server.stop()


@pytest.mark.parametrize(("layout", "message"), [
    ({}, "not a capture folder"),
    ({"manifest.json": '{"format": 2}'}, "format 2 is not supported"),
    ({"manifest.json": '{"format": 1}'}, "no captured answers"),
    ({"manifest.json": '{"format": 1}', "device_flow/123.json": "{not json"}, "device_flow/123.json: not JSON"),
    ({"manifest.json": '{"format": 1}', "device_flow/123.json": "[1, 2]"}, "not an envelope"),
    ({"manifest.json": '{"format": 1}', "card_status/8986.json": '{"code": 0, "data": {"a": 1}}'},
     "must be a list of records"),
    ({"manifest.json": '{"format": 1, "endpoints": {"card_status": {"path": "card"}}}',
      "card_status/8986.json": '{"code": 0, "data": []}'}, "endpoints.card_status"),
])
def test_a_folder_that_is_not_a_capture_is_a_clear_error(tmp_path: Path, layout: dict[str, str],
                                                          message: str) -> None:
    folder = tmp_path / "capture"
    folder.mkdir()
    for name, text in layout.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    with pytest.raises(CaptureError, match=message.replace("[", r"\[")):
        Capture.load(folder)
    done = subprocess.run([sys.executable, "-m", "collector", "simulate", "--replay", str(folder), "--port", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_a_replay_prints_its_inventory_and_refuses_flags_of_a_simulated_fleet(tmp_path: Path) -> None:
    folder = tmp_path / "capture"
    (folder / "device_flow").mkdir(parents=True)
    (folder / "manifest.json").write_text('{"format": 1}')
    for device_no in ("0123456789", "865214078636124"):
        (folder / "device_flow" / f"{device_no}.json").write_text(
            json.dumps({"code": 0, "message": "ok", "data": {"device": {"deviceNo": device_no}, "sims": []}}))
    done = subprocess.run([sys.executable, "-m", "collector", "simulate", "--replay", str(folder),
                           "--print-inventory"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and yaml.safe_load(done.stdout)["devices"] == ["0123456789", "865214078636124"]
    done = subprocess.run([sys.executable, "-m", "collector", "simulate", "--replay", str(folder), "--speed", "60",
                           "--offline", "0123456789"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "--speed, --offline do not apply" in done.stderr
