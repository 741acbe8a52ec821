"""The async client of the platform's read endpoints: signing, the request budget, retries, metrics
and logs around `collector.platform.parse`.

What it promises:

* Only the paths of the endpoint table (`PlatformConfig.endpoint_specs()`) are ever requested, all of
  them reads. There is no method for a write endpoint.
* Every failure is a `collector.platform.errors.PlatformError` subclass. Transient ones (transport
  errors, timeouts, HTTP 5xx/429, rate-limited or transient envelope codes, undecodable bodies) are
  retried with jittered exponential backoff within `platform.retries`; permanent ones (auth, unknown
  device, bad request, a well-formed answer of the wrong shape) are raised at once.
* One `RateLimiter` paces every request of this client; a throttle (HTTP 429 or a rate-limited code)
  halves its rate.
* A rejected signature raises `AuthError` whose message tells the operator which settings to check;
  the app secret never appears in a message or a log line (it is registered for redaction).

Wire details (see docs/upstream-api.md): `POST <path>` with an `application/x-www-form-urlencoded`
body and the headers `appID`, `apiVersion`, `traceID` (a fresh uuid4 hex for every attempt, so each
retry can be found in the platform's logs on its own), `timestamp` (Unix seconds, as text, like the
envelope's own `timestamp`) and `sign`.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

import aiohttp
import httpx
import structlog

from collector.config import PlatformConfig, PrivacyConfig
from collector.logs import register_secret
from collector.metrics import (
    RATE_LIMITED,
    REQUESTS_IN_FLIGHT,
    UPSTREAM_API_ERRORS,
    UPSTREAM_LATENCY,
    UPSTREAM_PARSE_ERRORS,
    UPSTREAM_REQUESTS,
    UPSTREAM_RETRIES,
)
from collector.platform.endpoints import MONTH_PARAM, Endpoint, EndpointSpec
from collector.platform.errors import (
    ApiError,
    AuthError,
    HttpStatusError,
    ParseError,
    PlatformError,
    PlatformTimeout,
    RateLimitedError,
    TransportError,
)
from collector.platform.models import (
    AccountAssets,
    CardAction,
    CardMonthUsage,
    CardStatus,
    CardUsage,
    DeviceObservation,
    SimObservation,
)
from collector.platform.parse import (
    ParseContext,
    Parsed,
    parse_account_assets,
    parse_card_actions,
    parse_card_info_list,
    parse_card_month_usage_list,
    parse_card_status_list,
    parse_card_usage_list,
    parse_device,
    parse_envelope,
)
from collector.platform.ratelimit import RateLimiter
from collector.retry import Backoff, parse_retry_after

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# aiohttp and many servers close idle keep-alive connections after 15-75 s; expiring ours first avoids
# reusing a connection the server is closing (which would surface as a spurious transport error).
KEEPALIVE_EXPIRY = 15.0
_MONTH = re.compile(r"\d{4}(0[1-9]|1[0-2])")
_THROTTLE_STATUSES = (429, 503)


@dataclass(frozen=True, slots=True)
class BatchResult(Generic[T]):
    """What a batch query over many cards produced, chunk failures included.

    `failed` holds, for each chunk that failed for good, its ids and the error; `skipped` the records
    the parser dropped; `missing` the ids asked for (in chunks that succeeded) that no record matched:
    cards the platform does not know (inferred: they are simply absent from `data`).
    """

    items: list[T] = field(default_factory=list)
    failed: list[tuple[tuple[str, ...], PlatformError]] = field(default_factory=list)
    skipped: list[ParseError] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def unwrap(self) -> list[T]:
        """The items, or the first chunk's error if any chunk failed."""
        if self.failed:
            raise self.failed[0][1]
        return self.items


def _transport(config: PlatformConfig, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    if config.transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=limits)
    return httpx.AsyncHTTPTransport(limits=limits)


def _subject(device_no: str, cards: int) -> dict[str, Any]:
    """What a request was about, for its log line: a device, a number of cards, or nothing."""
    if device_no:
        return {"device_no": device_no}
    return {"cards": cards} if cards else {}


def _from_transport(exc: BaseException, endpoint: str, trace_id: str) -> PlatformError:
    """httpx (and httpx-aiohttp) exceptions as our types."""
    if isinstance(exc, httpx.TimeoutException):
        # httpx-aiohttp maps every aiohttp.ClientConnectionError (server disconnected, connection
        # reset) to httpx.ConnectTimeout: an aiohttp error underneath that is not itself a timeout is
        # a transport error. (httpx's own transport chains httpcore's timeouts: those are timeouts.)
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientError) and not isinstance(cause, TimeoutError):
            return TransportError(f"{type(cause).__name__}: {cause}", endpoint=endpoint, trace_id=trace_id)
        return PlatformTimeout(f"timed out ({type(exc).__name__})", endpoint=endpoint, trace_id=trace_id)
    if isinstance(exc, TimeoutError):
        return PlatformTimeout("no complete answer within the deadline", endpoint=endpoint, trace_id=trace_id)
    return TransportError(f"{type(exc).__name__}: {exc}", endpoint=endpoint, trace_id=trace_id)


class PlatformClient:
    """The platform's read endpoints as typed async methods. Use as `async with PlatformClient(...)`."""

    def __init__(self, config: PlatformConfig, privacy: PrivacyConfig | None = None, *,
                 base_url: str | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 limiter: RateLimiter | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None, wall_clock: Callable[[], float] = time.time) -> None:
        """`base_url` overrides `config.base_url` (the embedded simulator); `transport` replaces the one
        `config.transport` selects (tests); `limiter` lets several clients share one budget."""
        self.config = config
        self._specs: dict[Endpoint, EndpointSpec] = config.endpoint_specs()
        self._signer = config.signer()
        register_secret(self._signer.secret)
        self._ctx = ParseContext.from_config(config, privacy)
        self.limiter = limiter or RateLimiter(config.rate_limit, config.burst,
                                              max_concurrency=config.max_concurrency)
        self._sleep = sleep
        self._rng = rng or random.Random()
        retries = config.retries
        self._backoff = Backoff(retries.backoff_initial, retries.backoff_max, retries.max_attempts)
        self._now = wall_clock
        self._warned_fields: set[tuple[str, str]] = set()
        limits = httpx.Limits(max_connections=config.max_concurrency,
                              max_keepalive_connections=config.max_concurrency,
                              keepalive_expiry=KEEPALIVE_EXPIRY)
        # platform.timeout bounds the whole request (connect included); httpx's own timeouts bound
        # each phase, and the deadline catches a server that drips bytes slowly enough to reset them.
        self._deadline = config.timeout
        self._http = httpx.AsyncClient(
            base_url=base_url or str(config.base_url),
            transport=transport or _transport(config, limits),
            timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
            follow_redirects=False,
        )
        # Absolute URLs built once: httpx would otherwise parse and merge base and path per request.
        root = (base_url or str(config.base_url)).rstrip("/")
        self._urls = {spec.path: httpx.URL(root + spec.path) for spec in self._specs.values()}
        for endpoint, spec in self._specs.items():
            if not spec.path.rsplit("/", 1)[-1].lower().startswith("query"):
                # Every read endpoint we know is a queryXxx; anything else may be a write endpoint.
                log.warning("endpoint path does not look like a read endpoint", endpoint=endpoint.value,
                            path=spec.path)

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    # --- per-device endpoints ---------------------------------------------------------------------

    async def device_flow(self, device_no: str) -> DeviceObservation:
        """queryDeviceFlow: the device and its SIMs (the documented endpoint)."""
        return await self._device(Endpoint.DEVICE_FLOW, device_no)

    async def device_info(self, device_no: str) -> DeviceObservation:
        """queryDeviceInfo: same data as device_flow, flow numbers refreshed less promptly."""
        return await self._device(Endpoint.DEVICE_INFO, device_no)

    async def _device(self, endpoint: Endpoint, device_no: str) -> DeviceObservation:
        device_no = device_no.strip()
        if not device_no:
            raise ValueError("device_no must not be empty")
        spec = self._specs[endpoint]

        def parse(data: Any, ctx: ParseContext) -> DeviceObservation:
            return parse_device(data, ctx, endpoint=endpoint.value, device_no=device_no)

        return await self.request(endpoint, {spec.param: device_no}, parse, device_no=device_no)

    # --- card endpoints -----------------------------------------------------------------------------

    async def card_info(self, iccids: Sequence[str]) -> list[SimObservation]:
        """querySimInfo, 100 cards a request."""
        return (await self.batch(Endpoint.CARD_INFO, iccids, parse_card_info_list)).unwrap()

    async def card_status(self, iccids: Sequence[str]) -> list[CardStatus]:
        """querySimStatus, 10 cards a request."""
        return (await self.batch(Endpoint.CARD_STATUS, iccids, parse_card_status_list)).unwrap()

    async def card_usage(self, iccids: Sequence[str]) -> list[CardUsage]:
        """querySimRealFlow, 10 cards a request."""
        return (await self.batch(Endpoint.CARD_USAGE, iccids, parse_card_usage_list)).unwrap()

    async def card_month_usage(self, iccids: Sequence[str], month: str) -> list[CardMonthUsage]:
        """querySimMonthFlow for `month` (YYYYMM), 10 cards a request."""
        if not _MONTH.fullmatch(month):
            raise ValueError(f"month must be YYYYMM, got {month!r}")

        def parse(data: Any, ctx: ParseContext) -> Parsed[CardMonthUsage]:
            return parse_card_month_usage_list(data, ctx, month=month)

        return (await self.batch(Endpoint.CARD_MONTH_USAGE, iccids, parse, extra={MONTH_PARAM: month})).unwrap()

    async def card_actions(self, iccids: Sequence[str]) -> list[CardAction]:
        """querySimAction: the operation log of these cards."""
        return (await self.batch(Endpoint.CARD_ACTIONS, iccids, parse_card_actions)).unwrap()

    async def account_assets(self) -> AccountAssets:
        """queryAccountAssets: the reseller account's balance."""
        return await self.request(Endpoint.ACCOUNT_ASSETS, {}, parse_account_assets)

    async def batch(self, endpoint: Endpoint, iccids: Sequence[str],
                    parse: Callable[[Any, ParseContext], Parsed[T]], *,
                    extra: Mapping[str, str] | None = None) -> BatchResult[T]:
        """Query a card endpoint for many cards: ids de-duplicated, split to the endpoint's batch
        limit, chunks run concurrently (paced by the limiter). A failed chunk does not lose the others:
        see `BatchResult` (the typed per-endpoint methods raise the first failure instead)."""
        spec = self._specs[endpoint]
        ids = list(dict.fromkeys(i.strip() for i in iccids if i and i.strip()))
        size = spec.batch_limit if spec.batch_limit > 0 else max(len(ids), 1)
        chunks = [tuple(ids[i:i + size]) for i in range(0, len(ids), size)]
        result: BatchResult[T] = BatchResult()

        async def one(chunk: tuple[str, ...]) -> None:
            form = {spec.param: ",".join(chunk), **(extra or {})}
            try:
                parsed = await self.request(endpoint, form, parse, cards=len(chunk))
            except PlatformError as error:
                result.failed.append((chunk, error))
                return
            result.items.extend(parsed.items)
            result.skipped.extend(parsed.skipped)
            found = {getattr(item, "iccid", "") for item in parsed.items}
            found |= {getattr(item, "sim_no", "") for item in parsed.items}
            result.missing.extend(i for i in chunk if i not in found)

        # A TaskGroup, not gather: an unexpected exception (a bug) cancels the sibling chunks.
        async with asyncio.TaskGroup() as group:
            for chunk in chunks:
                group.create_task(one(chunk))
        if result.missing:
            log.debug("cards absent from the answer", endpoint=endpoint.value, count=len(result.missing))
        return result

    # --- one request, with retries ----------------------------------------------------------------

    async def request(self, endpoint: Endpoint, form: Mapping[str, str],
                      parse: Callable[[Any, ParseContext], R], *, device_no: str = "", cards: int = 0) -> R:
        """POST one read endpoint and parse its `data` with `parse`, retrying transient failures.

        For list parsers (returning `Parsed`) the skipped records are counted and logged here.
        """
        spec = self._specs[endpoint]
        name = endpoint.value
        attempt = 0
        while True:
            attempt += 1
            trace_id = uuid.uuid4().hex
            started = self.limiter.clock()
            retry_after: float | None = None
            try:
                async with self.limiter.slot():
                    started = self.limiter.clock()
                    raw, status, retry_after = await self._post(spec.path, form, trace_id, name,
                                                                device_no, cards, attempt)
                polled_at = self._now()
                ctx = replace(self._ctx, polled_at=polled_at, issues=[])
                if not 200 <= status < 300:
                    raise self._status_error(raw, status, name, trace_id)
                data = parse_envelope(raw, name, codes=self.config.error_codes, trace_id=trace_id)
                value = parse(data, ctx)
            except PlatformError as error:
                self._count_failure(error, name)
                if isinstance(error, RateLimitedError) or getattr(error, "status", None) == 429:
                    RATE_LIMITED.inc()
                    self.limiter.slow_down(since=started)
                # Retried: everything `transient` says so. That includes a body that is not JSON at
                # all (ParseError with transient=True from parse_envelope): framing errors are caught
                # by the transport, so a complete but undecodable body almost always comes from
                # something between us and the application (a gateway's error page, a body cut by a
                # proxy) and is gone on the next try; the deterministic cause, invalid UTF-8 in a
                # field, is rescued by the decoder instead. A well-formed answer of the wrong shape is
                # not retried: the same bytes would come back.
                delay = self._backoff.delay(attempt, retry_after, rng=self._rng)
                if not error.transient or delay is None:
                    self._log_failure(error, name, device_no, cards, attempt, True, retry_after)
                    raise
                self._log_failure(error, name, device_no, cards, attempt, False, retry_after)
                UPSTREAM_RETRIES.labels(name).inc()
                await self._sleep(delay)
                continue
            UPSTREAM_REQUESTS.labels(name, "ok").inc()
            if isinstance(value, Parsed) and value.skipped:
                UPSTREAM_PARSE_ERRORS.labels(name).inc(len(value.skipped))
                log.warning("records skipped", endpoint=name, count=len(value.skipped),
                            first=str(value.skipped[0]), trace_id=trace_id)
            if ctx.issues:
                self._report_issues(name, ctx.issues, trace_id)
            return value

    async def _post(self, path: str, form: Mapping[str, str], trace_id: str, name: str, device_no: str,
                    cards: int, attempt: int) -> tuple[bytes, int, float | None]:
        """Send one signed request; the body, the status and any Retry-After (on 429/503)."""
        headers = {
            "appID": self.config.app_id,
            "apiVersion": self.config.api_version,
            "traceID": trace_id,
            "timestamp": str(int(self._now())),
        }
        headers["sign"] = self._signer.sign(headers, form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = urlencode(form).encode()
        start = time.perf_counter()
        REQUESTS_IN_FLIGHT.inc()
        try:
            async with asyncio.timeout(self._deadline):
                response = await self._http.post(self._urls.get(path, path), content=body, headers=headers)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            raise _from_transport(exc, name, trace_id) from exc
        except aiohttp.ClientError as exc:
            # aiohttp errors the httpx-aiohttp transport does not map (its map is not exhaustive).
            raise _from_transport(exc, name, trace_id) from exc
        finally:
            REQUESTS_IN_FLIGHT.dec()
            elapsed = time.perf_counter() - start
            UPSTREAM_LATENCY.labels(name).observe(elapsed)
        log.debug("upstream request", endpoint=name, **_subject(device_no, cards), trace_id=trace_id,
                  status=response.status_code, duration_ms=round(elapsed * 1000, 1), attempt=attempt)
        retry_after = (parse_retry_after(response.headers.get("retry-after"))
                       if response.status_code in _THROTTLE_STATUSES else None)
        return response.content, response.status_code, retry_after

    def _status_error(self, raw: bytes, status: int, name: str, trace_id: str) -> PlatformError:
        """A non-2xx answer. Its body may still be an envelope whose code says more than the status
        (a 400 carrying "bad sign"): then that ApiError wins, as transient as either of the two says."""
        http_error = HttpStatusError(status, endpoint=name, trace_id=trace_id)
        try:
            parse_envelope(raw, name, codes=self.config.error_codes, trace_id=trace_id)
        except ApiError as api_error:
            api_error.transient = api_error.transient or http_error.transient
            return api_error
        except ParseError:
            pass
        return http_error

    def _count_failure(self, error: PlatformError, name: str) -> None:
        UPSTREAM_REQUESTS.labels(name, error.outcome).inc()
        if isinstance(error, ApiError):
            UPSTREAM_API_ERRORS.labels(name, str(error.code)).inc()
        elif isinstance(error, ParseError):
            UPSTREAM_PARSE_ERRORS.labels(name).inc()

    def _log_failure(self, error: PlatformError, name: str, device_no: str, cards: int, attempt: int,
                     give_up: bool, retry_after: float | None) -> None:
        fields: dict[str, Any] = {
            "endpoint": name, **_subject(device_no, cards), "trace_id": error.trace_id,
            "error": type(error).__name__, "attempt": attempt, "retrying": not give_up,
        }
        if isinstance(error, ApiError):
            fields.update(code=error.code, platform_message=error.platform_message)
        if isinstance(error, HttpStatusError):
            fields["status"] = error.status
        if retry_after is not None:
            fields["retry_after"] = retry_after
        if isinstance(error, AuthError) or getattr(error, "status", None) in (401, 403):
            # Loud: nothing will work until the operator fixes the configuration.
            log.error("platform rejected the credentials: check platform.app_id, platform.app_secret "
                      "and platform.sign", **fields)
        else:
            log.warning("upstream request failed", message=error.message, **fields)

    def _report_issues(self, name: str, issues: list[str], trace_id: str) -> None:
        """Optional fields that held unusable values (parsed as unknown): a warning the first time a
        field of an endpoint does it (a format change shows up once, not once per device)."""
        new = sorted({f for f in issues if (name, f) not in self._warned_fields})
        if new:
            self._warned_fields.update((name, f) for f in new)
            log.warning("unusable values parsed as unknown", endpoint=name, fields=new, trace_id=trace_id)
        else:
            log.debug("unusable values parsed as unknown", endpoint=name, count=len(issues), trace_id=trace_id)
