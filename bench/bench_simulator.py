"""Throughput of the platform simulator: how many signed queryDeviceFlow requests per second it serves.

The simulator runs in its own process, pinned to one CPU core; a plain aiohttp client loop (no
collector code besides the signer) runs in one or more other processes, pinned to the other cores,
with keep-alive connections and zero added latency, asking for devices round-robin across the fleet.
Besides the achieved rate it reads the server process's CPU time, so it also reports what one fully
used core would serve (`capacity`): the honest figure when the client, not the server, saturates first.

    .venv/bin/python bench/bench_simulator.py --devices 10000 --duration 10 --concurrency 64

Prints numbers, never passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.platform.endpoints import DEFAULT_ENDPOINTS, Endpoint
from collector.platform.signing import Signer
from collector.simulator import EMBEDDED_APP_ID, EMBEDDED_APP_SECRET, Simulator


def _pin(cores: set[int]) -> None:
    if hasattr(os, "sched_setaffinity") and cores:
        os.sched_setaffinity(0, cores)


def _serve(devices: int, seed: int, core: int, ready: Any, stop: Any) -> None:
    _pin({core})

    async def run() -> None:
        sim = Simulator(devices=devices, seed=seed, speed=1.0)
        url = await sim.start("127.0.0.1", 0)
        gc.freeze()  # as `iot-collector simulate` does
        ready.send((url, sim.device_numbers()))
        await asyncio.to_thread(stop.wait)
        await sim.stop()

    asyncio.run(run())


def _drive(url: str, device_nos: list[str], offset: int, concurrency: int, warmup: float, duration: float,
           core: int | None, out: Any) -> None:
    if core is not None:
        _pin({core})
    import aiohttp

    path = DEFAULT_ENDPOINTS[Endpoint.DEVICE_FLOW].path
    param = DEFAULT_ENDPOINTS[Endpoint.DEVICE_FLOW].param
    signer = Signer(secret=EMBEDDED_APP_SECRET)

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        counter = offset
        measuring = False
        deadline = 0.0
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        async with aiohttp.ClientSession(url, connector=connector) as session:

            async def worker() -> None:
                nonlocal counter, errors
                while True:
                    now = time.perf_counter()
                    if measuring and now >= deadline:
                        return
                    device_no = device_nos[counter % len(device_nos)]
                    counter += 1
                    form = {param: device_no}
                    headers = {"appID": EMBEDDED_APP_ID, "apiVersion": "2.0", "traceID": uuid.uuid4().hex,
                               "timestamp": str(int(time.time()))}
                    headers["sign"] = signer.sign(headers, form)
                    async with session.post(path, data=form, headers=headers) as response:
                        body = await response.read()
                    if response.status != 200 or not body.startswith(b'{"code":0'):
                        errors += 1
                    if measuring:
                        latencies.append(time.perf_counter() - now)

            tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
            await asyncio.sleep(warmup)
            measuring = True
            deadline = time.perf_counter() + duration
            await asyncio.gather(*tasks)
        return {"requests": len(latencies), "errors": errors, "latencies": latencies}

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
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    server_core = cores[0]
    client_cores: list[int | None] = [*cores[1:]] or [None]
    ctx = mp.get_context("spawn")
    ready_recv, ready_send = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    started = time.perf_counter()
    server = ctx.Process(target=_serve, args=(args.devices, args.seed, server_core, ready_send, stop))
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
                                                args.duration, core, send))
        proc.start()
        pipes.append(recv)
        clients.append(proc)
    time.sleep(args.warmup)
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
        "devices": args.devices, "clients": args.clients, "concurrency": args.concurrency,
        "duration_s": args.duration, "requests": requests, "errors": errors,
        "req_per_s": round(requests / args.duration),
        "server_cpu_share": round(cpu / wall, 2) if wall else None,
        "capacity_req_per_core_s": round(requests / cpu) if cpu else None,
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
