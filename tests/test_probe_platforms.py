"""The probe against small stand-in platforms over HTTP, for behaviours the simulator does not show:
a platform that checks the signature before the timestamp, one that refuses the appID itself, one
that names fields differently (proposals applied, written, and read by the collector), and one that
throttles."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from collector.config import Config, load_config
from collector.firstcontact.probe import ProbeReport, run_probe
from collector.firstcontact.settings import write_config
from collector.platform.client import PlatformClient

SAMPLE = json.loads((Path(__file__).parent / "data" / "sample-queryDeviceFlow.json").read_text())
APP_ID, SECRET, DEVICE = "app-1", "secret-1", "865214078636124"

Answer = Callable[[web.Request, dict[str, str]], dict[str, Any]]
CALLS = web.AppKey("calls", list[str])


def envelope(code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "data": data, "timestamp": int(time.time()), "traceID": "t"}


def md5_upper_ms_ok(request: web.Request) -> str:
    """The stand-ins' recipe: md5 of appID + timestamp + secret, upper-case hex, timestamp in milliseconds."""
    headers = request.headers
    return hashlib.md5(f"{headers['appID']}{headers['timestamp']}{SECRET}".encode()).hexdigest().upper()


def platform(routes: dict[str, Answer]) -> web.Application:
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append(request.path)
        answer = routes.get(request.path)
        if answer is None:
            return web.json_response(envelope(404, "接口不存在"), status=404)
        form = {k: str(v) for k, v in (await request.post()).items()}
        return web.json_response(answer(request, form))

    app = web.Application()
    app[CALLS] = calls
    app.router.add_route("POST", "/{tail:.*}", handle)
    return app


def config(url: str, **platform_settings: Any) -> Config:
    return Config.model_validate({
        "platform": {"base_url": url, "app_id": APP_ID, "app_secret": SECRET, "rate_limit": 200, "burst": 1,
                     **platform_settings},
        "inventory": {"devices": [DEVICE]},
        "jobs": {name: {"enabled": False, "interval": "1h"} for name in (
            "device_status", "card_status", "card_usage", "card_info", "account_assets")},
    })


async def probe(app: web.Application, **settings: Any) -> tuple[ProbeReport, list[str]]:
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        report = await run_probe(config(url, **settings), base_url=url)
    return report, app[CALLS]


def sign_first(request: web.Request, form: dict[str, str]) -> dict[str, Any]:
    """Checks the signature first, then a millisecond timestamp."""
    if request.headers.get("sign") != md5_upper_ms_ok(request):
        return envelope(10001, "签名错误")
    if abs(int(request.headers["timestamp"]) - time.time() * 1000) > 300_000:
        return envelope(10002, "时间戳已过期")
    return envelope(0, "操作成功", SAMPLE["data"])


async def test_a_platform_checking_the_signature_first_gets_the_same_recipe_in_the_other_unit() -> None:
    report, calls = await probe(platform({"/openapi/iot/queryDeviceFlow": sign_first}))
    assert report.exit_code == 0, report.problems
    accepted = report.accepted_sign
    assert accepted is not None
    assert (accepted.hash, accepted.template, accepted.case, accepted.timestamp) == (
        "md5", "{appID}{timestamp}{secret}", "upper", "milliseconds")
    kinds = [answer.kind for _recipe, answer in report.sign_tried]
    assert kinds[-2:] == ["timestamp", "ok"], "the timestamp refusal sent the same recipe in milliseconds next"
    assert len(calls) == report.sent <= 10


async def test_a_refused_app_id_stops_the_search_early() -> None:
    def refuse(request: web.Request, form: dict[str, str]) -> dict[str, Any]:
        return envelope(40002, "appID不存在")

    report, calls = await probe(platform({"/openapi/iot/queryDeviceFlow": refuse}))
    assert report.exit_code == 1 and report.accepted_sign is None
    assert "check platform.app_id" in report.sign_note and len(calls) <= 4
    assert "no sign recipe was accepted" in report.problems[0]


async def test_renamed_fields_are_proposed_applied_written_and_read(tmp_path: Path) -> None:
    data = copy.deepcopy(SAMPLE["data"])
    data["device"]["signalRssi"] = data["device"].pop("rssi")
    data["simList"] = data.pop("sims")

    def renamed(request: web.Request, form: dict[str, str]) -> dict[str, Any]:
        if request.headers.get("sign") != md5_upper_ms_ok(request):
            return envelope(40001, "sign error")
        return envelope(0, "操作成功", data)

    app = platform({"/openapi/iot/queryDeviceFlow": renamed})
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        source = tmp_path / "collector.yaml"
        source.write_text(f"platform:\n  base_url: {url}\n  app_id: {APP_ID}\n  app_secret: ${{SECRET}}\n"
                          f"  rate_limit: 200\n  sign: {{timestamp: milliseconds}}\n"
                          f"inventory:\n  devices: ['{DEVICE}']\n"
                          "jobs:\n" + "".join(f"  {job}: {{enabled: false, interval: 1h}}\n" for job in (
                              "device_status", "card_status", "card_usage", "card_info", "account_assets")))
        loaded = load_config(source, env={"SECRET": SECRET})
        report = await run_probe(loaded, base_url=url)
        assert report.exit_code == 0, report.problems
        assert report.discovered.fields == {"device_flow": {"rssi_dbm": "signalRssi", "sims": "simList"}}
        assert {p.setting for p in report.proposals if p.applied} == {
            "platform.fields.device_flow.rssi_dbm: signalRssi", "platform.fields.device_flow.sims: simList"}
        target = tmp_path / "probed.yaml"
        assert write_config(source, target, report)["written"] is True
        assert "${SECRET}" in target.read_text() and SECRET not in target.read_text()
        written = load_config(target, env={"SECRET": SECRET})
        async with PlatformClient(written.platform, written.privacy, base_url=url) as client:
            observation = await client.device_flow(DEVICE)
    assert observation.rssi_dbm == -84 and len(observation.sims) == 2


async def test_a_throttling_platform_is_waited_out_and_not_taken_for_a_passed_signature(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([envelope(40001, "sign error"), envelope(42900, "请求过于频繁"), envelope(42900, "请求过于频繁")])

    def throttled(request: web.Request, form: dict[str, str]) -> dict[str, Any]:
        scripted = next(answers, None)
        if scripted is not None:
            return scripted
        if request.headers.get("sign") != md5_upper_ms_ok(request):
            return envelope(40001, "sign error")
        return envelope(0, "操作成功", SAMPLE["data"])

    async def no_wait(_seconds: float) -> None:
        return None

    monkeypatch.setattr("collector.firstcontact.probe.asyncio.sleep", no_wait)
    report, _calls = await probe(platform({"/openapi/iot/queryDeviceFlow": throttled}),
                                 sign={"timestamp": "milliseconds"})
    assert report.exit_code == 0, report.problems
    accepted = report.accepted_sign
    assert accepted is not None and accepted.template == "{appID}{timestamp}{secret}" and accepted.case == "upper"
    assert report.sign_tried[0][1].kind == "rate_limited"
