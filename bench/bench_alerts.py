"""Benchmark: evaluating the default alert rules over a large fleet.

Builds a fleet state of N devices with two SIMs each from realistic synthetic observations (signal
around -85 dBm with a weak tail, a few percent offline, batteries, stale platform data, SIMs at
every stage of their package, a few suspended), then runs full cycles in which every entity
changes (a new observation each) and is handed to the engine as the daemon does: right after each
device's observation, what it changed (`submit_change`, queued); the engine's flush (once a second
in the daemon) evaluates the rules over what was queued.

Prints the time per cycle and per entity of the engine's part (hand-over and flushes), in the
daemon's order and with every change handed over after all observations and one flush, the ratio to
a baseline measured in the same run (the same eight conditions written out by hand in plain Python
over the same records, one entity at a time, no alert bookkeeping), and one sweep.

To compare with another version of the engine, run that version's own bench_alerts.py in its tree
(`PYTHONPATH=<tree> .venv/bin/python <tree>/bench/bench_alerts.py`) right before or after this one.

    .venv/bin/python bench/bench_alerts.py                  # 100k devices, 200k SIMs
    .venv/bin/python bench/bench_alerts.py --devices 10000  # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import operator
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
from collector.alerts.rules import compile_rules, default_params
from collector.platform.models import DAY, DeviceObservation, SimObservation
from collector.state import FIELDS, Change, FleetState

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


def observe(state: FleetState, rng: random.Random, device_no: str, p: Profile, now: float, dt: float) -> Change:
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
    return state.observe_device(DeviceObservation(
        device_no=device_no, online_status=0 if p.offline else 1,
        rssi_dbm=max(min(round(rng.gauss(p.rssi_centre, 2)), -50), -120), battery_percent=round(p.battery),
        effective_sim=1, device_status=3, wifi_clients=rng.randint(0, 8),
        status_at=now - (4000 if p.stale else 60), sims=tuple(sims), polled_at=now))


def build_fleet(devices: int, seed: int, now: float) -> tuple[FleetState, dict[str, Profile], list[Change]]:
    rng = random.Random(seed)
    state = FleetState(device_interval=POLL_INTERVAL)
    profiles = {f"86521407{i:07d}": Profile(rng, (f"898600{i:013d}A", f"898601{i:013d}B"), now)
                for i in range(devices)}
    customers = ("acme", "globex", "initech", "umbrella", "hooli")
    state.sync_inventory({no: {"customer": customers[i % len(customers)]} for i, no in enumerate(profiles)}, {})
    for no, p in profiles.items():  # two polls an hour apart: usage rates exist
        observe(state, rng, no, p, now - 3600, 0)
    changes = [observe(state, rng, no, p, now, 3600) for no, p in profiles.items()]
    return state, profiles, changes


def change_all(state: FleetState, profiles: dict[str, Profile], rng: random.Random, now: float) -> list[Change]:
    return [observe(state, rng, no, p, now, POLL_INTERVAL) for no, p in profiles.items()]


class Clock:
    """The engine's clock: the time of the cycle being simulated."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hand_over_all(engine: AlertEngine, changes: list[Change], now: float) -> float:
    """Every device poll's change handed over after all observations, then one flush. Returns the
    seconds it took."""
    submit = engine.submit_change
    started = time.perf_counter()
    for change in changes:
        submit(change)
    engine.flush(now)
    return time.perf_counter() - started


def observe_and_evaluate(engine: AlertEngine, state: FleetState, profiles: dict[str, Profile], rng: random.Random,
                         now: float, batch: int) -> float:
    """One full cycle in the daemon's order: each device's observation enters the state, then the
    pipeline hands over what it changed; the engine flushes every `batch` devices (its flush, once a
    second in the daemon). Returns the seconds spent in `submit_change` (timed around each call less
    the timer's own cost) and in `flush`."""
    submit, clock = engine.submit_change, time.perf_counter
    evaluating = 0.0
    for i, (no, p) in enumerate(profiles.items(), start=1):
        change = observe(state, rng, no, p, now, POLL_INTERVAL)
        started = clock()
        submit(change)
        if i % batch == 0 or i == len(profiles):
            engine.flush(now)
        evaluating += clock() - started
    for _ in range(len(profiles)):
        t = clock()
        evaluating -= clock() - t
    return evaluating


def hand_written(state: FleetState, params: dict[str, Any]) -> tuple[float, int]:
    """Baseline: the eight default conditions written out by hand in plain Python over the same
    records (read through the same attribute paths, `FIELDS`, with the same missing-value rules), no
    engine: (seconds, entities where one holds)."""
    def reader(kind: str, name: str) -> Any:
        get = operator.attrgetter(FIELDS[kind][name])

        def read(record: Any) -> Any:
            try:
                return get(record)
            except AttributeError:
                return None
        return read

    online, rssi, battery, staleness, interval = (reader("device", name) for name in (
        "online", "rssi_dbm", "battery_percent", "staleness_seconds", "poll_interval_seconds"))
    ratio, exhausts, days, status, internet = (reader("sim", name) for name in (
        "remaining_ratio", "exhausts_before_cycle_end", "days_to_expiry", "sim_status", "internet_status"))
    weak, low_battery = params["weak_signal_dbm"], params["low_battery_percent"]
    stale, low_data = params["stale_intervals"], params["sim_data_low_ratio"]
    expiry, suspended, data_off = params["sim_expiry_days"], set(params["sim_suspended_statuses"]), set(
        params["sim_data_off_statuses"])
    started, hits = time.perf_counter(), 0
    for d in state.devices.values():
        on, r, b, st, iv = online(d), rssi(d), battery(d), staleness(d), interval(d)
        if ((on is not None and on == False)  # noqa: E712 - the rule's own comparison
                or (r is not None and r < weak and on is not None and on == True)  # noqa: E712
                or (b is not None and b < low_battery)
                or (st is not None and iv is not None and st > stale * iv)):
            hits += 1
    for s in state.sims.values():
        ra, ex, dy, ss, it = ratio(s), exhausts(s), days(s), status(s), internet(s)
        if ((ra is not None and ra < low_data) or (ex is not None and ex == True)  # noqa: E712
                or (dy is not None and dy < expiry)
                or (ss is not None and ss in suspended)
                or (it is not None and it in data_off)):
            hits += 1
    return time.perf_counter() - started, hits


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
    parser.add_argument("--batch", type=int, default=333,
                        help="devices per flush in the daemon's order (the engine flushes once a second: "
                             "100k devices polled every 5 minutes is 333 devices a second)")
    args = parser.parse_args(argv)

    print(f"host reference: 10M empty loop iterations in {reference_loop():.3f} s")
    clock = Clock(time.time())
    t = time.perf_counter()
    state, ids, changes = build_fleet(args.devices, args.seed, clock.now)
    print(f"fleet: {len(state.devices)} devices, {len(state.sims)} SIMs (built in {time.perf_counter() - t:.1f} s)")

    async def discard(_lines: list[str]) -> None:
        return None

    config = AlertsConfig.model_validate({"enabled": True, "notifiers": [{"type": "log", "group_wait": "1h"}]})
    rules = compile_rules(config)
    params = {**default_params(), **config.params}
    per_kind = {k: sum(1 for r in rules if r.kind == k) for k in ("device", "sim")}
    evaluations = len(state.devices) * per_kind["device"] + len(state.sims) * per_kind["sim"]
    entities = len(state.devices) + len(state.sims)
    print(f"default rules: {len(rules)} ({per_kind['device']} per device, {per_kind['sim']} per SIM): "
          f"{evaluations} rule evaluations per full cycle")

    with tempfile.TemporaryDirectory() as tmp:
        engine = AlertEngine(config, tmp, write_points=discard, clock=clock)
        gc.collect()
        gc.freeze()  # the fleet is long-lived: its garbage collections are not what is measured here
        cold = hand_over_all(engine, changes, clock.now)
        del changes  # the hand-over of each cycle is built anew with its observations
        print(f"cycle 1 (cold: every alert is new): {cold:.3f} s, {len(engine.alerts())} alerts became active")

        rng = random.Random(args.seed + 1)
        in_order: list[float] = []
        after_all: list[float] = []
        hand_s: list[float] = []
        observe_s: list[float] = []
        transitions: list[int] = []
        for _cycle in range(args.cycles):
            clock.now += POLL_INTERVAL
            in_order.append(observe_and_evaluate(engine, state, ids, rng, clock.now, args.batch))
            clock.now += POLL_INTERVAL
            started = time.perf_counter()
            changes = change_all(state, ids, rng, clock.now)
            observe_s.append(time.perf_counter() - started)
            before = {a.id: a.state for a in engine.alerts()}
            after_all.append(hand_over_all(engine, changes, clock.now))
            hand, _hits = hand_written(state, params)
            hand_s.append(hand)
            after = {a.id: a.state for a in engine.alerts()}
            transitions.append(sum(1 for k in before.keys() | after.keys() if before.get(k) != after.get(k)))

        started = time.perf_counter()
        engine.sweep(clock.now + 3600, state.record)
        sweep = time.perf_counter() - started
        hand_median = statistics.median(hand_s)

        def report(name: str, runs: list[float]) -> float:
            total = statistics.median(runs)
            print(f"  {name}: median {total:.3f} s/cycle (best {min(runs):.3f}), "
                  f"{total / entities * 1e6:.2f} us/entity, {total / evaluations * 1e9:.0f} ns/rule evaluation; "
                  f"/ hand-written = {total / hand_median:.2f}")
            return total

        print(f"steady cycles ({args.cycles} of each, every entity changed, ~{statistics.mean(transitions):.0f} "
              f"state changes per cycle, {len(engine.alerts())} active alerts):")
        report(f"daemon's order (hand-over after each observation, a flush every {args.batch} devices)", in_order)
        report("all entities after all observations, one flush", after_all)
        print(f"  baseline, the same conditions written by hand over the same records (one entity at a "
              f"time): median {hand_median:.3f} s/cycle")
        print(f"  for scale, the synthetic observations themselves (FleetState.observe_device): "
              f"median {statistics.median(observe_s):.3f} s/cycle")
        print(f"  sweep (for / keep_firing_for timers, an hour later): {sweep:.3f} s")
        print(f"host reference after: {reference_loop():.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
