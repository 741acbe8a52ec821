"""Detection that can be trusted, end to end: the real daemon polling the simulator as a server, the
default alert rules, and a webhook receiver. The platform refreshes a device's status only every few
minutes, and a SIM's usage arrives from answers refreshed at different paces: the rules must read
both as the platform's own cadence, not as incidents.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.config import parse_config
from collector.simulator import Simulator
from tests.alert_servers import HttpReceiver
from tests.daemon_run import DaemonProcess, demo_config
from tests.servers import free_port

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
