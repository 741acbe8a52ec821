"""One poll through the whole pipeline, as the daemon makes it: a real HTTP server standing in for the
platform, the real client, the fleet state, the durable spool and the file sink."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from collector.config import Config, parse_config
from collector.endpoints import ENDPOINTS
from collector.metrics import REGISTRY
from collector.pipeline import Pipeline
from collector.platform.client import PlatformClient
from collector.schedule import PollOutcome
from collector.sinks.pipeline import SinkPipeline
from collector.state import FleetState
from tests.lineproto import Line, parse_line

SAMPLE = (Path(__file__).parent / "data" / "sample-queryDeviceFlow.json").read_bytes()
ASKED = "9176069816"
Answer = Callable[[str, dict[str, str]], bytes]


def sample_for_devices(path: str, form: dict[str, str]) -> bytes:
    """The vendor's sample for both device endpoints; a card status record per asked card."""
    if path.endswith(("queryDeviceFlow", "queryDeviceInfo")):
        return SAMPLE
    cards = [i for i in form.get("iccids", "").split(",") if i]
    return orjson.dumps({"code": 0, "message": "ok", "data": [{"iccid": i, "simStatus": 4} for i in cards]})


class Rig:
    """The platform at `url`, and a collector's pipeline writing `points`."""

    def __init__(self, tmp: Path, url: str, clock: Callable[[], float] | None = None,
                 scheduler: dict[str, Any] | None = None, **platform: Any) -> None:
        self.points = tmp / "points.lp"
        self.config: Config = parse_config({
            "platform": {"base_url": url, "app_id": "app", "app_secret": "secret", "rate_limit": 1000,
                         "retries": {"max_attempts": 1}, **platform},
            "sinks": {"file": {"enabled": True, "path": str(self.points)}, "flush_interval": "50ms"},
            "scheduler": scheduler or {},
            "state_dir": str(tmp / "state"),
        }, env={})
        self.clock = clock
        self.state = FleetState()
        self.state.sync_inventory({ASKED: {"customer": "acme"}}, {})

    def pipeline(self, client: Any = None, submit: Any = None) -> Pipeline:
        return Pipeline(self.config, client, self.state, submit, clock=self.clock)

    async def poll(self, endpoint: str, ids: list[str]) -> PollOutcome:
        sinks = SinkPipeline(self.config.sinks, self.config.state_dir)
        await sinks.start()
        try:
            async with PlatformClient(self.config.platform, self.config.privacy) as client:
                outcome = await self.pipeline(client, sinks.submit).poll(ENDPOINTS[endpoint], ids)
            assert await sinks.flush(10)
        finally:
            await sinks.stop(5)
        return outcome

    def lines(self, measurement: str) -> list[Line]:
        text = self.points.read_text() if self.points.exists() else ""
        return [parse_line(line) for line in text.splitlines() if line.startswith(measurement + ",")]


@pytest.fixture
async def platform() -> AsyncIterator[Callable[[Answer], Any]]:
    servers: list[TestServer] = []

    async def start(answer: Answer) -> str:
        async def handle(request: web.Request) -> web.Response:
            form = {k: str(v) for k, v in (await request.post()).items()}
            return web.Response(body=answer(request.path, form), content_type="application/json")

        app = web.Application()
        app.router.add_post("/{path:.*}", handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/"))

    yield start
    for server in servers:
        await server.close()


@pytest.mark.parametrize("endpoint", ["device_flow", "device_info"])
async def test_a_device_point_counts_the_sims_the_platform_listed(tmp_path: Path, platform: Any,
                                                                  endpoint: str) -> None:
    rig = Rig(tmp_path, await platform(sample_for_devices))
    assert await rig.poll(endpoint, [ASKED])
    (device,) = rig.lines("device")
    assert device.tags == {"device_no": ASKED, "customer": "acme"}
    assert device.fields["sim_count"] == ("int", 2)
    assert " sim_count=2i" in rig.points.read_text() or ",sim_count=2i" in rig.points.read_text()
    assert {s.tags["iccid"] for s in rig.lines("sim")} == {"898608841925D2210999", "8986032142201828602"}
    assert len(rig.lines("device_event")) == 3


async def test_field_name_overrides_read_a_platform_that_names_fields_otherwise(tmp_path: Path,
                                                                               platform: Any) -> None:
    renamed = (SAMPLE.replace(b'"rssi": -84', b'"signal": -91').replace(b'"sims": [', b'"simList": [')
               .replace(b'"onlineStatus": 2,', b'"netState": 2,'))

    rig = Rig(tmp_path, await platform(lambda _path, _form: renamed),
              fields={"device_flow": {"rssi_dbm": "signal", "sims": "simList", "sim.online_status": "netState"}})
    assert await rig.poll("device_flow", [ASKED])
    (device,) = rig.lines("device")
    assert device.fields["rssi_dbm"] == ("int", -91) and device.fields["sim_count"] == ("int", 2)
    assert device.fields["online_status"] == ("int", 1)  # the device's own onlineStatus is untouched
    main = next(s for s in rig.lines("sim") if s.tags["slot"] == "1")
    assert main.fields["online_status"] == ("int", 2)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_failed_poll_is_logged_and_counted_once_and_recorded_on_the_device(tmp_path: Path,
                                                                                  platform: Any) -> None:
    refused = orjson.dumps({"code": 40000, "message": "参数错误", "data": None, "traceID": "t-400"})
    rig = Rig(tmp_path, await platform(lambda _path, _form: refused))
    before = metric("iot_collector_entity_polls_total", kind="device", outcome="error")
    with capture_logs() as logs:
        outcome = await rig.poll("device_flow", [ASKED])
    assert not outcome and outcome.failed == 1 and outcome.not_found == 0
    failed = [e for e in logs if e["event"] == "poll failed"]
    assert len(failed) == 1 and failed[0]["trace_id"] == "t-400" and failed[0]["error"] == "code 40000: 参数错误"
    assert metric("iot_collector_entity_polls_total", kind="device", outcome="error") - before == 1
    device = rig.state.devices[ASKED]
    assert device.consecutive_failures == 1 and device.last_error == "code 40000: 参数错误"
    assert rig.lines("device") == []
    assert rig.state.counts()["device"]["failing"] == 1 and not rig.state.not_found


async def test_an_unknown_device_backs_off_longer_each_time_until_it_answers(tmp_path: Path, platform: Any) -> None:
    unknown = orjson.dumps({"code": 40404, "message": "设备不存在", "data": None, "traceID": "t-404"})
    answers = [unknown, unknown, unknown, unknown, SAMPLE]
    asked: list[str] = []

    def answer(_path: str, form: dict[str, str]) -> bytes:
        asked.append(form["deviceNo"])
        return answers[len(asked) - 1]

    now = [1_000_000.0]
    rig = Rig(tmp_path, await platform(answer), clock=lambda: now[0],
              scheduler={"not_found_backoff": "1m", "not_found_backoff_max": "3m"})
    device_job = next(j for j in rig.pipeline().jobs() if j.name == "device_status")
    before = metric("iot_collector_entity_polls_total", kind="device", outcome="not_found")
    pauses = []
    with capture_logs() as logs:
        for _ in range(4):
            outcome = await rig.poll("device_flow", [ASKED])
            assert not outcome and outcome.not_found == 1 and outcome.failed == 0
            entry = rig.state.not_found[("device", ASKED)]
            pauses.append(entry.until - now[0])
            assert device_job.entities() == []  # left out of its jobs while it rests
            assert rig.state.counts()["device"] == {"online": 0, "offline": 0, "unknown": 0, "failing": 0,
                                                   "not_found": 1}
            now[0] = entry.until
            assert device_job.entities() == [ASKED]  # due again once the pause is over
        assert await rig.poll("device_flow", [ASKED])
    # Exponential with jitter (half to all of 1, 2, 4 minutes), capped at 3 minutes.
    assert 30 <= pauses[0] <= 60 and 60 <= pauses[1] <= 120 and 90 <= pauses[2] <= 180 and 90 <= pauses[3] <= 180
    assert metric("iot_collector_entity_polls_total", kind="device", outcome="not_found") - before == 4
    assert not rig.state.not_found and rig.state.counts()["device"]["online"] == 1
    # One line when it starts backing off, one when it answers again; none per not-found answer.
    polls = [e for e in logs if e["log_level"] != "debug" and e["event"].startswith(("poll", "the platform"))]
    assert [(e["event"], e["log_level"]) for e in polls] == [
        ("the platform does not know these entities: backing off", "warning"),
        ("the platform knows this entity again: polled at full rate", "info")]
    assert polls[0]["ids"] == [ASKED] and polls[0]["trace_id"] == "t-404"


async def test_a_card_left_out_of_a_batch_answer_backs_off(tmp_path: Path, platform: Any) -> None:
    def answer(path: str, form: dict[str, str]) -> bytes:
        if path.endswith("querySimStatus"):  # knows only the first card
            known = [{"iccid": "898608841925D2210999", "simStatus": 4}]
            return orjson.dumps({"code": 0, "message": "ok", "data": known})
        if path.endswith("querySimAction"):  # no operations for either card: nothing to conclude
            return orjson.dumps({"code": 0, "message": "ok", "data": []})
        return sample_for_devices(path, form)

    rig = Rig(tmp_path, await platform(answer))
    assert await rig.poll("device_flow", [ASKED])  # discovers the two SIMs
    cards = ["898608841925D2210999", "8986032142201828602"]
    assert await rig.poll("card_actions", cards)
    assert not rig.state.not_found
    outcome = await rig.poll("card_status", cards)
    assert outcome.entities == 2 and outcome.not_found == 1 and outcome.failed == 0
    assert list(rig.state.not_found) == [("sim", "8986032142201828602")]
    card_job = next(j for j in rig.pipeline().jobs() if j.name == "card_status")
    assert card_job.entities() == ["898608841925D2210999"]
    assert rig.state.counts()["sim"] == {"polled": 1, "unpolled": 0, "not_found": 1}


async def test_cards_the_platform_does_not_know_are_not_a_failure(tmp_path: Path, platform: Any) -> None:
    rig = Rig(tmp_path, await platform(sample_for_devices))
    assert await rig.poll("device_flow", [ASKED])  # discovers the two SIMs
    assert await rig.poll("card_status", ["898608841925D2210999", "8986032142201828602"])
    assert {line.tags["iccid"] for line in rig.lines("card_status")} == {"898608841925D2210999",
                                                                         "8986032142201828602"}
    assert rig.state.sims["898608841925D2210999"].obs is not None


async def test_card_points_carry_the_device_the_card_sits_in(tmp_path: Path, platform: Any) -> None:
    rig = Rig(tmp_path, await platform(sample_for_devices))
    assert await rig.poll("device_flow", [ASKED])  # the SIMs are found inside the device
    assert await rig.poll("card_status", ["898608841925D2210999", "8986032142201828602"])
    assert {line.tags.get("device_no") for line in rig.lines("card_status")} == {ASKED}
