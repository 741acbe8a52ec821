"""Shared fixtures. Real servers (InfluxDB 1.x, VictoriaMetrics) are started once per session on
loopback ports (see tests/servers.py); tests that use them are marked `integration`. A missing server
binary fails the test when $CI is set, and skips it otherwise."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import structlog

from tests.servers import (
    InfluxServer,
    ServerUnavailable,
    VictoriaMetricsServer,
    _Server,
    start_influxd,
    start_victoria_metrics,
)

S = TypeVar("S", bound=_Server)


def server_unavailable(exc: ServerUnavailable) -> None:
    """Fail in CI (the servers are part of the test environment there), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"integration server unavailable in CI: {exc}", pytrace=False)
    pytest.skip(f"integration server unavailable: {exc}")


def _session_server(start: Callable[[Path], S], root: Path) -> Iterator[S]:
    try:
        server = start(root)
    except ServerUnavailable as exc:
        server_unavailable(exc)
        raise
    yield server
    server.stop()


def _running(server: S) -> S:
    """A session server, started again if an outage test left it stopped."""
    if not server.running:
        server.start()
    return server


@pytest.fixture(scope="session")
def influxd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One influxd (InfluxDB 1.x) for the session."""
    yield from _session_server(start_influxd, tmp_path_factory.mktemp("influxd"))


@pytest.fixture
def influxd(influxd_server: InfluxServer) -> InfluxServer:
    """The session's influxd, started again if an outage test left it stopped."""
    return _running(influxd_server)


@pytest.fixture
def influx_db(influxd: InfluxServer) -> str:
    """A fresh, empty database on the session's influxd."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    influxd.create_database(name)
    return name


@pytest.fixture(scope="session")
def victoria_metrics_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetricsServer]:
    """One VictoriaMetrics single node for the session."""
    yield from _session_server(start_victoria_metrics, tmp_path_factory.mktemp("victoria-metrics"))


@pytest.fixture
def victoria_metrics(victoria_metrics_server: VictoriaMetricsServer) -> VictoriaMetricsServer:
    return _running(victoria_metrics_server)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """An empty state directory (spool, dead letters...)."""
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults: a test that configured a level filter (or a stream)
    must not decide what the next test's log capture sees."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
