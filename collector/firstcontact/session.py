"""A bounded, paced and logged session of signed requests to the platform, for `probe` and `capture`.

What it promises:

* At most `limit` requests leave, whoever sends them (the raw requests of `send`, and a
  `PlatformClient` given `transport` and `limiter`): the transport counts them and refuses the next.
* Never faster than `platform.rate_limit`: one token bucket with a burst of one paces every request.
* Only read paths: a path whose last segment is not a read (`query...`, `get...`, or a read noun
  such as `status` or `flow`) is refused before it is sent.
* Every request is logged (`probe request`) with its path and outcome; the app secret is registered
  for redaction, the sign header is never logged, and ids are not logged.
* A request that cannot be sent is an `Answer` too: the transport or TLS problem named, never an
  exception.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
import structlog

from collector.config import PlatformConfig, SignConfig
from collector.logs import redact_text, register_secret
from collector.platform.client import is_read_path, signed_headers
from collector.platform.ratelimit import RateLimiter
from collector.platform.signing import Signer
from collector.platform.wire import decode_json

log = structlog.get_logger("collector.probe")

REQUEST_LIMIT = 100

Kind = Literal["ok", "auth", "app", "timestamp", "no_path", "rate_limited", "api_error", "http_error",
               "not_json", "transport", "refused"]
AUTH_KINDS = frozenset({"auth", "app", "timestamp"})
UNANSWERED = frozenset({"transport", "refused", "not_json", "http_error", "rate_limited"})
"""Answers that say nothing about the request itself: no answer, a gateway's page, a throttle."""
"""Answers that say the request was not authenticated: the signature (or the appID, or the
timestamp the signature covers) was refused, so the recipe is not known to be right."""

# What an error message says, in the vendor's Chinese and in English (the code page is missing).
_TIMESTAMP_WORDS = re.compile(r"时间戳|timestamp", re.IGNORECASE)
_SIGN_WORDS = re.compile(r"签名|验签|sign", re.IGNORECASE)
_APP_WORDS = re.compile(r"app\s*_?id|应用", re.IGNORECASE)
_NO_PATH_WORDS = re.compile(
    r"(接口|路径|方法|api|path|method|interface|route|url|endpoint).{0,12}"
    r"(不存在|未找到|找不到|not\s*found|not\s*exist|unknown|无效|不支持)"
    r"|(no\s+such|unknown)\s+(api|path|method|interface|route|endpoint)", re.IGNORECASE)

class RequestLimitReached(Exception):
    """The session's request bound is used up."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One request and what came back. `kind` classifies it (see `classify`)."""

    path: str
    kind: Kind
    status: int | None = None
    code: int | None = None
    message: str = ""
    envelope: dict[str, Any] | None = None
    problem: str = ""  # the transport, TLS or HTTP problem, in words
    tls: str = ""  # the certificate problem, named
    server_time: float | None = None  # the envelope's timestamp, Unix seconds
    sent_at: float = 0.0
    received_at: float = 0.0

    @property
    def data(self) -> Any:
        return None if self.envelope is None else self.envelope.get("data")

    @property
    def passed_auth(self) -> bool:
        """The platform answered past its authentication: neither an auth-class answer, nor a throttle
        (which may come before the signature is checked), nor a failure to get an answer at all."""
        return self.kind not in AUTH_KINDS and self.kind not in UNANSWERED

    def outcome(self) -> str:
        """The answer in a few words: `code 40001 签名错误`, `HTTP 404`, `TLS: certificate has expired`."""
        if self.kind in ("transport", "refused"):
            return self.problem
        parts = []
        if self.status is not None and not 200 <= self.status < 300:
            parts.append(f"HTTP {self.status}")
        if self.code is not None:
            parts.append(f"code {self.code}" + (f" {self.message}" if self.message else ""))
        elif self.problem:
            parts.append(self.problem)
        return ", ".join(parts) or "answered"


def _server_time(envelope: dict[str, Any]) -> float | None:
    value = envelope.get("timestamp")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return value / 1000.0 if value >= 1e11 else float(value)


def _code(envelope: dict[str, Any]) -> int | None:
    raw = envelope.get("code")
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str | float):
        try:
            number = float(raw)
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None


def classify(status: int, envelope: dict[str, Any] | None, code: int | None, message: str,
             platform: PlatformConfig) -> Kind:
    """What an answer means for the probe. An envelope's code says more than the HTTP status."""
    codes = platform.error_codes
    if envelope is None or code is None:
        if status in (401, 403):
            return "auth"
        if status in (404, 405):
            return "no_path"
        if status == 429:
            return "rate_limited"
        return "not_json" if 200 <= status < 300 else "http_error"
    if code == 0:
        return "ok" if 200 <= status < 300 else "http_error"
    if _TIMESTAMP_WORDS.search(message):
        return "timestamp"
    if code in codes.auth or status in (401, 403) or _SIGN_WORDS.search(message):
        return "app" if _APP_WORDS.search(message) and not _SIGN_WORDS.search(message) else "auth"
    if code in codes.rate_limited or status == 429:
        return "rate_limited"
    if code in codes.not_found:
        return "api_error"  # an unknown id: the path exists
    if status in (404, 405) or _NO_PATH_WORDS.search(message):
        return "no_path"
    return "api_error"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def tls_problem(exc: BaseException) -> str:
    """The certificate or TLS problem behind a connection error, named (`certificate has expired`,
    `self-signed certificate`, `Hostname mismatch...`); "" when it is not one."""
    for error in _chain(exc):
        if isinstance(error, ssl.SSLCertVerificationError):
            return str(error.verify_message or error.reason or error)
        if isinstance(error, ssl.SSLError):
            return str(error.reason or error)
    return ""


def _transport_problem(exc: BaseException) -> str:
    tls = tls_problem(exc)
    if tls:
        return f"TLS: {tls}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    innermost = list(_chain(exc))[-1]
    detail = str(innermost) or type(innermost).__name__
    return redact_text(f"{type(exc).__name__}: {detail}")


_purpose: contextvars.ContextVar[str] = contextvars.ContextVar("probe_purpose", default="")


class _BoundedTransport(httpx.AsyncBaseTransport):
    """Counts, bounds and logs every request that leaves the session."""

    def __init__(self, session: Session, inner: httpx.AsyncBaseTransport) -> None:
        self._session = session
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session
        path = request.url.path
        if session.sent >= session.limit:
            log.warning("probe request not sent: the request bound is reached", path=path, limit=session.limit)
            raise httpx.TransportError(f"not sent: the bound of {session.limit} requests is reached")
        if not is_read_path(path):
            log.warning("probe request not sent: not a read endpoint", path=path)
            raise httpx.TransportError(f"not sent: {path} does not look like a read endpoint")
        session.sent += 1
        number = session.sent
        sent_at = round(time.time(), 4)
        started = time.perf_counter()
        try:
            response = await self._inner.handle_async_request(request)
            body = await response.aread()
        except Exception as exc:
            log.info("probe request", n=number, path=path, purpose=_purpose.get(), outcome="no answer",
                     problem=_transport_problem(exc), sent_at=sent_at,
                     duration_ms=round((time.perf_counter() - started) * 1000))
            raise
        envelope, code, message = _decode(body)
        kind = classify(response.status_code, envelope, code, message, session.platform)
        log.info("probe request", n=number, path=path, purpose=_purpose.get(), outcome=kind,
                 status=response.status_code, code=code, message=message[:120], sent_at=sent_at,
                 duration_ms=round((time.perf_counter() - started) * 1000))
        return httpx.Response(response.status_code, headers=response.headers, content=body, request=request,
                              extensions=response.extensions)

    async def aclose(self) -> None:
        """Nothing: a `PlatformClient` sharing the transport closes it when it is done, and the session
        still needs it; the session closes the inner transport itself."""

    async def close(self) -> None:
        await self._inner.aclose()


def _decode(body: bytes) -> tuple[dict[str, Any] | None, int | None, str]:
    try:
        value = decode_json(body)
    except (ValueError, RecursionError):
        return None, None, ""
    if not isinstance(value, dict):
        return None, None, ""
    message = value.get("message")
    text = message if isinstance(message, str) else "" if message is None else str(message)
    return value, _code(value), text


@dataclass
class Session:
    """Signed requests to one platform, bounded by `limit` and paced by `platform.rate_limit`.
    Use as `async with Session(platform) as session`."""

    platform: PlatformConfig
    limit: int = REQUEST_LIMIT
    base_url: str = ""
    sent: int = 0
    limiter: RateLimiter = field(init=False)
    transport: _BoundedTransport = field(init=False)
    _http: httpx.AsyncClient = field(init=False)
    _secret: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        platform = self.platform
        self._secret = platform.app_secret.get_secret_value() if platform.app_secret else ""
        register_secret(self._secret)
        self.base_url = (self.base_url or str(platform.base_url)).rstrip("/")
        self.limiter = RateLimiter(platform.rate_limit, 1, max_concurrency=1, export_metrics=False)
        # httpx's own transport: its connection errors keep the ssl exception that names a certificate problem.
        self.transport = _BoundedTransport(self, httpx.AsyncHTTPTransport())
        self._http = httpx.AsyncClient(transport=self.transport, follow_redirects=False,
                                       timeout=httpx.Timeout(platform.timeout, connect=platform.connect_timeout))

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()
        await self.transport.close()

    @property
    def left(self) -> int:
        return max(self.limit - self.sent, 0)

    @contextlib.contextmanager
    def purpose(self, text: str) -> Iterator[None]:
        """Name what the requests sent inside are for, in their log lines."""
        token = _purpose.set(text)
        try:
            yield
        finally:
            _purpose.reset(token)

    def signer(self, recipe: SignConfig) -> Signer:
        return Signer.from_config(recipe, self._secret)

    async def send(self, path: str, form: Mapping[str, str], recipe: SignConfig, purpose: str) -> Answer:
        """POST one signed request (no retry) and classify the answer. RequestLimitReached when the
        bound is used up."""
        if self.sent >= self.limit:
            raise RequestLimitReached(f"the bound of {self.limit} requests is reached")
        if not is_read_path(path):
            log.warning("probe request not sent: not a read endpoint", path=path)
            return Answer(path, "refused", problem=f"not sent: {path} does not look like a read endpoint")
        with self.purpose(purpose):
            async with self.limiter.slot():
                sent_at = time.time()
                headers = signed_headers(self.signer(recipe), self.platform.app_id, self.platform.api_version,
                                         uuid.uuid4().hex, sent_at, form)
                try:
                    response = await self._http.post(self.base_url + path, content=urlencode(form).encode(),
                                                     headers=headers)
                except httpx.HTTPError as exc:
                    return Answer(path, "transport", problem=_transport_problem(exc), tls=tls_problem(exc),
                                  sent_at=sent_at, received_at=time.time())
        received_at = time.time()
        envelope, code, message = _decode(response.content)
        kind = classify(response.status_code, envelope, code, message, self.platform)
        problem = ""
        if envelope is None:
            head = response.content[:60].decode("utf-8", "replace").strip()
            problem = f"HTTP {response.status_code}, the body is not an envelope" + (f" ({head!r})" if head else "")
        return Answer(path, kind, status=response.status_code, code=code, message=message, envelope=envelope,
                      problem=redact_text(problem), server_time=None if envelope is None else _server_time(envelope),
                      sent_at=sent_at, received_at=received_at)
