"""Throughput of the platform simulator: how many signed queryDeviceFlow requests per second it serves.

The simulator runs in its own process, pinned to one CPU core; a plain aiohttp client loop (no
collector code besides the signer) runs in one or more other processes, pinned to the other cores,
with keep-alive connections and zero added latency, asking for devices round-robin across the fleet.
`--driver collector` drives it with the collector's own PlatformClient instead, to compare what a
request costs each side.
Besides the achieved rate it reads the server process's CPU time, so it also reports what one fully
used core would serve (`capacity`): the honest figure when the client, not the server, saturates first.

By default the server first answers every device once (a collector's first polling round), so the
run measures the steady state; `--cold` measures first visits instead (every request builds the
device's profile, as it does on every round for fleets beyond the 20k-profile cache).
`--answer-cache N` sizes the simulator's cache of serialized device answers (0: off, every request
computes and serialises its answer afresh, as before the cache existed).

    .venv/bin/python bench/bench_simulator.py --devices 10000 --duration 10 --concurrency 64
    .venv/bin/python bench/bench_simulator.py --devices 100000 --duration 10 --concurrency 64 --cold
    .venv/bin/python bench/bench_simulator.py --devices 10000 --answer-cache 0
    .venv/bin/python bench/bench_simulator.py --devices 10000 --speed 60   # the demo's pace

Prints numbers, never passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.endpoints import DEFAULT_SPECS
from collector.platform.signing import Signer
from collector.simulator import EMBEDDED_APP_ID, EMBEDDED_APP_SECRET, Simulator
from collector.simulator.answers import ANSWER_CACHE
from collector.simulator.contract import Endpoint


def _pin(cores: set[int]) -> None:
    if hasattr(os, "sched_setaffinity") and cores:
        os.sched_setaffinity(0, cores)


def _serve_empty(ready: Any, stop: Any) -> None:
    """The floor: the same aiohttp low-level server answering the vendor's sample, no model, no checks."""
    from aiohttp import web

    sample = (Path(__file__).resolve().parent.parent / "collector" / "data" / "sample-queryDeviceFlow.json")
    body = orjson.dumps(orjson.loads(sample.read_bytes()))  # compact, as the simulator answers

    async def handler(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=body, headers={"Content-Type": "application/json;charset=UTF-8"})

    async def run() -> None:
        runner = web.ServerRunner(web.Server(handler, access_log=None))
        await runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        ready.send((f"http://127.0.0.1:{sock.getsockname()[1]}", ["0"]))
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()

    asyncio.run(run())


def _serve(devices: int, seed: int, core: int, warm: bool, empty: bool, answer_cache: int, speed: float,
           ready: Any, stop: Any) -> None:
    _pin({core})
    if empty:
        _serve_empty(ready, stop)
        return

    async def run() -> None:
        sim = Simulator(devices=devices, seed=seed, speed=speed, answer_cache=answer_cache)
        if warm:
            # One polling round, as a collector's first cycle does: profiles, dates and answers get cached.
            now = sim.now()
            for index in range(devices):
                sim.device_data(index, now)
        url = await sim.start("127.0.0.1", 0)
        gc.freeze()  # as `iot-collector simulate` does
        ready.send((url, sim.device_numbers()))
        await asyncio.to_thread(stop.wait)
        await sim.stop()

    asyncio.run(run())


def _drive(url: str, device_nos: list[str], offset: int, concurrency: int, warmup: float, duration: float,
           core: int | None, driver: str, out: Any) -> None:
    if core is not None:
        _pin({core})
    import aiohttp

    from collector.config import PlatformConfig
    from collector.logs import configure_logging
    from collector.platform.client import PlatformClient
    from collector.platform.errors import PlatformError

    configure_logging("warning", "json", stream=sys.stderr)  # as the daemon runs: no per-request lines

    path = DEFAULT_SPECS[Endpoint.DEVICE_FLOW].path
    param = DEFAULT_SPECS[Endpoint.DEVICE_FLOW].param
    signer = Signer(secret=EMBEDDED_APP_SECRET)
    platform = PlatformConfig.model_validate({
        "app_id": EMBEDDED_APP_ID, "app_secret": EMBEDDED_APP_SECRET, "rate_limit": 1e6, "burst": 10_000,
        "max_concurrency": concurrency})

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        counter = offset
        measuring = False
        deadline = 0.0
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        async with aiohttp.ClientSession(url, connector=connector) as session, \
                PlatformClient(platform, base_url=url) as client:

            async def plain(device_no: str) -> bool:
                form = {param: device_no}
                headers = {"appID": EMBEDDED_APP_ID, "apiVersion": "2.0", "traceID": uuid.uuid4().hex,
                           "timestamp": str(int(time.time()))}
                headers["sign"] = signer.sign(headers, form)
                async with session.post(path, data=form, headers=headers) as response:
                    body = await response.read()
                return response.status == 200 and body.startswith(b'{"code":0')

            async def collector(device_no: str) -> bool:
                try:
                    await client.device_flow(device_no)
                except PlatformError:
                    return False
                return True

            one = plain if driver == "aiohttp" else collector

            async def worker() -> None:
                nonlocal counter, errors
                while True:
                    now = time.perf_counter()
                    if measuring and now >= deadline:
                        return
                    device_no = device_nos[counter % len(device_nos)]
                    counter += 1
                    if not await one(device_no):
                        errors += 1
                    if measuring:
                        latencies.append(time.perf_counter() - now)

            tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
            await asyncio.sleep(warmup)
            measuring = True
            deadline = time.perf_counter() + duration
            out.send("measuring")  # the parent samples the server's CPU time from here
            cpu = time.process_time()
            await asyncio.gather(*tasks)
            cpu = time.process_time() - cpu
        return {"requests": len(latencies), "errors": errors, "latencies": latencies, "cpu": cpu}

    out.send(asyncio.run(run()))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64, help="connections per client process")
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--driver", choices=["aiohttp", "collector"], default="aiohttp",
                        help="aiohttp: a plain signed-request loop; collector: the collector's own "
                             "PlatformClient (device_flow, parsed), to compare its cost per request")
    parser.add_argument("--server", choices=["simulator", "empty"], default="simulator",
                        help="empty: the same aiohttp stack answering the sample verbatim (the floor)")
    parser.add_argument("--cold", action="store_true",
                        help="skip the warm-up round: every request is a device's first visit (or, past "
                             "the 20k-profile cache, a rebuild)")
    parser.add_argument("--answer-cache", type=int, default=ANSWER_CACHE,
                        help="device answers the simulator keeps serialized (0: off)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="simulated seconds per wall second (above 1 every reported instant is mapped to the "
                             "wall clock, and answers stay cacheable for a shorter time)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    server_core = cores[0]
    client_cores: list[int | None] = [*cores[1:]] or [None]
    ctx = mp.get_context("spawn")
    ready_recv, ready_send = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    started = time.perf_counter()
    server = ctx.Process(target=_serve, args=(args.devices, args.seed, server_core, not args.cold,
                                              args.server == "empty", args.answer_cache, args.speed, ready_send,
                                              stop))
    server.start()
    url, device_nos = ready_recv.recv()
    startup = time.perf_counter() - started
    assert server.pid is not None

    pipes, clients = [], []
    for i in range(args.clients):
        recv, send = ctx.Pipe(duplex=False)
        core = client_cores[i % len(client_cores)]
        offset = i * (len(device_nos) // max(args.clients, 1))
        proc = ctx.Process(target=_drive, args=(url, device_nos, offset, args.concurrency, args.warmup,
                                                args.duration, core, args.driver, send))
        proc.start()
        pipes.append(recv)
        clients.append(proc)
    for pipe in pipes:
        assert pipe.recv() == "measuring"
    cpu_before, wall_before = _cpu_seconds(server.pid), time.perf_counter()
    results = [pipe.recv() for pipe in pipes]
    cpu_after, wall_after = _cpu_seconds(server.pid), time.perf_counter()
    for proc in clients:
        proc.join()
    stop.set()
    server.join(timeout=10)

    requests = sum(r["requests"] for r in results)
    errors = sum(r["errors"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"])
    cpu = cpu_after - cpu_before
    wall = wall_after - wall_before
    report = {
        "server": args.server, "driver": args.driver, "devices": args.devices,
        "profiles": "cold" if args.cold else "warm", "answer_cache": args.answer_cache, "speed": args.speed,
        "clients": args.clients,
        "concurrency": args.concurrency,
        "duration_s": args.duration, "requests": requests, "errors": errors,
        "req_per_s": round(requests / args.duration),
        "server_cpu_share": round(cpu / wall, 2) if wall else None,
        "capacity_req_per_core_s": round(requests / cpu) if cpu else None,
        "server_cpu_us_per_req": round(cpu / requests * 1e6) if requests else None,
        "client_cpu_us_per_req": round(sum(r["cpu"] for r in results) / requests * 1e6) if requests else None,
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
        "startup_s": round(startup, 2), "cores": len(cores), "python": sys.version.split()[0],
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
