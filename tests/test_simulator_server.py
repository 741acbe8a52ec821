"""The simulator over real HTTP on 127.0.0.1, driven by a plain aiohttp client: the checks the platform
makes (appID, timestamp window, signature, parameters, batch limits), the envelope, the admin endpoint,
every injected fault as the bytes a client would see, and the `simulate` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from collector.config import InventoryConfig, PlatformConfig
from collector.inventory import load_inventory
from collector.platform.signing import Signer
from collector.simulator import EMBEDDED_APP_ID, FaultConfig, Simulator, add_arguments, main
from collector.simulator.admin import _loopback
from collector.simulator.command import build
from collector.simulator.contract import MONTH_PARAM, Endpoint

APP_ID, SECRET = "app-under-test", "s3cret"
PLATFORM = PlatformConfig(app_id=APP_ID, app_secret=SECRET)  # type: ignore[arg-type]
START = 1758192050.0


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(devices=60, seed=2, speed=0, platform=PLATFORM, start=START)
    await simulator.start()
    yield simulator
    await simulator.stop()


async def call(sim: Simulator, endpoint: Endpoint, form: dict[str, str], *, secret: str = SECRET,
               app_id: str = APP_ID, headers: dict[str, str] | None = None, path: str | None = None,
               deadline: float = 5.0) -> tuple[int, Any]:
    """POST a signed request; (HTTP status, decoded JSON body or raw bytes if it is not JSON)."""
    signed = {"appID": app_id, "apiVersion": "2.0", "traceID": uuid.uuid4().hex,
              "timestamp": str(int(time.time()))}
    signed.update(headers or {})
    signed.setdefault("sign", Signer(secret=secret).sign(signed, form))
    url = sim.base_url + (path or sim.specs[endpoint].path)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=deadline)) as session, \
            session.post(url, data=form, headers=signed) as response:
        raw = await response.read()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw


async def admin(sim: Simulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, \
            session.request(method, f"{sim.base_url}/_sim/{path}", json=body) as response:
        return response.status, await response.json()


def device_form(sim: Simulator, index: int = 0) -> dict[str, str]:
    return {"deviceNo": sim.device_numbers()[index]}


# --- the platform's checks and the envelope ----------------------------------------------------------


async def test_a_signed_request_gets_the_envelope(sim: Simulator) -> None:
    trace = uuid.uuid4().hex
    status, body = await call(sim, Endpoint.DEVICE_FLOW, device_form(sim), headers={"traceID": trace})
    assert status == 200
    assert list(body) == ["code", "message", "data", "timestamp", "traceID"]
    assert body["code"] == 0 and body["message"] == "操作成功" and body["traceID"] == trace
    assert isinstance(body["timestamp"], int) and abs(body["timestamp"] - time.time()) < 5
    assert body["data"]["device"]["deviceNo"] == sim.device_numbers()[0]


@pytest.mark.parametrize(("change", "code"), [
    ({"secret": "wrong"}, 40001),
    ({"headers": {"sign": ""}}, 40001),
    ({"app_id": "someone-else"}, 40002),
    ({"headers": {"timestamp": str(int(time.time()) - 3600)}}, 40003),
    ({"headers": {"timestamp": "yesterday"}}, 40003),
    ({"headers": {"apiVersion": "1.0"}}, 40000),
])
async def test_bad_credentials_or_headers_are_error_codes(sim: Simulator, change: dict[str, Any], code: int) -> None:
    status, body = await call(sim, Endpoint.DEVICE_FLOW, device_form(sim), **change)
    assert status == 200 and body["code"] == code and body["data"] is None and body["message"]


async def test_unknown_device_and_missing_parameter(sim: Simulator) -> None:
    assert (await call(sim, Endpoint.DEVICE_FLOW, {"deviceNo": "0000000000"}))[1]["code"] == 40404
    assert (await call(sim, Endpoint.DEVICE_INFO, {"deviceNo": "0000000000"}))[1]["code"] == 40404
    assert (await call(sim, Endpoint.DEVICE_FLOW, {}))[1]["code"] == 40000
    assert (await call(sim, Endpoint.CARD_STATUS, {"iccids": " , "}))[1]["code"] == 40000


async def test_card_batches_up_to_the_limit_and_not_one_more(sim: Simulator) -> None:
    known = sim.iccids()
    assert len(known) >= 100
    status, body = await call(sim, Endpoint.CARD_INFO, {"iccids": ",".join(known[:100])})
    assert status == 200 and body["code"] == 0
    assert [r["iccid"] for r in body["data"]] == known[:100]
    status, body = await call(sim, Endpoint.CARD_INFO, {"iccids": ",".join(known[:101])})
    assert status == 200 and body["code"] == 40000 and body["data"] is None, "an error, not a truncation"
    assert (await call(sim, Endpoint.CARD_STATUS, {"iccids": ",".join(known[:10])}))[1]["code"] == 0
    assert (await call(sim, Endpoint.CARD_STATUS, {"iccids": ",".join(known[:11])}))[1]["code"] == 40000
    assert (await call(sim, Endpoint.CARD_USAGE, {"iccids": ",".join(known[:11])}))[1]["code"] == 40000
    form = {"iccids": ",".join(known[:11]), MONTH_PARAM: "202509"}
    assert (await call(sim, Endpoint.CARD_MONTH_USAGE, form))[1]["code"] == 40000


async def test_unknown_cards_are_absent_and_duplicates_answered_once(sim: Simulator) -> None:
    first, second = sim.iccids()[:2]
    ids = f"{first},89860000000000000000,{second},{first}"
    body = (await call(sim, Endpoint.CARD_USAGE, {"iccids": ids}))[1]
    assert body["code"] == 0 and [r["iccid"] for r in body["data"]] == [first, second]
    assert (await call(sim, Endpoint.CARD_STATUS, {"iccids": "8986000000000000000X"}))[1]["data"] == []


async def test_card_endpoints_agree_with_the_device_answer(sim: Simulator) -> None:
    device = (await call(sim, Endpoint.DEVICE_FLOW, device_form(sim, 3)))[1]["data"]
    ids = ",".join(s["iccid"] for s in device["sims"])
    info = (await call(sim, Endpoint.CARD_INFO, {"iccids": ids}))[1]["data"]
    usage = (await call(sim, Endpoint.CARD_USAGE, {"iccids": ids}))[1]["data"]
    status = (await call(sim, Endpoint.CARD_STATUS, {"iccids": ids}))[1]["data"]
    for sim_record, info_record, usage_record, status_record in zip(device["sims"], info, usage, status, strict=True):
        assert info_record == sim_record
        for key in ("totalFlow", "useFlow", "realUseFlow", "dockUserFlow", "dockResetDate", "endAt"):
            assert usage_record[key] == sim_record[key]
        for key in ("simStatus", "onlineStatus", "internetStatus", "lastSimStatusAt"):
            assert status_record[key] == sim_record[key]


async def test_month_usage_needs_a_valid_month(sim: Simulator) -> None:
    ids = ",".join(sim.iccids()[:3])
    for month in ("", "2025-09", "202513", "25090"):
        assert (await call(sim, Endpoint.CARD_MONTH_USAGE, {"iccids": ids, MONTH_PARAM: month}))[1]["code"] == 40000
    body = (await call(sim, Endpoint.CARD_MONTH_USAGE, {"iccids": ids, MONTH_PARAM: "202508"}))[1]
    assert body["code"] == 0
    assert [list(r) for r in body["data"]] == [["iccid", "simNo", "month", "useFlow"]] * 3
    assert all(r["month"] == "202508" and isinstance(r["useFlow"], int) for r in body["data"])


async def test_account_assets_and_card_actions(sim: Simulator) -> None:
    body = (await call(sim, Endpoint.ACCOUNT_ASSETS, {}))[1]
    assert body["code"] == 0 and set(body["data"]) == {"balance", "arrearsBalance", "frozenBalance"}
    iccid = sim.iccids()[5]
    await admin(sim, "POST", f"sims/{iccid}/suspend")
    actions = (await call(sim, Endpoint.CARD_ACTIONS, {"iccids": iccid}))[1]["data"]
    assert actions[0]["iccid"] == iccid and actions[0]["actionType"] == 1 and actions[0]["status"] == 1
    assert list(actions[0]) == ["serialNo", "iccid", "simNo", "actionType", "status", "remark", "createdAt"]
    await admin(sim, "POST", "time", {"advance": 600})
    assert (await call(sim, Endpoint.CARD_ACTIONS, {"iccids": iccid}))[1]["data"][0]["status"] == 2, "done later"


async def test_requests_the_platform_would_not_take(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as session:
        path = sim.specs[Endpoint.DEVICE_FLOW].path
        async with session.get(sim.base_url + path) as response:
            assert response.status == 405
        async with session.post(sim.base_url + "/openapi/iot/deviceReboot", data={"deviceNo": "1"}) as response:
            assert response.status == 404 and (await response.json())["code"] == 40400
    signed = {"appID": APP_ID, "apiVersion": "2.0", "traceID": "t", "timestamp": str(int(time.time()))}
    signed["sign"] = Signer(secret=SECRET).sign(signed, {})
    async with aiohttp.ClientSession() as session, session.post(
            sim.base_url + path, json=device_form(sim), headers=signed) as response:
        assert (await response.json())["code"] == 40000, "JSON bodies are refused: the API takes forms"


async def test_paths_parameters_and_sign_recipe_come_from_the_platform_config() -> None:
    platform = PlatformConfig.model_validate({
        "app_id": "x", "app_secret": "y", "sign": {"hash": "hmac-sha256", "case": "upper"},
        "endpoints": {"device_flow": {"path": "/v9/flow", "param": "imei"}, "card_status": {"batch_limit": 3}},
    })
    simulator = Simulator(devices=5, seed=1, speed=0, platform=platform, start=START)
    await simulator.start()
    try:
        form = {"imei": simulator.device_numbers()[0]}
        signed = {"appID": "x", "apiVersion": "2.0", "traceID": "t", "timestamp": str(int(time.time()))}
        signed["sign"] = Signer.from_config(platform.sign, "y").sign(signed, form)
        assert signed["sign"].isupper()
        async with aiohttp.ClientSession() as session:
            async with session.post(simulator.base_url + "/v9/flow", data=form, headers=signed) as response:
                assert (await response.json())["code"] == 0
            async with session.post(simulator.base_url + "/openapi/iot/queryDeviceFlow", data=form,
                                    headers=signed) as response:
                assert response.status == 404
        _, body = await call(simulator, Endpoint.CARD_STATUS, {"iccids": ",".join(simulator.iccids()[:4])},
                             app_id="x", headers={"sign": ""})
        assert body["code"] == 40001
    finally:
        await simulator.stop()


# --- the admin endpoint ---------------------------------------------------------------------------------


async def test_admin_state_and_stats(sim: Simulator) -> None:
    status, state = await admin(sim, "GET", "state")
    assert status == 200 and state["devices"] == 60 and state["sims"] == len(sim.iccids())
    assert state["simulated_time"] == START and state["simulated_local"] == "2025-09-18 18:40:50"
    await call(sim, Endpoint.DEVICE_FLOW, device_form(sim))
    await call(sim, Endpoint.DEVICE_FLOW, device_form(sim), secret="nope")
    await call(sim, Endpoint.CARD_STATUS, {"iccids": ",".join(sim.iccids()[:4])})
    stats = (await admin(sim, "GET", "stats"))[1]
    assert stats["endpoints"]["device_flow"] == {"ok": 1, "bad_sign": 1}
    assert stats["endpoints"]["card_status"] == {"ok": 1} and stats["cards_requested"]["card_status"] == 4
    assert stats["total"] == 3
    assert (await admin(sim, "DELETE", "stats"))[1]["total"] == 0


async def test_admin_steers_devices_and_cards(sim: Simulator) -> None:
    device_no = sim.device_numbers()[1]
    await admin(sim, "POST", f"devices/{device_no}/offline")
    device = (await call(sim, Endpoint.DEVICE_FLOW, {"deviceNo": device_no}))[1]["data"]["device"]
    assert device["onlineStatus"] == 0 and device["connCount"] == 0
    await admin(sim, "POST", f"devices/{device_no}/online")
    await admin(sim, "POST", f"devices/{device_no}/rssi", {"dbm": -113})
    device = (await call(sim, Endpoint.DEVICE_FLOW, {"deviceNo": device_no}))[1]["data"]["device"]
    assert device["rssi"] == -113
    usage = (await call(sim, Endpoint.CARD_USAGE, {"iccids": ",".join(sim.iccids()[:10])}))[1]["data"]
    iccid = next(u["iccid"] for u in usage if u["useFlow"] < 0.9 * u["totalFlow"])
    status, result = await admin(sim, "POST", f"sims/{iccid}/exhaust")
    assert status == 200 and 0 < result["totalFlow"] - result["useFlow"] <= result["totalFlow"] * 0.0011
    usage = (await call(sim, Endpoint.CARD_USAGE, {"iccids": iccid}))[1]["data"][0]
    assert usage["useFlow"] == result["useFlow"]
    assert (await admin(sim, "POST", f"sims/{iccid}/suspend"))[1]["simStatus"] == 5
    card = (await call(sim, Endpoint.CARD_STATUS, {"iccids": iccid}))[1]["data"][0]
    assert card["simStatus"] == 5 and card["internetStatus"] == 2
    assert (await admin(sim, "POST", f"sims/{iccid}/resume"))[1]["simStatus"] == 4
    assert (await admin(sim, "GET", "state"))[1]["overrides"]["usage_set_by_admin"] == 1
    await admin(sim, "POST", "reset")
    overrides = (await admin(sim, "GET", "state"))[1]["overrides"]
    assert overrides and set(overrides.values()) == {0}


async def test_admin_moves_simulated_time(sim: Simulator) -> None:
    before = (await call(sim, Endpoint.DEVICE_FLOW, device_form(sim)))[1]["data"]["device"]["lastDeviceStatusAt"]
    status, result = await admin(sim, "POST", "time", {"advance": 86400})
    assert status == 200 and result["simulated_time"] == START + 86400
    after = (await call(sim, Endpoint.DEVICE_FLOW, device_form(sim)))[1]["data"]["device"]["lastDeviceStatusAt"]
    assert after > before
    assert (await admin(sim, "POST", "time", {"speed": 120}))[1]["speed"] == 120
    assert (await admin(sim, "POST", "time", {"advance": -5}))[0] == 400


async def test_admin_rejects_mistakes(sim: Simulator) -> None:
    assert (await admin(sim, "POST", "devices/nope/offline"))[0] == 404
    assert (await admin(sim, "POST", "sims/nope/exhaust"))[0] == 404
    assert (await admin(sim, "POST", f"devices/{sim.device_numbers()[0]}/reboot"))[0] == 404
    assert (await admin(sim, "POST", f"devices/{sim.device_numbers()[0]}/rssi", {"dbm": "loud"}))[0] == 400
    assert (await admin(sim, "POST", "faults", {"error_rate": 2}))[0] == 400
    assert (await admin(sim, "POST", "faults", {"error_rate": 0.6, "drop_rate": 0.6}))[0] == 400
    assert (await admin(sim, "POST", "faults", {"explode": True}))[0] == 400
    assert (await admin(sim, "GET", "nothing"))[0] == 404
    async with aiohttp.ClientSession() as session, session.post(f"{sim.base_url}/_sim/time", data=b"{") as r:
        assert r.status == 400
    assert _loopback("127.0.0.1") and _loopback("::1") and not _loopback("10.1.2.3") and not _loopback(None)


async def test_inventory_lists_devices_with_their_cards(sim: Simulator) -> None:
    inventory = (await admin(sim, "GET", "inventory"))[1]
    assert [d["deviceNo"] for d in inventory["devices"]] == sim.device_numbers()
    assert [i for d in inventory["devices"] for i in d["iccids"]] == sim.iccids()


# --- faults, as the bytes a client sees --------------------------------------------------------------


async def set_faults(sim: Simulator, **settings: Any) -> None:
    status, body = await admin(sim, "POST", "faults", {"clear": True, **settings})
    assert status == 200, body


async def test_http_error_fault(sim: Simulator) -> None:
    await set_faults(sim, error_rate=1.0, error_status=503)
    status, body = await call(sim, Endpoint.DEVICE_FLOW, device_form(sim))
    assert status == 503 and isinstance(body, bytes)


async def test_drop_fault_closes_the_connection(sim: Simulator) -> None:
    await set_faults(sim, drop_rate=1.0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(sim, Endpoint.DEVICE_FLOW, device_form(sim))


async def test_timeout_fault_never_answers(sim: Simulator) -> None:
    await set_faults(sim, timeout_rate=1.0)
    with pytest.raises(asyncio.TimeoutError):
        await call(sim, Endpoint.DEVICE_FLOW, device_form(sim), deadline=0.3)
    # stop() releases held requests at once (the fixture's teardown would hang otherwise).


async def test_malformed_fault_truncates_the_json(sim: Simulator) -> None:
    await set_faults(sim, malformed_rate=1.0)
    status, body = await call(sim, Endpoint.DEVICE_FLOW, device_form(sim))
    assert status == 200 and isinstance(body, bytes) and body.startswith(b'{"code":0')


async def test_code_fault_and_limit(sim: Simulator) -> None:
    await set_faults(sim, code_rate=1.0, code=50300, limit=2)
    codes = [(await call(sim, Endpoint.DEVICE_FLOW, device_form(sim)))[1]["code"] for _ in range(3)]
    assert codes == [50300, 50300, 0]
    assert (await admin(sim, "GET", "faults"))[1]["code_rate"] == 0, "switched off once used up"


async def test_faults_on_chosen_endpoints_only(sim: Simulator) -> None:
    await set_faults(sim, error_rate=1.0, endpoints=["card_status"])
    assert (await call(sim, Endpoint.DEVICE_FLOW, device_form(sim)))[0] == 200
    assert (await call(sim, Endpoint.CARD_STATUS, {"iccids": sim.iccids()[0]}))[0] == 500


async def test_latency_fault(sim: Simulator) -> None:
    await set_faults(sim, latency=0.2, latency_jitter=0.05)
    started = time.perf_counter()
    assert (await call(sim, Endpoint.DEVICE_FLOW, device_form(sim)))[1]["code"] == 0
    assert time.perf_counter() - started >= 0.2


async def test_qps_cap_answers_the_rate_limited_code_or_http_429(sim: Simulator) -> None:
    await set_faults(sim, qps_cap=2)
    codes = [(await call(sim, Endpoint.ACCOUNT_ASSETS, {}))[1]["code"] for _ in range(6)]
    assert 42900 in codes and codes.count(0) >= 2
    await set_faults(sim, qps_cap=1, throttle_http=True)
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(4):
            async with session.post(sim.base_url + sim.specs[Endpoint.ACCOUNT_ASSETS].path) as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert response.headers["Retry-After"] == "1"
    assert 429 in statuses
    stats = (await admin(sim, "GET", "stats"))[1]["endpoints"]["account_assets"]
    assert stats["rate_limited"] >= 1 and stats["throttled_http"] >= 1


async def test_faults_from_the_constructor() -> None:
    simulator = Simulator(devices=3, seed=1, speed=0, platform=PLATFORM, faults=FaultConfig(error_rate=1.0))
    await simulator.start()
    try:
        assert (await call(simulator, Endpoint.DEVICE_FLOW, device_form(simulator)))[0] == 500
    finally:
        await simulator.stop()


def test_fault_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="add up"):
        FaultConfig(drop_rate=0.5, timeout_rate=0.3, error_rate=0.3)
    with pytest.raises(ValueError, match="non-zero"):
        FaultConfig(code_rate=0.5, code=0)


# --- the command ---------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_command_flags_build_the_simulator(tmp_path: Path) -> None:
    simulator, from_file = build(parse(["--devices", "7", "--seed", "3", "--speed", "60", "--latency", "50ms",
                                        "--error-rate", "0.1", "--qps-cap", "20", "--throttle-http",
                                        "--start", "2025-09-18 18:40:50"]))
    assert not from_file and simulator.app_id == EMBEDDED_APP_ID and len(simulator.fleet) == 7
    assert simulator.fleet.start == START and simulator.clock.speed == 60
    faults = simulator.faults.config
    assert (faults.latency, faults.error_rate, faults.qps_cap, faults.throttle_http) == (0.05, 0.1, 20, True)
    config = tmp_path / "collector.yaml"
    config.write_text("platform: {app_id: mine, app_secret: other, sign: {hash: sha256}}\n"
                      "simulator: {embedded: false, devices: 4, seed: 9}\n")
    simulator, from_file = build(parse(["-c", str(config), "--offline", Simulator(4, 9).device_numbers()[0]]))
    assert from_file and simulator.app_id == "mine" and len(simulator.fleet) == 4 and simulator.seed == 9
    assert simulator.fleet.override_counts()["forced_offline"] == 1


def test_command_refuses_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(parse(["--error-rate", "0.7", "--drop-rate", "0.7"])) == 2
    assert "add up" in capsys.readouterr().err
    assert main(parse(["--offline", "123"])) == 2
    assert main(parse(["-c", str(tmp_path / "missing.yaml")])) == 2
    with pytest.raises(SystemExit):
        parse(["--error-rate", "1.5"])


def test_print_inventory_is_a_loadable_inventory_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(parse(["--devices", "400", "--seed", "5", "--print-inventory"])) == 0
    text = capsys.readouterr().out
    numbers = Simulator(400, 5).device_numbers()
    assert yaml.safe_load(text)["devices"] == numbers
    path = tmp_path / "sim-devices.yaml"
    path.write_text(text)
    assert list(load_inventory(InventoryConfig(file=str(path))).devices) == numbers


def test_simulate_runs_as_a_server_until_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "collector", "simulate", "--devices", "5", "--port", "0",
                             "--seed", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        url = next(line.split()[2] for line in lines if line.startswith("listening on"))
        assert any("app id: demo" in line for line in lines)
        import urllib.request

        with urllib.request.urlopen(f"{url}/_sim/state", timeout=5) as response:
            assert json.loads(response.read())["devices"] == 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
