"""Soak benchmark: the daemon (`iot-collector run`) against the simulator (`iot-collector simulate`),
each in its own process, for some minutes at a given request rate. Prints numbers, not pass/fail:

* the daemon's RSS at start (once its jobs run) and at the end, and the slope of RSS over the
  second half of the run in MB per minute (least squares over samples taken every few seconds);
* the allocation sites that grew most over the second half (tracemalloc snapshots taken inside the
  daemon, through `IOT_COLLECTOR_TRACEMALLOC` and `GET /debug/memory`; `--tracemalloc 0` turns that
  off, which the lag figures want at the big size, since tracing slows every allocation);
* event-loop lag over the second half, from the daemon's `iot_collector_event_loop_lag_seconds`
  histogram (percentiles interpolated inside its buckets, and the probes later than 100 ms and 1 s);
* the request rate achieved and the host's load average.

The request rate is set through the job intervals (every job's interval is scaled so the jobs need
`--rate` requests per second together) and `platform.rate_limit` (a quarter above that, so nothing is
stretched). `--big` is the 100,000-device mode: only the two per-device jobs run (device_flow fills
the state with every device and its SIMs on its first cycle, device_status re-polls the devices), at
the rate given, and the second half is measured once the state is full.

    .venv/bin/python bench/bench_soak.py --devices 200 --rate 70 --minutes 20 [--alerts]
    .venv/bin/python bench/bench_soak.py --big --devices 100000 --rate 400 --minutes 16 --tracemalloc 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "collector"]
LAG_METRIC = "iot_collector_event_loop_lag_seconds"
SAMPLE_EVERY = 5.0  # seconds between RSS samples


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 2:
        return math.nan
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return math.nan
    return sum((t - mean_t) * (m - mean_m) for t, m in samples) / var * 60


def job_intervals(devices: int, rate: float, big: bool) -> dict[str, dict[str, Any]]:
    """Intervals of every job such that together they need `rate` requests per second."""
    sims = 2 * devices  # what the scheduler assumes before the SIMs are discovered
    if big:
        # device_flow gets two thirds of the rate: its first cycle fills the whole state.
        flow = devices / (rate * 2 / 3)
        off = ("card_status", "card_usage", "card_info", "account_assets", "card_month_usage", "card_actions")
        return {"device_flow": {"interval": f"{flow:.1f}s"}, "device_status": {"interval": f"{flow * 2:.1f}s"},
                **{job: {"enabled": False, "interval": "1d"} for job in off}}
    # Relative weights: device_status every T, device_flow 2T, card_status T, card_usage 2T, card_info 4T.
    need_per_t = devices * (1 + 1 / 2) + math.ceil(sims / 10) * (1 + 1 / 2) + math.ceil(sims / 100) / 4
    t = need_per_t / rate
    return {"device_status": {"interval": f"{t:.2f}s"}, "device_flow": {"interval": f"{2 * t:.2f}s"},
            "card_status": {"interval": f"{t:.2f}s"}, "card_usage": {"interval": f"{2 * t:.2f}s"},
            "card_info": {"interval": f"{4 * t:.2f}s"}, "account_assets": {"interval": "60s"},
            "card_month_usage": {"enabled": False, "interval": "1d"},
            "card_actions": {"enabled": False, "interval": "1d"}}


def start_simulator(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen[str], str]:
    common = ["--devices", str(args.devices), "--seed", str(args.seed)]
    inventory = subprocess.run([*CLI, "simulate", *common, "--print-inventory"], cwd=REPO, check=True,
                               capture_output=True, text=True).stdout
    (work / "devices.yaml").write_text(inventory)
    proc = subprocess.Popen([*CLI, "simulate", *common, "--speed", str(args.speed), "--port", "0",
                             "--profile-cache", str(max(args.devices, 20000))],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = re.match(r"listening on (http://\S+)", line)
        if match:
            # Keep reading its output so a full pipe never blocks it.
            subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
            return proc, match.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("simulator did not start")


def daemon_config(args: argparse.Namespace, work: Path, base_url: str) -> dict[str, Any]:
    return {
        "platform": {"base_url": base_url, "app_id": "demo", "app_secret": "demo-secret",
                     "rate_limit": args.rate * 1.25, "burst": 20, "max_concurrency": 32},
        "inventory": {"file": str(work / "devices.yaml"), "watch": False},
        "jobs": job_intervals(args.devices, args.rate, args.big),
        "sinks": {"file": {"enabled": True, "path": str(work / "points.lp"), "max_bytes": "32MiB", "backups": 1}},
        "alerts": {"enabled": bool(args.alerts)},
        "http": {"port": 0, "entity_metrics": True},
        "logging": {"level": "warning", "format": "json"},
        "state_dir": str(work / "state"),
    }


def scrape(url: str, took: list[float] | None = None) -> str:
    """/metrics, as Prometheus would get it; its duration appended to `took` (inf when it timed out)."""
    started = time.monotonic()
    try:
        text = httpx.get(url + "/metrics", timeout=30).text
    except httpx.TimeoutException:
        if took is None:
            raise
        took.append(math.inf)
        return ""
    if took is not None:
        took.append(time.monotonic() - started)
    return text


def histogram(text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram without labels."""
    out = []
    for match in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, flags=re.M):
        out.append((float(match.group(1)), float(match.group(2))))
    return sorted(out)


def counter_sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}} (\S+)$", text, flags=re.M))


def percentile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of a cumulative histogram, linearly interpolated inside its bucket."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def above(buckets: list[tuple[float, float]], limit: float) -> float:
    total = buckets[-1][1] if buckets else 0
    within = next((count for bound, count in buckets if bound >= limit), total)
    return total - within


def delta(end: list[tuple[float, float]], start: list[tuple[float, float]]) -> list[tuple[float, float]]:
    before = dict(start)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in end]


def wait_started(daemon: subprocess.Popen[bytes], runtime: Path, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"daemon exited with {daemon.returncode}")
        if runtime.exists():
            try:
                return str(json.loads(runtime.read_text())["url"])
            except (ValueError, KeyError):
                pass
        time.sleep(0.2)
    raise SystemExit("daemon did not start")


def entities(url: str) -> tuple[int, int]:
    status = httpx.get(url + "/api/status", timeout=30).json()["entities"]
    # Each entity is in exactly one state: summed by kind, the fleet.
    return sum(status.get("device", {}).values()), sum(status.get("sim", {}).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rate", type=float, default=70.0, help="requests per second the jobs need together")
    parser.add_argument("--minutes", type=float, default=8.0, help="length of the run after start-up")
    parser.add_argument("--alerts", action="store_true", help="alerts enabled with the default rules")
    parser.add_argument("--speed", type=float, default=600.0, help="simulator speed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--big", action="store_true", help="only the per-device jobs; measure once the state is full")
    parser.add_argument("--tracemalloc", type=int, default=1, metavar="FRAMES",
                        help="stack frames tracemalloc keeps in the daemon (0: no tracing, only RSS and GC pauses)")
    parser.add_argument("--top", type=int, default=12, help="allocation sites listed")
    parser.add_argument("--scrape-interval", type=float, default=15.0, metavar="SECONDS",
                        help="scrape /metrics this often, as Prometheus would (0: only twice)")
    parser.add_argument("--types", type=int, default=12, help="types listed with the most objects the collector scans")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, config)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    simulator, base_url = start_simulator(args, work)
    config_path = work / "collector.yaml"
    config_path.write_text(yaml.safe_dump(daemon_config(args, work, base_url)))
    env = {**os.environ, "IOT_COLLECTOR_TRACEMALLOC": str(args.tracemalloc)}
    log = (work / "daemon.log").open("wb")
    daemon = subprocess.Popen([*CLI, "run", "-c", str(config_path)], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, env=env)
    try:
        url = wait_started(daemon, work / "state" / "collector.json")
        started = time.monotonic()
        duration = args.minutes * 60
        if args.big:
            # Fill the state first: the run (and its two halves) starts once every device and its SIMs
            # have been seen.
            while True:
                devices, sims = entities(url)
                print(f"  filling: {devices} devices, {sims} SIMs ({time.monotonic() - started:.0f} s)", flush=True)
                if devices >= args.devices and sims > 0 and _all_polled(url, args.devices):
                    break
                time.sleep(15)
            print(f"state full after {time.monotonic() - started:.0f} s", flush=True)
            started = time.monotonic()
        samples: list[tuple[float, float]] = []
        half_text = ""
        middle: dict[str, Any] = {}
        half_at = started + duration / 2
        scraped = 0.0
        scrapes: list[float] = []  # durations of the periodic scrapes over the second half
        while (now := time.monotonic()) < started + duration:
            if daemon.poll() is not None:
                raise SystemExit(f"daemon exited with {daemon.returncode}")
            samples.append((now - started, rss_mb(daemon.pid)))
            if args.scrape_interval and now - scraped >= args.scrape_interval:
                # As Prometheus would: the scrape's own cost is part of the loop's lag.
                scrape(url, scrapes if half_text else None)
                scraped = now
            if not half_text and now >= half_at:
                half_text = scrape(url)
                middle = httpx.get(url + "/debug/memory", params={"rebase": "1", "top": "1"}, timeout=300).json()
                half_at = now
            time.sleep(min(SAMPLE_EVERY, max(started + duration - now, 0.1)))
        end_text = scrape(url)
        samples.append((time.monotonic() - started, rss_mb(daemon.pid)))
        report = httpx.get(url + "/debug/memory", params={"top": str(args.top), "types": str(args.types)},
                           timeout=600).json()
        devices, sims = entities(url)
        load = os.getloadavg()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        simulator.send_signal(signal.SIGTERM)
        simulator.wait(30)

    second_half = [(t, m) for t, m in samples if t >= duration / 2]
    half_seconds = samples[-1][0] - (half_at - started) if second_half else math.nan
    requests = counter_sum(end_text, "iot_collector_upstream_requests_total") - counter_sum(
        half_text, "iot_collector_upstream_requests_total")
    lag = delta(histogram(end_text, LAG_METRIC), histogram(half_text, LAG_METRIC))
    mode = "big" if args.big else "soak"
    print(f"\n{mode}: {args.devices} devices ({devices} devices, {sims} SIMs in the state), "
          f"target {args.rate:g} req/s, {args.minutes:g} min, alerts {'on' if args.alerts else 'off'}, "
          f"simulator speed {args.speed:g}, tracemalloc frames {args.tracemalloc}")
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    print(f"requests in the second half: {requests:.0f} = {requests / max(half_seconds, 1):.1f} req/s")
    print(f"RSS: start {samples[0][1]:.1f} MB, middle {second_half[0][1] if second_half else math.nan:.1f} MB, "
          f"end {samples[-1][1]:.1f} MB")
    print(f"RSS slope over the second half: {slope_mb_per_min(second_half):+.3f} MB/min "
          f"(whole run {slope_mb_per_min(samples):+.3f} MB/min)")
    total = lag[-1][1] if lag else 0
    print(f"event-loop lag over the second half ({total:.0f} probes): p50 {percentile(lag, 0.5) * 1000:.1f} ms, "
          f"p90 {percentile(lag, 0.9) * 1000:.1f} ms, p99 {percentile(lag, 0.99) * 1000:.1f} ms, "
          f"p99.9 {percentile(lag, 0.999) * 1000:.1f} ms; over 100 ms: {above(lag, 0.1):.0f}, "
          f"over 1 s: {above(lag, 1.0):.0f}")
    if scrapes:
        done = sorted(t for t in scrapes if t != math.inf)
        print(f"scrapes of /metrics over the second half: {len(scrapes)}, {len(scrapes) - len(done)} timed out "
              f"(30 s); duration median {done[len(done) // 2] * 1000:.0f} ms, longest {done[-1] * 1000:.0f} ms"
              if done else f"scrapes of /metrics over the second half: {len(scrapes)}, all timed out (30 s)")
    print("garbage collections over the second half: " + ", ".join(
        f"gen{gen} {p['count']} (longest {p['max_seconds'] * 1000:.0f} ms, {p['total_seconds']:.2f} s in all)"
        for gen, p in report["gc_pauses"].items()))
    print(f"objects frozen out of the collector's scans: {middle['gc_frozen']} in the middle, "
          f"{report['gc_frozen']} at the end; GC thresholds {report['gc_thresholds']}")
    if report.get("types"):
        print(f"objects the collector scans at the end: {report['gc_tracked']}; the types with the most:")
        for kind in report["types"]:
            print(f"  {kind['count']:10d}  {kind['type']}")
    if report["top"]:
        print(f"tracemalloc over the second half ({report['seconds']:.0f} s): traced "
              f"{report['traced_bytes'] / 1e6:.1f} MB; top growing allocation sites (size, count, where):")
        for site in report["top"]:
            print(f"  {site['size_diff'] / 1024:+10.1f} KiB {site['count_diff']:+8d}  {' <- '.join(site['where'])}")
    if args.keep:
        print(f"work directory: {work}")
    else:
        subprocess.run(["rm", "-rf", str(work)], check=False)


def _all_polled(url: str, devices: int) -> bool:
    """Every device has an observation (none still `unknown`)."""
    device = httpx.get(url + "/api/status", timeout=30).json()["entities"].get("device", {})
    return device.get("online", 0) + device.get("offline", 0) >= devices


if __name__ == "__main__":
    main()
