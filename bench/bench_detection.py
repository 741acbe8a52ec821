"""Detection benchmark: how well the alerting sees what happens to a fleet, end to end.

Starts the simulator as a server (at speed 1, so the platform's data times are real ones), the daemon
(`iot-collector run`, its own process) on a chosen part of the fleet, and a webhook receiver that
checks every message's HMAC signature. The simulator's own model picks devices and SIMs that stay
healthy over the run, so any alert outside the schedule is a false fire. Then, through the
simulator's admin API, it injects a schedule of every incident kind (device offline, weak signal,
low battery at once and by draining, data that stops refreshing, SIM suspended, data running low and
used up, package expiring, low account balance, upstream errors, and a 50-device outage), holds
controls just on the quiet side of each threshold, ends every incident once it has been announced,
and restarts the daemon once while alerts are pending and firing.

Prints, per rule: incidents injected and detected, median and maximum latency from the moment the
platform shows the incident to the firing message, against its bound (`for` + poll interval + sweep
+ group wait, plus two platform refreshes for DataStale and one for a draining battery), false fires,
flaps (pending alerts dropped, alerts fired twice), firing and resolved messages per incident; the
messages of the outage; what the restart re-sent, or delayed past the bound plus the time the daemon
was down; the load average.

The rules are the default ones with their `for` scaled (`--for-scale`, 1 = as shipped).

    .venv/bin/python bench/bench_detection.py                       # about 20 minutes
    .venv/bin/python bench/bench_detection.py --for-scale 0.02 --no-stale --no-drain --outage 20 --fleet 120 \
        --poll 5 --group-wait 5                                     # about 4 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.config import PlatformConfig, parse_config
from collector.configtypes import parse_duration
from collector.simulator import Simulator
from collector.state import add_month

REPO = Path(__file__).resolve().parent.parent
APP_ID, APP_SECRET, HOOK_SECRET = "bench-detect", "bench-Detect-Secret-55", "hook-Secret-81"
SIGNATURE = "x-iot-collector-signature"
SWEEP = 1.0  # alerts.evaluation_interval
REFRESH = 300.0  # the simulator's status refresh at speed 1, and platform.refresh_period
SLACK = 3.0  # processing and delivery
MARGIN = 1.5  # the usage rates of the healthy SIMs stay this far from a forecast exhaustion


@dataclass
class Options:
    fleet: int = 400  # simulated devices to pick from
    outage: int = 50
    seed: int = 3
    for_scale: float = 0.1
    poll: float = 10.0  # device and card status poll interval
    group_wait: float = 10.0
    stale: bool = True  # inject data that stops refreshing (needs 2 platform refreshes: about 10 minutes)
    drain: bool = True  # inject a draining battery (shown at the platform's next refresh: up to 5 minutes)
    timeout: float = 1800.0
    quiet: bool = False
    start: float | None = None  # the simulated time at the start (default: now), e.g. just before a month ends


@dataclass
class Incident:
    name: str
    kind: str  # device, sim, account, collector
    entity: str  # the alert's entity key
    rules: tuple[str, ...]  # must fire
    allowed: tuple[str, ...] = ()  # may fire too (a consequence of the same incident)
    start: list[tuple[str, str, Any]] = field(default_factory=list)  # admin calls (method, path, body)
    end: list[tuple[str, str, Any]] = field(default_factory=list)
    control: bool = False  # held near a threshold: nothing may fire
    shown_at: float | None = None  # when the platform first shows it (wall time)
    injected_at: float | None = None
    ended_at: float | None = None
    extra: float = 0.0  # added to the bound


class Receiver:
    """The webhook end: records every message with its arrival time; a bad signature is counted."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.bad_signatures = 0
        lock = self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
                with lock:
                    if not hmac.compare_digest(expected, self.headers.get(SIGNATURE, "")):
                        outer.bad_signatures += 1
                    else:
                        outer.messages.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def snapshot(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scaled_rules(scale: float) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, float]]:
    """The default rules with `for` scaled, their params, and each rule's `for` in seconds."""
    doc = yaml.safe_load((REPO / "collector" / "alerts" / "default_rules.yaml").read_text(encoding="utf-8"))
    fors = {}
    for rule in doc["rules"]:
        seconds = parse_duration(str(rule.get("for", "0s"))) * scale
        rule["for"] = f"{seconds:.3f}s"
        fors[rule["name"]] = seconds
    return doc["rules"], doc["params"], fors


class Daemon:
    def __init__(self, work: Path, config: dict[str, Any]) -> None:
        self.work = work
        self.path = work / "collector.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        runtime = self.work / "state" / "collector.json"
        runtime.unlink(missing_ok=True)
        log = (self.work / "daemon.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "collector", "run", "-c", str(self.path)], cwd=REPO,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: see {self.work / 'daemon.log'}")
            try:
                self.url = json.loads(runtime.read_text())["url"]
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            time.sleep(0.1)
        raise RuntimeError("daemon did not start")

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text


def transitions(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for m in re.finditer(r'^iot_collector_alert_transitions_total\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
        out[(labels["rule"], labels["to"])] = float(m[2])
    return out


def upstream_totals(text: str) -> tuple[float, float]:
    total = errors = 0.0
    for m in re.finditer(r'^iot_collector_upstream_requests_total\{([^}]*)\} (\S+)$', text, re.M):
        value = float(m[2])
        total += value
        if 'outcome="ok"' not in m[1]:
            errors += value
    return total, errors


class Bench:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rules, self.params, self.fors = scaled_rules(opts.for_scale)
        self.incidents: list[Incident] = []
        self.outage: list[str] = []
        self.log_lines: list[str] = []
        self.restart: dict[str, Any] = {}
        self.transitions: dict[tuple[str, str], float] = {}
        self.upstream: list[tuple[float, float, float]] = []  # (time, requests, errors) of this daemon process

    def say(self, text: str) -> None:
        self.log_lines.append(text)
        if not self.opts.quiet:
            print(text, flush=True)

    # --- choosing healthy entities with the simulator's own model ---------------------------------------

    def healthy(self, sim: Simulator, device_no: str, start: float, horizon: float) -> list[str] | None:
        """The device's ICCIDs if it and its SIMs stay clear of every rule over the horizon, else None."""
        fleet = sim.fleet
        index = fleet.find_device(device_no)
        assert index is not None
        iccids: list[str] = []
        # The collector's usage rate runs from its first reading in the cycle to its newest one: after a
        # cycle starts (the month's first minutes) that is a rate over minutes, so it is checked as well
        # as the one over the last hour.
        first: dict[str, tuple[float, float, int]] = {}  # iccid -> (cycle start, flow time, used)
        t = start
        while t <= start + horizon:
            d = fleet.device_state(index, t)
            if not d.online or d.rssi < -98 or d.battery < 35:
                return None
            earlier = fleet.device_state(index, t - 3600)
            for s, before in zip(d.sims, earlier.sims, strict=True):
                if s.sim_status != 4 or s.internet_status != 1 or s.total <= 0 or s.used > 0.85 * s.total:
                    return None
                if s.end_at - t < 10 * 86400:
                    return None
                iccid, left = s.profile.iccid, add_month(s.cycle_start) - t
                seen = first.get(iccid)
                if seen is None or seen[0] != s.cycle_start:
                    seen = first[iccid] = (s.cycle_start, s.flow_at, s.used)
                rates = [max(s.used - seen[2], 0) / (s.flow_at - seen[1])] if s.flow_at - seen[1] >= 60 else []
                if before.cycle_start == s.cycle_start:
                    rates.append(max(s.used - before.used, 0) / 3600.0)
                if any(rate > 0 and (s.total - s.used) / rate < MARGIN * left for rate in rates):
                    return None
                if t == start:
                    iccids.append(iccid)
            t += 120.0
        return iccids

    def plan(self, sim: Simulator, horizon: float) -> dict[str, dict[str, str]]:
        """Pick the entities and write the schedule; returns the inventory (device -> labels)."""
        now = sim.now()
        picks: list[tuple[str, list[str]]] = []
        for no in sim.device_numbers():
            iccids = self.healthy(sim, no, now, horizon)
            if iccids:
                picks.append((no, iccids))
        singles = 11 + self.opts.stale + self.opts.drain
        if len(picks) < singles + self.opts.outage:
            raise RuntimeError(f"only {len(picks)} devices stay healthy over the run; raise --fleet")
        self.say(f"{len(picks)} of {len(sim.fleet)} simulated devices stay healthy over {horizon / 60:.0f} min")
        inventory: dict[str, dict[str, str]] = {}
        it = iter(picks)

        def device(name: str) -> tuple[str, list[str]]:
            no, iccids = next(it)
            inventory[no] = {"customer": name}
            return no, iccids

        def dev(name: str, rules: tuple[str, ...], start: list[Any], end: list[Any], **kw: Any) -> None:
            no, _ = device(name)
            self.incidents.append(Incident(name, "device", no, rules,
                                           start=[(m, p.format(no=no), b) for m, p, b in start],
                                           end=[(m, p.format(no=no), b) for m, p, b in end], **kw))

        def card(name: str, rules: tuple[str, ...], start: list[Any], end: list[Any], **kw: Any) -> None:
            _, iccids = device(name)
            iccid = iccids[0]
            self.incidents.append(Incident(name, "sim", iccid, rules,
                                           start=[(m, p.format(iccid=iccid), b) for m, p, b in start],
                                           end=[(m, p.format(iccid=iccid), b) for m, p, b in end], **kw))

        d, s = "/_sim/devices/{no}", "/_sim/sims/{iccid}"
        dev("offline", ("DeviceOffline",), [("POST", d + "/offline", {})], [("POST", d + "/online", {})])
        dev("weak-signal", ("WeakSignal",), [("POST", d + "/rssi", {"dbm": -112})],
            [("POST", d + "/rssi", {"dbm": -90})])
        dev("low-battery", ("LowBattery",), [("POST", d + "/battery", {"level": 9})],
            [("POST", d + "/battery", {"level": None})])
        if self.opts.drain:
            # From 20 % down at 1200 %/h, shown at the platform's next status refresh (up to 5 minutes
            # later at speed 1): the latency counts from the first answer that shows it below 15 %.
            dev("battery-drain", ("LowBattery",), [("POST", d + "/battery", {"level": 20}),
                                                   ("POST", d + "/battery", {"level": 5, "rate": 1200})],
                [("POST", d + "/battery", {"level": None})])
        if self.opts.stale:
            dev("stops-refreshing", ("DataStale",), [("POST", d + "/freeze", {})], [("POST", d + "/unfreeze", {})])
        card("suspended", ("SimSuspended",), [("POST", s + "/suspend", {})], [("POST", s + "/resume", {})])
        card("data-low", ("SimDataLow", "SimDataExhaustionForecast"),
             [("POST", s + "/exhaust", {"remaining_ratio": 0.05})], [("POST", s + "/top-up", {"remaining_ratio": 1})])
        card("data-used-up", ("SimDataLow", "SimSuspended"), [("POST", s + "/exhaust", {"remaining_ratio": 0})],
             [("POST", s + "/top-up", {"remaining_ratio": 1})], allowed=("SimDataExhaustionForecast",))
        card("package-expiring", ("SimPackageExpiring",), [("POST", s + "/expire", {"in": "3d"})],
             [("POST", s + "/expire", {"at": None})])
        # Controls: just on the quiet side of each threshold, for the whole run.
        dev("control-rssi", (), [("POST", d + "/rssi", {"dbm": -104})], [("POST", d + "/rssi", {"dbm": None})],
            control=True)
        dev("control-battery", (), [("POST", d + "/battery", {"level": 16})],
            [("POST", d + "/battery", {"level": None})], control=True)
        card("control-data", (), [("POST", s + "/exhaust", {"remaining_ratio": 0.12})],
             [("POST", s + "/top-up", {"remaining_ratio": 1})], control=True, allowed=("SimDataExhaustionForecast",))
        card("control-expiry", (), [("POST", s + "/expire", {"in": "8d"})], [("POST", s + "/expire", {"at": None})],
             control=True)
        self.incidents.append(Incident("control-balance", "account", "account", (), control=True,
                                       start=[("POST", "/_sim/account", {"balance": 101})],
                                       end=[("POST", "/_sim/account", {"balance": None})]))
        self.account = Incident("balance-low", "account", "account", ("AccountBalanceLow",),
                                start=[("POST", "/_sim/account", {"balance": 50})],
                                end=[("POST", "/_sim/account", {"balance": 101})])
        self.errors = Incident("upstream-errors", "collector", "collector", ("UpstreamErrorRateHigh",),
                               start=[("POST", "/_sim/faults", {"clear": True, "error_rate": 0.6})],
                               end=[("DELETE", "/_sim/faults", None)])
        for _ in range(self.opts.outage):
            no, _ = device("outage")
            self.outage.append(no)
        return inventory

    # --- the run ------------------------------------------------------------------------------------

    def config(self, work: Path, base_url: str, inventory: dict[str, dict[str, str]], hook: str) -> dict[str, Any]:
        p = self.opts.poll
        return {
            "platform": {"base_url": base_url, "app_id": APP_ID, "app_secret": APP_SECRET, "rate_limit": 60,
                         "burst": 20, "max_concurrency": 32, "refresh_period": f"{REFRESH}s"},
            "inventory": {"devices": [{"device_no": no, "labels": labels} for no, labels in inventory.items()]},
            "jobs": {"device_status": {"interval": f"{p}s"}, "device_flow": {"interval": f"{3 * p}s"},
                     "card_status": {"interval": f"{p}s"}, "card_usage": {"interval": f"{3 * p}s"},
                     "card_info": {"interval": "1h"}, "account_assets": {"interval": f"{p}s"},
                     "card_month_usage": {"enabled": False, "interval": "1d"},
                     "card_actions": {"enabled": False, "interval": "1d"}},
            "sinks": {"file": {"enabled": True, "path": str(work / "points.lp"), "max_bytes": "64MiB"}},
            "alerts": {"enabled": True, "default_rules": False, "rules": self.rules, "params": self.params,
                       "evaluation_interval": f"{SWEEP}s", "language": "en",
                       "notifiers": [{"type": "webhook", "name": "hook", "url": hook, "secret": HOOK_SECRET,
                                      "group_wait": f"{self.opts.group_wait}s", "group_interval": "15s",
                                      "repeat_interval": "24h"}]},
            "http": {"port": 0},
            "logging": {"level": "info", "format": "json"},
            "state_dir": str(work / "state"),
        }

    def bound(self, incident: Incident, rule: str) -> float:
        poll = self.opts.poll
        return self.fors[rule] + poll + SWEEP + self.opts.group_wait + SLACK + incident.extra

    async def admin(self, client: httpx.AsyncClient, calls: list[tuple[str, str, Any]]) -> None:
        for method, path, body in calls:
            response = await client.request(method, path, json=body) if body is not None else \
                await client.request(method, path)
            if response.status_code >= 300:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")

    def fired(self, messages: list[tuple[float, dict[str, Any]]], rule: str, entity: str) -> list[float]:
        return [t for t, m in messages for a in m["alerts"]
                if a["rule"] == rule and a["entity"] == entity and a["state"] == "firing"]

    def scrape(self, daemon: Daemon) -> None:
        try:
            text = daemon.metrics()
        except httpx.HTTPError:
            return
        total, errors = upstream_totals(text)
        self.upstream.append((time.time(), total, errors))
        self._last_metrics = text

    def upstream_shown(self) -> float | None:
        """When the daemon's 5-minute upstream error ratio first went over the rule's threshold."""
        limit, least = float(self.params["upstream_error_ratio_max"]), float(self.params["upstream_min_requests"])
        for i, (t, total, errors) in enumerate(self.upstream):
            base = next(((t0, n0, e0) for t0, n0, e0 in self.upstream[:i + 1] if t - t0 <= 300), None)
            if base is None or self.errors.injected_at is None or t < self.errors.injected_at:
                continue
            requests, failed = total - base[1], errors - base[2]
            if requests >= least and failed / requests > limit:
                return t
        return None

    def simulator(self, platform: PlatformConfig, horizon: float) -> Simulator:
        """The simulator at the start asked for, else now. Near a month's end (where the platform's
        billing cycles start again and give back the data an incident took) simulated time starts a day
        earlier, so the run stays inside one cycle; its answers are still reported on the wall clock."""
        opts = self.opts
        sim = Simulator(devices=opts.fleet, seed=opts.seed, speed=1.0, platform=platform, start=opts.start)
        if opts.start is None:
            now = sim.now()
            begins, ends = sim.fleet.face.cycle(now)
            if now - begins < 3600 or ends - now < horizon + 1800:
                self.say("a billing cycle starts within the run: simulated time starts a day earlier")
                sim = Simulator(devices=opts.fleet, seed=opts.seed, speed=1.0, platform=platform, start=now - 86400)
        return sim

    async def run(self) -> dict[str, Any]:
        opts = self.opts
        platform = parse_config({"platform": {"app_id": APP_ID, "app_secret": APP_SECRET}}, env={}).platform
        horizon = 2400.0 if opts.stale or opts.drain else 900.0
        sim = self.simulator(platform, horizon)
        base_url = await sim.start("127.0.0.1", 0)
        receiver = Receiver()
        work = self.work = Path(tempfile.mkdtemp(prefix="bench-detect-"))
        started = time.time()
        inventory = self.plan(sim, horizon)
        daemon = Daemon(work, self.config(work, base_url, inventory, receiver.url))
        client = httpx.AsyncClient(base_url=base_url, timeout=10)
        self._last_metrics = ""
        try:
            await asyncio.to_thread(daemon.start)
            self.say(f"daemon up after {time.time() - started:.1f} s; {len(inventory)} devices watched")
            await asyncio.sleep(max(3 * opts.poll, 20.0))  # every entity polled a few times
            singles = [i for i in self.incidents]
            for inc in singles:
                await self.admin(client, inc.start)
                inc.injected_at = inc.shown_at = time.time()
            for drain in (i for i in self.incidents if i.name == "battery-drain"):
                drain.shown_at = self.battery_crossing(sim, drain.entity)
            if opts.stale:
                frozen = next(i for i in self.incidents if i.name == "stops-refreshing")
                index = sim.fleet.find_device(frozen.entity)
                assert index is not None
                status_at = sim.fleet.device_state(index, sim.now()).status_at
                frozen.shown_at = status_at + 2 * REFRESH  # staleness passes two refreshes
            self.say(f"injected {sum(not i.control for i in singles)} incidents and "
                     f"{sum(i.control for i in singles)} controls")
            await asyncio.sleep(5.0)
            outage_at = time.time()
            for no in self.outage:
                await self.admin(client, [("POST", f"/_sim/devices/{no}/offline", {})])
            outage_shown = time.time()
            self.say(f"{len(self.outage)} devices offline at once")
            # The account and the upstream incidents, each on its own: one entity each.
            account_at = outage_at + 20.0
            errors_at: float | None = None
            restart_at = outage_shown + self.fors["DeviceOffline"] + opts.poll + opts.group_wait + 8.0
            outage_ended = False
            shown = time.time()
            deadline = time.time() + opts.timeout
            while time.time() < deadline:
                now = time.time()
                await asyncio.to_thread(self.scrape, daemon)
                messages = receiver.snapshot()
                if not self.restart and now >= restart_at:
                    await self.restart_daemon(daemon, messages)
                    continue
                if self.account.injected_at is None and now >= account_at:
                    await self.admin(client, self.account.start)
                    self.account.injected_at = self.account.shown_at = time.time()
                for inc in [*self.incidents, self.account, self.errors]:
                    if inc.control or inc.injected_at is None or inc.ended_at is not None:
                        continue
                    done = all(self.fired(messages, rule, inc.entity) for rule in inc.rules)
                    late = inc.shown_at is not None and now > inc.shown_at + max(self.bound(inc, r)
                                                                                 for r in inc.rules) + 60
                    if done or late:
                        await self.admin(client, inc.end)
                        inc.ended_at = time.time()
                if not outage_ended and self.restart and all(self.fired(messages, "DeviceOffline", no)
                                                             for no in self.outage):
                    for no in self.outage:
                        await self.admin(client, [("POST", f"/_sim/devices/{no}/online", {})])
                    outage_ended = True
                quiet = all(i.ended_at is not None for i in [*self.incidents, self.account] if not i.control)
                if quiet and errors_at is None and self.restart:
                    await self.admin(client, self.errors.start)
                    errors_at = self.errors.injected_at = time.time()
                if self.errors.injected_at is not None and self.errors.shown_at is None:
                    self.errors.shown_at = self.upstream_shown()
                if now - shown >= 30.0:
                    shown = now
                    open_ = [i.name for i in [*self.incidents, self.account, self.errors]
                             if not i.control and i.injected_at is not None and i.ended_at is None]
                    self.say(f"  {now - started:.0f} s: open {', '.join(open_) or 'none'}; outage "
                             f"{'ended' if outage_ended else 'on'}; {len(messages)} messages")
                if errors_at is not None and self.errors.ended_at is not None and outage_ended and \
                        self.all_resolved(receiver.snapshot()):
                    break
                await asyncio.sleep(1.0)
            await asyncio.sleep(opts.group_wait + 5.0)
            for inc in self.incidents:
                if inc.control:
                    await self.admin(client, inc.end)
            await asyncio.to_thread(self.scrape, daemon)
            for key, value in transitions(self._last_metrics).items():
                self.transitions[key] = self.transitions.get(key, 0.0) + value
        finally:
            code = await asyncio.to_thread(daemon.stop)
            await client.aclose()
            await sim.stop()
            receiver.close()
        result = self.result(receiver.snapshot(), outage_shown, receiver.bad_signatures)
        result.update(exit_code=code, seconds=time.time() - started, work=str(work), load=os.getloadavg())
        return result

    def flaps(self) -> dict[str, int]:
        """Pending alerts dropped while their incident (or the healthy entity) was still there, per rule,
        from the `alerts` points the daemon wrote (one per transition). A pending alert dropped because
        its incident was ended before its `for` ran out is not a flap."""
        ended: dict[str, float] = {}
        for inc in [*self.incidents, self.account, self.errors]:
            if inc.ended_at is not None and not inc.control:
                ended[inc.entity] = min(ended.get(inc.entity, inc.ended_at), inc.ended_at)
        out = dict.fromkeys(self.fors, 0)
        for path in sorted(self.work.glob("points.lp*")):
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("alerts,") or 'state="inactive"' not in line:
                    continue
                tags = dict(re.findall(r',(\w+)=([^,\s]+)', line.split(" ", 1)[0]))
                at = int(line.rsplit(" ", 1)[1]) / 1e9
                if tags.get("entity") in ended and at >= ended[tags["entity"]] - 1.0:
                    continue
                out[tags.get("rule", "?")] = out.get(tags.get("rule", "?"), 0) + 1
        return out

    def battery_crossing(self, sim: Simulator, device_no: str) -> float:
        """When the platform first shows the draining battery below the LowBattery threshold."""
        index = sim.fleet.find_device(device_no)
        assert index is not None
        limit = float(self.params["low_battery_percent"])
        t0, wall0 = sim.now(), time.time()
        t = t0
        while t < t0 + 4 * 3600:
            if sim.fleet.device_state(index, t).battery < limit:
                return wall0 + (t - t0)
            t += 5.0
        return wall0

    def all_resolved(self, messages: list[tuple[float, dict[str, Any]]]) -> bool:
        """Every alert announced has been resolved (controls, held to the end, aside)."""
        held = {i.entity for i in self.incidents if i.control and i.kind in ("device", "sim")}
        firing: set[tuple[str, str]] = set()
        for _t, m in messages:
            for a in m["alerts"]:
                key = (a["rule"], a["entity"])
                if key[1] in held:
                    continue
                if a["state"] == "firing":
                    firing.add(key)
                else:
                    firing.discard(key)
        return not firing

    async def restart_daemon(self, daemon: Daemon, messages: list[tuple[float, dict[str, Any]]]) -> None:
        try:
            alerts = (await asyncio.to_thread(httpx.get, daemon.url + "/api/alerts", timeout=10)).json()["alerts"]
        except httpx.HTTPError:
            alerts = []
        await asyncio.to_thread(self.scrape, daemon)
        for key, value in transitions(self._last_metrics).items():
            self.transitions[key] = self.transitions.get(key, 0.0) + value
        stopped = time.time()
        code = await asyncio.to_thread(daemon.stop)
        await asyncio.to_thread(daemon.start)
        self.upstream.clear()
        self.restart = {"at": stopped, "down": time.time() - stopped, "exit_code": code,
                        "pending": sorted((a["rule"], a["entity"]) for a in alerts if a["state"] == "pending"),
                        "firing": sorted((a["rule"], a["entity"]) for a in alerts if a["state"] == "firing"),
                        "messages_before": len(messages)}
        self.say(f"daemon restarted ({self.restart['down']:.1f} s down) with {len(self.restart['pending'])} alerts "
                 f"pending and {len(self.restart['firing'])} firing")

    # --- the figures ----------------------------------------------------------------------------------

    def result(self, messages: list[tuple[float, dict[str, Any]]], outage_shown: float, bad: int) -> dict[str, Any]:
        per_alert: dict[tuple[str, str], dict[str, list[float]]] = {}
        for t, m in messages:
            for a in m["alerts"]:
                entry = per_alert.setdefault((a["rule"], a["entity"]), {"firing": [], "resolved": []})
                entry["firing" if a["state"] == "firing" else "resolved"].append(t)
        rules: dict[str, dict[str, Any]] = {}
        expected: set[tuple[str, str]] = set()
        allowed: set[tuple[str, str]] = set()
        scored = [*self.incidents, self.account, self.errors]
        for inc in scored:
            allowed.update((r, inc.entity) for r in inc.allowed)
            for rule in inc.rules:
                expected.add((rule, inc.entity))
                row = rules.setdefault(rule, {"injected": 0, "detected": 0, "latencies": [], "bounds": [],
                                              "over_bound": 0, "firing_msgs": [], "resolved_msgs": []})
                row["injected"] += 1
                sent = per_alert.get((rule, inc.entity), {"firing": [], "resolved": []})
                row["firing_msgs"].append(len(sent["firing"]))
                row["resolved_msgs"].append(len(sent["resolved"]))
                if sent["firing"] and inc.shown_at is not None:
                    row["detected"] += 1
                    latency = sent["firing"][0] - inc.shown_at
                    row["latencies"].append(latency)
                    row["bounds"].append(self.bound(inc, rule))
                    row["over_bound"] += latency > self.bound(inc, rule)
        for no in self.outage:
            expected.add(("DeviceOffline", no))
            row = rules["DeviceOffline"]
            row["injected"] += 1
            sent = per_alert.get(("DeviceOffline", no), {"firing": [], "resolved": []})
            row["firing_msgs"].append(len(sent["firing"]))
            row["resolved_msgs"].append(len(sent["resolved"]))
            if sent["firing"]:
                row["detected"] += 1
                latency = sent["firing"][0] - outage_shown
                bound = self.fors["DeviceOffline"] + self.opts.poll + SWEEP + self.opts.group_wait + SLACK
                row["latencies"].append(latency)
                row["bounds"].append(bound)
                row["over_bound"] += latency > bound
        false_fires: dict[str, list[str]] = {}
        for (rule, entity), sent in per_alert.items():
            if (rule, entity) not in expected and (rule, entity) not in allowed and sent["firing"]:
                false_fires.setdefault(rule, []).append(entity)
        flaps = self.flaps()
        refired = {rule: sum(1 for (r, _e), s in per_alert.items() if r == rule and len(s["firing"]) > 1)
                   for rule in self.fors}
        outage_msgs = [(t, m) for t, m in messages if m["groupLabels"].get("customer") == "outage"]
        restart = dict(self.restart)
        if restart:
            before = messages[:restart["messages_before"]]
            announced = {(a["rule"], a["entity"]) for _t, m in before for a in m["alerts"] if a["state"] == "firing"}
            after = [(t, m) for t, m in messages[restart["messages_before"]:]]
            restart["resent"] = sorted({(a["rule"], a["entity"]) for _t, m in after for a in m["alerts"]
                                        if a["state"] == "firing" and (a["rule"], a["entity"]) in announced})
            pending = set(map(tuple, restart["pending"]))
            delayed = []
            for inc in scored:
                for rule in inc.rules:
                    sent = per_alert.get((rule, inc.entity), {"firing": []})["firing"]
                    over = sent[0] - inc.shown_at - self.bound(inc, rule) - restart["down"] \
                        if sent and inc.shown_at is not None else 0.0
                    if (rule, inc.entity) in pending and (not sent or over > 0):
                        delayed.append((rule, inc.entity, round(over, 1) if sent else "never fired"))
            restart["delayed"] = delayed
        return {"rules": rules, "false_fires": false_fires, "flaps": flaps, "refired": refired,
                "outage_messages": [(round(t - outage_shown, 1), m["status"], m["firingCount"], m["resolvedCount"])
                                    for t, m in outage_msgs],
                "restart": restart, "bad_signatures": bad, "messages": len(messages),
                "controls": [i.name for i in self.incidents if i.control]}


def report(result: dict[str, Any], opts: Options) -> str:
    lines = [f"detection: for x{opts.for_scale:g}, polls every {opts.poll:g} s, sweep {SWEEP:g} s, group wait "
             f"{opts.group_wait:g} s, {result['seconds'] / 60:.1f} min, {result['messages']} messages "
             f"({result['bad_signatures']} with a bad signature), daemon exit {result['exit_code']}",
             f"{'rule':<28}{'injected':>9}{'detected':>9}{'median s':>10}{'max s':>8}{'bound s':>9}{'over':>6}"
             f"{'false':>7}{'flaps':>7}{'firing/inc':>12}{'resolved/inc':>14}"]
    for rule, row in result["rules"].items():
        lat = row["latencies"]
        lines.append(
            f"{rule:<28}{row['injected']:>9}{row['detected']:>9}"
            f"{statistics.median(lat) if lat else float('nan'):>10.1f}{max(lat) if lat else float('nan'):>8.1f}"
            f"{max(row['bounds']) if row['bounds'] else float('nan'):>9.1f}{row['over_bound']:>6}"
            f"{len(result['false_fires'].get(rule, [])):>7}"
            f"{result['flaps'].get(rule, 0) + result['refired'].get(rule, 0):>7}"
            f"{_span(row['firing_msgs']):>12}{_span(row['resolved_msgs']):>14}")
    others = {r: e for r, e in result["false_fires"].items() if r not in result["rules"]}
    if others or any(result["false_fires"].values()):
        lines.append(f"false fires: {result['false_fires']}")
    lines.append(f"controls held near thresholds: {', '.join(result['controls'])}")
    lines.append("outage messages (s after the outage, status, firing, resolved): "
                 + "; ".join(f"{t} {s} {f} {r}" for t, s, f, r in result["outage_messages"]))
    restart = result["restart"]
    if restart:
        lines.append(f"restart: {restart['down']:.1f} s down, {len(restart['pending'])} pending and "
                     f"{len(restart['firing'])} firing at the stop; re-sent {restart['resent'] or 'nothing'}; "
                     f"delayed past the bound plus the downtime {restart['delayed'] or 'nothing'}")
    load = result["load"]
    lines.append(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    return "\n".join(lines)


def _span(counts: list[int]) -> str:
    return "-" if not counts else f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}..{max(counts)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleet", type=int, default=400, help="simulated devices to choose from")
    parser.add_argument("--outage", type=int, default=50, help="devices that go offline at once")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--for-scale", type=float, default=0.1, help="the default rules' `for`, scaled")
    parser.add_argument("--poll", type=float, default=10.0, help="device and card status poll interval, seconds")
    parser.add_argument("--group-wait", type=float, default=10.0)
    parser.add_argument("--no-stale", action="store_true", help="skip data that stops refreshing (10 minutes)")
    parser.add_argument("--no-drain", action="store_true", help="skip the draining battery (up to 5 minutes)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--start", type=datetime.fromisoformat, default=None,
                        help="the simulated time at the start, ISO 8601 with its zone (default: now)")
    args = parser.parse_args()
    opts = Options(fleet=args.fleet, outage=args.outage, seed=args.seed, for_scale=args.for_scale, poll=args.poll,
                   group_wait=args.group_wait, stale=not args.no_stale, drain=not args.no_drain,
                   timeout=args.timeout, start=None if args.start is None else args.start.timestamp())
    result = asyncio.run(Bench(opts).run())
    print(report(result, opts))


if __name__ == "__main__":
    main()
