"""The InfluxDB sinks: the v2 write API (`InfluxV2Sink`) and the v1 write API (`InfluxV1Sink`).

Both send ready-made line protocol from the spool; the status handling (dead-letter, split, retry)
is `HttpSink`'s in collector.sinks.base.

`InfluxV2Sink` goes through influxdb-client's async HTTP stack (`InfluxDBClientAsync` and its
generated `WriteService.post_write_async`): the library builds the `/api/v2/write` request with the
token, org, bucket and precision, and its `ApiException` carries the status, headers (Retry-After) and
body we need. We do not use `WriteApiAsync.write()` itself because with `enable_gzip` it compresses
at gzip level 9 in the event loop (measured 35 ms per 5000-line batch, against 9 ms at level 1,
which we run in a worker thread), so we pass the body already gzip'd with `Content-Encoding: gzip`.

`InfluxV1Sink` posts to `/write?db=&rp=&precision=ns` with httpx (influxdb-client has no v1 write
API), with basic auth when a username is set, and issues `CREATE DATABASE` through `/query` once the
server answers when `create_database` is true (again after a "database not found").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import structlog
from influxdb_client import WriteService
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.rest import ApiException

from collector.logs import redact_text, register_secret
from collector.retry import parse_retry_after
from collector.sinks.base import (
    DeadLetter,
    HttpResult,
    HttpSink,
    RetryableError,
    error_reason,
)
from collector.sinks.config import InfluxV1Config, InfluxV2Config

log = structlog.get_logger(__name__)

LINE_PROTOCOL = "text/plain; charset=utf-8"


def _base_url(url: object) -> str:
    return str(url).rstrip("/")


def quote_identifier(name: str) -> str:
    """An InfluxQL double-quoted identifier (backslash and double quote escaped)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxV2Sink(HttpSink):
    """`/api/v2/write`: InfluxDB 2.x, 3.x, Cloud, 1.8+ (token `user:password`), VictoriaMetrics."""

    def __init__(self, config: InfluxV2Config, dead_letter: DeadLetter, *, gzip: bool,
                 name: str = "influxdb_v2") -> None:
        super().__init__(name, dead_letter, gzip=gzip)
        self.config = config
        self._token = config.token.get_secret_value() if config.token else None
        register_secret(self._token)
        self._client: InfluxDBClientAsync | None = None
        self._service: WriteService | None = None

    async def open(self) -> None:
        # Created here: the async client binds its aiohttp session to the running loop.
        self._client = InfluxDBClientAsync(url=_base_url(self.config.url), token=self._token or "",
                                           org=self.config.org,
                                           timeout=int(self.config.timeout * 1000), enable_gzip=False)
        self._service = WriteService(self._client.api_client)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _post(self, body: bytes, *, encoding: str | None) -> HttpResult:
        assert self._service is not None, "open() first"
        kwargs: dict[str, Any] = {"content_type": LINE_PROTOCOL, "precision": "ns"}
        if encoding:
            kwargs["content_encoding"] = encoding
        try:
            await self._service.post_write_async(org=self.config.org, bucket=self.config.bucket, body=body,
                                                 **kwargs)
        except ApiException as exc:
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            return HttpResult(int(exc.status or 0), error_reason(exc.body, str(exc.reason or "")),
                              parse_retry_after(retry_after))
        except TimeoutError as exc:
            raise RetryableError("timeout", f"no answer within {self.config.timeout}s") from exc
        except aiohttp.ClientError as exc:
            raise RetryableError("network", redact_text(str(exc) or type(exc).__name__)) from exc
        return HttpResult(204)

    def describe(self) -> Mapping[str, Any]:
        return {"url": _base_url(self.config.url), "org": self.config.org, "bucket": self.config.bucket}


class InfluxV1Sink(HttpSink):
    """`/write?db=&rp=`: InfluxDB 1.x before 1.8 (what Debian ships)."""

    def __init__(self, config: InfluxV1Config, dead_letter: DeadLetter, *, gzip: bool,
                 name: str = "influxdb_v1") -> None:
        super().__init__(name, dead_letter, gzip=gzip)
        self.config = config
        password = config.password.get_secret_value() if config.password else ""
        register_secret(password)
        self._auth = httpx.BasicAuth(config.username, password) if config.username else None
        self._client: httpx.AsyncClient | None = None
        self._database_ready = not config.create_database
        self._params = {"db": config.database, "precision": "ns"}
        if config.retention_policy:
            self._params["rp"] = config.retention_policy

    async def open(self) -> None:
        self._client = httpx.AsyncClient(base_url=_base_url(self.config.url), auth=self._auth,
                                         timeout=self.config.timeout)
        try:
            await self._ensure_database()
        except RetryableError as exc:
            log.warning("influxdb not reachable yet, will create the database later", sink=self.name,
                        error=str(exc))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _request(self, path: str, *, params: Mapping[str, str], content: bytes | None = None,
                       data: Mapping[str, str] | None = None,
                       headers: Mapping[str, str] | None = None) -> httpx.Response:
        assert self._client is not None, "open() first"
        try:
            return await self._client.post(path, params=params, content=content, data=data, headers=headers)
        except httpx.TimeoutException as exc:
            raise RetryableError("timeout", f"no answer within {self.config.timeout}s") from exc
        except httpx.HTTPError as exc:
            raise RetryableError("network", redact_text(str(exc) or type(exc).__name__)) from exc

    async def _ensure_database(self) -> None:
        if self._database_ready:
            return
        response = await self._request("/query", params={},
                                       data={"q": f"CREATE DATABASE {quote_identifier(self.config.database)}"})
        if response.status_code >= 500 or response.status_code == 429:
            raise RetryableError("server_error", f"CREATE DATABASE: HTTP {response.status_code}")
        error = error_reason(response.content) if response.status_code != 200 else ""
        if not error:
            results = response.json().get("results", [{}])
            error = next((r["error"] for r in results if isinstance(r, dict) and r.get("error")), "")
        if error:
            log.warning("could not create the database; writes will tell if it exists", sink=self.name,
                        database=self.config.database, error=error)
        self._database_ready = True

    async def _post(self, body: bytes, *, encoding: str | None) -> HttpResult:
        await self._ensure_database()
        headers = {"Content-Type": LINE_PROTOCOL}
        if encoding:
            headers["Content-Encoding"] = encoding
        response = await self._request("/write", params=self._params, content=body, headers=headers)
        status = response.status_code
        if 200 <= status < 300:
            return HttpResult(status)
        reason = error_reason(response.content, response.reason_phrase)
        if status == 404 and self.config.create_database:
            self._database_ready = False  # e.g. the server was wiped: create it again before retrying
        return HttpResult(status, reason, parse_retry_after(response.headers.get("Retry-After")))

    def describe(self) -> Mapping[str, Any]:
        return {"url": _base_url(self.config.url), "database": self.config.database,
                "retention_policy": self.config.retention_policy}


def dead_letter_for(state_dir: str | Path, sink: str, *, fsync: bool) -> DeadLetter:
    """The dead-letter file of `sink` under `<state_dir>/dead-letter/`."""
    return DeadLetter(Path(state_dir) / "dead-letter", sink, fsync=fsync)



__all__ = ["InfluxV1Sink", "InfluxV2Sink", "dead_letter_for", "quote_identifier"]
