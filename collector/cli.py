"""The `iot-collector` command: run, once, simulate, check-config, status, alerts, silence.

Exit codes: 0 success, 1 a runtime failure (a device that failed in `once`, a daemon that cannot be
reached), 2 a user error (bad configuration or arguments), 3 from `check-config` for a valid
configuration whose jobs do not fit in `platform.rate_limit` (the collector would stretch every
interval); never a Python traceback for those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from collector import __version__
from collector.config import Config, ConfigError, load_config
from collector.formats import human_duration, short_duration

DEFAULT_CONFIG_PATHS = ("/etc/iot-collector/collector.yaml", "collector.yaml")
EXIT_BUDGET_TOO_SMALL = 3


def default_config_path() -> str:
    env = os.environ.get("IOT_COLLECTOR_CONFIG")
    if env:
        return env
    for path in DEFAULT_CONFIG_PATHS:
        if Path(path).exists():
            return path
    return DEFAULT_CONFIG_PATHS[-1]


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=None, metavar="FILE",
                        help="configuration file (default: $IOT_COLLECTOR_CONFIG, "
                             "/etc/iot-collector/collector.yaml, ./collector.yaml)")


def read_config(args: argparse.Namespace) -> tuple[Config, str]:
    path = args.config or default_config_path()
    return load_config(path), path


# --- commands ------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from collector.daemon import run_daemon
    from collector.logs import configure_logging

    config, path = read_config(args)
    configure_logging(args.log_level or config.logging.level, config.logging.format, cache=True)
    return asyncio.run(run_daemon(config, path))


def cmd_once(args: argparse.Namespace) -> int:
    from collector.inventory import load_inventory
    from collector.logs import configure_logging
    from collector.once import run_once

    config, _path = read_config(args)
    configure_logging(args.log_level or "warning", "console" if sys.stderr.isatty() else "json", stream=sys.stderr)
    devices = args.device or list(load_inventory(config.inventory, config.sharding).devices)

    async def go() -> int:
        if not config.simulator.embedded:
            return await run_once(config, devices, args.json, sys.stdout)
        from collector.simulator import Simulator

        sim = Simulator(devices=config.simulator.devices, seed=config.simulator.seed,
                        speed=config.simulator.speed, platform=config.platform)
        base_url = await sim.start("127.0.0.1", 0)
        try:
            return await run_once(config, devices or sim.device_numbers(), args.json, sys.stdout, base_url=base_url)
        finally:
            await sim.stop()

    return asyncio.run(go())


def cmd_simulate(args: argparse.Namespace) -> int:
    from collector.simulator import main as simulate_main

    return simulate_main(args)


def budget_summary(config: Config, assumed_sims_per_device: int | None = None) -> dict[str, Any]:
    """Devices, jobs and the request budget a configuration implies (for check-config and the docs):
    whether it fits in 90% of the rate limit, and if not the rate that would fit."""
    from collector.endpoints import ENDPOINTS
    from collector.inventory import load_inventory
    from collector.pipeline import job_plan
    from collector.schedule import ASSUMED_SIMS_PER_DEVICE, USABLE_SHARE, plan_budget

    if assumed_sims_per_device is None:
        assumed_sims_per_device = ASSUMED_SIMS_PER_DEVICE

    inventory = load_inventory(config.inventory, config.sharding)
    devices = len(inventory.devices)
    if config.simulator.embedded and not inventory.devices and not inventory.cards:
        devices = config.simulator.devices
    sims = devices * assumed_sims_per_device + len(inventory.cards)
    counts = {"device": devices, "card": sims, "account": 1}
    enabled = [(e.job, interval, limit, counts[e.entity]) for e, interval, limit in job_plan(config)]
    lines, need = plan_budget(enabled, config.platform.rate_limit)
    stretch = max((line.effective_interval / line.interval for line in lines), default=1.0)
    return {
        "devices": devices, "cards": len(inventory.cards), "assumed_sims": sims,
        "assumed_sims_per_device": assumed_sims_per_device,
        "rate_limit_rps": config.platform.rate_limit, "needed_rps": need,
        "fits": stretch <= 1.0, "stretch": stretch,
        # With 10% kept for retries, rounded up to a tenth so that it fits.
        "rate_limit_to_fit": math.ceil(need / USABLE_SHARE * 10) / 10,
        "jobs": [line.__dict__ for line in lines],
        "disabled_jobs": [e.job for e in ENDPOINTS.values() if not config.jobs.job(e.job).enabled],
        "sinks": [name for name in ("file", "influxdb_v1", "influxdb_v2")
                  if getattr(config.sinks, name).enabled],
        "alerts": config.alerts.enabled,
        "sharding": f"{config.sharding.index + 1} of {config.sharding.total}",
        "simulator": config.simulator.embedded,
    }


def _interval_to_fit(seconds: float) -> str:
    """A duration for the configuration, rounded up to the smallest unit it shows ("6m 48s", "8h 10m")."""
    step = 3600 if seconds >= 86400 else 60 if seconds >= 3600 else 1
    return human_duration(math.ceil(seconds / step - 1e-9) * step) or ""


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    platform = "embedded simulator" if summary["simulator"] else "platform"
    out.write(f"devices: {summary['devices']}  standalone cards: {summary['cards']}  "
              f"shard: {summary['sharding']}  source: {platform}\n")
    out.write(f"SIMs assumed for the budget: {summary['assumed_sims']} "
              f"({summary['assumed_sims_per_device']} per device until discovered)\n")
    out.write("jobs:\n")
    for job in summary["jobs"]:
        stretched = "" if job["effective_interval"] == job["interval"] else \
            f"  -> stretched to {short_duration(job['effective_interval'])}"
        out.write(f"  {job['job']:<17} every {short_duration(job['interval']):>5}  {job['requests_per_cycle']:>7} "
                  f"requests/cycle  {job['requests_per_second']:8.3f} req/s{stretched}\n")
    if summary["disabled_jobs"]:
        out.write(f"  disabled: {', '.join(summary['disabled_jobs'])}\n")
    need, rate = summary["needed_rps"], summary["rate_limit_rps"]
    verdict = "fits" if summary["fits"] else "TOO SMALL"
    out.write(f"request budget: {need:.3f} req/s needed of {rate:g} req/s allowed "
              f"({need / rate:.0%}, 90% usable): {verdict}\n")
    if not summary["fits"]:
        out.write(f"  to fit: platform.rate_limit: {summary['rate_limit_to_fit']:g} (or more), or every interval "
                  f"x{summary['stretch']:.2f}:\n")
        for job in summary["jobs"]:
            out.write(f"    jobs.{job['job']}.interval: {_interval_to_fit(job['effective_interval'])}"
                      f"   (now {short_duration(job['interval'])})\n")
        out.write("  as configured, the collector stretches every interval that much by itself\n")
    out.write(f"sinks: {', '.join(summary['sinks']) or 'none'}  alerts: "
              f"{'on' if summary['alerts'] else 'off'}\n")


def cmd_check_config(args: argparse.Namespace) -> int:
    """0: valid and within the request budget; 2: invalid; 3: valid but the budget is too small."""
    config, path = read_config(args)
    summary = budget_summary(config)
    if args.json:
        json.dump({"config": path, "ok": True, **summary}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(f"{path}: OK\n")
        print_summary(summary, sys.stdout)
    return 0 if summary["fits"] else EXIT_BUDGET_TOO_SMALL


def daemon_url(args: argparse.Namespace) -> str:
    """Where the running collector's HTTP API is: --url, else from the configuration."""
    if getattr(args, "url", None):
        return str(args.url).rstrip("/")
    config, _ = read_config(args)
    if config.http.port == 0:
        runtime = Path(config.state_dir) / "collector.json"
        try:
            return str(json.loads(runtime.read_text())["url"])
        except (OSError, ValueError, KeyError):
            raise ConfigError([f"http.port is 0 and {runtime} does not say which port the collector took"],
                              args.config or default_config_path()) from None
    host = "127.0.0.1" if config.http.listen in ("0.0.0.0", "::", "") else config.http.listen
    return f"http://{host}:{config.http.port}"


def fetch_json(url: str) -> Any:
    import httpx

    try:
        response = httpx.get(url, timeout=5.0)
    except httpx.HTTPError as exc:
        raise DaemonUnreachable(f"cannot reach the collector at {url}: {exc}") from None
    if response.status_code >= 400:
        raise DaemonUnreachable(f"{url} answered HTTP {response.status_code}")
    return response.json()


class DaemonUnreachable(Exception):
    pass


def cmd_status(args: argparse.Namespace) -> int:
    from collector.status import render_status

    status = fetch_json(daemon_url(args) + "/api/status")
    if args.json:
        json.dump(status, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_status(status, sys.stdout)
    return 0


# --- parser ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iot-collector", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--version", action="version", version=f"iot-collector {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the collector daemon")
    add_config_arg(p)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("once", help="poll each configured device once and print what was observed")
    add_config_arg(p)
    p.add_argument("--device", action="append", metavar="NO", help="only this device (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    p.set_defaults(func=cmd_once)

    p = sub.add_parser("simulate", help="run the platform simulator as a server")
    from collector.simulator import add_arguments as simulator_arguments

    simulator_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("check-config", help="validate a configuration and print its request budget "
                                         "(exit 2: invalid, 3: the budget is too small)")
    add_config_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("status", help="what the running collector is doing")
    add_config_arg(p)
    p.add_argument("--url", help="the collector's HTTP address (default: from the configuration)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    try:
        from collector.alerts import cli as alerts_cli
    except ImportError:  # pragma: no cover - alerting not installed
        alerts_cli = None  # type: ignore[assignment]
    if alerts_cli is not None:
        alerts_cli.add_arguments(sub, add_config_arg)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except DaemonUnreachable as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
