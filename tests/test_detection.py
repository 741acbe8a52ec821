"""Detection that can be trusted, end to end: the real daemon polling the simulator as a server, the
default alert rules, and a webhook receiver. The platform refreshes a device's status only every few
minutes, and a SIM's usage arrives from answers refreshed at different paces: the rules must read
both as the platform's own cadence, not as incidents.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from collector.alerts.config import AlertsConfig
from collector.alerts.engine import AlertEngine
from collector.config import parse_config
from collector.endpoints.card_usage import ENDPOINT as CARD_USAGE
from collector.platform.models import DeviceObservation, SimObservation
from collector.platform.parse import ParseContext, parse_device
from collector.simulator import Simulator
from collector.state import FleetState
from tests.alert_servers import HttpReceiver
from tests.daemon_run import DaemonProcess, demo_config
from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
APP_ID = "reseller-9"
APP_SECRET = "detect-Secret-4410"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    server.start()
    yield server
    server.stop()


def _transitions(metrics: str, rule: str) -> dict[str, float]:
    """The alert transitions of `rule` so far, by the state they went to."""
    found: dict[str, float] = {}
    pattern = re.compile(r'^iot_collector_alert_transitions_total\{(?P<labels>[^}]*)\} (?P<n>\S+)$', re.M)
    for m in pattern.finditer(metrics):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("rule") == rule:
            found[labels["to"]] = float(m["n"])
    return found


@pytest.mark.integration
async def test_data_stale_fires_for_a_device_the_platform_stopped_refreshing_and_not_for_fast_polled_healthy_ones(
        tmp_path: Path, receiver: HttpReceiver) -> None:
    # The platform refreshes every device's status every 5 minutes; the daemon polls every 2 s, so a
    # healthy device's data is up to 150 poll intervals old at every poll.
    sim = Simulator(devices=40, seed=11, speed=1.0,
                    platform=parse_config({"platform": {"app_id": APP_ID, "app_secret": APP_SECRET}}, env={}).platform)
    sim_port = free_port()
    base_url = await sim.start("127.0.0.1", sim_port)
    try:
        now = sim.now()
        online = [no for no in sim.device_numbers()
                  if sim.fleet.device_state(sim.fleet.find_device(no) or 0, now).online]
        assert len(online) >= 21, "not enough online devices in the simulated fleet"
        frozen, healthy = online[0], online[1:21]
        # The platform stopped refreshing this device 15 minutes ago (it stays online).
        sim.fleet.freeze(sim.fleet.find_device(frozen) or 0, now - 900)
        customer = f"s{uuid.uuid4().hex[:8]}"
        config = demo_config(
            tmp_path, simulator={"embedded": False},
            platform={"base_url": base_url, "app_id": APP_ID, "app_secret": APP_SECRET, "rate_limit": 200,
                      "max_concurrency": 16},
            jobs={"device_status": {"interval": "2s"}, "device_flow": {"interval": "3s"}},
            inventory={"devices": [{"device_no": no, "labels": {"customer": customer}}
                                   for no in [frozen, *healthy]]},
            alerts={"enabled": True, "default_rules": True, "evaluation_interval": "1s", "language": "en",
                    "notifiers": [{"type": "webhook", "name": "hook", "url": f"{receiver.url}/hook",
                                   "group_wait": "200ms", "group_interval": "300ms"}]})
        daemon = DaemonProcess(tmp_path, config)
        await asyncio.to_thread(daemon.start)
        try:
            served = sim.stats.counts.get("device_info", {}).get("ok", 0)
            # Several polls of every device: at 2 s, at least 8 rounds.
            await asyncio.sleep(20.0)
            rounds = (sim.stats.counts.get("device_info", {}).get("ok", 0) - served) / (1 + len(healthy))
            assert rounds >= 8, f"only {rounds:.1f} polls per device"

            alerts = (await asyncio.to_thread(daemon.get, "/api/alerts")).json()["alerts"]
            stale = sorted(a["labels"]["device_no"] for a in alerts if a["labels"]["alertname"] == "DataStale")
            assert stale == [frozen]
            [alert] = [a for a in alerts if a["labels"]["alertname"] == "DataStale"]
            assert alert["state"] == "firing" and alert["value"] >= 900
            sent = [b for b in receiver.bodies("/hook")
                    if any(x["labels"]["alertname"] == "DataStale" for x in b["alerts"])]
            devices = sorted({x["labels"]["device_no"] for b in sent for x in b["alerts"]
                              if x["labels"]["alertname"] == "DataStale"})
            assert devices == [frozen], devices
            metrics = (await asyncio.to_thread(daemon.get, "/metrics")).text
            assert _transitions(metrics, "DataStale").get("firing") == 1.0, _transitions(metrics, "DataStale")
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0
    finally:
        await sim.stop()


# --- the exhaustion forecast over answers refreshed at different paces --------------------------------

T0 = 1_750_000_000.0  # a poll time; the billing cycle started 20 days before, so it ends in about 10 days
CYCLE_START = T0 - 20 * 86400
GIB = 2**30
# Two SIMs in two devices: one that runs out in about a day, one that lasts past its cycle's end.
RUNS_OUT = ("dev-hungry", "8986000000000000001", 9.0 * GIB, 1.0 * GIB / 86400)
LASTS = ("dev-modest", "8986000000000000002", 5.0 * GIB, 0.1 * GIB / 86400)


def _answer(device_no: str, iccid: str, used0: float, rate: float, at: float, refresh: float) -> DeviceObservation:
    """What a device answer polled at `at` shows when the platform refreshes the flow every `refresh`
    seconds: the usage as of the last refresh, and that refresh's time as `lastDeviceFlowAt`."""
    flow_at = (at // refresh) * refresh
    used = int(used0 + rate * (flow_at - (T0 - 7200)))
    sim = SimObservation(iccid=iccid, device_no=device_no, slot=1, total_bytes=10 * GIB, used_bytes=used,
                         cycle_start=CYCLE_START, sim_status=4, internet_status=1, flow_at=flow_at, polled_at=at)
    return DeviceObservation(device_no=device_no, online_status=1, status_at=at - 60, flow_at=flow_at,
                             sims=(sim,), polled_at=at)


async def test_the_exhaustion_forecast_holds_its_for_while_hourly_and_ten_minute_answers_alternate(
        tmp_path: Path) -> None:
    # The default rule: the remaining data runs out before the cycle ends at the recent rate, for 1h.
    config = AlertsConfig.model_validate({"enabled": True, "default_rules": True, "notifiers": []})
    clock = [T0]
    engine = AlertEngine(config, tmp_path, clock=lambda: clock[0])
    await engine.start()
    try:
        state = FleetState(device_interval=300.0, refresh_period=300.0)
        state.sync_inventory({RUNS_OUT[0]: {}, LASTS[0]: {}}, {})
        states: dict[str, list[str]] = {RUNS_OUT[1]: [], LASTS[1]: []}
        fired_at = None
        # Three hours of the daemon's defaults: queryDeviceInfo (flow refreshed hourly) every 5
        # minutes, queryDeviceFlow (flow refreshed every 10 minutes) every 15 minutes.
        for step in range(36):
            at = T0 + step * 300.0
            clock[0] = at
            for device_no, iccid, used0, rate in (RUNS_OUT, LASTS):
                answers = [_answer(device_no, iccid, used0, rate, at, 3600.0)]
                if step % 3 == 0:
                    answers.append(_answer(device_no, iccid, used0, rate, at + 1, 600.0))
                for obs in answers:
                    change = state.observe_device(obs)
                    for record in change.sim_records:
                        engine.evaluate("sim", record.iccid, record, obs.polled_at)
                alerts = [a for a in engine.active()
                          if a["rule"] == "SimDataExhaustionForecast" and a["entity"] == iccid]
                states[iccid].append(alerts[0]["state"] if alerts else "inactive")
                if alerts and alerts[0]["state"] == "firing" and fired_at is None:
                    fired_at = at
        hungry = states[RUNS_OUT[1]]
        # Pending from the first poll that knows a rate, without a break, then firing after its hour.
        first = hungry.index("pending")
        assert first <= 3, hungry
        assert set(hungry[:first]) == {"inactive"}
        assert hungry[first:] == ["pending"] * (len(hungry[first:]) - hungry.count("firing")) + \
            ["firing"] * hungry.count("firing"), hungry
        assert fired_at is not None and fired_at - (T0 + first * 300.0) <= 3600.0 + 300.0, hungry
        assert set(states[LASTS[1]]) == {"inactive"}, states[LASTS[1]]
        # The usage history moved only with newer platform data: its times never go backwards.
        history = state.sims[RUNS_OUT[1]].usage.readings()
        assert [t for t, _ in history] == sorted({t for t, _ in history})
    finally:
        await engine.stop()


def test_the_sims_of_a_device_answer_carry_the_devices_flow_time() -> None:
    sample = json.loads((Path(__file__).parent / "data" / "sample-queryDeviceFlow.json").read_text())["data"]
    obs = parse_device(sample, ParseContext(polled_at=T0))
    assert obs.flow_at is not None and obs.sims
    assert {sim.flow_at for sim in obs.sims} == {obs.flow_at}


def test_a_card_usage_answer_older_than_the_usage_held_does_not_move_it() -> None:
    device_no, iccid, used0, rate = RUNS_OUT
    state = FleetState()
    state.sync_inventory({device_no: {}}, {})
    state.observe_device(_answer(device_no, iccid, used0, rate, T0, 600.0))
    sim = state.sims[iccid]
    assert sim.obs is not None
    held, history = sim.obs.used_bytes, sim.usage.readings()
    older = SimObservation(iccid=iccid, total_bytes=10 * GIB, used_bytes=int(used0), cycle_start=CYCLE_START,
                           flow_at=(T0 // 600) * 600 - 3600, polled_at=T0 + 10)
    CARD_USAGE.observe(state, [older])
    assert (sim.obs.used_bytes, sim.usage.readings(), sim.obs.polled_at) == (held, history, T0 + 10)
    newer = replace(older, used_bytes=held + 1024, flow_at=(T0 // 600) * 600 + 600, polled_at=T0 + 700)
    CARD_USAGE.observe(state, [newer])
    assert sim.obs.used_bytes == held + 1024 and sim.usage.readings()[-1] == ((T0 // 600) * 600 + 600, held + 1024)


def test_usage_histories_survive_a_restart_through_the_state_directory(tmp_path: Path) -> None:
    device_no, iccid, used0, rate = RUNS_OUT
    state = FleetState()
    state.sync_inventory({device_no: {}}, {})
    for step in range(3):
        state.observe_device(_answer(device_no, iccid, used0, rate, T0 + step * 600, 600.0))
    before = state.sims[iccid]
    assert before.usage_rate_bytes_per_second is not None
    assert state.save_usage(tmp_path)
    again = FleetState()
    again.load_usage(tmp_path)
    again.sync_inventory({device_no: {}}, {})
    # The first answer after the restart repeats the last refresh: the rate is known at once.
    again.observe_device(_answer(device_no, iccid, used0, rate, T0 + 1300, 600.0))
    after = again.sims[iccid]
    assert after.usage.readings() == before.usage.readings() != []
    assert after.usage_rate_bytes_per_second == pytest.approx(before.usage_rate_bytes_per_second)
    assert after.exhausts_before_cycle_end is True
    (tmp_path / "usage.json").write_text("{not json")
    broken = FleetState()
    broken.load_usage(tmp_path)  # logged and ignored
    assert broken.sims == {}


# --- the detection benchmark, reduced -----------------------------------------------------------------


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_detection", REPO / "bench" / "bench_detection.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
async def test_a_reduced_detection_run_sees_every_incident_once_in_time_and_nothing_else() -> None:
    # bench/bench_detection.py with 20+11 devices, `for` at 2 % of the shipped rules, 5 s polls. Data
    # that stops refreshing and a draining battery wait for the platform's 5-minute refreshes: the
    # full run covers them (DataStale end to end: the test above).
    bench = _bench()
    opts = bench.Options(fleet=240, outage=20, for_scale=0.02, poll=5.0, group_wait=5.0, stale=False, drain=False,
                         timeout=600.0, quiet=True)
    result = await bench.Bench(opts).run()
    summary = bench.report(result, opts)
    assert result["exit_code"] == 0 and result["bad_signatures"] == 0, summary
    assert set(result["rules"]) == {"DeviceOffline", "WeakSignal", "LowBattery", "SimSuspended", "SimDataLow",
                                    "SimDataExhaustionForecast", "SimPackageExpiring", "AccountBalanceLow",
                                    "UpstreamErrorRateHigh"}, summary
    for rule, row in result["rules"].items():
        assert row["detected"] == row["injected"], (rule, summary)
        assert row["over_bound"] == 0, (rule, summary)
        assert set(row["firing_msgs"]) == {1} and set(row["resolved_msgs"]) == {1}, (rule, summary)
    assert result["false_fires"] == {}, summary
    assert not any(result["flaps"].values()) and not any(result["refired"].values()), summary
    assert [(status, firing, resolved) for _t, status, firing, resolved in result["outage_messages"]] == \
        [("firing", 20, 0), ("resolved", 0, 20)], summary
    restart = result["restart"]
    assert restart["pending"] and restart["firing"], summary
    assert restart["resent"] == [] and restart["delayed"] == [], summary


@pytest.mark.parametrize("now, shifted", [("2026-11-30T23:55:00+08:00", True), ("2026-12-01T00:20:00+08:00", True),
                                          ("2026-12-15T12:00:00+08:00", False)])
def test_the_detection_run_keeps_a_month_end_out_of_its_cycle(monkeypatch: pytest.MonkeyPatch, now: str,
                                                               shifted: bool) -> None:
    # A month's end in the run gives back the data an incident took (the new cycle starts from zero):
    # the benchmark starts simulated time a day earlier then, and the run stays inside one cycle.
    bench = _bench()
    wall = datetime.fromisoformat(now).timestamp()
    monkeypatch.setattr(time, "time", lambda: wall)
    platform = parse_config({"platform": {"app_id": APP_ID, "app_secret": APP_SECRET}}, env={}).platform
    run = bench.Bench(bench.Options(fleet=10, quiet=True))
    sim = run.simulator(platform, 900.0)
    start = sim.now()
    assert abs(start - (wall - 86400 if shifted else wall)) < 5
    begins, ends = sim.fleet.face.cycle(start)
    assert begins <= start - 3600 and start + 900 + 1800 <= ends
    assert bool(run.log_lines) == shifted
