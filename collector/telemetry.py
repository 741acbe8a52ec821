"""The loopback HTTP server of a running collector: /metrics (self-metrics plus fleet gauges read
from the fleet state at scrape time), /healthz (alive), /readyz (first cycle done, sink writable),
and the JSON API that `iot-collector status` and `alerts list` read."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from collector import metrics
from collector.config import HttpConfig
from collector.state import FleetState

log = structlog.get_logger("collector.telemetry")


class FleetCollector(Collector):
    """Entities by state, spool depth and (optionally, capped) per-entity gauges, computed at scrape
    time from the fleet state, so a device removed from the inventory vanishes with no bookkeeping."""

    def __init__(self, state: Callable[[], FleetState], spool: Callable[[], tuple[int, float | None]],
                 config: Callable[[], HttpConfig]) -> None:
        self._state = state
        self._spool = spool
        self._config = config

    def describe(self) -> Iterable[Any]:
        return []  # dynamic: nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state, http = self._state(), self._config()
        p = metrics.P
        entities = GaugeMetricFamily(f"{p}_entities", "Tracked entities by kind and state", labels=["kind", "state"])
        for kind, by_state in state.counts().items():
            for name, count in by_state.items():
                entities.add_metric([kind, name], count)
        yield entities
        spool_bytes, oldest = self._spool()
        yield GaugeMetricFamily(f"{p}_spool_bytes", "Bytes in the durable spool not yet sent to every sink",
                                value=spool_bytes)
        yield GaugeMetricFamily(f"{p}_spool_oldest_age_seconds", "Age of the oldest point not yet sent",
                                value=oldest or 0.0)
        if not http.entity_metrics:
            return
        limit = http.entity_metrics_limit
        rssi = GaugeMetricFamily(f"{p}_device_rssi_dbm", "Device signal strength", labels=["device_no"])
        battery = GaugeMetricFamily(f"{p}_device_battery_ratio", "Device battery level (0-1)", labels=["device_no"])
        online = GaugeMetricFamily(f"{p}_device_online", "1 when the device is online", labels=["device_no"])
        used = GaugeMetricFamily(f"{p}_sim_used_bytes", "SIM data used in the cycle", labels=["iccid", "device_no"])
        total = GaugeMetricFamily(f"{p}_sim_total_bytes", "SIM package allowance", labels=["iccid", "device_no"])
        for n, d in enumerate(state.devices.values()):
            if n >= limit:
                break
            o = d.obs
            if o is None:
                continue
            if o.rssi_dbm is not None:
                rssi.add_metric([d.device_no], o.rssi_dbm)
            if o.battery_percent is not None:
                battery.add_metric([d.device_no], o.battery_percent / 100)
            if o.online is not None:
                online.add_metric([d.device_no], 1 if o.online else 0)
        for n, s in enumerate(state.sims.values()):
            if n >= limit:
                break
            if s.obs is None:
                continue
            if s.obs.used_bytes is not None:
                used.add_metric([s.iccid, s.device_no], s.obs.used_bytes)
            if s.obs.total_bytes is not None:
                total.add_metric([s.iccid, s.device_no], s.obs.total_bytes)
        truncated = GaugeMetricFamily(f"{p}_entity_metrics_truncated",
                                      "1 when per-entity gauges were cut at http.entity_metrics_limit",
                                      value=1 if max(len(state.devices), len(state.sims)) > limit else 0)
        yield from (rssi, battery, online, used, total, truncated)


class HttpServer:
    """aiohttp server on the configured loopback address. `port` is the bound port (for port 0)."""

    def __init__(self, config: HttpConfig, *, status: Callable[[], dict[str, Any]],
                 ready: Callable[[], tuple[bool, str]], routes: list[web.RouteDef] | None = None) -> None:
        self.config = config
        self._status = status
        self._ready = ready
        self.app = web.Application()
        self.app.add_routes([
            web.get("/metrics", self._metrics),
            web.get("/healthz", self._healthz),
            web.get("/readyz", self._readyz),
            web.get("/api/status", self._api_status),
            *(routes or []),
        ])
        self._runner: web.AppRunner | None = None
        self.port = config.port

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.listen, self.config.port)
        await site.start()
        # The bound address, to learn the port when 0 was asked for (AppRunner.addresses is public).
        addresses = self._runner.addresses
        if addresses:
            self.port = addresses[0][1]
        log.info("http server listening", address=f"http://{self.config.listen}:{self.port}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "pid": os.getpid(), "time": time.time()})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ok, reason = self._ready()
        return web.json_response({"ready": ok, "reason": reason}, status=200 if ok else 503)

    async def _api_status(self, _request: web.Request) -> web.Response:
        return web.json_response(self._status())
