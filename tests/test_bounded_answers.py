"""Answers larger than `platform.max_response_bytes` are refused or cut off while streaming, counted as
`outcome="too_large"`, never retried, and cost no more memory than the limit, against a real HTTP
server in its own process (tests/big_answer_server.py) with both transports, and through the daemon."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from collector.config import PlatformConfig
from collector.endpoints import ENDPOINTS
from collector.metrics import REGISTRY
from collector.platform.client import PlatformClient
from collector.platform.errors import ResponseTooLarge
from tests.daemon_run import REPO, DaemonProcess, wait_for
from tests.servers import free_port

LIMIT = 1024 * 1024
DEVICE_FLOW = ENDPOINTS["device_flow"]


@pytest.fixture(scope="module")
def big_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.big_answer_server", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and "listening" in proc.stdout.readline()
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def config(transport: str, **overrides: Any) -> PlatformConfig:
    return PlatformConfig.model_validate({
        "app_id": "app-1", "app_secret": "secret-1", "rate_limit": 1000, "burst": 1000,
        "max_response_bytes": LIMIT, "transport": transport,
        "retries": {"max_attempts": 4, "backoff_initial": 0.01, "backoff_max": 0.02}, **overrides})


def too_large_count() -> float:
    return REGISTRY.get_sample_value("iot_collector_upstream_requests_total",
                                     {"endpoint": "device_flow", "outcome": "too_large"}) or 0.0


TOO_LARGE_SERIES = 'iot_collector_upstream_requests_total{endpoint="device_flow",outcome="too_large"}'


def sample(exposition: str, series: str) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def server_stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/stats", timeout=10).json())


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("mode", ["length", "chunked", "close", "gzip"])
async def test_an_answer_over_the_limit_fails_once_without_being_read_whole(big_server: str, transport: str,
                                                                            mode: str) -> None:
    size = 256 * 1024 * 1024
    before = too_large_count()
    started = time.monotonic()
    with capture_logs() as logs:
        async with PlatformClient(config(transport), base_url=big_server) as client:
            result = await client.fetch(DEVICE_FLOW, [f"{mode}-{size}"])
            # The connection the big answer came on is dropped, not reused: the next poll works.
            after = await client.fetch(DEVICE_FLOW, ["sample"])
    elapsed = time.monotonic() - started
    assert len(result.failed) == 1 and not result.items
    error = result.failed[0][1]
    assert isinstance(error, ResponseTooLarge) and not error.transient
    assert "platform.max_response_bytes" in str(error)
    assert error.declared == (size if mode == "length" else None)
    assert too_large_count() - before == 1  # one attempt: not retried
    assert next(e for e in logs if e["event"] == "upstream request failed")["error"] == "ResponseTooLarge"
    assert not after.failed and len(after.items) == 1
    assert elapsed < 20, f"{elapsed:.1f}s: the answer was read far past the limit"
    sent = server_stats(big_server)[mode]
    if mode != "gzip":
        # The server could write the limit plus what the socket buffers hold, never the whole answer.
        assert sent["aborted"] is True and sent["sent"] < size / 4, sent


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_an_answer_at_the_limit_is_accepted(big_server: str, transport: str) -> None:
    async with PlatformClient(config(transport, max_response_bytes=8192), base_url=big_server) as client:
        result = await client.fetch(DEVICE_FLOW, ["sample"])
    assert not result.failed and len(result.items) == 1


_MEASURE = textwrap.dedent("""
    import asyncio, resource, sys
    from collector.config import PlatformConfig
    from collector.endpoints import ENDPOINTS
    from collector.platform.client import PlatformClient

    async def main(url, ask, limit):
        config = PlatformConfig.model_validate({"app_id": "a", "app_secret": "s", "max_response_bytes": limit,
                                                "retries": {"max_attempts": 1}})
        async with PlatformClient(config, base_url=url) as client:
            result = await client.fetch(ENDPOINTS["device_flow"], [ask])
        outcome = type(result.failed[0][1]).__name__ if result.failed else "ok"
        print("RESULT", outcome, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
""")


def peak_rss_kib(url: str, ask: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _MEASURE, url, ask, str(LIMIT)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    _, outcome, peak = next(line for line in out.splitlines() if line.startswith("RESULT ")).split()
    return outcome, int(peak)


@pytest.mark.parametrize("mode", ["chunked", "length"])
def test_peak_memory_does_not_grow_with_the_size_of_the_answer(big_server: str, mode: str) -> None:
    small_outcome, small = peak_rss_kib(big_server, f"{mode}-{4 * LIMIT}")
    huge_outcome, huge = peak_rss_kib(big_server, f"{mode}-{512 * LIMIT}")
    assert small_outcome == huge_outcome == "ResponseTooLarge"
    # 128 times the answer, the same peak within a few MB (the whole answer would add 512 MB).
    assert huge - small < 8 * 1024, f"peak RSS {small} KiB for 4 MiB, {huge} KiB for 512 MiB"


def test_the_daemon_counts_oversized_answers_and_keeps_polling(tmp_path: Path, big_server: str) -> None:
    devices = ["chunked-67108864", "length-67108864", "sample"]
    daemon = DaemonProcess(tmp_path, {
        "platform": {"base_url": big_server, "app_id": "a", "app_secret": "s", "max_response_bytes": "1MiB",
                     "rate_limit": 50},
        "inventory": {"devices": devices},
        "jobs": {name: {"enabled": name == "device_flow", "interval": "2s"} for name in
                 ("device_status", "device_flow", "card_status", "card_usage", "card_info", "account_assets",
                  "card_month_usage", "card_actions")},
        "http": {"port": 0},
        "logging": {"level": "info", "format": "json"},
        "state_dir": str(tmp_path / "state"),
    }).start(wait_ready=False)
    try:
        wait_for(lambda: sample(daemon.get("/metrics").text, TOO_LARGE_SERIES) >= 4, 30,
                 "two cycles of oversized answers counted")
        rss = sample(daemon.get("/metrics").text, "process_resident_memory_bytes")
        status = daemon.get("/api/status").json()
    finally:
        assert daemon.stop() == 0
    failing = {d["device_no"]: d["error"] for d in status["failing_devices"]}
    assert set(failing) == {"chunked-67108864", "length-67108864"}
    assert all("platform.max_response_bytes" in e for e in failing.values())
    assert rss < 200 * 1024 * 1024, f"RSS {rss / 1e6:.0f} MB after 64 MB answers"
    polls = [e for e in daemon.log_events() if e["event"] == "poll failed"]
    assert polls and {e["error_type"] for e in polls} == {"ResponseTooLarge"}
