"""The loopback HTTP server of a running collector: /metrics (self-metrics plus fleet gauges read
from the fleet state at scrape time), /healthz (alive), /readyz (first cycle done, sink writable),
and the JSON API that `iot-collector status` and `alerts list` read; who may use that API
(`ApiGuard`); and the process's own health: the event-loop lag probe (`watch_loop_lag`) and, only
when `IOT_COLLECTOR_TRACEMALLOC` is set, the memory diagnosis behind `GET /debug/memory`
(`MemoryTracer`).

Who may use the API:

- `GET`/`HEAD` of /metrics, /healthz and /readyz: anyone who can connect (Prometheus, probes), by
  any name or address.
- Every other request: its `Host` must name the collector (the listen address, `localhost`,
  `127.0.0.1`, `[::1]`, one of `http.allowed_hosts`, or the host of the links notifications carry,
  `alerts.external_url`), an `Origin` must be the collector's own, and
  a browser's `Sec-Fetch-Site` must not say the request comes from another site: else 403. This is
  what stops a web page (DNS rebinding, a cross-site form) from reaching the API through a browser.
- Requests that change something (POST, PUT, PATCH, DELETE) also need `Authorization: Bearer
  <token>` (401; see `collector.apitoken`) and, with a body, `Content-Type: application/json` (415).

Refusals are counted by reason (`iot_collector_http_requests_refused_total`) and logged at most once a
minute, never with the token."""

from __future__ import annotations

import asyncio
import gc
import hmac
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector import metrics
from collector.config import HttpConfig, host_name
from collector.pacing import in_slices
from collector.state import DeviceState, FleetState, SimState, count_states

log = structlog.get_logger("collector.telemetry")


def _escape(value: str) -> str:
    """A label value as the Prometheus text format writes it."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _family(name: str, doc: str, lines: Iterable[str]) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} gauge\n" + "".join(lines)


class FleetMetrics:
    """The fleet's part of /metrics: entities by state, spool depth and (optionally, capped)
    per-entity gauges, computed at scrape time from the fleet state, so a device removed from the
    inventory vanishes with no bookkeeping.

    Per-entity gauges carry the entity's id and the inventory labels named in
    `http.entity_metrics_labels` (empty when an entity has none). Past `http.entity_metrics_limit`
    entities of a kind, the rest are left out: counted in `iot_collector_entity_metrics_cut_series`
    and logged once.

    At 100,000 devices a scrape reads 300,000 entities: `render` writes the text itself on the event
    loop in slices (`collector.pacing`), so polls and probes wait milliseconds, not the whole scrape."""

    def __init__(self, state: Callable[[], FleetState], spool: Callable[[], tuple[int, float | None]],
                 config: Callable[[], HttpConfig]) -> None:
        self._state = state
        self._spool = spool
        self._config = config
        self._warned: set[str] = set()

    async def render(self) -> str:
        state, http = self._state(), self._config()
        # Lists, not the dicts: the loop may change those between two slices.
        devices, sims, not_found = list(state.devices.values()), list(state.sims.values()), dict(state.not_found)
        spool_bytes, oldest = self._spool()
        p = metrics.P
        totals = count_states((), (), {})
        async for part in in_slices(devices):
            _add_counts(totals, count_states(part, (), not_found))
        async for sim_part in in_slices(sims):
            _add_counts(totals, count_states((), sim_part, not_found))
        out = [_family(f"{p}_entities", "Tracked entities by kind and state (each entity in one state)",
                       (f'{p}_entities{{kind="{kind}",state="{name}"}} {count}\n'
                        for kind, by_state in totals.items() for name, count in by_state.items())),
               _family(f"{p}_spool_bytes", "Bytes in the durable spool not yet sent to every sink",
                       [f"{p}_spool_bytes {spool_bytes}\n"]),
               _family(f"{p}_spool_oldest_age_seconds", "Age of the oldest point not yet sent",
                       [f"{p}_spool_oldest_age_seconds {oldest or 0.0}\n"])]
        if http.entity_metrics:
            out.append(await self._entities(devices, sims, http))
        return "".join(out)

    async def _entities(self, devices: list[DeviceState], sims: list[SimState], http: HttpConfig) -> str:
        p, limit, extra = metrics.P, http.entity_metrics_limit, list(http.entity_metrics_labels)
        rssi: list[str] = []
        battery: list[str] = []
        online: list[str] = []
        used: list[str] = []
        total: list[str] = []
        cut = {
            "device": await _entity_series(devices, lambda d: (("device_no", d.device_no),), extra, limit, (
                (rssi, f"{p}_device_rssi_dbm", lambda o: o.rssi_dbm),
                (battery, f"{p}_device_battery_ratio",
                 lambda o: None if o.battery_percent is None else o.battery_percent / 100),
                (online, f"{p}_device_online", lambda o: None if o.online is None else int(o.online))),
                lambda o: (o.rssi_dbm is not None) + (o.battery_percent is not None) + (o.online is not None)),
            "sim": await _entity_series(sims, lambda s: (("iccid", s.iccid), ("device_no", s.device_no)), extra,
                                        limit, (
                (used, f"{p}_sim_used_bytes", lambda o: o.used_bytes),
                (total, f"{p}_sim_total_bytes", lambda o: o.total_bytes)),
                lambda o: (o.used_bytes is not None) + (o.total_bytes is not None)),
        }
        for kind, count in cut.items():
            if count and kind not in self._warned:
                self._warned.add(kind)
                log.warning("per-entity metrics cut at http.entity_metrics_limit: raise it, or turn "
                            "http.entity_metrics off and read the points in InfluxDB", kind=kind,
                            limit=limit, cut_series=count)
        return "".join([
            _family(f"{p}_device_rssi_dbm", "Device signal strength", rssi),
            _family(f"{p}_device_battery_ratio", "Device battery level (0-1)", battery),
            _family(f"{p}_device_online", "1 when the device is online", online),
            _family(f"{p}_sim_used_bytes", "SIM data used in the cycle", used),
            _family(f"{p}_sim_total_bytes", "SIM package allowance", total),
            _family(f"{p}_entity_metrics_cut_series",
                    "Per-entity series left out of /metrics by http.entity_metrics_limit",
                    (f'{p}_entity_metrics_cut_series{{kind="{kind}"}} {count}\n' for kind, count in cut.items())),
        ])



async def _entity_series(entities: Sequence[Any], ids: Callable[[Any], tuple[tuple[str, str], ...]],
                         extra: list[str], limit: int,
                         series: tuple[tuple[list[str], str, Callable[[Any], float | None]], ...],
                         count: Callable[[Any], int]) -> int:
    """The lines of each series (lines, metric name, value of an observation) for the first `limit`
    entities with an observation, labelled with their ids and the inventory labels in `extra`; the
    number of series left out past `limit` (`count`: how many an observation has, read without
    making the values: a large fleet has hundreds of thousands past the limit)."""
    shown = cut = 0
    async for part in in_slices(entities):
        for entity in part:
            obs = entity.obs
            if obs is None:
                continue
            if shown >= limit:
                cut += count(obs)
                continue
            shown += 1
            labels = ",".join(f'{name}="{_escape(value)}"' for name, value in
                              (*ids(entity), *((name, entity.labels.get(name, "")) for name in extra)))
            for lines, name, get in series:
                value = get(obs)
                if value is not None:
                    lines.append(f"{name}{{{labels}}} {value}\n")
    return cut

def _add_counts(totals: dict[str, dict[str, int]], part: dict[str, dict[str, int]]) -> None:
    for kind, by_state in part.items():
        for name, count in by_state.items():
            totals[kind][name] += count


OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
REFUSAL_LOG_INTERVAL = 60.0  # seconds between two "http request refused" lines; the rest are counted
MAX_BODY_BYTES = 64 * 1024  # a silence is a few hundred bytes


def allowed_hosts(config: HttpConfig, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names a request's Host may give for the API: loopback, the listen address, `allowed_hosts`
    and `extra` (the host of the links the collector sends in notifications)."""
    hosts = set(LOOPBACK_HOSTS) | set(config.allowed_hosts) | {host_name(h) for h in extra if h}
    listen = host_name(config.listen)
    if listen not in ("", "0.0.0.0", "::"):
        hosts.add(listen)
    return frozenset(hosts)


def split_host(value: str) -> tuple[str, int | None]:
    """`Host` header -> (host, port or None): `[::1]:9108` -> ('::1', 9108). A bad port is -1."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not port_text:
        return host_name(host), None
    return host_name(host), int(port_text) if port_text.isdigit() else -1


class Refused(Exception):
    """A request the API does not serve: its HTTP status, the reason label and what to say."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class ApiGuard:
    """The aiohttp middleware deciding who may use the API (see the module's docstring). `token` None
    means there is no token to compare with: every change is refused."""

    def __init__(self, config: HttpConfig, token: str | None, extra_hosts: Iterable[str] = ()) -> None:
        self.hosts = allowed_hosts(config, extra_hosts)
        self._token = token.encode() if token else None
        self._last_logged = -REFUSAL_LOG_INTERVAL
        self._unlogged = 0

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path in OPEN_PATHS and request.method in ("GET", "HEAD"):
            return await handler(request)
        try:
            self.check(request)
        except Refused as refused:
            return self._refuse(request, refused)
        return await handler(request)

    def check(self, request: web.Request) -> None:
        """Raises Refused for a request the API must not serve."""
        host_header = request.headers.get("Host", "")
        host, port = split_host(host_header)
        if host not in self.hosts:
            raise Refused(403, "host", f"Host {host_header!r} is not this collector: use http://127.0.0.1:PORT, "
                                       "or add the name to http.allowed_hosts")
        origin = request.headers.get("Origin")
        if origin is not None and not self._same_origin(origin, host, port):
            raise Refused(403, "origin", f"Origin {origin!r} is not this collector")
        if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
            raise Refused(403, "cross_site", "requests from another site are refused")
        if request.method in READ_METHODS:
            return
        self._check_token(request.headers.get("Authorization", ""))
        if (request.method != "DELETE" or request.body_exists) and request.content_type != "application/json":
            raise Refused(415, "content_type", "send the body as JSON (Content-Type: application/json)")

    def _same_origin(self, origin: str, host: str, port: int | None) -> bool:
        try:
            parts = urlsplit(origin)
            origin_port = parts.port
        except ValueError:
            return False
        default = _DEFAULT_PORTS.get(parts.scheme)
        if default is None or not parts.hostname:
            return False
        return host_name(parts.hostname) == host and (origin_port or default) == (port or default)

    def _check_token(self, authorization: str) -> None:
        if self._token is None:
            raise Refused(503, "no_api_token", "the collector has no API token (see its log): changes are refused")
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Refused(401, "no_token", "this request needs the API token (Authorization: Bearer TOKEN); "
                                           "`iot-collector silence` sends it by itself")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise Refused(401, "bad_token", "wrong API token")

    def _refuse(self, request: web.Request, refused: Refused) -> web.Response:
        metrics.HTTP_REFUSED.labels(refused.reason).inc()
        now = time.monotonic()
        if now - self._last_logged >= REFUSAL_LOG_INTERVAL:
            log.warning("http request refused", peer=request.remote, method=request.method, path=request.path,
                        host=request.headers.get("Host", ""), origin=request.headers.get("Origin"),
                        status=refused.status, reason=refused.reason, refused_since_last_line=self._unlogged)
            self._last_logged, self._unlogged = now, 0
        else:
            self._unlogged += 1
        headers = {"WWW-Authenticate": 'Bearer realm="iot-collector"'} if refused.status == 401 else None
        return web.json_response({"error": refused.message}, status=refused.status, headers=headers)


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


def tracked_types(top: int) -> tuple[int, list[dict[str, Any]]]:
    """How many objects the garbage collector tracks outside the frozen heap, and the `top` types
    with the most of them (`module.QualName`)."""
    counts: Counter[type] = Counter(type(obj) for obj in gc.get_objects())
    return sum(counts.values()), [{"type": f"{kind.__module__}.{kind.__qualname__}", "count": count}
                                  for kind, count in counts.most_common(top)]


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

    def report(self, top: int = 25, rebase: bool = False, types: int = 0) -> dict[str, Any]:
        """The allocation sites that grew most since the baseline (sizes in bytes), RSS, and the
        garbage collector's pauses since the baseline. With `types`, also that many types with the
        most objects the collector tracks outside the frozen heap (what every full collection
        scans; counting them walks the whole heap)."""
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
        if types > 0:
            out["gc_tracked"], out["types"] = tracked_types(types)
        if rebase:
            self._baseline, self._baseline_at = now, time.time()
            for stats_of_generation in self.gc_pauses.values():
                stats_of_generation[:] = [0, 0.0, 0.0]
        return out


class HttpServer:
    """aiohttp server on the configured loopback address. `port` is the bound port (for port 0).
    `api_token` is what requests that change something must carry (None: they are all refused);
    `extra_hosts` more names the API answers to (see `allowed_hosts`)."""

    def __init__(self, config: HttpConfig, *, status: Callable[[], dict[str, Any]],
                 ready: Callable[[], tuple[bool, str]], routes: list[web.RouteDef] | None = None,
                 api_token: str | None = None, extra_hosts: Iterable[str] = (),
                 tracer: MemoryTracer | None = None) -> None:
        self.config = config
        self._status = status
        self._ready = ready
        self._tracer = tracer
        self.guard = ApiGuard(config, api_token, extra_hosts)
        self.app = web.Application(middlewares=[self.guard.middleware], client_max_size=MAX_BODY_BYTES)
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
        self.fleet: FleetMetrics | None = None  # the fleet's part of /metrics
        self._scrape_lock = asyncio.Lock()

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
        # One scrape at a time: the snapshot taken here on the loop is the one its thread renders.
        async with self._scrape_lock:
            body = generate_latest(metrics.REGISTRY)
            if self.fleet is not None:
                body += (await self.fleet.render()).encode()
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
        try:
            types = int(request.query.get("types", "0"))
        except ValueError:
            return web.json_response({"error": "types must be a number"}, status=400)
        rebase = request.query.get("rebase", "") in ("1", "true", "yes")
        # In a thread: comparing snapshots of a large heap takes seconds of mostly Python code.
        report = await asyncio.to_thread(self._tracer.report, max(top, 1), rebase=rebase, types=types)
        return web.json_response(report)
