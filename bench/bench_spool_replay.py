"""Spool replay speed into InfluxDB after a simulated one-hour outage.

Generates the points the collector would write for N devices during the outage (device status every
5 min, each device's two SIMs every 15 min through the device flow job, card status every 10 min and
card usage every 30 min for those SIMs), appends them to the spool while the database is down, then
starts a real influxd and measures how fast the pipeline drains the spool into it, against posting the
same line protocol directly (httpx, same batch size, same gzip setting) into a fresh database.

    .venv/bin/python bench/bench_spool_replay.py [--devices 10000] [--minutes 60] [--batch-size 5000]

Prints numbers; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.endpoints.card_status import status_line
from collector.endpoints.card_usage import usage_line
from collector.endpoints.device_flow import device_line, sim_line
from collector.platform.models import DeviceObservation, Location, SimObservation
from collector.sinks.config import SinksConfig
from collector.sinks.pipeline import SinkPipeline
from collector.state import SimState
from tests.servers import free_port, start_influxd

GIB = 1024**3
COUNT_FIELD = {"device": "sim_count", "sim": "total_bytes", "card_status": "sim_status", "card_usage": "used_bytes"}


def generate(devices: int, minutes: int, start: float, seed: int = 1) -> list[list[str]]:
    """The collector's output during the outage, as the submit() calls it would make (one per job run
    slice of 200 entities)."""
    rng = random.Random(seed)
    fleet = [(f"86521407{i:07d}", [f"8986088419{i:07d}{s}" for s in (1, 2)],
              {"site": rng.choice(["north", "south", "east", "west"]), "customer": f"c{i % 37}"})
             for i in range(devices)]
    horizon = minutes * 60
    batches: list[list[str]] = []

    def job(interval: int, build: object) -> None:
        for cycle in range(0, horizon, interval):
            for first in range(0, devices, 200):
                lines: list[str] = []
                for index in range(first, min(first + 200, devices)):
                    at = start + cycle + interval * index / devices  # staggered over the interval
                    lines.extend(build(index, at))  # type: ignore[operator]
                batches.append(lines)

    def device_status(index: int, at: float) -> list[str]:
        device_no, iccids, labels = fleet[index]
        obs = DeviceObservation(
            device_no=device_no, online_status=1, rssi_dbm=rng.randint(-110, -60),
            battery_percent=rng.randint(5, 100), effective_sim=1, device_status=3, wifi_clients=rng.randint(0, 8),
            wifi_clients_max=10, wifi_clients_5g=0, wifi_clients_5g_max=10, soft_version="V1.0.3",
            status_at=at - rng.uniform(0, 300), flow_at=at - 600,
            location=Location(province_code="44", city_code="4403", region_name="广东省 深圳市"),
            sims=tuple(SimObservation(iccid=i) for i in iccids), polled_at=at)
        line = device_line(obs, labels)
        return [line] if line else []

    def device_flow(index: int, at: float) -> list[str]:
        device_no, iccids, labels = fleet[index]
        out = []
        for slot, iccid in enumerate(iccids, 1):
            used = rng.randint(0, 100 * GIB)
            sim = SimObservation(
                iccid=iccid, sim_no=f"1440{index:09d}{slot}", device_no=device_no, slot=slot, total_bytes=100 * GIB,
                used_bytes=used, real_used_bytes=used, carrier_used_bytes=used // 2, cycle_start=start - 86400 * 20,
                expires_at=start + 86400 * 40, sim_status=4, activate_status=2, auth_status=2, internet_status=1,
                online_status=2, cancel_status=1, pool_id=0, balance=0.0, status_at=at - 60, polled_at=at)
            state = SimState(iccid, labels, device_no, obs=sim, effective=slot == 1)
            state.usage_rate_bytes_per_second = rng.uniform(0, 5e5)
            line = sim_line(state)
            if line:
                out.append(line)
        return out

    def card_status(index: int, at: float) -> list[str]:
        _device_no, iccids, labels = fleet[index]
        out = [status_line(SimObservation(i, sim_status=4, online_status=2, internet_status=1, status_at=at - 30,
                                          polled_at=at), labels) for i in iccids]
        return [line for line in out if line]

    def card_usage(index: int, at: float) -> list[str]:
        _device_no, iccids, labels = fleet[index]
        out = [usage_line(SimObservation(i, total_bytes=100 * GIB, used_bytes=rng.randint(0, 100 * GIB),
                                         cycle_start=start - 86400 * 20, expires_at=start + 86400 * 40,
                                         flow_at=at - 300, polled_at=at), labels, None)
               for i in iccids]
        return [line for line in out if line]

    job(300, device_status)
    job(900, device_flow)
    job(600, card_status)
    job(1800, card_usage)
    batches.sort(key=lambda b: b[0].rsplit(" ", 1)[1] if b else "")
    return batches


async def fill(state: Path, batches: list[list[str]], gzip_on: bool, batch_size: int) -> tuple[float, int]:
    """Append everything while the database is down; returns (seconds, spool bytes)."""
    down = f"http://127.0.0.1:{free_port()}"
    pipeline = SinkPipeline(config(down, "unused", gzip_on, batch_size), str(state))
    await pipeline.start()
    t0 = time.perf_counter()
    for lines in batches:
        await pipeline.submit(lines)
    elapsed = time.perf_counter() - t0
    size = pipeline.spool_bytes()
    await pipeline.stop(0)
    return elapsed, size


def config(url: str, db: str, gzip_on: bool, batch_size: int) -> SinksConfig:
    return SinksConfig.model_validate({
        "influxdb_v1": {"enabled": True, "url": url, "database": db, "timeout": 120},
        "batch_size": batch_size, "gzip": gzip_on, "retry_max_backoff": 1,
        "spool": {"max_bytes": 16 * GIB, "fsync": "batch"}})


async def replay(state: Path, url: str, db: str, gzip_on: bool, batch_size: int) -> float:
    pipeline = SinkPipeline(config(url, db, gzip_on, batch_size), str(state))
    await pipeline.start()
    t0 = time.perf_counter()
    assert await pipeline.flush(timeout=3600), "the spool did not drain"
    elapsed = time.perf_counter() - t0
    await pipeline.stop(5)
    return elapsed


async def direct(url: str, db: str, lines: list[str], gzip_on: bool, batch_size: int) -> float:
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if gzip_on:
        headers["Content-Encoding"] = "gzip"
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        t0 = time.perf_counter()
        for start in range(0, len(lines), batch_size):
            body = "\n".join(lines[start:start + batch_size]).encode()
            if gzip_on:
                body = gzip.compress(body, 1, mtime=0)
            response = await client.post("/write", params={"db": db, "precision": "ns"}, content=body,
                                         headers=headers)
            response.raise_for_status()
        return time.perf_counter() - t0


def warm_up_lines(lines: list[str]) -> list[str]:
    """One line per series, an hour before the outage: after a real outage the series exist already,
    so the timed writes measure appending points, not creating 70k series. (Bench-only text surgery:
    the series key is everything before the first space, the timestamp the last token.)"""
    first: dict[str, str] = {}
    for line in lines:
        first.setdefault(line.split(" ", 1)[0], line)
    out = []
    for line in first.values():
        head, stamp = line.rsplit(" ", 1)
        out.append(f"{head} {int(stamp) - 3600 * 10**9}")
    return out


def count(server: object, db: str) -> int:
    total = 0
    for measurement, field in COUNT_FIELD.items():
        rows = server.rows(f'SELECT count("{field}") FROM "{measurement}"', db)  # type: ignore[attr-defined]
        total += rows[0]["count"] if rows else 0
    return total


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=2, help="repetitions (odd runs replay first)")
    parser.add_argument("--cold", action="store_true", help="write into empty databases (series created "
                        "during the timed writes) instead of databases that already hold every series")
    parser.add_argument("--gzip", choices=["on", "off", "both"], default="on")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    try:
        start = 1_758_000_000.0
        t0 = time.perf_counter()
        batches = generate(args.devices, args.minutes, start)
        gen_seconds = time.perf_counter() - t0
        lines = [line for batch in batches for line in batch]
        n = len(lines)
        raw_bytes = sum(len(line) + 1 for line in lines)
        print(f"outage: {args.devices} devices, {args.minutes} min -> {n} lines, {raw_bytes / 1e6:.1f} MB "
              f"of line protocol (built in {gen_seconds:.1f} s = {n / gen_seconds:,.0f} lines/s)")
        warm = [] if args.cold else warm_up_lines(lines)
        print(f"databases: {'empty (cold)' if args.cold else f'{len(warm)} series written an hour earlier, untimed'}")
        server = start_influxd(root / "influxd")
        try:
            modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.gzip]
            for gzip_on in modes:
                for run in range(args.runs):
                    tag = f"{'gzip' if gzip_on else 'plain'}{run}"
                    state = root / f"state-{tag}"
                    fill_s, spool_bytes = await fill(state, batches, gzip_on, args.batch_size)
                    print(f"[{tag}] spool fill: {n / fill_s:,.0f} points/s ({spool_bytes / 1e6:.1f} MB on disk)")
                    for db in (f"direct_{tag}", f"spool_{tag}"):
                        server.create_database(db)
                        if warm:
                            await direct(server.url, db, warm, gzip_on, args.batch_size)
                    if run % 2 == 0:  # alternate which goes first: the server warms up as it runs
                        d = await direct(server.url, f"direct_{tag}", lines, gzip_on, args.batch_size)
                        r = await replay(state, server.url, f"spool_{tag}", gzip_on, args.batch_size)
                    else:
                        r = await replay(state, server.url, f"spool_{tag}", gzip_on, args.batch_size)
                        d = await direct(server.url, f"direct_{tag}", lines, gzip_on, args.batch_size)
                    got_d, got_r = count(server, f"direct_{tag}"), count(server, f"spool_{tag}")
                    assert got_d == n + len(warm) and got_r == n + len(warm), (got_d, got_r, n)
                    print(f"[{tag}] direct POST: {n / d:,.0f} points/s ({d:.1f} s); spool replay: {n / r:,.0f} "
                          f"points/s ({r:.1f} s); replay/direct = {d / r:.2f}")
                    shutil.rmtree(state, ignore_errors=True)
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
