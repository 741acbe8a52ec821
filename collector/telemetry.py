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
    time from the fleet state, so a device removed from the inventory vanishes with no bookkeeping.

    Per-entity gauges carry the entity's id and the inventory labels named in
    `http.entity_metrics_labels` (empty when an entity has none). Past `http.entity_metrics_limit`
    entities of a kind, the rest are left out: counted in `iot_collector_entity_metrics_cut_series`
    and logged once."""

    def __init__(self, state: Callable[[], FleetState], spool: Callable[[], tuple[int, float | None]],
                 config: Callable[[], HttpConfig]) -> None:
        self._state = state
        self._spool = spool
        self._config = config
        self._warned: set[str] = set()

    def describe(self) -> Iterable[Any]:
        return []  # dynamic: nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state, http = self._state(), self._config()
        p = metrics.P
        entities = GaugeMetricFamily(f"{p}_entities", "Tracked entities by kind and state (each entity in one state)",
                                     labels=["kind", "state"])
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
        limit, extra = http.entity_metrics_limit, list(http.entity_metrics_labels)
        device_labels, sim_labels = ["device_no", *extra], ["iccid", "device_no", *extra]
        rssi = GaugeMetricFamily(f"{p}_device_rssi_dbm", "Device signal strength", labels=device_labels)
        battery = GaugeMetricFamily(f"{p}_device_battery_ratio", "Device battery level (0-1)", labels=device_labels)
        online = GaugeMetricFamily(f"{p}_device_online", "1 when the device is online", labels=device_labels)
        used = GaugeMetricFamily(f"{p}_sim_used_bytes", "SIM data used in the cycle", labels=sim_labels)
        total = GaugeMetricFamily(f"{p}_sim_total_bytes", "SIM package allowance", labels=sim_labels)
        shown = cut_devices = 0
        for d in state.devices.values():
            o = d.obs
            if o is None:
                continue
            values = ((rssi, o.rssi_dbm), (battery, None if o.battery_percent is None else o.battery_percent / 100),
                      (online, None if o.online is None else 1 if o.online else 0))
            if shown >= limit:
                cut_devices += sum(1 for _, v in values if v is not None)
                continue
            shown += 1
            names = [d.device_no, *(d.labels.get(name, "") for name in extra)]
            for family, value in values:
                if value is not None:
                    family.add_metric(names, value)
        shown = cut_sims = 0
        for s in state.sims.values():
            so = s.obs
            if so is None:
                continue
            pairs = ((used, so.used_bytes), (total, so.total_bytes))
            if shown >= limit:
                cut_sims += sum(1 for _, v in pairs if v is not None)
                continue
            shown += 1
            names = [s.iccid, s.device_no, *(s.labels.get(name, "") for name in extra)]
            for family, value in pairs:
                if value is not None:
                    family.add_metric(names, value)
        cut = GaugeMetricFamily(f"{p}_entity_metrics_cut_series",
                                "Per-entity series left out of /metrics by http.entity_metrics_limit", labels=["kind"])
        for kind, count in (("device", cut_devices), ("sim", cut_sims)):
            cut.add_metric([kind], count)
            if count and kind not in self._warned:
                self._warned.add(kind)
                log.warning("per-entity metrics cut at http.entity_metrics_limit: raise it, or turn "
                            "http.entity_metrics off and read the points in InfluxDB", kind=kind,
                            limit=limit, cut_series=count)
        yield from (rssi, battery, online, used, total, cut)


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
