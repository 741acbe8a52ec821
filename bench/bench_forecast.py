"""Forecast benchmark: how well the data-exhaustion forecast (`exhausts_before_cycle_end`, the
`SimDataExhaustionForecast` rule's condition) predicts which SIMs run out before their billing cycle
ends, over the simulator's fleet model, whose usage comes in bursts (busy and quiet hours).

For each SIM, the usage readings a collector sees (one per platform flow refresh, every 10 minutes,
over the last 36 hours of the cycle) go into the collector's own `SimState` (its `UsageHistory` and
`derive`), and, as the baseline, into a history of the last USAGE_SAMPLES refreshes (2.5 hours).
Each forecasts at the newest reading; the truth is the model's usage at the end of the cycle. Prints,
per time of the month, the SIMs flagged, how many of them do run out (precision) and how many of
those that run out were flagged (recall), for both, and the ratio of false flags.

    .venv/bin/python bench/bench_forecast.py [--devices 400] [--at 2026-12-10T20:00:00+08:00 ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.config import parse_config
from collector.platform.models import SimObservation
from collector.simulator import Simulator
from collector.simulator.fleet import FLOW_REFRESH
from collector.state import USAGE_SAMPLES, SimState

HOURS = 36


def baseline_exhausts(readings: list[tuple[float, int]], total: int, end: float) -> bool:
    """The collector's condition at the rate over the last USAGE_SAMPLES readings only, from the oldest
    of them to the newest."""
    (t0, u0), (t1, u1) = readings[-USAGE_SAMPLES], readings[-1]
    rate = None if t1 - t0 < 60 else (u1 - u0) / (t1 - t0)
    return rate is not None and rate > 0 and t1 + (total - u1) / rate < end


def measure(sim: Simulator, now: float) -> dict[str, int]:
    fleet = sim.fleet
    counts = {"sims": 0, "run_out": 0, "flagged": 0, "flagged_right": 0, "base_flagged": 0, "base_right": 0}
    steps = int(HOURS * 3600 / FLOW_REFRESH)
    for index in range(len(fleet)):
        states = [fleet.device_state(index, now - k * FLOW_REFRESH) for k in range(steps, -1, -1)]
        for slot, newest in enumerate(states[-1].sims):
            if newest.total <= 0 or newest.used >= newest.total:
                continue  # no package, or already out: the forecast has nothing to say
            # The collector's own state of the SIM, fed the readings it would see (flow in KiB: a
            # forecast is a ratio, the unit cancels out).
            sim_state = SimState(newest.profile.iccid, {})
            seen: list[tuple[float, int]] = []
            for state in states:
                s = state.sims[slot]
                if s.cycle_start != newest.cycle_start or (seen and s.flow_at <= seen[-1][0]):
                    continue
                sim_state.record_usage(s.flow_at, s.used)
                seen.append((s.flow_at, s.used))
            if len(seen) < USAGE_SAMPLES:
                continue  # too early in the cycle for both to have their readings
            sim_state.obs = SimObservation(iccid=newest.profile.iccid, total_bytes=newest.total,
                                           used_bytes=newest.used, cycle_start=newest.cycle_start,
                                           polled_at=newest.flow_at)
            sim_state.derive()
            end = sim_state.cycle_end()
            assert end is not None
            final = fleet.device_state(index, end - 1).sims[slot]
            run_out = final.used >= 0.999 * final.total
            flagged = bool(sim_state.exhausts_before_cycle_end)
            base = baseline_exhausts(seen, newest.total, end)
            counts["sims"] += 1
            counts["run_out"] += run_out
            counts["flagged"] += flagged
            counts["flagged_right"] += flagged and run_out
            counts["base_flagged"] += base
            counts["base_right"] += base and run_out
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=400)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--at", nargs="*", type=datetime.fromisoformat,
                        default=[datetime.fromisoformat(t) for t in
                                 ("2026-12-10T20:00:00+08:00", "2026-12-10T04:00:00+08:00",
                                  "2026-12-20T12:00:00+08:00")],
                        help="times of the month to forecast at, ISO 8601 with a zone")
    args = parser.parse_args()
    platform = parse_config({"platform": {"app_id": "bench", "app_secret": "bench"}}, env={}).platform
    sim = Simulator(devices=args.devices, seed=args.seed, speed=0, platform=platform)
    print(f"forecast: {args.devices} simulated devices, seed {args.seed}, a reading every {FLOW_REFRESH:.0f} s "
          f"over {HOURS} h; baseline: the rate over the last {USAGE_SAMPLES} readings")
    print(f"{'at':<26}{'SIMs':>6}{'run out':>9}{'flagged':>9}{'right':>7}{'recall':>8}"
          f"{'base flagged':>14}{'right':>7}{'recall':>8}{'false flags / base':>20}")
    for at in args.at:
        started = time.perf_counter()
        c = measure(sim, at.timestamp())
        wrong, base_wrong = c["flagged"] - c["flagged_right"], c["base_flagged"] - c["base_right"]
        ratio = f"{wrong / base_wrong:.2f}" if base_wrong else "-"
        print(f"{at.isoformat():<26}{c['sims']:>6}{c['run_out']:>9}{c['flagged']:>9}{c['flagged_right']:>7}"
              f"{c['flagged_right'] / max(c['run_out'], 1):>8.0%}{c['base_flagged']:>14}{c['base_right']:>7}"
              f"{c['base_right'] / max(c['run_out'], 1):>8.0%}{ratio:>20}   ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
