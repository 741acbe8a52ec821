"""The async client of the platform's read endpoints: signing, the request budget, retries, metrics
and logs around each endpoint's parser (`collector.endpoints`). One generic call, `fetch(endpoint,
ids)`, serves every endpoint.

What it promises:

* Only the paths of the endpoint table (`PlatformConfig.endpoint_specs()`) are ever requested, all of
  them reads. There is no way to call a write endpoint.
* Every failure is a `collector.platform.errors.PlatformError` subclass. Transient ones (transport
  errors, timeouts, HTTP 5xx/429, rate-limited or transient envelope codes, undecodable bodies) are
  retried with jittered exponential backoff within `platform.retries`; permanent ones (auth, unknown
  device, bad request, a well-formed answer of the wrong shape, an answer larger than
  `platform.max_response_bytes`) are raised at once.
* No answer is held in memory beyond `platform.max_response_bytes`: bodies are streamed, a larger
  Content-Length is refused unread and a body that grows past the limit is cut off with its
  connection.
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
from collector.endpoints import account_assets, device_flow
from collector.endpoints.base import EndpointSpec, Query, ReadEndpoint
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
from collector.platform.errors import (
    ApiError,
    AuthError,
    HttpStatusError,
    ParseError,
    PlatformError,
    PlatformTimeout,
    RateLimitedError,
    ResponseTooLarge,
    TransportError,
)
from collector.platform.models import AccountAssets, DeviceObservation
from collector.platform.ratelimit import RateLimiter
from collector.platform.signing import Signer
from collector.platform.wire import ParseContext, Parsed, parse_envelope
from collector.retry import Backoff, parse_retry_after

log = structlog.get_logger(__name__)

T = TypeVar("T")

# aiohttp and many servers close idle keep-alive connections after 15-75 s; expiring ours first avoids
# reusing a connection the server is closing (which would surface as a spurious transport error).
KEEPALIVE_EXPIRY = 15.0
_THROTTLE_STATUSES = (429, 503)
AUTH_LOG_INTERVAL = 60.0  # seconds between two "platform rejected the credentials" lines


@dataclass(frozen=True, slots=True)
class BatchResult(Generic[T]):
    """What one `fetch` produced, chunk failures included.

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


# Read endpoints are `queryXxx`; the nouns are the last segment of REST-style read paths (`card/status`).
_READ_VERBS = ("query", "get", "list", "search")
_READ_NOUNS = frozenset({"status", "info", "detail", "flow", "realflow", "monthflow", "usage", "action",
                         "actions", "assets", "balance", "account"})
_WRITE_WORDS = frozenset({
    "reboot", "restart", "reset", "stop", "resume", "suspend", "recover", "update", "modify", "change", "set",
    "switch", "bind", "unbind", "limit", "buy", "order", "subscribe", "clear", "delete", "remove", "add", "save",
    "open", "close", "shutdown", "power", "recharge", "pay", "create", "cancel", "edit", "send", "submit",
})
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _words(text: str) -> list[str]:
    """`querySimRealFlow` -> query, sim, real, flow; `card/real_flow` -> card, real, flow."""
    return [w.lower() for w in _WORD.findall(text)]


def is_read_path(path: str) -> bool:
    """Whether `path` names a read endpoint: its last segment starts with a read verb (`query...`) or
    is a read noun (`.../card/status`), and no word of it names a write action."""
    segments = [s for s in path.split("/") if s]
    if not segments:
        return False
    last = _words(segments[-1])
    if not last or any(w in _WRITE_WORDS for w in last):
        return False
    if last[0] in _READ_VERBS:
        return True
    return "".join(last) in _READ_NOUNS and not any(w in _WRITE_WORDS for s in segments for w in _words(s))


def signed_headers(signer: Signer, app_id: str, api_version: str, trace_id: str, now: float,
                   form: Mapping[str, str]) -> dict[str, str]:
    """The headers of one request: appID, apiVersion, traceID, timestamp (in the recipe's unit), the
    sign computed by `signer` over them and `form`, and the form's Content-Type. The one place a
    request is signed (the client and `iot-collector probe` both send these)."""
    headers = {"appID": app_id, "apiVersion": api_version, "traceID": trace_id, "timestamp": signer.timestamp(now)}
    headers["sign"] = signer.sign(headers, form)
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    return headers


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
    """The platform's read endpoints, fetched with `fetch`. Use as `async with PlatformClient(...)`."""

    def __init__(self, config: PlatformConfig, privacy: PrivacyConfig | None = None, *,
                 base_url: str | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 limiter: RateLimiter | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None, wall_clock: Callable[[], float] = time.time) -> None:
        """`base_url` overrides `config.base_url` (the embedded simulator); `transport` replaces the one
        `config.transport` selects (tests); `limiter` lets several clients share one budget."""
        self.config = config
        self._specs: dict[str, EndpointSpec] = config.endpoint_specs()
        self._signer = Signer.from_config(
            config.sign, config.app_secret.get_secret_value() if config.app_secret else "")
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
        self._auth_logged_at: float | None = None
        self._auth_rejections = 0
        limits = httpx.Limits(max_connections=config.max_concurrency,
                              max_keepalive_connections=config.max_concurrency,
                              keepalive_expiry=KEEPALIVE_EXPIRY)
        # platform.timeout bounds the whole request (connect included); httpx's own timeouts bound
        # each phase, and the deadline catches a server that drips bytes slowly enough to reset them.
        self._deadline = config.timeout
        # A user and password in the base URL (a proxy in front of the platform) are sent as HTTP Basic
        # auth on every request, by either transport: the URLs themselves carry none.
        base = httpx.URL(base_url or str(config.base_url))
        auth = httpx.BasicAuth(base.username, base.password) if base.userinfo else None
        base = base.copy_with(userinfo=b"") if base.userinfo else base
        self._http = httpx.AsyncClient(
            base_url=base,
            auth=auth,
            transport=transport or _transport(config, limits),
            timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
            follow_redirects=False,
        )
        # Absolute URLs built once: httpx would otherwise parse and merge base and path per request.
        root = str(base).rstrip("/")
        self._urls = {spec.path: httpx.URL(root + spec.path) for spec in self._specs.values()}
        for name, spec in self._specs.items():
            if not is_read_path(spec.path):
                # Every read endpoint we know is a queryXxx (or a REST-style read noun); anything else
                # may be a write endpoint.
                log.warning("endpoint path does not look like a read endpoint", endpoint=name, path=spec.path)

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    # --- polls ------------------------------------------------------------------------------------------

    async def fetch(self, endpoint: ReadEndpoint[T], ids: Sequence[str] = (), *,
                    form: Mapping[str, str] | None = None) -> BatchResult[T]:
        """One poll of `endpoint` for `ids` (none for an endpoint that takes no id): the ids
        de-duplicated and split to the endpoint's batch limit, the chunks sent concurrently (paced by
        the limiter). A failed chunk does not lose the others: see `BatchResult`. `form` replaces the
        extra form fields the endpoint sends by itself (a given month); ValueError when unusable."""
        spec = self._specs[endpoint.name]
        extra = endpoint.extra_form(self._now(), self._ctx.tz, form)
        wanted = list(dict.fromkeys(i.strip() for i in ids if i and i.strip()))
        size = spec.batch_limit if spec.batch_limit > 0 else max(len(wanted), 1)
        chunks = [tuple(wanted[i:i + size]) for i in range(0, len(wanted), size)] if spec.param else [()]
        result: BatchResult[T] = BatchResult()

        async def one(chunk: tuple[str, ...]) -> None:
            sent = {spec.param: ",".join(chunk), **extra} if chunk else dict(extra)
            device_no = chunk[0] if endpoint.entity == "device" and len(chunk) == 1 else ""
            try:
                parsed = await self.request(endpoint, Query(chunk, sent), device_no=device_no,
                                            cards=0 if device_no else len(chunk))
            except PlatformError as error:
                result.failed.append((chunk, error))
                return
            result.items.extend(parsed.items)
            result.skipped.extend(parsed.skipped)
            found = {i for item in parsed.items for i in endpoint.answers_for(item)}
            result.missing.extend(i for i in chunk if i not in found)

        if len(chunks) == 1:
            await one(chunks[0])
        else:
            # A TaskGroup, not gather: an unexpected exception (a bug) cancels the sibling chunks.
            async with asyncio.TaskGroup() as group:
                for chunk in chunks:
                    group.create_task(one(chunk))
        if result.missing:
            log.debug("ids absent from the answer", endpoint=endpoint.name, count=len(result.missing))
        return result

    async def device_flow(self, device_no: str) -> DeviceObservation:
        """The documented endpoint for one device: its observation, or the PlatformError."""
        if not device_no.strip():
            raise ValueError("device_no must not be empty")
        return (await self.fetch(device_flow.ENDPOINT, [device_no])).unwrap()[0]

    async def account_assets(self) -> AccountAssets:
        """The account's balance, or the PlatformError."""
        return (await self.fetch(account_assets.ENDPOINT)).unwrap()[0]

    # --- one request, with retries ----------------------------------------------------------------

    async def request(self, endpoint: ReadEndpoint[T], query: Query, *, device_no: str = "",
                      cards: int = 0) -> Parsed[T]:
        """POST one request of `endpoint` and parse its `data`, retrying transient failures. Skipped
        records are counted and logged here."""
        spec = self._specs[endpoint.name]
        name = endpoint.name
        attempt = 0
        while True:
            attempt += 1
            trace_id = uuid.uuid4().hex
            started = self.limiter.clock()
            retry_after: float | None = None
            try:
                async with self.limiter.slot():
                    started = self.limiter.clock()
                    raw, status, retry_after = await self._post(spec.path, query.form, trace_id, name,
                                                                device_no, cards, attempt)
                polled_at = self._now()
                ctx = replace(self._ctx, polled_at=polled_at, issues=[])
                if not 200 <= status < 300:
                    raise self._status_error(raw, status, name, trace_id)
                data = parse_envelope(raw, name, codes=self.config.error_codes, trace_id=trace_id)
                value = endpoint.parse(data, ctx, query)
            except PlatformError as error:
                self._count_failure(error, name)
                if isinstance(error, RateLimitedError) or (isinstance(error, HttpStatusError) and error.status == 429):
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
                    error.attempts = attempt
                    self._log_failure(error, name, device_no, cards, attempt, True, retry_after)
                    raise
                self._log_failure(error, name, device_no, cards, attempt, False, retry_after)
                UPSTREAM_RETRIES.labels(name).inc()
                await self._sleep(delay)
                continue
            UPSTREAM_REQUESTS.labels(name, "ok").inc()
            if value.skipped:
                UPSTREAM_PARSE_ERRORS.labels(name).inc(len(value.skipped))
                log.warning("records skipped", endpoint=name, count=len(value.skipped),
                            first=str(value.skipped[0]), trace_id=trace_id)
            if ctx.issues:
                self._report_issues(name, ctx.issues, trace_id)
            return value

    async def _post(self, path: str, form: Mapping[str, str], trace_id: str, name: str, device_no: str,
                    cards: int, attempt: int) -> tuple[bytes, int, float | None]:
        """Send one signed request; the body, the status and any Retry-After (on 429/503)."""
        headers = signed_headers(self._signer, self.config.app_id, self.config.api_version, trace_id,
                                 self._now(), form)
        body = urlencode(form).encode()
        request = self._http.build_request("POST", self._urls.get(path, path), content=body, headers=headers)
        start = time.perf_counter()
        REQUESTS_IN_FLIGHT.inc()
        try:
            async with asyncio.timeout(self._deadline):
                response = await self._http.send(request, stream=True)
                try:
                    content = await self._read_bounded(response, name, trace_id)
                finally:
                    # Closing an answer that was not read to its end drops the connection instead of
                    # returning it to the pool.
                    await response.aclose()
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
        return content, response.status_code, retry_after

    async def _read_bounded(self, response: httpx.Response, name: str, trace_id: str) -> bytes:
        """The body, read as it arrives and never held beyond `platform.max_response_bytes` (decoded,
        so a compressed answer is bounded by what it unpacks to). A Content-Length above the limit
        is refused before a byte of the body is read."""
        limit = self.config.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLarge(limit, declared=int(declared), endpoint=name, trace_id=trace_id)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(limit, endpoint=name, trace_id=trace_id)
            chunks.append(chunk)
        return b"".join(chunks)

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
        """Each failed attempt at debug: the caller logs the failed poll once, with the last error and
        the number of attempts (`PlatformError.attempts`). Rejected credentials are also an error line,
        at most once a minute, saying what to check."""
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
        log.debug("upstream request failed", message=error.message, **fields)
        if isinstance(error, AuthError) or (isinstance(error, HttpStatusError) and error.status in (401, 403)):
            # Loud, but not once per device: nothing works until the operator fixes the configuration.
            now = time.monotonic()
            if self._auth_logged_at is None or now - self._auth_logged_at >= AUTH_LOG_INTERVAL:
                log.error("platform rejected the credentials: check platform.app_id, platform.app_secret "
                          "and platform.sign", **fields, rejected_since_last_line=self._auth_rejections)
                self._auth_logged_at, self._auth_rejections = now, 0
            else:
                self._auth_rejections += 1

    def _report_issues(self, name: str, issues: list[str], trace_id: str) -> None:
        """Optional fields that held unusable values (parsed as unknown): a warning the first time a
        field of an endpoint does it (a format change shows up once, not once per device)."""
        new = sorted({f for f in issues if (name, f) not in self._warned_fields})
        if new:
            self._warned_fields.update((name, f) for f in new)
            log.warning("unusable values parsed as unknown", endpoint=name, fields=new, trace_id=trace_id)
        else:
            log.debug("unusable values parsed as unknown", endpoint=name, count=len(issues), trace_id=trace_id)
