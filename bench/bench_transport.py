"""Which HTTP transport should the platform client use? Requests per second against a local server.

Starts a minimal aiohttp.web server in a separate process on 127.0.0.1 (it answers every POST with
the queryDeviceFlow sample), then measures, for a fixed duration each, at concurrency 1, 16 (the
default platform.max_concurrency) and 64:

  (a) httpx.AsyncClient with httpx's default transport (httpcore)
  (b) httpx.AsyncClient with httpx_aiohttp.AiohttpTransport (what `platform.transport: aiohttp` selects)
  (c) a bare aiohttp.ClientSession: the baseline the ratios are taken against

Every client sends the same signed-looking form POST and reads the whole body. Rounds are interleaved
(a, b, c, a, b, c, ...) so that noise from a shared machine hits every client alike; the best round
of each is reported.

    .venv/bin/python bench/bench_transport.py [--duration 3] [--rounds 2]

Prints numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import httpx
from aiohttp import web
from httpx_aiohttp import AiohttpTransport

SAMPLE = Path(__file__).resolve().parent.parent / "collector" / "data" / "sample-queryDeviceFlow.json"
PATH = "/openapi/iot/queryDeviceFlow"
BODY = b"deviceNo=9176069816"
CONCURRENCIES = (1, 16, 64)  # 16 is the default platform.max_concurrency


# --- the server (separate process) ---------------------------------------------------------------------


def serve(conn: Connection) -> None:
    body = SAMPLE.read_bytes()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post(PATH, handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        conn.send(port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        await runner.cleanup()

    asyncio.run(main())


# --- the clients ------------------------------------------------------------------------------------------


def headers() -> dict[str, str]:
    return {"appID": "bench", "apiVersion": "2.0", "traceID": uuid.uuid4().hex,
            "timestamp": str(int(time.time())), "sign": "0" * 32,
            "Content-Type": "application/x-www-form-urlencoded"}


Send = Callable[[], Awaitable[int]]


class Client:
    name = ""

    async def __aenter__(self) -> Send:
        raise NotImplementedError

    async def __aexit__(self, *exc: object) -> None:
        raise NotImplementedError


class HttpxClient(Client):
    def __init__(self, base: str, concurrency: int, aiohttp_transport: bool) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        transport = AiohttpTransport(limits=limits) if aiohttp_transport else httpx.AsyncHTTPTransport(limits=limits)
        self.client = httpx.AsyncClient(base_url=base, transport=transport)
        self.name = "httpx + httpx_aiohttp" if aiohttp_transport else "httpx (default transport)"

    async def __aenter__(self) -> Send:
        async def send() -> int:
            response = await self.client.post(PATH, content=BODY, headers=headers())
            return len(response.content)
        return send

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


class AiohttpClient(Client):
    name = "aiohttp.ClientSession (baseline)"

    def __init__(self, base: str, concurrency: int) -> None:
        self.base = base
        self.concurrency = concurrency

    async def __aenter__(self) -> Send:
        self.session = aiohttp.ClientSession(self.base, connector=aiohttp.TCPConnector(limit=self.concurrency))

        async def send() -> int:
            async with self.session.post(PATH, data=BODY, headers=headers()) as response:
                return len(await response.read())
        return send

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()


async def measure(client: Client, concurrency: int, duration: float, warmup: float) -> tuple[float, float]:
    """Requests per second and median latency (ms) of `concurrency` workers sending back to back."""
    async with client as send:
        latencies: list[float] = []
        count = 0
        recording = False

        async def worker(deadline: float) -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                size = await send()
                assert size > 1000, "the server did not answer with the sample"
                if recording:
                    count += 1
                    latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker(time.perf_counter() + warmup) for _ in range(concurrency)))
        recording = True
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + duration) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return count / elapsed, statistics.median(latencies) * 1000


def make(kind: str, base: str, concurrency: int) -> Client:
    if kind == "aiohttp":
        return AiohttpClient(base, concurrency)
    return HttpxClient(base, concurrency, aiohttp_transport=kind == "httpx_aiohttp")


async def run(base: str, duration: float, warmup: float, rounds: int) -> None:
    kinds = ("httpx", "httpx_aiohttp", "aiohttp")
    best: dict[tuple[str, int], tuple[float, float]] = {}
    names: dict[str, str] = {}
    for concurrency in CONCURRENCIES:
        for _ in range(rounds):
            for kind in kinds:
                client = make(kind, base, concurrency)
                names[kind] = client.name
                rps, p50 = await measure(client, concurrency, duration, warmup)
                if rps > best.get((kind, concurrency), (0.0, 0.0))[0]:
                    best[(kind, concurrency)] = (rps, p50)
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, httpx {httpx.__version__}, "
          f"aiohttp {aiohttp.__version__}; {duration:g} s per run, best of {rounds} interleaved rounds\n")
    print(f"| {'client':<34} | {'concurrency':>11} | {'req/s':>8} | {'p50 ms':>7} | {'vs aiohttp':>10} |")
    print(f"|{'-' * 36}|{'-' * 12}:|{'-' * 9}:|{'-' * 8}:|{'-' * 11}:|")
    for concurrency in CONCURRENCIES:
        baseline = best[("aiohttp", concurrency)][0]
        for kind in kinds:
            rps, p50 = best[(kind, concurrency)]
            print(f"| {names[kind]:<34} | {concurrency:>11} | {rps:>8.0f} | {p50:>7.2f} | {rps / baseline:>10.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per client and concurrency")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up before each measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is reported")
    args = parser.parse_args()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(child,), daemon=True)
    server.start()
    try:
        if not parent.poll(30):
            raise SystemExit("the benchmark server did not start")
        port = parent.recv()
        asyncio.run(run(f"http://127.0.0.1:{port}", args.duration, args.warmup, args.rounds))
    finally:
        parent.send("stop")
        server.join(10)
        if server.is_alive():
            server.terminate()


if __name__ == "__main__":
    main()
