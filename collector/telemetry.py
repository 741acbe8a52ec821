"""The loopback HTTP server of a running collector: /metrics (self-metrics plus fleet gauges read
from the fleet state at scrape time), /healthz (alive), /readyz (first cycle done, sink writable),
and the JSON API that `iot-collector status` and `alerts list` read. Also the process's own health:
the event-loop lag probe (`watch_loop_lag`) and, only when `IOT_COLLECTOR_TRACEMALLOC` is set, the
allocation tracer behind `GET /debug/memory` (`MemoryTracer`)."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
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


LAG_PROBE_INTERVAL = 0.25  # seconds; a stall longer than this always delays at least one probe
TRACEMALLOC_ENV = "IOT_COLLECTOR_TRACEMALLOC"


async def watch_loop_lag(interval: float = LAG_PROBE_INTERVAL) -> None:
    """Sleep `interval` again and again and observe how late each wake-up is in
    `iot_collector_event_loop_lag_seconds`: the time the loop could not run anything (a garbage
    collection, a blocking call, a burst of callbacks). Runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        metrics.EVENT_LOOP_LAG.observe(max(loop.time() - start - interval, 0.0))


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class MemoryTracer:
    """What makes memory grow or the loop stall, for diagnosis: off unless the environment variable
    `IOT_COLLECTOR_TRACEMALLOC` is set. Its value is the number of stack frames tracemalloc keeps
    per allocation (1 names the line; tracing slows every allocation and costs memory of its own);
    0 traces nothing and reports only RSS and the garbage collector's pauses. `GET /debug/memory`
    compares a snapshot of now with the baseline (taken at start, or at the last `?rebase=1`) and
    lists the allocation sites that grew most, with RSS and the collector's pauses by generation
    over the same span."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        if frames:
            tracemalloc.start(frames)
        self._baseline = self._snapshot()
        self._baseline_at = time.time()
        self._gc_started = 0.0
        # Per generation: collections, seconds in all, the longest.
        self.gc_pauses: dict[int, list[float]] = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
        gc.callbacks.append(self._on_gc)

    @classmethod
    def from_environment(cls) -> MemoryTracer | None:
        """A tracer when `IOT_COLLECTOR_TRACEMALLOC` is a number of frames (0 or more), else None."""
        value = os.environ.get(TRACEMALLOC_ENV, "").strip()
        if not value:
            return None
        try:
            frames = int(value)
        except ValueError:
            log.warning("ignored: not a number of frames", variable=TRACEMALLOC_ENV, value=value)
            return None
        if frames < 0:
            return None
        log.warning("memory diagnosis on (GET /debug/memory)", variable=TRACEMALLOC_ENV, frames=frames)
        return cls(frames)

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self.frames:
            tracemalloc.stop()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        stats = self.gc_pauses[info.get("generation", 2)]
        stats[0] += 1
        stats[1] += pause
        stats[2] = max(stats[2], pause)

    def _snapshot(self) -> tracemalloc.Snapshot | None:
        if not self.frames:
            return None
        return tracemalloc.take_snapshot().filter_traces((
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<unknown>"),
        ))

    def report(self, top: int = 25, rebase: bool = False) -> dict[str, Any]:
        """The allocation sites that grew most since the baseline (sizes in bytes), RSS, and the
        garbage collector's pauses since the baseline."""
        now = self._snapshot()
        grown: list[dict[str, Any]] = []
        traced: dict[str, int] = {}
        if now is not None and self._baseline is not None:
            stats = now.compare_to(self._baseline, "traceback" if self.frames > 1 else "lineno")
            grown = [{"size_diff": s.size_diff, "count_diff": s.count_diff, "size": s.size, "count": s.count,
                      "where": [f"{f.filename}:{f.lineno}" for f in s.traceback]} for s in stats[:top]]
            current, peak = tracemalloc.get_traced_memory()
            traced = {"traced_bytes": current, "traced_peak_bytes": peak}
        pauses = {str(gen): {"count": int(count), "total_seconds": round(total, 4), "max_seconds": round(longest, 4)}
                  for gen, (count, total, longest) in self.gc_pauses.items()}
        out = {"since": self._baseline_at, "seconds": round(time.time() - self._baseline_at, 1),
               "frames": self.frames, **traced, "rss_bytes": _rss_bytes(), "gc_counts": gc.get_count(),
               "gc_thresholds": gc.get_threshold(), "gc_frozen": gc.get_freeze_count(), "gc_pauses": pauses,
               "top": grown}
        if rebase:
            self._baseline, self._baseline_at = now, time.time()
            for stats_of_generation in self.gc_pauses.values():
                stats_of_generation[:] = [0, 0.0, 0.0]
        return out


class HttpServer:
    """aiohttp server on the configured loopback address. `port` is the bound port (for port 0)."""

    def __init__(self, config: HttpConfig, *, status: Callable[[], dict[str, Any]],
                 ready: Callable[[], tuple[bool, str]], routes: list[web.RouteDef] | None = None,
                 tracer: MemoryTracer | None = None) -> None:
        self.config = config
        self._status = status
        self._ready = ready
        self._tracer = tracer
        self.app = web.Application()
        self.app.add_routes([
            web.get("/metrics", self._metrics),
            web.get("/healthz", self._healthz),
            web.get("/readyz", self._readyz),
            web.get("/api/status", self._api_status),
            *(routes or []),
        ])
        if tracer is not None:
            self.app.add_routes([web.get("/debug/memory", self._debug_memory)])
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

    async def _debug_memory(self, request: web.Request) -> web.Response:
        assert self._tracer is not None
        try:
            top = int(request.query.get("top", "25"))
        except ValueError:
            return web.json_response({"error": "top must be a number"}, status=400)
        rebase = request.query.get("rebase", "") in ("1", "true", "yes")
        # In a thread: comparing snapshots of a large heap takes seconds of mostly Python code.
        report = await asyncio.to_thread(self._tracer.report, max(top, 1), rebase=rebase)
        return web.json_response(report)
