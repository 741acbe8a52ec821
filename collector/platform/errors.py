"""Typed errors of the platform client. Every failure a caller can see is one of these."""

from __future__ import annotations


class PlatformError(Exception):
    """Base of every error raised by the platform client."""

    transient: bool = False
    outcome: str = "error"  # short label for metrics (`http_error`, `timeout`, `api_error`, ...)
    attempts: int = 1  # how many requests the client made before giving up with this error

    def __init__(self, message: str, *, endpoint: str = "", trace_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.trace_id = trace_id


class ApiError(PlatformError):
    """The platform answered with an envelope whose `code` is not 0."""

    outcome = "api_error"

    def __init__(self, code: int, message: str, *, endpoint: str = "", trace_id: str = "",
                 transient: bool = False) -> None:
        super().__init__(f"platform error {code}: {message}", endpoint=endpoint, trace_id=trace_id)
        self.code = code
        self.platform_message = message
        self.transient = transient


class AuthError(ApiError):
    """The platform rejected our signature or appID: a configuration problem, never retried."""

    outcome = "auth_error"


class RateLimitedError(ApiError):
    """The platform said we are over its request rate: retried after slowing down."""

    transient = True
    outcome = "rate_limited"

    def __init__(self, code: int, message: str, *, endpoint: str = "", trace_id: str = "") -> None:
        super().__init__(code, message, endpoint=endpoint, trace_id=trace_id, transient=True)


class HttpStatusError(PlatformError):
    """A non-2xx HTTP status. 5xx and 429 are transient, other 4xx are not."""

    outcome = "http_error"

    def __init__(self, status: int, *, endpoint: str = "", trace_id: str = "") -> None:
        super().__init__(f"HTTP {status}", endpoint=endpoint, trace_id=trace_id)
        self.status = status
        self.transient = status >= 500 or status == 429


class TransportError(PlatformError):
    """Connection refused or reset, DNS failure, protocol error: transient."""

    transient = True

    outcome = "connection_error"


class PlatformTimeout(PlatformError):
    """No complete answer within the configured timeout: transient."""

    transient = True

    outcome = "timeout"


class ResponseTooLarge(PlatformError):
    """The answer was larger than `platform.max_response_bytes`: refused on its Content-Length, or
    cut off (and the connection dropped) once the body grew past the limit. Not retried: the same
    answer would come back."""

    outcome = "too_large"

    def __init__(self, limit: int, *, declared: int | None = None, endpoint: str = "", trace_id: str = "") -> None:
        why = (f"Content-Length {declared} bytes" if declared is not None
               else f"cut off after more than {limit} bytes")
        super().__init__(f"answer larger than platform.max_response_bytes ({limit} bytes): {why}",
                         endpoint=endpoint, trace_id=trace_id)
        self.limit = limit
        self.declared = declared


class ParseError(PlatformError):
    """The answer was not JSON, or not the shape we expect. Never retried: the same bytes would come back.

    `path` names the offending field (`data.sims[1].totalFlow`).
    """

    outcome = "parse_error"

    def __init__(self, message: str, *, path: str = "", endpoint: str = "", trace_id: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message, endpoint=endpoint, trace_id=trace_id)
        self.path = path
