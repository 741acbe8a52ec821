"""A platform for daemon tests: the simulator as its own process (`iot-collector simulate`), and a
proxy in front of it that holds the requests for chosen devices, the way a platform hangs on some
devices only."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import yaml
from aiohttp import web

from tests.daemon_run import REPO, demo_config

# The credentials `iot-collector simulate` accepts without a configuration file.
APP_ID, APP_SECRET = "demo", "demo-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class SimulatorProcess:
    """`iot-collector simulate` on a free loopback port; `devices` its fleet's device numbers."""

    def __init__(self, devices: int, seed: int = 7, speed: float = 60) -> None:
        self.args = ["--devices", str(devices), "--seed", str(seed)]
        self.speed = speed
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        listing = subprocess.run([sys.executable, "-m", "collector", "simulate", *self.args, "--print-inventory"],
                                 capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
        self.devices: list[str] = list(yaml.safe_load(listing.stdout)["devices"])

    def __enter__(self) -> SimulatorProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "collector", "simulate", *self.args,
                                      "--speed", str(self.speed), "--port", str(self.port)],
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the simulator did not start")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def stats(self) -> dict[str, Any]:
        """Requests served by endpoint and outcome (`/_sim/stats`)."""
        answer: dict[str, Any] = httpx.get(self.url + "/_sim/stats", timeout=5).json()
        return answer

    def served(self, outcome: str) -> int:
        """Requests answered with `outcome` (`ok`, `unknown_device`...), all endpoints together."""
        return sum(per.get(outcome, 0) for per in self.stats()["endpoints"].values())

    def iccids(self) -> list[str]:
        """Every SIM of the fleet (`/_sim/inventory`)."""
        fleet = httpx.get(self.url + "/_sim/inventory", timeout=5).json()
        return [i for device in fleet["devices"] for i in device["iccids"]]


def collector_config(tmp: Path, url: str, devices: list[str], **platform: Any) -> dict[str, Any]:
    """The demo configuration (tests/daemon_run.py), polling the platform at `url` for `devices`."""
    config = demo_config(tmp, simulator={"embedded": False},
                         platform={"base_url": url, "app_id": APP_ID, "app_secret": APP_SECRET,
                                   "rate_limit": 200, **platform})
    config["inventory"] = {"devices": devices}
    return config


class SlowProxy:
    """Forwards every request to `upstream` unchanged, except those asking for a device in `slow`:
    they get no answer for `hang` seconds (a client gives up first), and those for a device in
    `refused`: HTTP 400 (a failure that is not retried). Runs its own event loop in a thread, so a
    daemon in another process can use it."""

    def __init__(self, upstream: str, slow: set[str], hang: float = 600.0, refused: set[str] | None = None) -> None:
        self.upstream = upstream
        self.slow = slow
        self.refused = refused or set()
        self.hang = hang
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.held: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._client: httpx.AsyncClient | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        device = parse_qs(body.decode()).get("deviceNo", [""])[0]
        if device in self.slow:
            self.held.append(device)
            await asyncio.sleep(self.hang)
            return web.Response(status=504)
        if device in self.refused:
            return web.Response(status=400, text="refused")
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        answer = await self._client.post(self.upstream + request.path, content=body, headers=headers)
        return web.Response(body=answer.content, status=answer.status_code,
                            content_type=answer.headers.get("content-type", "application/json").split(";")[0])

    async def _start(self) -> None:
        self._client = httpx.AsyncClient(timeout=30)
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.aclose()

    def __enter__(self) -> SlowProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
