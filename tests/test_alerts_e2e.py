"""End to end, on loopback: the simulator's fault injection, the real platform client feeding the
fleet state, the alert engine, and real receivers: Debian's Alertmanager (checked through its API v2
and through the notifications it sends on), a JSON webhook reached through an Apprise `json://` URL,
an SMTP server (aiosmtpd) reached through an Apprise `mailto://` URL, and the generic signed webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from collector.alerts.engine import AlertEngine
from collector.cli import main as cli_main
from collector.config import Config, parse_config
from collector.platform.client import PlatformClient
from collector.simulator import Simulator
from collector.state import FleetState
from tests.alert_servers import AlertmanagerServer, HttpReceiver, SmtpReceiver, start_alertmanager, wait_for
from tests.conftest import server_unavailable
from tests.daemon_run import DaemonProcess, demo_config
from tests.daemon_run import wait_for as wait_until
from tests.servers import ServerUnavailable, free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:apprise.*")]

SECRET = "hook-secret"


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpReceiver]:
    server = SmtpReceiver()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory, receiver: HttpReceiver) -> Iterator[AlertmanagerServer]:
    try:
        server = start_alertmanager(tmp_path_factory.mktemp("alertmanager"), receiver.url + "/am")
    except ServerUnavailable as exc:
        server_unavailable(exc)
        raise
    yield server
    server.stop()


class Rig:
    """Simulator + client + fleet state + alert engine, with notifiers pointing at the receivers. Each
    rig has its own `customer` label, so Alertmanager groups and receivers' paths never mix tests."""

    def __init__(self, tmp: Path, receiver: HttpReceiver, smtp: SmtpReceiver, am: AlertmanagerServer,
                 rules: list[dict[str, Any]], devices: int = 20) -> None:
        self.customer = f"c{uuid.uuid4().hex[:8]}"
        self.tmp, self.receiver, self.smtp, self.am = tmp, receiver, smtp, am
        self.mailbox = f"{self.customer}@example.com"
        grouping = {"group_wait": "200ms", "group_interval": "300ms", "repeat_interval": "1h",
                    "retry": {"backoff_initial": "100ms"}}
        self.config: Config = parse_config({
            "simulator": {"embedded": True},
            "platform": {"rate_limit": 2000, "burst": 200, "max_concurrency": 64},
            "alerts": {
                "enabled": True, "default_rules": False, "rules": rules,
                "notifiers": [
                    {"type": "alertmanager", "url": am.url, "resend_interval": "1s"},
                    {"type": "apprise", "name": "apprise", **grouping, "min_interval": 0,
                     "urls": [f"json://127.0.0.1:{receiver.port}/apprise-{self.customer}",
                              smtp.apprise_url(self.mailbox)]},
                    {"type": "webhook", "name": "hook", **grouping, "secret": SECRET,
                     "url": f"{receiver.url}/hook-{self.customer}"},
                ]}}, env={})
        self.sim = Simulator(devices=devices, seed=7, speed=1.0, platform=self.config.platform)
        self.state = FleetState(device_interval=300.0)
        self.engine: AlertEngine | None = None
        self.client: PlatformClient | None = None

    async def start(self) -> None:
        base_url = await self.sim.start("127.0.0.1", 0)
        self.admin = httpx.AsyncClient(base_url=base_url, timeout=10.0)
        self.client = PlatformClient(self.config.platform, self.config.privacy, base_url=base_url)
        await self.start_engine()

    async def start_engine(self) -> None:
        self.engine = AlertEngine(self.config.alerts, self.tmp / "state")
        await self.engine.start()

    async def stop_engine(self) -> None:
        assert self.engine is not None
        await self.engine.stop()
        self.engine = None

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self.client is not None:
            await self.client.aclose()
        await self.admin.aclose()
        await self.sim.stop()

    def watch(self, devices: list[str]) -> None:
        self.state.sync_inventory({no: {"customer": self.customer} for no in devices}, {})

    async def poll(self) -> None:
        """Poll every watched device once and hand what changed to the engine, as the daemon does."""
        assert self.client is not None and self.engine is not None
        observations = await asyncio.gather(*(self.client.device_flow(no) for no in self.state.devices))
        engine = self.engine
        for obs in observations:
            change = self.state.observe_device(obs)
            now = obs.polled_at
            for no in change.devices:
                engine.evaluate("device", no, self.state.devices[no], now)

    async def online_devices(self, count: int) -> list[str]:
        """`count` devices that are online with a decent signal right now."""
        assert self.client is not None
        found = []
        for no in self.sim.device_numbers():
            obs = await self.client.device_flow(no)
            if obs.online and (obs.rssi_dbm or -200) > -95:
                found.append(no)
                if len(found) == count:
                    return found
        raise AssertionError("not enough healthy simulated devices")

    async def sim_post(self, path: str, body: dict[str, Any] | None = None) -> None:
        response = await self.admin.post(path, json=body or {})
        assert response.status_code < 300, response.text

    # --- what each receiver got, for this rig's customer ---

    def am_notifications(self) -> list[dict[str, Any]]:
        return [b for b in self.receiver.bodies("/am") if b["groupLabels"].get("customer") == self.customer]

    def apprise_json(self) -> list[dict[str, Any]]:
        return self.receiver.bodies(f"/apprise-{self.customer}")

    def webhook(self) -> list[dict[str, Any]]:
        return self.receiver.bodies(f"/hook-{self.customer}")

    def mails(self) -> list[Any]:
        return [m for m in self.smtp.messages if self.mailbox in str(m["To"])]

    def counts(self) -> dict[str, tuple[str, ...]]:
        """Statuses received so far, per receiver."""
        return {
            "alertmanager": tuple(b["status"] for b in self.am_notifications()),
            "apprise-json": tuple("resolved" if b["title"].startswith("[RESOLVED") else "firing"
                                  for b in self.apprise_json()),
            "smtp": tuple("resolved" if str(m["Subject"]).startswith("[RESOLVED") else "firing"
                          for m in self.mails()),
            "webhook": tuple(b["status"] for b in self.webhook()),
        }

    async def expect(self, statuses: tuple[str, ...], settle: float = 0.8, within: float = 15.0) -> None:
        """Wait until every receiver got exactly `statuses`, then check nothing more arrives."""
        expected = dict.fromkeys(("alertmanager", "apprise-json", "smtp", "webhook"), statuses)
        await wait_for(lambda: self.counts() == expected, within=within)
        await asyncio.sleep(settle)
        assert self.counts() == expected


OFFLINE = {"name": "DeviceOffline", "kind": "device", "condition": "online == False", "for": "0s",
           "severity": "critical", "annotations": {"summary": "Device {{ device_no }} is offline"}}
WEAK = {"name": "WeakSignal", "kind": "device", "condition": "rssi_dbm < -105", "clear": "rssi_dbm > -100",
        "annotations": {"summary": "Weak signal on {{ device_no }}: {{ rssi_dbm }} dBm"}}


@pytest.fixture
async def rig_factory(tmp_path: Path, receiver: HttpReceiver, smtp: SmtpReceiver,
                      alertmanager: AlertmanagerServer) -> AsyncIterator[Any]:
    rigs: list[Rig] = []

    async def make(rules: list[dict[str, Any]], devices: int = 20) -> Rig:
        rig = Rig(tmp_path / f"rig{len(rigs)}", receiver, smtp, alertmanager, rules, devices)
        await rig.start()
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.stop()


def _am_active(rig: Rig, device_no: str) -> list[dict[str, Any]]:
    return [a for a in rig.am.alerts(alertname="DeviceOffline", customer=rig.customer, device_no=device_no)
            if a["status"]["state"] == "active"]


async def test_offline_device_fires_once_and_resolves_once_at_every_receiver(rig_factory: Any) -> None:
    rig: Rig = await rig_factory([OFFLINE])
    [device] = await rig.online_devices(1)
    rig.watch([device])
    await rig.poll()
    await asyncio.sleep(0.5)
    assert rig.counts() == dict.fromkeys(("alertmanager", "apprise-json", "smtp", "webhook"), ())

    await rig.sim_post(f"/_sim/devices/{device}/offline")
    await rig.poll()
    await rig.poll()  # still offline: nothing new
    await rig.expect(("firing",))
    [am_alert] = _am_active(rig, device)
    assert am_alert["labels"]["severity"] == "critical" and am_alert["labels"]["kind"] == "device"
    assert am_alert["annotations"]["summary"] == f"Device {device} is offline"
    assert am_alert["generatorURL"].endswith(f"/api/alerts?id=DeviceOffline/{device}")
    [hook] = rig.receiver.requests(f"/hook-{rig.customer}")
    headers = {k.lower(): v for k, v in hook[0].items()}
    expected_sig = "sha256=" + hmac.new(SECRET.encode(), hook[1], hashlib.sha256).hexdigest()
    assert headers["x-iot-collector-signature"] == expected_sig
    assert hook[2]["alerts"][0]["labels"]["device_no"] == device
    [mail] = rig.mails()
    assert f"Device {device} is offline" in mail.get_body(preferencelist=("plain", "html")).get_content()

    await rig.sim_post(f"/_sim/devices/{device}/online")
    await rig.poll()
    await rig.poll()
    await rig.expect(("firing", "resolved"))
    assert _am_active(rig, device) == []
    resolved = rig.am_notifications()[-1]
    assert resolved["alerts"][0]["status"] == "resolved"
    assert rig.engine is not None and rig.engine.active() == []


async def test_rssi_jittering_around_the_threshold_does_not_flap(rig_factory: Any) -> None:
    rig: Rig = await rig_factory([WEAK])
    [device] = await rig.online_devices(1)
    rig.watch([device])
    for dbm in (-106, -104, -107, -103, -105, -101, -108, -104, -102, -106):
        await rig.sim_post(f"/_sim/devices/{device}/rssi", {"dbm": dbm})
        await rig.poll()
        await asyncio.sleep(0.1)
    await rig.expect(("firing",))
    await rig.sim_post(f"/_sim/devices/{device}/rssi", {"dbm": -95})
    await rig.poll()
    await rig.expect(("firing", "resolved"))


async def test_a_restart_in_the_middle_of_a_firing_alert_sends_nothing_new(rig_factory: Any) -> None:
    rig: Rig = await rig_factory([OFFLINE])
    [device] = await rig.online_devices(1)
    rig.watch([device])
    await rig.sim_post(f"/_sim/devices/{device}/offline")
    await rig.poll()
    await rig.expect(("firing",), settle=0.2)

    await rig.stop_engine()
    await rig.start_engine()
    for _ in range(3):
        await rig.poll()
        await asyncio.sleep(0.5)
    await rig.expect(("firing",))  # Alertmanager got the re-post, and deduplicated it
    assert len(_am_active(rig, device)) == 1

    await rig.sim_post(f"/_sim/devices/{device}/online")
    await rig.poll()
    await rig.expect(("firing", "resolved"))


async def test_a_silenced_alert_sends_nothing(rig_factory: Any) -> None:
    rig: Rig = await rig_factory([OFFLINE])
    [device] = await rig.online_devices(1)
    rig.watch([device])
    assert rig.engine is not None
    rig.engine.add_silence([f"device_no={device}"], None, rig.engine.clock() + 3600, "test", "pytest")
    await rig.sim_post(f"/_sim/devices/{device}/offline")
    await rig.poll()
    await asyncio.sleep(2.0)
    assert rig.counts() == dict.fromkeys(("alertmanager", "apprise-json", "smtp", "webhook"), ())
    assert rig.am.alerts(customer=rig.customer) == []
    [alert] = rig.engine.active()
    assert alert["state"] == "firing" and alert["silenced_by"]


async def test_300_devices_offline_at_once_make_one_message_per_receiver(rig_factory: Any) -> None:
    rig: Rig = await rig_factory([{**OFFLINE, "labels": {"bulk": "yes"}}], devices=300)
    devices = rig.sim.device_numbers()
    rig.watch(devices)
    gate = asyncio.Semaphore(32)

    async def offline(no: str) -> None:
        async with gate:
            await rig.sim_post(f"/_sim/devices/{no}/offline")

    await asyncio.gather(*(offline(no) for no in devices))
    await rig.poll()
    await rig.expect(("firing",), within=30.0)  # Alertmanager holds the bulk group for its 10 s group_wait
    [am] = rig.am_notifications()
    assert len(am["alerts"]) == 300
    [apprise_message] = rig.apprise_json()
    assert apprise_message["title"] == f"[FIRING:300] DeviceOffline (customer={rig.customer})"
    [hook] = rig.webhook()
    assert hook["firingCount"] == 300 and hook["truncatedAlerts"] == 250
    [mail] = rig.mails()
    assert str(mail["Subject"]).startswith("[FIRING:300] DeviceOffline")


# --- the real daemon ------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`iot-collector ARGS` in this process (the same `main` as the console script)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


async def _healthy_device(config: Config, seed: int, devices: int) -> str:
    """A device that is online with a decent signal now, on a simulator like the daemon's."""
    sim = Simulator(devices=devices, seed=seed, speed=1.0, platform=config.platform)
    base_url = await sim.start("127.0.0.1", 0)
    try:
        async with PlatformClient(config.platform, config.privacy, base_url=base_url) as client:
            for no in sim.device_numbers():
                obs = await client.device_flow(no)
                if obs.online and (obs.rssi_dbm or -200) > -95:
                    return no
    finally:
        await sim.stop()
    raise AssertionError("no healthy simulated device")


async def test_the_daemon_alerts_end_to_end_with_cli(tmp_path: Path, receiver: HttpReceiver, smtp: SmtpReceiver,
                                                     alertmanager: AlertmanagerServer) -> None:
    customer = f"d{uuid.uuid4().hex[:8]}"
    sim_port = free_port()
    grouping = {"group_wait": "200ms", "group_interval": "300ms"}
    config = demo_config(
        tmp_path, simulator={"embedded": True, "devices": 10, "seed": 7, "speed": 1, "port": sim_port},
        jobs={"device_status": {"interval": "1s"}},
        alerts={"enabled": True, "default_rules": False, "evaluation_interval": "1s", "rules": [OFFLINE],
                "notifiers": [
                    {"type": "alertmanager", "url": alertmanager.url, "resend_interval": "1s",
                     "match": [f"customer={customer}"]},
                    {"type": "apprise", "name": "apprise", "min_interval": 0, "match": [f"customer={customer}"],
                     **grouping, "urls": [f"json://127.0.0.1:{receiver.port}/apprise-{customer}",
                                          smtp.apprise_url(f"{customer}@example.com")]},
                    {"type": "webhook", "name": "hook", "url": f"{receiver.url}/hook-{customer}", **grouping,
                     "match": [f"customer={customer}"]}]})
    parsed = parse_config(config, env={})
    device = await _healthy_device(parsed, 7, 10)
    config["inventory"] = {"devices": [{"device_no": device, "labels": {"customer": customer}}]}
    daemon = DaemonProcess(tmp_path, config)
    await asyncio.to_thread(daemon.start)
    try:
        hook = f"/hook-{customer}"

        def statuses() -> dict[str, tuple[str, ...]]:
            return {
                "alertmanager": tuple(b["status"] for b in receiver.bodies("/am")
                                      if b["groupLabels"].get("customer") == customer),
                "apprise-json": tuple("resolved" if b["title"].startswith("[RESOLVED") else "firing"
                                      for b in receiver.bodies(f"/apprise-{customer}")),
                "smtp": tuple("resolved" if str(m["Subject"]).startswith("[RESOLVED") else "firing"
                              for m in smtp.messages if f"{customer}@example.com" in str(m["To"])),
                "webhook": tuple(b["status"] for b in receiver.bodies(hook)),
            }

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sim_port}") as admin:
            assert (await admin.post(f"/_sim/devices/{device}/offline")).status_code < 300
            firing = dict.fromkeys(("alertmanager", "apprise-json", "smtp", "webhook"), ("firing",))
            assert await wait_for(lambda: statuses() == firing, within=20.0), statuses()

            listed = await asyncio.to_thread(_cli, "alerts", "list", "--url", daemon.url, "--json")
            assert listed.returncode == 0, listed.stderr
            [alert] = [a for a in json.loads(listed.stdout) if a["entity"] == device]
            assert alert["state"] == "firing" and alert["labels"]["customer"] == customer
            table = await asyncio.to_thread(_cli, "alerts", "list", "--url", daemon.url)
            assert f"Device {device} is offline" in table.stdout

            # (A silence over the firing alert, lifted, would announce it again, as Alertmanager does.)
            added = await asyncio.to_thread(_cli, "silence", "add", "device_no=0000", "--duration", "1h",
                                            "--comment", "e2e", "--url", daemon.url)
            assert added.returncode == 0, added.stderr
            sid = added.stdout.strip()
            silences = await asyncio.to_thread(_cli, "silence", "list", "--url", daemon.url, "--json")
            assert [s["id"] for s in json.loads(silences.stdout)] == [sid]
            removed = await asyncio.to_thread(_cli, "silence", "remove", sid, "--url", daemon.url)
            assert removed.returncode == 0, removed.stderr

            assert (await admin.post(f"/_sim/devices/{device}/online")).status_code < 300
            both = dict.fromkeys(("alertmanager", "apprise-json", "smtp", "webhook"), ("firing", "resolved"))
            assert await wait_for(lambda: statuses() == both, within=20.0), statuses()
            await asyncio.sleep(1.0)
            assert statuses() == both
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
    gone = await asyncio.to_thread(_cli, "alerts", "list", "--url", daemon.url)
    assert gone.returncode == 1
    assert gone.stderr.startswith("error: cannot reach the collector at ") and "Traceback" not in gone.stderr


def _error_count(metrics_text: str, rule: str) -> float:
    prefix = f'iot_collector_alert_evaluation_errors_total{{rule="{rule}"}} '
    return next((float(line[len(prefix):]) for line in metrics_text.splitlines() if line.startswith(prefix)), -1.0)


async def test_a_rule_that_always_errors_shows_on_metrics_and_a_bad_rule_is_refused(tmp_path: Path) -> None:
    """A running daemon exports rule evaluation errors by rule; `run` with a bad rule exits 2 with the
    rule's path; SIGHUP with a bad rule keeps the running rules and logs the problem."""
    broken = {"name": "AlwaysErrs", "kind": "device", "condition": "device_no < 3"}  # text against a number
    config = demo_config(tmp_path, simulator={"embedded": True, "devices": 5, "seed": 7, "speed": 60},
                         alerts={"enabled": True, "default_rules": False, "evaluation_interval": "1s",
                                 "rules": [broken, OFFLINE], "notifiers": [{"type": "log"}]})
    bad = {**config, "alerts": {**config["alerts"], "rules": [{**broken, "condition": "rsi_dbm < -105"}]}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    refused = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "collector", "run", "-c",
                                                       str(tmp_path / "bad.yaml")],
                                      capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "alerts.rules[0] (AlwaysErrs).condition: unknown field 'rsi_dbm' for kind device" in refused.stderr
    assert "Traceback" not in refused.stderr

    daemon = DaemonProcess(tmp_path, config)
    await asyncio.to_thread(daemon.start)
    try:
        assert _error_count(daemon.get("/metrics").text, "DeviceOffline") == 0.0  # every rule, from the start
        await asyncio.to_thread(wait_until, lambda: _error_count(daemon.get("/metrics").text, "AlwaysErrs") >= 5,
                                30, "evaluation errors of AlwaysErrs on /metrics")
        daemon.config_path.write_text(yaml.safe_dump(bad))
        daemon.signal(signal.SIGHUP)
        await asyncio.to_thread(wait_until, lambda: any(e["event"].startswith("configuration rejected")
                                                        for e in daemon.log_events()), 15, "the reload refused")
        rejected = next(e for e in daemon.log_events() if e["event"].startswith("configuration rejected"))
        assert rejected["problems"] == [
            "alerts.rules[0] (AlwaysErrs).condition: unknown field 'rsi_dbm' for kind device"]
        seen = _error_count(daemon.get("/metrics").text, "AlwaysErrs")
        await asyncio.to_thread(wait_until, lambda: _error_count(daemon.get("/metrics").text, "AlwaysErrs") > seen,
                                30, "the running rule still evaluated")
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
