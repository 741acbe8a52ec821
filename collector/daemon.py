"""The daemon (`iot-collector run`): wires inventory, scheduler, platform client, fleet state, sinks,
alert engine and the HTTP server together, and owns the process lifecycle.

Signals: SIGTERM/SIGINT stop polling, let in-flight requests finish, flush and persist, and exit 0
within 10 s. SIGHUP reloads the configuration (an invalid one is logged and the old one kept) and
the inventory; the inventory file is also watched. Under systemd (NOTIFY_SOCKET) it sends READY=1,
WATCHDOG=1 from the event loop and STOPPING=1.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import structlog

from collector import __version__, metrics
from collector.alerts.rules import compile_rules
from collector.apitoken import provision_token
from collector.config import Config, ConfigError, SettingError, load_config
from collector.heap import HeapPolicy, freeze_heap
from collector.inventory import Inventory, InventoryError, file_mtime, load_inventory
from collector.logs import redact_urls, register_secret, url_secrets
from collector.pipeline import Pipeline
from collector.platform.client import PlatformClient
from collector.report.ledger import Ledger
from collector.schedule import ASSUMED_SIMS_PER_DEVICE, Scheduler
from collector.sdnotify import Notifier, status_line
from collector.sinks.pipeline import SinkPipeline
from collector.state import FieldRecord, FleetState
from collector.summary import log_summaries
from collector.telemetry import FleetMetrics, HttpServer, MemoryTracer, watch_loop_lag

if TYPE_CHECKING:  # optional parts, imported when configured
    from aiohttp.web import RouteDef

    from collector.alerts.engine import AlertEngine
    from collector.simulator import Simulator

log = structlog.get_logger("collector.daemon")

SHUTDOWN_BUDGET = 9.0  # seconds: a stop finishes within 10 s, well inside TimeoutStopSec
LEDGER_SAVE_INTERVAL = 60.0  # seconds between saves of the report ledger (and at stop)
DEMO_CUSTOMERS = ("acme", "globex", "initech", "umbrella")
RUNTIME_FILE = "collector.json"


def register_config_secrets(config: Config) -> None:
    for secret in (config.platform.app_secret, config.sinks.influxdb_v2.token, config.sinks.influxdb_v1.password,
                   config.http.api_token):
        if secret is not None:
            register_secret(secret.get_secret_value())
    for password in url_secrets(config.model_dump(mode="json")):  # `http://user:PASSWORD@host` anywhere
        register_secret(password)


def state_dir_problem(state_dir: Path, exc: OSError) -> str:
    """One line naming `state_dir` and what is wrong with it (a file on its path, read-only, ...)."""
    for path in (state_dir, *state_dir.parents):
        if path.exists():
            if not path.is_dir():
                where = "" if path == state_dir else f" (state_dir is {state_dir})"
                return f"state_dir: {path} is a file, not a directory{where}"
            break
    return f"state_dir: cannot keep the spool in {state_dir}: {exc.strerror or exc}"


def listen_problem(section: str, host: str, port: int, exc: OSError) -> str:
    """One line naming the setting (`http.port`, `http.listen`) a listening socket failed for, and why."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"{section}.listen: cannot resolve {host!r} ({exc.strerror or exc})"
    if exc.errno == errno.EADDRINUSE:
        return f"{section}.port: {address} is in use (another collector or program listens there)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{section}.listen: {host} is not an address of this host"
    if exc.errno == errno.EACCES:
        return f"{section}.port: not allowed to listen on {address} (ports below 1024 need privileges)"
    return f"{section}.listen: cannot listen on {address}: {exc.strerror or exc}"


class UpstreamHealth:
    """The `collector` entity's fields for alert rules: upstream error ratio over a sliding window."""

    def __init__(self, window: float = 300.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, float, float]] = deque()

    def fields(self, now: float, spool_bytes: int, oldest: float | None, rate_ratio: float) -> dict[str, Any]:
        total = errors = 0.0
        for metric in metrics.UPSTREAM_REQUESTS.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    total += sample.value
                    if sample.labels.get("outcome") != "ok":
                        errors += sample.value
        self.samples.append((now, total, errors))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        _t0, total0, errors0 = self.samples[0]
        requests, failed = total - total0, errors - errors0
        return {
            "upstream_requests": requests, "upstream_errors": failed,
            "upstream_error_ratio": failed / requests if requests else 0.0,
            "rate_limit_ratio": rate_ratio, "spool_bytes": spool_bytes,
            "spool_oldest_age_seconds": oldest, "labels": {},
        }


class Daemon:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.state = FleetState(device_interval=config.jobs.device_status.interval,
                                refresh_period=config.platform.refresh_period)
        self.ledger = Ledger(ZoneInfo(config.platform.timezone))
        self.state.recorder = self.ledger
        self._ledger_saved = time.monotonic()
        self.stop_event = asyncio.Event()
        self.started_at = time.time()
        self.notifier = Notifier()
        self.health = UpstreamHealth()
        self.simulator: Simulator | None = None
        self.client: PlatformClient | None = None
        self.sinks: SinkPipeline | None = None
        self.alerts: AlertEngine | None = None
        self.scheduler: Scheduler | None = None
        self.http: HttpServer | None = None
        self.pipeline: Pipeline | None = None
        self.inventory = Inventory()
        self._heap = HeapPolicy()
        self._health: FieldRecord | None = None  # the collector's own alert entity, refreshed every 5 s
        self._inventory_mtime: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._tracer: MemoryTracer | None = None

    # --- start ---------------------------------------------------------------------------------------------

    async def _start_simulator(self) -> str | None:
        if not self.config.simulator.embedded:
            return None
        from collector.simulator import Simulator

        sim_cfg = self.config.simulator
        self.simulator = Simulator(devices=sim_cfg.devices, seed=sim_cfg.seed, speed=sim_cfg.speed,
                                   platform=self.config.platform)
        try:
            base_url = await self.simulator.start("127.0.0.1", sim_cfg.port)
        except OSError as exc:
            raise SettingError(listen_problem("simulator", "127.0.0.1", sim_cfg.port, exc)) from None
        log.info("embedded simulator started", url=base_url, devices=sim_cfg.devices, speed=sim_cfg.speed)
        return base_url

    def _load_inventory(self) -> Inventory:
        inventory = load_inventory(self.config.inventory, self.config.sharding)
        if self.simulator is not None and not inventory.devices and not inventory.cards:
            # The embedded demo: the simulator's whole fleet, spread over a few demo customers.
            common = self.config.inventory.labels
            devices = {no: {**common, "customer": DEMO_CUSTOMERS[i % len(DEMO_CUSTOMERS)]}
                       for i, no in enumerate(self.simulator.device_numbers())}
            inventory = Inventory(devices=devices, cards={})
        for warning in inventory.warnings:
            log.warning("duplicate ids in the inventory", problem=warning)
        return inventory

    def apply_inventory(self, inventory: Inventory) -> None:
        removed_devices, removed_sims = self.state.sync_inventory(inventory.devices, inventory.cards)
        self.inventory = inventory
        now = time.time()
        if self.alerts is not None:
            for device_no in removed_devices:
                self.alerts.forget("device", device_no, now)
            for iccid in removed_sims:
                self.alerts.forget("sim", iccid, now)
        log.info("inventory applied", devices=len(inventory.devices), cards=len(inventory.cards),
                 removed_devices=len(removed_devices), removed_sims=len(removed_sims))
        if self.scheduler is not None:
            self.scheduler.discovered("card", self.state.take_new_sims())
            self.scheduler.replan()

    async def start(self) -> None:
        register_config_secrets(self.config)
        self._tracer = MemoryTracer.from_environment()
        self._tasks.append(asyncio.create_task(watch_loop_lag()))
        state_dir = Path(self.config.state_dir)
        self.sinks = SinkPipeline(self.config.sinks, str(state_dir))
        try:
            state_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
            await self.sinks.start()
        except OSError as exc:  # read-only, not a directory...: the operator's to fix, not a crash
            raise SettingError(state_dir_problem(state_dir, exc)) from None
        self.ledger.load(state_dir)
        self.state.load_usage(state_dir)
        base_url = await self._start_simulator()
        self.client = PlatformClient(self.config.platform, self.config.privacy, base_url=base_url)
        if self.config.alerts.enabled:
            from collector.alerts.engine import AlertEngine

            self.alerts = AlertEngine(self.config.alerts, state_dir, write_points=self.sinks.submit,
                                      lookup=self.state.record)
            await self.alerts.start()
        self.apply_inventory(self._load_inventory())
        self._inventory_mtime = file_mtime(self.config.inventory)
        self.state.watch_new_sims()
        self.pipeline = Pipeline(self.config, self.client, self.state, self.sinks.submit, self.alerts)
        # readyz waits for slow answers of the first cycle at most one request timeout.
        self.scheduler = Scheduler(self.pipeline.jobs(), self.config.platform.rate_limit,
                                   ready_grace=self.config.platform.timeout,
                                   concurrency=self.config.platform.max_concurrency)
        self.pipeline.discovered = self.scheduler.discovered
        self._log_budget()
        if self.config.http.enabled:
            token = provision_token(self.config.http, state_dir)
            register_secret(token)
            # Links in notifications (`<external_url>/api/alerts?id=...`) name the collector by that host.
            link_hosts = [urlsplit(self.alerts.external_url).hostname or ""] if self.alerts is not None else []
            self.http = HttpServer(self.config.http, status=self.status, ready=self.ready,
                                   routes=self._extra_routes(), api_token=token, extra_hosts=link_hosts,
                                   tracer=self._tracer)
            try:
                await self.http.start()
            except OSError as exc:
                http = self.config.http
                raise SettingError(listen_problem("http", http.listen, http.port, exc)) from None
            self._write_runtime_file()
        if self.http is not None:
            self.http.fleet = FleetMetrics(lambda: self.state, self._spool_state, lambda: self.config.http)
        self.scheduler.start()
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        if self.config.logging.summary_interval > 0:
            self._tasks.append(asyncio.create_task(log_summaries(self.config.logging.summary_interval,
                                                                 self._summary_facts)))
        freeze_heap()
        self._heap.start()
        if self.notifier.enabled:
            self._tasks.append(asyncio.create_task(self.notifier.watchdog()))
            self._tasks.append(asyncio.create_task(self.notifier.publish_status(self.status)))
        self.notifier.notify(f"READY=1\nSTATUS={status_line(self.status())}\nMAINPID={os.getpid()}")
        log.info("collector started", version=__version__, devices=len(self.state.devices),
                 cards=len(self.inventory.cards), jobs=[j for j in self.scheduler.jobs])

    def _extra_routes(self) -> list[RouteDef]:
        from aiohttp import web

        from collector.alerts.entities import entity_routes
        from collector.report.http import report_route

        routes = [web.get("/api/report", report_route(lambda: (self.state, self.ledger, self.config))),
                  # for `alerts test`, alerts on or off
                  *entity_routes(lambda: self.state, lambda: self._health)]
        if self.alerts is None:
            return routes
        from collector.alerts.http import alert_routes

        return [*routes, *alert_routes(self.alerts)]

    def _write_runtime_file(self) -> None:
        assert self.http is not None
        path = Path(self.config.state_dir) / RUNTIME_FILE
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"pid": os.getpid(),
                                       "url": self.config.http.url(self.http.port),
                                       "started_at": self.started_at}))
            tmp.replace(path)
        except OSError as exc:  # a full disk must not stop the collector: only the CLI needs this file
            tmp.unlink(missing_ok=True)
            log.warning("runtime file not written: the CLI needs --url when http.port is 0", path=str(path),
                        error=exc.strerror or str(exc))

    def _log_budget(self) -> None:
        assert self.scheduler is not None
        need, stretch = self.scheduler.need, self.scheduler.stretch
        rate = self.config.platform.rate_limit
        if stretch > 1.0:
            log.warning("request budget too small: intervals stretched", need_rps=round(need, 3), rate_limit=rate,
                        stretch=round(stretch, 2),
                        effective={s.name: round(s.effective_interval) for s in self.scheduler.status.values()})
        else:
            log.info("request budget", need_rps=round(need, 3), rate_limit=rate,
                     utilisation=f"{need / rate:.1%}")

    def _summary_facts(self) -> dict[str, Any]:
        """The summary line's backlog (what the slowest sink has not taken yet) and firing alerts."""
        sinks = (self.sinks.status() if self.sinks else {}).get("sinks") or {}
        backlog = max((int(s.get("pending_bytes") or 0) for s in sinks.values()), default=0)
        oldest = max((s.get("oldest_unsent_age_seconds") or 0.0 for s in sinks.values()), default=0.0)
        firing = sum(1 for a in self.alerts.active() if a.get("state") == "firing") if self.alerts else 0
        return {"alerts_firing": firing, "spool_bytes": backlog, "spool_oldest_age_seconds": oldest}

    def _spool_state(self) -> tuple[int, float | None]:
        if self.sinks is None:
            return 0, None
        return self.sinks.spool_bytes(), self.sinks.oldest_age_seconds()

    # --- running --------------------------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """The collector's own alert entity, and the inventory file watch (the engine sweeps its rules)."""
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), timeout=5.0)
                return
            except TimeoutError:
                pass
            now = time.time()
            try:
                if self.ledger.dirty and time.monotonic() - self._ledger_saved >= LEDGER_SAVE_INTERVAL:
                    self._ledger_saved = time.monotonic()
                    await self.ledger.save_in_slices(self.config.state_dir)
                self._watch_inventory()
                spool_bytes, oldest = self._spool_state()
                ratio = self.rate_ratio()
                health = self._health = FieldRecord("collector", self.health.fields(now, spool_bytes, oldest, ratio))
                if self.alerts is not None:
                    self.alerts.evaluate("collector", "collector", health, now)
            except Exception as exc:  # housekeeping must survive anything
                log.error("housekeeping failed", error=f"{type(exc).__name__}: {exc}")

    def _watch_inventory(self) -> None:
        if not self.config.inventory.watch or not self.config.inventory.file:
            return
        mtime = file_mtime(self.config.inventory)
        if mtime is not None and mtime != self._inventory_mtime:
            self._inventory_mtime = mtime
            self.reload_inventory("file changed")

    def reload_inventory(self, reason: str) -> None:
        try:
            inventory = self._load_inventory()
        except InventoryError as exc:
            log.error("inventory rejected, keeping the old one", reason=reason, problems=exc.problems)
            return
        self.apply_inventory(inventory)
        freeze_heap()  # at start, once everything is built (`start`)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration and the inventory."""
        if self.config_path is None:
            self.reload_inventory("SIGHUP")
            return
        try:
            new = load_config(self.config_path)
            compile_rules(new.alerts, self.config_path)
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("rejected").inc()
            log.error("configuration rejected, keeping the old one", problems=exc.problems)
            return
        # Loggers are built once (cheap filtered debug calls), so a logging change waits for a restart too.
        restart_needed = [s for s in ("platform", "sinks", "http", "simulator", "state_dir", "sharding", "logging")
                          if getattr(new, s) != getattr(self.config, s)]
        if restart_needed:
            log.warning("changes to these sections take effect at the next restart", sections=restart_needed)
            new = new.model_copy(update={s: getattr(self.config, s) for s in restart_needed})
        self.config = new
        self.state.device_interval = new.jobs.device_status.interval
        register_config_secrets(new)
        self.reload_inventory("SIGHUP")
        assert self.pipeline is not None and self.scheduler is not None
        self.pipeline.config = new
        self.scheduler.reschedule(self.pipeline.jobs())
        if self.alerts is not None:
            self.alerts.reload(new.alerts)
        metrics.CONFIG_RELOADS.labels("ok").inc()
        log.info("configuration reloaded")

    # --- stop --------------------------------------------------------------------------------------------------

    async def stop(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_BUDGET
        self.notifier.notify("STOPPING=1")
        log.info("stopping: no new polls, finishing in-flight requests")
        self.stop_event.set()
        if self.scheduler is not None:
            await self.scheduler.stop(grace=min(4.0, max(deadline - time.monotonic() - 4, 0.5)))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.alerts is not None:
            await self.alerts.stop()
        if self.ledger.dirty:
            self.ledger.save(self.config.state_dir)
        # At stop only: at 200k SIMs the histories are tens of MB of JSON, too much to write on the
        # event loop every minute; after a crash the forecast learns the rates again.
        self.state.save_usage(self.config.state_dir)
        if self.sinks is not None:
            await self.sinks.stop(max(deadline - time.monotonic() - 1.0, 0.5))
        if self.client is not None:
            await self.client.aclose()
        if self.http is not None:
            await self.http.stop()
        if self.simulator is not None:
            await self.simulator.stop()
        if self._tracer is not None:
            self._tracer.close()
        self._heap.stop()
        self.notifier.close()
        log.info("stopped")

    # --- status ---------------------------------------------------------------------------------------------------

    def rate_ratio(self) -> float:
        """The request rate allowed now (lowered after the platform throttled) over the configured one."""
        if self.client is None:
            return 1.0
        return self.client.limiter.current_rate / self.client.limiter.configured_rate

    def ready(self) -> tuple[bool, str]:
        """Ready once the first cycle of the device jobs is done (Scheduler.ready) and the spool takes
        points."""
        if self.scheduler is None:
            return False, "starting"
        ok, reason = self.scheduler.ready()
        if not ok:
            return False, reason
        if self.sinks is not None and not self.sinks.writable():
            return False, f"spool not writable: {self.sinks.last_error()}"
        return True, "ok"

    def status(self) -> dict[str, Any]:
        """What the collector is doing (/api/status, `iot-collector status`), with no URL's password."""
        return redact_urls(self._status())

    def _status(self) -> dict[str, Any]:
        now = time.time()
        failing = sorted((d for d in self.state.devices.values()
                          if d.consecutive_failures and ("device", d.device_no) not in self.state.not_found),
                         key=lambda d: -d.consecutive_failures)
        known_sims, assumed_sims = self.state.planned_sims(ASSUMED_SIMS_PER_DEVICE)
        rate = self.client.limiter.current_rate if self.client is not None else None
        return {
            "version": __version__, "pid": os.getpid(), "started_at": self.started_at,
            "uptime_seconds": now - self.started_at,
            "ready": self.ready()[0],
            "jobs": self.scheduler.describe() if self.scheduler else [],
            "entities": self.state.counts(),
            "failing_devices": [{"device_no": d.device_no, "failures": d.consecutive_failures,
                                 "error": d.last_error, "since": d.last_error_at} for d in failing[:20]],
            "backing_off": [e.as_dict() for e in sorted(self.state.not_found.values(), key=lambda e: e.since)[:50]],
            "requests": {
                "rate_limit_rps": self.config.platform.rate_limit,
                "current_rate_rps": rate,
                "sims_known": known_sims, "sims_assumed": assumed_sims,
                **(self.scheduler.budget() if self.scheduler else {}),
            },
            "sinks": self.sinks.status() if self.sinks else {},
            "alerts": self.alerts.active() if self.alerts else [],
        }


async def run_daemon(config: Config, config_path: str | None) -> int:
    daemon = Daemon(config, config_path)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop_event.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.start()
    except Exception:
        await daemon.stop()
        raise
    await daemon.stop_event.wait()
    await daemon.stop()
    return 0
