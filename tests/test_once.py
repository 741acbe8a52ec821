"""`iot-collector once`: polling every device once and rendering the result (table and JSON)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from collector.config import Config, PlatformConfig
from collector.once import poll_devices, render_json, render_table, run_once
from collector.platform.client import PlatformClient
from collector.platform.errors import ApiError
from collector.platform.models import DeviceObservation, SimObservation

SAMPLE = (Path(__file__).parent / "data" / "sample-queryDeviceFlow.json").read_bytes()
UNKNOWN = orjson.dumps({"code": 40404, "message": "设备不存在", "data": None, "traceID": "trace-404"})
CALLS = web.AppKey("calls", list[str])
BAD_SIGN = orjson.dumps({"code": 40001, "message": "sign error", "data": None, "traceID": "trace-401"})


def make_config(devices: list[str], **platform: Any) -> Config:
    return Config.model_validate({
        "platform": {"app_id": "app", "app_secret": "secret-xyz", "rate_limit": 1000, "burst": 100,
                     "retries": {"max_attempts": 1}, **platform},
        "inventory": {"devices": devices},
    })


def platform_app(answers: dict[str, bytes]) -> web.Application:
    """A stand-in platform: queryDeviceFlow answers by deviceNo, the sample by default."""
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        device_no = str((await request.post())["deviceNo"])
        calls.append(device_no)
        return web.Response(body=answers.get(device_no, SAMPLE), content_type="application/json")

    app = web.Application()
    app[CALLS] = calls
    app.router.add_post("/openapi/iot/queryDeviceFlow", handle)
    return app


async def run(config: Config, app: web.Application, devices: list[str] | None = None,
              as_json: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    async with TestServer(app, host="127.0.0.1") as server:
        code = await run_once(config, devices, as_json, out, base_url=str(server.make_url("/")))
    return code, out.getvalue()


async def test_table_for_a_healthy_fleet() -> None:
    code, text = await run(make_config(["865214078636124", "0012345"]), platform_app({}))
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["DEVICE", "ONLINE", "RSSI", "dBm"]
    assert lines[1].startswith("865214078636124") and lines[2].startswith("0012345")
    row = lines[1]
    assert " yes " in row and " -84 " in row and " 100 " in row
    assert "1: 20 GiB/100 GiB" in row and "*2: 23 GiB/100 GiB" in row
    assert lines[-1].startswith("2 device(s): 2 ok, 0 failed")


async def test_json_lists_failures_with_type_code_message_and_trace_id() -> None:
    app = platform_app({"404": UNKNOWN})
    code, text = await run(make_config([]), app, devices=["1", "404"], as_json=True)
    assert code == 1
    items = orjson.loads(text)
    assert items[0]["device_no"] == "1" and items[0]["rssi_dbm"] == -84 and items[0]["online"] is True
    assert items[0]["sims"][0]["total_bytes"] == 100 * 1024**3
    assert items[0]["status_age_seconds"] > 0
    assert items[1] == {"device_no": "404", "error": {"type": "ApiError", "code": 40404,
                                                      "message": "platform error 40404: 设备不存在",
                                                      "trace_id": "trace-404"}}
    assert "admin" not in text and "1234567890" not in text  # secrets never reach the output


async def test_devices_argument_overrides_the_inventory() -> None:
    app = platform_app({})
    code, text = await run(make_config(["inventory-device"]), app, devices=["cli-device"], as_json=True)
    assert code == 0 and app[CALLS] == ["cli-device"]
    assert [i["device_no"] for i in orjson.loads(text)] == ["cli-device"]


async def test_auth_failure_stops_polling_and_reports_every_device() -> None:
    app = platform_app({str(i): BAD_SIGN for i in range(50)})
    config = make_config([str(i) for i in range(50)], max_concurrency=1)
    code, text = await run(config, app, as_json=True)
    assert code == 1
    assert len(app[CALLS]) == 1  # nothing more is sent once the credentials are refused
    items = orjson.loads(text)
    assert len(items) == 50 and all(i["error"]["type"] == "AuthError" for i in items)
    assert "platform.app_secret" in items[0]["error"]["message"]
    assert items[1]["error"]["message"].startswith("not polled:")
    assert "secret-xyz" not in text


async def test_no_devices_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert await run_once(make_config([]), None, False, out) == 1
    assert "no devices" in capsys.readouterr().err and out.getvalue() == ""


async def test_progress_goes_to_the_given_stream_and_order_is_kept() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=SAMPLE)

    progress = io.StringIO()
    client = PlatformClient(PlatformConfig.model_validate({"app_id": "a", "rate_limit": 1000, "burst": 1000}),
                            transport=httpx.MockTransport(handler))
    async with client:
        results = await poll_devices(client, [f"d{i}" for i in range(30)], workers=4, progress=progress)
    assert [r.device_no for r in results if isinstance(r, DeviceObservation)] == [f"d{i}" for i in range(30)]
    assert "polled 30/30, 0 failed" in progress.getvalue() and progress.getvalue().endswith("\n")


def test_render_table_with_unknowns_and_failures() -> None:
    unknown = DeviceObservation(device_no="x", sims=(SimObservation(iccid="i"),))
    error = ApiError(40404, "设备不存在", endpoint="device_flow", trace_id="t")
    text = render_table(["x", "y"], [unknown, error], now=0.0)
    assert "x       ?" in text and "?: ?/?" in text
    assert "y       FAILED  ApiError: platform error 40404: 设备不存在" in text
    assert text.endswith("2 device(s): 1 ok, 1 failed  (* = SIM in use, AGE = since the platform last "
                         "refreshed the device)\n")


def test_render_json_of_nothing_but_failures() -> None:
    assert orjson.loads(render_json(["y"], [ApiError(1, "m")], 0.0))[0]["error"]["code"] == 1


def test_table_ages_and_sizes_read_as_everywhere_else() -> None:
    sim = SimObservation(iccid="i", slot=1, used_bytes=1536, total_bytes=5 * 1024**5)
    device = DeviceObservation(device_no="x", online_status=1, effective_sim=1, status_at=0.0, sims=(sim,))
    row = render_table(["x"], [device], now=5400.0).splitlines()[1]
    assert " 1.5h " in row and "*1: 1.5 KiB/5 PiB" in row
