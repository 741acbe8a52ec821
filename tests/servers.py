"""Real database servers for integration tests and benchmarks: InfluxDB 1.x (Debian's `influxd`) and
VictoriaMetrics, started on free loopback ports with their data in a temporary directory.

`InfluxServer` / `VictoriaMetricsServer` can be stopped and started again on the same port and data
(for outage tests), and offer the query helpers the tests need: InfluxQL through `/query` and
VictoriaMetrics' `/api/v1/export`. A missing binary raises `ServerUnavailable`; the fixtures in
conftest.py turn that into a failure when `$CI` is set and a skip otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

INFLUXD = os.environ.get("INFLUXD", "/usr/bin/influxd")
VICTORIA_METRICS = os.environ.get("VICTORIA_METRICS", "/usr/bin/victoria-metrics")


class ServerUnavailable(RuntimeError):
    """The server binary is missing or would not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(path: str, package: str, env: str = "") -> str:
    """The executable at `path` (or its name on $PATH); ServerUnavailable says how to get it."""
    env = env or package.upper().replace("-", "_")
    found = path if os.path.isfile(path) and os.access(path, os.X_OK) else shutil.which(os.path.basename(path))
    if not found:
        raise ServerUnavailable(f"{path} not found: install the Debian package `{package}` "
                                f"(apt-get install {package}) or point ${env} at the binary")
    return found


class _Server:
    """A child process that serves HTTP on `port`; stop() and start() keep port and data."""

    name = "server"
    ready_path = "/"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerUnavailable(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.ready_path, timeout=1.0).status_code < 300:
                    return
            time.sleep(0.05)
        raise ServerUnavailable(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL if it hangs)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def influxdb_config(data: Path, http_port: int, bind_port: int, max_body_size: int = 25_000_000) -> str:
    """An `influxd -config` file: data under `data`, HTTP and the backup port on loopback, nothing
    else running (no reporting, monitor store, continuous queries or subscriptions), quiet logs."""
    return f"""
reporting-disabled = true
bind-address = "127.0.0.1:{bind_port}"

[meta]
  dir = "{data / 'meta'}"

[data]
  dir = "{data / 'data'}"
  wal-dir = "{data / 'wal'}"
  query-log-enabled = false
  trace-logging-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  max-body-size = {max_body_size}

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false

[logging]
  level = "warn"
"""


class InfluxServer(_Server):
    """InfluxDB 1.x (`influxd`, v1 HTTP API, InfluxQL)."""

    name = "influxd"
    ready_path = "/ping"

    def __init__(self, root: Path, *, max_body_size: int = 25_000_000) -> None:
        self.binary = find_binary(INFLUXD, "influxdb", "INFLUXD")
        super().__init__(root)
        self.bind_port = free_port()
        self.config_path = root / "influxdb.conf"
        self.config_path.write_text(influxdb_config(root, self.port, self.bind_port, max_body_size))

    def command(self) -> list[str]:
        return [self.binary, "-config", str(self.config_path)]

    def query(self, q: str, db: str = "", *, epoch: str = "ns") -> list[dict[str, Any]]:
        """Run InfluxQL; returns the `series` of the first result (empty list if none)."""
        response = httpx.post(self.url + "/query", params={"db": db, "epoch": epoch}, data={"q": q},
                              timeout=30.0)
        response.raise_for_status()
        result = response.json()["results"][0]
        if "error" in result:
            raise RuntimeError(f"InfluxQL error for {q!r}: {result['error']}")
        return list(result.get("series", []))

    def rows(self, q: str, db: str) -> list[dict[str, Any]]:
        """Rows of every series as dicts (column -> value), series tags merged in."""
        out: list[dict[str, Any]] = []
        for series in self.query(q, db):
            tags = series.get("tags", {})
            for values in series.get("values", []):
                out.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return out

    def create_database(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"')

    def write(self, db: str, body: bytes, *, precision: str = "ns") -> httpx.Response:
        return httpx.post(self.url + "/write", params={"db": db, "precision": precision}, content=body,
                          timeout=60.0)


class VictoriaMetricsServer(_Server):
    """VictoriaMetrics single node (InfluxDB line protocol in, `/api/v1/export` out)."""

    name = "victoria-metrics"
    ready_path = "/health"

    def __init__(self, root: Path) -> None:
        self.binary = find_binary(VICTORIA_METRICS, "victoria-metrics", "VICTORIA_METRICS")
        super().__init__(root)

    def command(self) -> list[str]:
        return [self.binary, f"-storageDataPath={self.root / 'data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y",
                "-loggerLevel=ERROR", "-search.latencyOffset=0s", "-selfScrapeInterval=0"]

    def force_flush(self) -> None:
        httpx.get(self.url + "/internal/force_flush", timeout=30.0)

    def export(self, match: str, *, until: Callable[[list[dict[str, Any]]], bool] | None = None,
               timeout: float = 15.0) -> list[dict[str, Any]]:
        """Series matching `match` (a series selector) as VictoriaMetrics exports them: one dict per
        series with `metric` (labels), `values` and `timestamps` (ms). Ingestion is asynchronous, so
        this polls until `until(series)` holds (default: at least one series) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            self.force_flush()
            response = httpx.get(self.url + "/api/v1/export", params={"match[]": match, "start": "0"},
                                 timeout=30.0)
            response.raise_for_status()
            series = [json.loads(line) for line in response.text.splitlines() if line.strip()]
            if (until(series) if until else bool(series)) or time.monotonic() > deadline:
                return series
            time.sleep(0.2)


def start_influxd(root: Path, **kwargs: Any) -> InfluxServer:
    root.mkdir(parents=True, exist_ok=True)
    server = InfluxServer(root, **kwargs)
    server.start()
    return server


def start_victoria_metrics(root: Path) -> VictoriaMetricsServer:
    root.mkdir(parents=True, exist_ok=True)
    server = VictoriaMetricsServer(root)
    server.start()
    return server


def require(binary: str, package: str) -> str:
    """A tool's path for a test; a failure under CI (it must be installed there), a skip locally."""
    import os
    import shutil

    import pytest

    found = shutil.which(binary)
    if found:
        return found
    message = f"{binary} not found: apt-get install {package} (scripts/setup.sh --test does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class SimulatorProcess:
    """`iot-collector simulate ARGS` as a child process on a free port (`--port 0`): its URL is read
    from the banner; stop() sends SIGTERM and returns the exit code. `stderr` holds what it wrote
    there when it exits on its own (a bad argument: read it after `start` raised)."""

    def __init__(self, *args: str, cwd: Path | None = None) -> None:
        self.args = ["--port", "0", *args]
        self.cwd = cwd
        self.url = ""
        self.banner: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> SimulatorProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "collector", "simulate", *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=self.cwd)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise ServerUnavailable(f"iot-collector simulate exited ({self.proc.wait()}): {err.strip()}")
            self.banner.append(line)
            if line.startswith("listening on "):
                self.url = line.split()[2]
                return self
        self.stop()
        raise ServerUnavailable("iot-collector simulate did not print its URL in time")

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.url}/_sim/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
