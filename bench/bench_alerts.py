"""Benchmark: evaluating the default alert rules over a large fleet.

Builds a fleet state of N devices with two SIMs each from realistic synthetic observations (signal
around -85 dBm with a weak tail, a few percent offline, batteries, stale platform data, SIMs at
every stage of their package, a few suspended), then runs full cycles in which every entity
changes (a new observation each) and is handed to `AlertEngine.evaluate`, as the daemon does.

Prints the time per cycle and per entity, evaluation alone (fields prepared beforehand) and with
the fields built from the fleet state (`DeviceState.fields` / `SimState.fields`), plus one sweep.

    .venv/bin/python bench/bench_alerts.py                  # 100k devices, 200k SIMs
    .venv/bin/python bench/bench_alerts.py --devices 10000  # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.alerts.config import AlertsConfig
from collector.alerts.engine import AlertEngine
from collector.platform.models import DAY, DeviceObservation, SimObservation
from collector.state import FleetState

GIB = 1024**3
POLL_INTERVAL = 300.0


class Profile:
    """What one simulated device (and its two SIMs) is like; values drift a little every cycle."""

    __slots__ = (
        "battery",
        "expires",
        "iccids",
        "offline",
        "plugged",
        "rates",
        "rssi_centre",
        "sim_status",
        "stale",
        "totals",
        "used",
    )

    def __init__(self, rng: random.Random, iccids: tuple[str, str], now: float) -> None:
        self.iccids = iccids
        self.rssi_centre = rng.gauss(-101, 3) if rng.random() < 1 / 7 else rng.gauss(-85, 6)
        self.offline = rng.random() < 0.03
        self.plugged = rng.random() < 0.25
        self.battery = 100.0 if self.plugged else rng.uniform(10, 100)
        self.stale = rng.random() < 0.01
        self.totals = [rng.choice((10, 30, 50, 100, 100, 200)) * GIB for _ in iccids]
        # Day 12 of a 30-day cycle; each SIM would use 20..110 % of its package in a full cycle.
        self.rates = [t / (30 * DAY) * rng.uniform(0.2, 1.1) for t in self.totals]
        self.used = [min(r * 12 * DAY * rng.uniform(0.8, 1.2), t) for r, t in zip(self.rates, self.totals, strict=True)]
        self.expires = [now + rng.uniform(-5, 400) * DAY for _ in iccids]
        self.sim_status = [5 if rng.random() < 0.002 else 4 for _ in iccids]


def observe(state: FleetState, rng: random.Random, device_no: str, p: Profile, now: float, dt: float) -> None:
    """One device poll (the device and its two SIMs), `dt` seconds after the previous one."""
    if rng.random() < (0.3 if p.offline else 0.003):
        p.offline = not p.offline
    if not p.plugged:
        p.battery = min(100.0, max(1.0, p.battery + rng.uniform(-2.0, 2.5)))
    sims = []
    for slot, iccid in enumerate(p.iccids, start=1):
        p.used[slot - 1] = min(p.totals[slot - 1], p.used[slot - 1] + p.rates[slot - 1] * dt)
        sims.append(SimObservation(
            iccid=iccid, sim_no=iccid[-11:], device_no=device_no, slot=slot, total_bytes=p.totals[slot - 1],
            used_bytes=int(p.used[slot - 1]), cycle_start=now - 12 * DAY, expires_at=p.expires[slot - 1],
            sim_status=p.sim_status[slot - 1], internet_status=2 if p.sim_status[slot - 1] == 5 else 1,
            online_status=3, status_at=now - 60, polled_at=now))
    state.observe_device(DeviceObservation(
        device_no=device_no, online_status=0 if p.offline else 1,
        rssi_dbm=max(min(round(rng.gauss(p.rssi_centre, 2)), -50), -120), battery_percent=round(p.battery),
        effective_sim=1, device_status=3, wifi_clients=rng.randint(0, 8),
        status_at=now - (4000 if p.stale else 60), sims=tuple(sims), polled_at=now))


def build_fleet(devices: int, seed: int, now: float) -> tuple[FleetState, dict[str, Profile]]:
    rng = random.Random(seed)
    state = FleetState()
    profiles = {f"86521407{i:07d}": Profile(rng, (f"898600{i:013d}A", f"898601{i:013d}B"), now)
                for i in range(devices)}
    customers = ("acme", "globex", "initech", "umbrella", "hooli")
    state.sync_inventory({no: {"customer": customers[i % len(customers)]} for i, no in enumerate(profiles)}, {})
    for no, p in profiles.items():  # two polls an hour apart: usage rates exist
        observe(state, rng, no, p, now - 3600, 0)
    for no, p in profiles.items():
        observe(state, rng, no, p, now, 3600)
    return state, profiles


def change_all(state: FleetState, profiles: dict[str, Profile], rng: random.Random, now: float) -> None:
    for no, p in profiles.items():
        observe(state, rng, no, p, now, POLL_INTERVAL)


Items = list[tuple[str, dict[str, Any]]]


def entity_fields(state: FleetState, now: float) -> tuple[Items, Items]:
    devices = [(no, d.fields(now, POLL_INTERVAL)) for no, d in state.devices.items()]
    sims = [(i, s.fields(now)) for i, s in state.sims.items()]
    return devices, sims


def run_cycle(engine: AlertEngine, devices: Items, sims: Items, now: float) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one full cycle of evaluations."""
    evaluate = engine.evaluate
    started, cpu = time.perf_counter(), time.process_time()
    for key, fields in devices:
        evaluate("device", key, fields, now)
    for key, fields in sims:
        evaluate("sim", key, fields, now)
    return time.perf_counter() - started, time.process_time() - cpu


def run_cycle_with_fields(engine: AlertEngine, state: FleetState, now: float) -> float:
    evaluate = engine.evaluate
    started = time.perf_counter()
    for no, d in state.devices.items():
        evaluate("device", no, d.fields(now, POLL_INTERVAL), now)
    for iccid, s in state.sims.items():
        evaluate("sim", iccid, s.fields(now), now)
    return time.perf_counter() - started


def reference_loop() -> float:
    """Seconds for 10 million empty loop iterations: how fast this host runs Python right now."""
    started = time.perf_counter()
    for _ in range(10_000_000):
        pass
    return time.perf_counter() - started


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--cycles", type=int, default=5, help="full cycles of changes to time")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    print(f"host reference: 10M empty loop iterations in {reference_loop():.3f} s")
    now = time.time()
    t = time.perf_counter()
    state, ids = build_fleet(args.devices, args.seed, now)
    print(f"fleet: {len(state.devices)} devices, {len(state.sims)} SIMs (built in {time.perf_counter() - t:.1f} s)")

    async def discard(_lines: list[str]) -> None:
        return None

    config = AlertsConfig.model_validate({"enabled": True, "notifiers": [{"type": "log", "group_wait": "1h"}]})
    rules = config.compiled_rules()
    per_kind = {k: sum(1 for r in rules if r.kind == k) for k in ("device", "sim")}
    evaluations = len(state.devices) * per_kind["device"] + len(state.sims) * per_kind["sim"]
    entities = len(state.devices) + len(state.sims)
    print(f"default rules: {len(rules)} ({per_kind['device']} per device, {per_kind['sim']} per SIM): "
          f"{evaluations} rule evaluations per full cycle")

    with tempfile.TemporaryDirectory() as tmp:
        engine = AlertEngine(config, tmp, write_points=discard, clock=lambda: now)
        gc.collect()
        gc.freeze()  # the fleet is long-lived, as in the daemon
        devices, sims = entity_fields(state, now)
        first, _ = run_cycle(engine, devices, sims, now)
        active = len(engine.alerts())
        print(f"cycle 1 (cold: every alert is new): {first:.3f} s, {active} alerts became active")

        rng = random.Random(args.seed + 1)
        eval_only: list[float] = []
        eval_cpu: list[float] = []
        with_fields: list[float] = []
        transitions: list[int] = []
        for _cycle in range(args.cycles):
            now += POLL_INTERVAL
            change_all(state, ids, rng, now)
            devices, sims = entity_fields(state, now)
            before = {a.id: a.state for a in engine.alerts()}
            wall, cpu = run_cycle(engine, devices, sims, now)
            eval_only.append(wall)
            eval_cpu.append(cpu)
            after = {a.id: a.state for a in engine.alerts()}
            transitions.append(sum(1 for k in before.keys() | after.keys() if before.get(k) != after.get(k)))
            now += POLL_INTERVAL
            change_all(state, ids, rng, now)
            with_fields.append(run_cycle_with_fields(engine, state, now))

        started = time.perf_counter()
        engine.sweep(now + 3600, lambda kind, key: None)
        sweep = time.perf_counter() - started
        best, median = min(eval_only), statistics.median(eval_only)
        print(f"steady cycles ({args.cycles}, every entity changed, ~{statistics.mean(transitions):.0f} "
              f"state changes each):")
        cpu_median = statistics.median(eval_cpu)
        print(f"  evaluation:            median {median:.3f} s/cycle (best {best:.3f}), "
              f"{median / entities * 1e6:.2f} us/entity, {median / evaluations * 1e9:.0f} ns/rule evaluation")
        print(f"  evaluation, CPU time:  median {cpu_median:.3f} s/cycle (best {min(eval_cpu):.3f}), "
              f"{cpu_median / entities * 1e6:.2f} us/entity")
        wf = statistics.median(with_fields)
        print(f"  fields() + evaluation: median {wf:.3f} s/cycle, {wf / entities * 1e6:.2f} us/entity")
        print(f"  sweep (for / keep_firing_for timers, {len(engine.alerts())} active alerts): {sweep:.3f} s")
        print(f"  target 0.5 s/cycle for evaluation: {'met' if median < 0.5 else 'MISSED'} (median wall time)")
        print(f"host reference after: {reference_loop():.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
