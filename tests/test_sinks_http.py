"""The InfluxDB sinks' delivery contract against a local stub server: 400 -> dead-letter with the
server's reason (only the bad lines), 413 -> split, 429/5xx/network -> retry honouring Retry-After,
gzip, auth, and the file sink."""

from __future__ import annotations

import asyncio
import base64
import gzip
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from collector.metrics import POINTS_FAILED, SINK_WRITE_ERRORS
from collector.sinks.config import SinksConfig
from collector.sinks.pipeline import SinkPipeline
from tests.servers import free_port

Behaviour = Callable[[list[str], "Stub"], "tuple[int, dict[str, Any] | None, dict[str, str]] | None"]


@dataclass
class Stub:
    """A fake InfluxDB: records requests, answers what `behaviour` says (default 204)."""

    port: int
    behaviour: Behaviour | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/write", self._write)
        app.router.add_post("/api/v2/write", self._write)
        app.router.add_post("/query", self._query)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _query(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.queries.append(str(form.get("q")))
        return web.json_response({"results": [{"statement_id": 0}]})

    async def _write(self, request: web.Request) -> web.Response:
        raw = await request.read()  # aiohttp already inflates a gzip body; be explicit if it did not
        body = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        lines = body.decode().split("\n")
        self.requests.append({"at": time.monotonic(), "lines": len(lines), "path": request.path,
                              "headers": dict(request.headers), "query": dict(request.query)})
        answer = self.behaviour(lines, self) if self.behaviour else None
        if answer is None:
            self.accepted.extend(lines)
            return web.Response(status=204)
        status, payload, headers = answer
        return web.json_response(payload, status=status, headers=headers)


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    server = Stub(free_port())
    await server.start()
    yield server
    await server.stop()


def config(kind: str, url: str, **overrides: Any) -> SinksConfig:
    sink: dict[str, Any] = {"enabled": True, "url": url}
    if kind == "influxdb_v1":
        sink.update(database="iot", username="writer", password="s3cret-password")
    else:
        sink.update(org="acme", bucket="iot", token="t0ken-value")
    data: dict[str, Any] = {kind: sink, "batch_size": 50, "flush_interval": 0.05, "retry_max_backoff": 0.2,
                            "spool": {"fsync": "never"}}
    data.update(overrides)
    return SinksConfig.model_validate(data)


def numbered(start: int, count: int, bad: set[int] | None = None) -> list[str]:
    return [f"m,k=v{'bad' if bad and i in bad else ''} n={i}i {1_700_000_000_000_000_000 + i}"
            for i in range(start, start + count)]


async def run(kind: str, url: str, state_dir: Path, lines: list[str], **overrides: Any) -> SinkPipeline:
    pipeline = SinkPipeline(config(kind, url, **overrides), str(state_dir))
    await pipeline.start()
    await pipeline.submit(lines)
    assert await pipeline.flush(timeout=15)
    return pipeline


KINDS = ["influxdb_v1", "influxdb_v2"]


@pytest.mark.parametrize("kind", KINDS)
async def test_batch_too_large_is_split_until_it_fits(kind: str, stub: Stub, state_dir: Path) -> None:
    stub.behaviour = lambda lines, _: (413, {"error": "Request Entity Too Large"}, {}) if len(lines) > 8 else None
    pipeline = await run(kind, stub.url, state_dir, numbered(0, 50))
    assert sorted(stub.accepted) == sorted(numbered(0, 50))
    assert not (state_dir / "dead-letter" / f"{kind}.lp").exists()
    assert pipeline._sinks[0].max_lines() is not None and pipeline._sinks[0].max_lines() <= 8  # type: ignore[operator]
    await pipeline.submit(numbered(50, 40))  # later batches start at the size that passed
    before = len(stub.requests)
    assert await pipeline.flush(timeout=10)
    assert all(r["lines"] <= 8 for r in stub.requests[before:])
    await pipeline.stop(1)


@pytest.mark.parametrize("kind", KINDS)
async def test_bad_lines_go_to_the_dead_letter_file_with_the_reason(kind: str, stub: Stub,
                                                                    state_dir: Path) -> None:
    def refuse(lines: list[str], _: Stub) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        bad = [line for line in lines if "vbad" in line]
        if not bad:
            return None
        key = "error" if kind == "influxdb_v1" else "message"
        return 400, {key: f"unable to parse '{bad[0]}': invalid field format"}, {}

    stub.behaviour = refuse
    failed_before = POINTS_FAILED.labels(sink=kind, reason="bad_request")._value.get()
    pipeline = await run(kind, stub.url, state_dir, numbered(0, 40, bad={7, 30}))
    good = [line for line in numbered(0, 40, bad={7, 30}) if "vbad" not in line]
    assert sorted(stub.accepted) == sorted(good)
    text = (state_dir / "dead-letter" / f"{kind}.lp").read_text()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    data = [line for line in text.splitlines() if not line.startswith("#")]
    assert sorted(data) == sorted(line for line in numbered(0, 40, bad={7, 30}) if "vbad" in line)
    assert all("status=400" in c and "invalid field format" in c for c in comments)
    assert POINTS_FAILED.labels(sink=kind, reason="bad_request")._value.get() - failed_before == 2
    status = pipeline.status()["sinks"][kind]
    assert status["points_written"] == 38 and status["points_failed"] == 2 and status["pending_bytes"] == 0
    requests = len(stub.requests)
    await asyncio.sleep(0.3)
    assert len(stub.requests) == requests  # not retried
    await pipeline.stop(1)


@pytest.mark.parametrize("kind", KINDS)
async def test_throttling_waits_for_retry_after(kind: str, stub: Stub, state_dir: Path) -> None:
    def throttle_once(lines: list[str], server: Stub) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        if len(server.requests) == 1:
            return 429, {"error": "slow down"}, {"Retry-After": "1"}
        return None

    stub.behaviour = throttle_once
    errors_before = SINK_WRITE_ERRORS.labels(sink=kind, reason="throttled")._value.get()
    pipeline = await run(kind, stub.url, state_dir, numbered(0, 10))
    first, second = stub.requests[0]["at"], stub.requests[1]["at"]
    assert second - first >= 0.95  # Retry-After, not the 0.2 s backoff cap
    assert sorted(stub.accepted) == sorted(numbered(0, 10))
    assert SINK_WRITE_ERRORS.labels(sink=kind, reason="throttled")._value.get() - errors_before == 1
    await pipeline.stop(1)


@pytest.mark.parametrize("kind", KINDS)
async def test_server_errors_are_retried_with_backoff(kind: str, stub: Stub, state_dir: Path) -> None:
    stub.behaviour = lambda lines, server: (503, {"error": "busy"}, {}) if len(server.requests) <= 3 else None
    pipeline = await run(kind, stub.url, state_dir, numbered(0, 10))
    assert len(stub.requests) == 4
    assert sorted(stub.accepted) == sorted(numbered(0, 10))
    status = pipeline.status()["sinks"][kind]
    assert status["up"] is True and status["last_error"].startswith("server_error")
    await pipeline.stop(1)


@pytest.mark.parametrize("kind", KINDS)
async def test_unreachable_server_keeps_points_until_it_answers(kind: str, state_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pipeline = SinkPipeline(config(kind, url), str(state_dir))
    await pipeline.start()
    await pipeline.submit(numbered(0, 20))
    assert not await pipeline.flush(timeout=0.5)
    status = pipeline.status()
    assert status["sinks"][kind]["up"] is False
    assert status["sinks"][kind]["last_error"].startswith("network")
    assert status["spool"]["oldest_age_seconds"] is not None
    await pipeline.stop(0.2)  # the server is still down: the points stay spooled

    server = Stub(port)
    await server.start()
    try:
        again = SinkPipeline(config(kind, url), str(state_dir))
        await again.start()
        await again.submit(numbered(20, 5))
        assert await again.flush(timeout=10)
        assert sorted(server.accepted) == sorted(numbered(0, 25))
        assert again.oldest_age_seconds() is None
        await again.stop(1)
    finally:
        await server.stop()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("use_gzip", [True, False])
async def test_requests_carry_auth_encoding_and_target(kind: str, use_gzip: bool, stub: Stub,
                                                       state_dir: Path) -> None:
    pipeline = await run(kind, stub.url, state_dir, numbered(0, 5), gzip=use_gzip)
    request = stub.requests[0]
    assert (request["headers"].get("Content-Encoding") == "gzip") is use_gzip
    if kind == "influxdb_v1":
        assert request["path"] == "/write"
        assert request["query"] == {"db": "iot", "precision": "ns"}
        expected = "Basic " + base64.b64encode(b"writer:s3cret-password").decode()
        assert request["headers"]["Authorization"] == expected
        assert stub.queries == ['CREATE DATABASE "iot"']
    else:
        assert request["path"] == "/api/v2/write"
        assert request["query"] == {"org": "acme", "bucket": "iot", "precision": "ns"}
        assert request["headers"]["Authorization"] == "Token t0ken-value"
    status_text = json.dumps(pipeline.status())
    assert "s3cret-password" not in status_text and "t0ken-value" not in status_text
    await pipeline.stop(1)


async def test_file_sink_writes_every_line_and_rotates(state_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "out" / "points.lp"
    cfg = SinksConfig.model_validate({"file": {"enabled": True, "path": str(path), "max_bytes": 1000,
                                               "backups": 2},
                                      "batch_size": 10, "flush_interval": 0.01})
    pipeline = SinkPipeline(cfg, str(state_dir))
    await pipeline.start()
    for start in range(0, 100, 10):
        await pipeline.submit(numbered(start, 10))
        assert await pipeline.flush(timeout=5)
    await pipeline.stop(1)
    files = [path, path.with_name("points.lp.1"), path.with_name("points.lp.2")]
    assert all(f.exists() for f in files) and not path.with_name("points.lp.3").exists()
    kept = [line for f in reversed(files) for line in f.read_text().splitlines()]
    assert kept == numbered(100 - len(kept), len(kept))  # the newest lines, in order
    assert all(f.stat().st_size <= 1000 for f in files)
    assert len(kept) < 100  # the oldest rotated file was deleted


async def test_no_sink_drops_and_counts(state_dir: Path) -> None:
    pipeline = SinkPipeline(SinksConfig(), str(state_dir))
    await pipeline.start()
    await pipeline.submit(numbered(0, 3))
    assert pipeline.spool_bytes() == 0 and pipeline.writable()
    await pipeline.stop(1)
    with pytest.raises(RuntimeError):
        await pipeline.submit(numbered(0, 1))


async def test_a_sink_that_is_down_does_not_hold_up_another(state_dir: Path, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "points.lp"
    cfg = config("influxdb_v1", down, file={"enabled": True, "path": str(path)})
    pipeline = SinkPipeline(cfg, str(state_dir))
    await pipeline.start()
    await pipeline.submit(numbered(0, 30))
    assert not await pipeline.flush(timeout=0.5)
    status = pipeline.status()["sinks"]
    assert status["file"]["pending_bytes"] == 0 and status["file"]["up"] is True
    assert status["influxdb_v1"]["pending_bytes"] > 0 and status["influxdb_v1"]["up"] is False
    assert path.read_text().splitlines() == numbered(0, 30)
    await pipeline.stop(0.1)


@pytest.mark.parametrize("kind", KINDS)
async def test_retries_back_off_exponentially_up_to_retry_max_backoff(kind: str, stub: Stub, state_dir: Path) -> None:
    stub.behaviour = lambda lines, server: (503, {"error": "busy"}, {}) if len(server.requests) <= 4 else None
    pipeline = await run(kind, stub.url, state_dir, numbered(0, 10), retry_max_backoff=1.0)
    at = [r["at"] for r in stub.requests]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    steps = [0.5, 1.0, 1.0, 1.0]  # 0.5 s doubling, capped at retry_max_backoff; each wait is jittered in [step/2, step]
    assert len(gaps) == len(steps)
    for gap, step in zip(gaps, steps, strict=True):
        assert step / 2 - 0.02 <= gap <= step + 0.5  # the upper slack is for a busy machine
    assert sorted(stub.accepted) == sorted(numbered(0, 10))
    await pipeline.stop(1)


async def test_refused_lines_stay_spooled_while_the_dead_letter_file_cannot_be_written(stub: Stub,
                                                                                      state_dir: Path) -> None:
    stub.behaviour = lambda lines, _: (400, {"error": "bad"}, {}) if any("vbad" in line for line in lines) else None
    blocker = state_dir / "dead-letter"
    blocker.write_text("a file where the dead-letter folder goes")
    pipeline = SinkPipeline(config("influxdb_v1", stub.url), str(state_dir))
    await pipeline.start()
    await pipeline.submit(numbered(0, 4, bad={2}))
    assert not await pipeline.flush(timeout=1)
    status = pipeline.status()["sinks"]["influxdb_v1"]
    assert status["last_error"].startswith("io_error") and status["pending_bytes"] > 0
    blocker.unlink()
    assert await pipeline.flush(timeout=10)
    await pipeline.stop(1)
    assert (state_dir / "dead-letter" / "influxdb_v1.lp").read_text().splitlines()[1:] == \
        [line for line in numbered(0, 4, bad={2}) if "vbad" in line]
    assert set(stub.accepted) == {line for line in numbered(0, 4, bad={2}) if "vbad" not in line}
