"""Every incident the simulator can inject, each shown in the platform's answers over HTTP: battery
drain, data that stops refreshing while the device stays online, a SIM's data put back, a package that
ends at a given time, a low account balance (besides offline, weak signal, suspend and exhaust,
tested in test_simulator_server.py), through the admin endpoint and as `iot-collector simulate` flags."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from collector.platform.signing import Signer
from collector.simulator import Simulator
from tests.servers import SimulatorProcess

ROOT = Path(__file__).resolve().parent.parent
ZONE = ZoneInfo("Asia/Shanghai")
START = 1758192050.0  # 2025-09-18 18:40:50 in the platform's zone
APP_ID, SECRET = "incidents", "s3cret"
PATHS = {"device_flow": "/openapi/iot/queryDeviceFlow", "card_status": "/openapi/iot/querySimStatus",
         "card_usage": "/openapi/iot/querySimRealFlow", "account_assets": "/openapi/iot/queryAccountAssets"}


def local(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZONE).timestamp()


def _headers(form: dict[str, str]) -> dict[str, str]:
    headers = {"appID": APP_ID, "apiVersion": "2.0", "traceID": uuid.uuid4().hex, "timestamp": str(int(time.time()))}
    headers["sign"] = Signer(secret=SECRET).sign(headers, form)
    return headers


def _data(response: httpx.Response) -> Any:
    body = response.json()
    assert body["code"] == 0, body
    return body["data"]


class Platform:
    """Signed requests and admin calls to a simulator in this process's event loop."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def get(self, endpoint: str, **form: str) -> Any:
        async with httpx.AsyncClient(timeout=10) as client:
            return _data(await client.post(self.sim.base_url + PATHS[endpoint], data=form, headers=_headers(form)))

    async def device(self, device_no: str) -> dict[str, Any]:
        return dict((await self.get("device_flow", deviceNo=device_no))["device"])

    async def card(self, endpoint: str, iccid: str) -> dict[str, Any]:
        return dict((await self.get(endpoint, iccids=iccid))[0])

    async def admin(self, path: str, body: Any = None, method: str = "POST") -> tuple[int, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.request(method, f"{self.sim.base_url}/_sim/{path}", json=body)
        return response.status_code, response.json()

    async def advance(self, seconds: float) -> None:
        assert (await self.admin("time", {"advance": seconds}))[0] == 200


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    simulator = Simulator(devices=40, seed=6, speed=0, platform={"app_id": APP_ID, "app_secret": SECRET},
                          start=START)
    await simulator.start()
    yield Platform(simulator)
    await simulator.stop()


def steady_device(sim: Simulator, battery_above: int = 0) -> tuple[int, str]:
    """A device that is online now, never offline by its routine and runs on battery above a level."""
    fleet = sim.fleet
    for i in range(len(fleet)):
        profile = fleet.profile(i)
        state = fleet.device_state(i, sim.now())
        if state.online and profile.off_every == 0 and not profile.plugged and state.battery > battery_above:
            return i, sim.device_numbers()[i]
    raise AssertionError("no steady device in this fleet")


def carrying_sim(sim: Simulator) -> str:
    """The ICCID of a SIM that carries its steady device's traffic, with room left in its package."""
    fleet = sim.fleet
    for i in range(len(fleet)):
        state = fleet.device_state(i, sim.now())
        if not state.online or fleet.profile(i).off_every:
            continue
        for card in state.sims:
            usual = card.profile.fixed_end is None and card.profile.suspend_at is None
            if usual and card.profile.slot == state.effective_slot and card.used < 0.3 * card.total \
                    and card.internet_status == 1:
                return card.profile.iccid
    raise AssertionError("no SIM carrying traffic in this fleet")


# --- devices ---------------------------------------------------------------------------------------------


async def test_a_battery_drains_to_a_level_at_a_rate_and_stays_there(platform: Platform) -> None:
    _, device_no = steady_device(platform.sim, battery_above=60)
    before = (await platform.device(device_no))["electric"]
    status, shown = await platform.admin(f"devices/{device_no}/battery", {"level": 10, "rate": 30})
    assert status == 200 and shown["electric"] == before
    await platform.advance(3600)
    after_an_hour = (await platform.device(device_no))["electric"]
    assert before - 30 <= after_an_hour <= before - 27, "30 % an hour (read at the last refresh)"
    await platform.advance(3 * 3600)
    assert (await platform.device(device_no))["electric"] == 10
    await platform.advance(24 * 3600)
    assert (await platform.device(device_no))["electric"] == 10, "it stays at the level"
    await platform.admin(f"devices/{device_no}/battery", {"level": 3})
    assert (await platform.device(device_no))["electric"] == 3, "without a rate: at once"
    await platform.admin(f"devices/{device_no}/battery", {"level": None})
    assert (await platform.device(device_no))["electric"] != 3
    assert (await platform.admin(f"devices/{device_no}/battery", {"level": 101}))[0] == 400
    assert (await platform.admin(f"devices/{device_no}/battery", {"rate": 5}))[0] == 400


async def test_data_that_stops_refreshing_while_the_device_stays_online(platform: Platform) -> None:
    _, device_no = steady_device(platform.sim)
    status, _ = await platform.admin(f"devices/{device_no}/freeze")
    assert status == 200
    frozen = await platform.device(device_no)
    iccid = (await platform.get("device_flow", deviceNo=device_no))["sims"][0]["iccid"]
    card = await platform.card("card_status", iccid)
    await platform.advance(2 * 3600)
    device = await platform.device(device_no)
    assert device["onlineStatus"] == 1, "the device is still online"
    for key in ("lastDeviceStatusAt", "lastDeviceFlowAt", "rssi", "electric", "updatedAt"):
        assert device[key] == frozen[key], key
    assert (await platform.card("card_status", iccid))["lastSimStatusAt"] == card["lastSimStatusAt"]
    assert local(device["lastDeviceStatusAt"]) <= platform.sim.now() - 2 * 3600
    await platform.admin(f"devices/{device_no}/unfreeze")
    fresh = await platform.device(device_no)
    assert local(fresh["lastDeviceStatusAt"]) == int(platform.sim.now()), "refreshed at once"


# --- cards -----------------------------------------------------------------------------------------------


async def test_a_sims_data_put_back_restarts_its_usage(platform: Platform) -> None:
    iccid = carrying_sim(platform.sim)
    status, cut = await platform.admin(f"sims/{iccid}/exhaust", {"remaining_ratio": 0})
    assert status == 200 and cut["useFlow"] == cut["totalFlow"] and cut["internetStatus"] == 2
    assert (await platform.card("card_status", iccid))["internetStatus"] == 2
    await platform.advance(3600)
    status, topped = await platform.admin(f"sims/{iccid}/top-up")
    assert status == 200 and topped["useFlow"] == 0 and topped["internetStatus"] == 1
    usage = await platform.card("card_usage", iccid)
    assert usage["useFlow"] == 0 and (await platform.card("card_status", iccid))["internetStatus"] == 1
    await platform.advance(2 * 3600)
    grown = (await platform.card("card_usage", iccid))["useFlow"]
    assert 0 < grown < usage["totalFlow"] // 2, "it keeps consuming from zero"
    _, half = await platform.admin(f"sims/{iccid}/top-up", {"remaining_ratio": 0.5})
    assert half["useFlow"] == pytest.approx(half["totalFlow"] / 2, rel=0.001)
    assert (await platform.admin(f"sims/{iccid}/top-up", {"remaining_ratio": 2}))[0] == 400


async def test_a_package_that_ends_at_a_given_time(platform: Platform) -> None:
    iccid = carrying_sim(platform.sim)
    renews = (await platform.card("card_usage", iccid))["endAt"]
    status, shown = await platform.admin(f"sims/{iccid}/expire", {"in": "2h"})
    assert status == 200 and shown["internetStatus"] == 1
    assert local(shown["endAt"]) == int(platform.sim.now()) + 7200
    assert (await platform.card("card_usage", iccid))["endAt"] == shown["endAt"]
    await platform.advance(3 * 3600)
    card = await platform.card("card_status", iccid)
    assert card["internetStatus"] == 2, "cut off since the package ended"
    inventory = (await platform.admin("inventory", method="GET"))[1]["devices"]
    record = await platform.get("device_flow", deviceNo=next(d["deviceNo"] for d in inventory if iccid in d["iccids"]))
    sim = next(s for s in record["sims"] if s["iccid"] == iccid)
    assert sim["breakAt"] == shown["endAt"] and sim["internetStatus"] == 2
    later = datetime.fromtimestamp(platform.sim.now() + 86400, ZONE).strftime("%Y-%m-%d %H:%M:%S")
    _, moved = await platform.admin(f"sims/{iccid}/expire", {"at": later})
    assert moved["endAt"] == later and moved["internetStatus"] == 1, "a new end: renewed until then"
    _, back = await platform.admin(f"sims/{iccid}/expire", {"at": None})
    assert back["internetStatus"] == 1 and local(back["endAt"]) >= local(renews)
    assert (await platform.admin(f"sims/{iccid}/expire", {"at": "tomorrow"}))[0] == 400
    assert (await platform.admin(f"sims/{iccid}/expire", {}))[0] == 400


# --- the account -----------------------------------------------------------------------------------------


async def test_a_low_account_balance(platform: Platform) -> None:
    usual = (await platform.get("account_assets"))["balance"]
    assert usual > 100, "the model never runs this low on its own"
    status, shown = await platform.admin("account", {"balance": 42.5})
    assert status == 200 and shown["balance"] == 42.5
    assert (await platform.get("account_assets"))["balance"] == 42.5
    await platform.advance(86400)
    assert (await platform.get("account_assets"))["balance"] == 42.5
    await platform.admin("account", {"balance": None})
    assert (await platform.get("account_assets"))["balance"] > 100
    assert (await platform.admin("account", {"balance": -1}))[0] == 400
    assert (await platform.admin("state", method="GET"))[1]["overrides"]["balance_pinned"] == 0


# --- the same from the command line ----------------------------------------------------------------------


def test_every_incident_from_the_command_line() -> None:
    probe = Simulator(devices=40, seed=6, speed=0, start=START)
    _, drained = steady_device(probe, battery_above=20)
    fleet = probe.fleet
    others = [no for i, no in enumerate(probe.device_numbers()) if no != drained]
    frozen, weak, offline = others[:3]
    iccids = probe.iccids()
    exhausted, topped, expiring, suspended, ending = iccids[:5]
    assert fleet.find_sim(exhausted) is not None
    args = ["--devices", "40", "--seed", "6", "--speed", "0", "--start", "2025-09-18 18:40:50",
            "--battery", f"{drained}:7", "--freeze", frozen, "--rssi", f"{weak}:-117", "--offline", offline,
            "--exhaust", exhausted, "--top-up", topped, "--expire", f"{expiring}:2025-09-20 08:00:00",
            "--suspend", suspended, "--balance", "12", "--expire", f"{ending}:{START + 3600:.0f}"]
    with SimulatorProcess(*args) as sim:
        def get(endpoint: str, **form: str) -> Any:
            form_headers = {"appID": "demo", "apiVersion": "2.0", "traceID": uuid.uuid4().hex,
                            "timestamp": str(int(time.time()))}
            form_headers["sign"] = Signer(secret="demo-secret").sign(form_headers, form)
            return _data(httpx.post(sim.url + PATHS[endpoint], data=form, headers=form_headers, timeout=10))

        assert get("device_flow", deviceNo=drained)["device"]["electric"] == 7
        assert get("device_flow", deviceNo=weak)["device"]["rssi"] == -117
        assert get("device_flow", deviceNo=offline)["device"]["onlineStatus"] == 0
        assert get("device_flow", deviceNo=frozen)["device"]["lastDeviceStatusAt"] == "2025-09-18 18:40:50"
        usage = {u["iccid"]: u for u in get("card_usage", iccids=",".join([exhausted, topped, expiring, ending]))}
        assert usage[exhausted]["totalFlow"] - usage[exhausted]["useFlow"] <= 0.0011 * usage[exhausted]["totalFlow"]
        assert usage[topped]["useFlow"] == 0 and usage[expiring]["endAt"] == "2025-09-20 08:00:00"
        assert usage[ending]["endAt"] == "2025-09-18 19:40:50", "a bare number: Unix seconds"
        assert get("card_status", iccids=suspended)[0]["simStatus"] == 5
        assert get("account_assets")["balance"] == 12
        overrides = sim.admin("GET", "state")["overrides"]
    assert overrides["battery_drained"] == overrides["refresh_frozen"] == overrides["balance_pinned"] == 1


@pytest.mark.parametrize(("flags", "message"), [
    (["--battery", "123"], "--battery: expected DEVICE_NO:LEVEL[:RATE]"),
    (["--expire", "898600:soon"], "--expire"),
    (["--rssi", "nope:-100"], "--rssi: no device 'nope'"),
    (["--freeze", "nope"], "--freeze: no device 'nope'"),
    (["--top-up", "nope"], "--top-up: no card 'nope'"),
])
def test_a_bad_incident_flag_is_a_clear_error(flags: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "collector", "simulate", "--devices", "3", "--port", "0", *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
