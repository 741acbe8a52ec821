"""Benchmark of the collection pipeline. Prints numbers, not pass/fail.

1. Device polls per second through the whole pipeline (client -> parse -> fleet state -> points -> spool
   -> file sink) against the simulator in its own process, versus a bare loop making the same signed
   requests at the same concurrency with the transport the collector uses (httpx over aiohttp), and
   versus a bare aiohttp loop. Also the collector's CPU microseconds per device poll.
2. Resident memory per tracked entity (device or SIM) at 10k and 100k devices.
3. Request-rate evenness over one interval of the staggered scheduler: max second / mean second.

    .venv/bin/python bench/bench_pipeline.py [--devices 2000] [--polls 4000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.config import Config, parse_config  # noqa: E402
from collector.endpoints import ENDPOINTS  # noqa: E402
from collector.platform.signing import Signer  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_simulator(devices: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "collector", "simulate", "--devices", str(devices), "--seed", "1",
                             "--speed", "0", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("simulator did not start")


def bench_config(base_url: str, concurrency: int, state_dir: str) -> Config:
    return parse_config({
        "platform": {"base_url": base_url, "app_id": "demo", "app_secret": "demo-secret", "rate_limit": 1e6,
                     "burst": 1000, "max_concurrency": concurrency, "transport": "aiohttp"},
        "sinks": {"file": {"enabled": True, "path": f"{state_dir}/points.lp", "max_bytes": "1GiB"},
                  "spool": {"fsync": os.environ.get("BENCH_FSYNC", "batch")}},
        "state_dir": state_dir,
    }, env={})


def signed(config: Config, device_no: str) -> tuple[dict[str, str], dict[str, str]]:
    form = {"deviceNo": device_no}
    headers = {"appID": config.platform.app_id, "apiVersion": config.platform.api_version,
               "traceID": uuid.uuid4().hex, "timestamp": str(int(time.time()))}
    secret = config.platform.app_secret.get_secret_value() if config.platform.app_secret else ""
    headers["sign"] = Signer.from_config(config.platform.sign, secret).sign(headers, form)
    return headers, form


async def run_concurrently(n: int, concurrency: int, one: object) -> float:
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            await one(i)  # type: ignore[operator]

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def bare_httpx(config: Config, devices: list[str], polls: int, concurrency: int) -> tuple[float, float]:
    import httpx
    import orjson
    from httpx_aiohttp import AiohttpTransport

    url = str(config.platform.base_url).rstrip("/") + "/openapi/iot/queryDeviceFlow"
    async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=10) as client:
        async def one(i: int) -> None:
            headers, form = signed(config, devices[i % len(devices)])
            response = await client.post(url, data=form, headers=headers)
            assert orjson.loads(response.content)["code"] == 0

        cpu = time.process_time()
        elapsed = await run_concurrently(polls, concurrency, one)
        return polls / elapsed, (time.process_time() - cpu) / polls * 1e6


async def bare_aiohttp(config: Config, devices: list[str], polls: int, concurrency: int) -> tuple[float, float]:
    import aiohttp
    import orjson

    url = str(config.platform.base_url).rstrip("/") + "/openapi/iot/queryDeviceFlow"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(i: int) -> None:
            headers, form = signed(config, devices[i % len(devices)])
            async with session.post(url, data=form, headers=headers) as response:
                assert orjson.loads(await response.read())["code"] == 0

        cpu = time.process_time()
        elapsed = await run_concurrently(polls, concurrency, one)
        return polls / elapsed, (time.process_time() - cpu) / polls * 1e6


async def whole_pipeline(config: Config, devices: list[str], polls: int, concurrency: int) -> tuple[float, float]:
    from collector.pipeline import Pipeline
    from collector.platform.client import PlatformClient
    from collector.sinks.pipeline import SinkPipeline
    from collector.state import FleetState

    state = FleetState()
    state.sync_inventory({d: {"customer": f"c{i % 4}"} for i, d in enumerate(devices)}, {})
    sinks = SinkPipeline(config.sinks, config.state_dir)
    await sinks.start()
    async with PlatformClient(config.platform, config.privacy) as client:
        pipeline = Pipeline(config, client, state, sinks.submit)

        async def one(i: int) -> None:
            assert await pipeline.poll(ENDPOINTS["device_flow"], [devices[i % len(devices)]])

        # As in the daemon, a poll is a task of its own: the client holds it to `concurrency` requests in
        # flight (platform.max_concurrency), and waiting for the spool's fsync happens outside that slot.
        # Driving the pipeline with only `concurrency` workers would measure fsync latency instead.
        cpu = time.process_time()
        elapsed = await run_concurrently(polls, concurrency * 8, one)
        cpu_used = time.process_time() - cpu
    await sinks.stop(30)
    return polls / elapsed, cpu_used / polls * 1e6


def memory_per_entity(devices: int) -> dict[str, float]:
    """In a fresh process: the memory a FleetState holding `devices` parsed devices and their SIMs
    keeps. The simulator's answers are rendered to bytes first, so its own memory is not counted;
    then tracemalloc measures the Python heap the state retains (exact) and /proc the RSS growth."""
    code = f"""
import gc, json, time, tracemalloc
from collector.config import PlatformConfig
from collector.platform.parse import ParseContext, parse_device
from collector.platform.wire import decode_json
from collector.simulator import Simulator
from collector.state import USAGE_SAMPLES, USAGE_SPACING_SECONDS, FleetState

def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096

sim = Simulator(devices={devices}, seed=1, speed=0)
now = sim.now()
numbers = sim.device_numbers()
answers = [json.dumps(sim.wire.device(sim.fleet.device_state(i, now))).encode() for i in range(len(numbers))]
del sim
ctx = ParseContext.from_config(PlatformConfig(), polled_at=time.time())
state = FleetState()
state.sync_inventory({{d: {{"customer": "acme", "group": "g" + str(i % 10)}} for i, d in enumerate(numbers)}}, {{}})
gc.collect()
before = rss()
tracemalloc.start()
for i in range(len(answers)):
    raw, answers[i] = answers[i], b""
    state.observe_device(parse_device(decode_json(raw), ctx))
    del raw
gc.collect()
heap = tracemalloc.get_traced_memory()[0]
after = rss()
# A day later every SIM's usage history is full (USAGE_SAMPLES readings, spread over the day).
for sim in state.sims.values():
    used = sim.obs.used_bytes if sim.obs is not None and sim.obs.used_bytes is not None else 0
    since = sim.usage_at or time.time()
    for k in range(1, USAGE_SAMPLES):
        sim.record_usage(since + USAGE_SPACING_SECONDS * k, used + 1000 * k)
assert all(len(sim.usage) >= USAGE_SAMPLES - 1 for sim in state.sims.values())
gc.collect()
full = tracemalloc.get_traced_memory()[0]
tracemalloc.stop()
entities = len(state.devices) + len(state.sims)
print(json.dumps({{"devices": len(state.devices), "sims": len(state.sims), "heap": heap, "rss": after - before,
                  "per_entity": heap / entities, "rss_per_entity": (after - before) / entities,
                  "full_per_entity": full / entities}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


async def evenness(config: Config, devices: list[str], interval: float) -> dict[str, float]:
    """Request starts per second over one interval of the real scheduler driving the real pipeline."""
    from collector.pipeline import Pipeline
    from collector.platform.client import PlatformClient
    from collector.schedule import PollJob, Scheduler
    from collector.sinks.pipeline import SinkPipeline
    from collector.state import FleetState

    state = FleetState()
    state.sync_inventory({d: {} for d in devices}, {})
    sinks = SinkPipeline(config.sinks, config.state_dir)
    await sinks.start()
    starts: list[float] = []
    async with PlatformClient(config.platform, config.privacy) as client:
        pipeline = Pipeline(config, client, state, sinks.submit)

        async def poll(ids: object) -> bool:
            starts.append(time.time())
            return await pipeline.poll(ENDPOINTS["device_flow"], ids)  # type: ignore[arg-type]

        job = PollJob("device_flow", interval, 1, lambda: devices, poll)
        scheduler = Scheduler([job], config.platform.rate_limit, concurrency=config.platform.max_concurrency)
        scheduler.start()
        while len(starts) < len(devices):  # noqa: ASYNC110 - polling a plain list, once per 0.2 s
            await asyncio.sleep(0.2)
        await scheduler.stop(5)
    await sinks.stop(30)
    first = min(starts)
    per_second = Counter(int(t - first) for t in starts)
    seconds = [per_second.get(s, 0) for s in range(int(interval * 0.98))]
    mean = sum(seconds) / len(seconds)
    return {"devices": len(devices), "interval_s": interval, "mean_per_s": mean, "max_per_s": max(seconds),
            "min_per_s": min(seconds), "max_over_mean": max(seconds) / mean}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--polls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    from collector.logs import configure_logging

    configure_logging("warning", "console", cache=True)  # as the daemon does

    proc, base_url = start_simulator(args.devices)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = bench_config(base_url, args.concurrency, tmp)
            from collector.simulator import Simulator

            devices = Simulator(devices=args.devices, seed=1, speed=0).device_numbers()
            asyncio.run(bare_aiohttp(config, devices, 300, args.concurrency))  # warm-up: connections, caches
            results = {}
            for name, fn in (("bare aiohttp", bare_aiohttp), ("bare httpx+aiohttp", bare_httpx),
                             ("whole pipeline", whole_pipeline)):
                gc.collect()
                results[name] = asyncio.run(fn(config, devices, args.polls, args.concurrency))
            print(f"\n## device polls, {args.polls} polls, concurrency {args.concurrency}, "
                  f"simulator in its own process ({args.devices} devices)")
            print(f"{'loop':<22}{'polls/s':>10}{'CPU us/poll':>14}")
            for name, (rate, cpu) in results.items():
                print(f"{name:<22}{rate:>10.0f}{cpu:>14.0f}")
            pipe, httpx_rate, aio = results["whole pipeline"][0], results["bare httpx+aiohttp"][0], \
                results["bare aiohttp"][0]
            print(f"ratio pipeline / bare httpx+aiohttp (same transport): {pipe / httpx_rate:.2f}  (target >= 0.8)")
            print(f"ratio pipeline / bare aiohttp: {pipe / aio:.2f}")
            cpu_extra = results["whole pipeline"][1] - results["bare httpx+aiohttp"][1]
            print(f"collector CPU per device poll: {results['whole pipeline'][1]:.0f} us "
                  f"({cpu_extra:.0f} us above the bare loop)")

            even_devices = devices[: min(len(devices), int(args.interval * 100))]
            even_config = parse_config({**config.model_dump(mode="json", exclude={"platform"}),
                                        "platform": {**config.platform.model_dump(mode="json"),
                                                     "app_secret": "demo-secret", "rate_limit": 1000}}, env={})
            ev = asyncio.run(evenness(even_config, even_devices, args.interval))
            print(f"\n## evenness over one interval: {ev['devices']} devices every {ev['interval_s']:.0f}s")
            print(f"requests/s mean {ev['mean_per_s']:.1f}, max {ev['max_per_s']}, min {ev['min_per_s']}; "
                  f"max/mean {ev['max_over_mean']:.2f}  (target <= 1.5)")
    finally:
        proc.terminate()
        proc.wait(10)

    if not args.skip_memory:
        print("\n## memory per tracked entity (device or SIM) held by the fleet state")
        for n in (10_000, 100_000):
            m = memory_per_entity(n)
            print(f"{m['devices']:>7} devices + {m['sims']:>7} SIMs: heap {m['heap'] / 2**20:7.1f} MiB = "
                  f"{m['per_entity']:.0f} bytes/entity (target <= 2048); RSS growth {m['rss'] / 2**20:.1f} MiB = "
                  f"{m['rss_per_entity']:.0f} bytes/entity; with every usage history full: "
                  f"{m['full_per_entity']:.0f} bytes/entity")
    print(f"\nmax RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
