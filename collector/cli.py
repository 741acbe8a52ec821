"""The `iot-collector` command: run, once, probe, capture, simulate, check-config, status, report, alerts,
silence.

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
from typing import TYPE_CHECKING, Any, TextIO

from collector import __version__
from collector.configfile import ConfigError
from collector.formats import human_duration, short_duration

if TYPE_CHECKING:  # the schema loads the client (endpoint table, parser): not for `simulate`
    from collector.config import ClientSettings, Config

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
    from collector.config import load_config

    path = args.config or default_config_path()
    return load_config(path), path


# --- commands ------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from collector.alerts.rules import compile_rules
    from collector.daemon import run_daemon
    from collector.logs import configure_logging

    config, path = read_config(args)
    compile_rules(config.alerts, path)  # a bad rule stops the start here, with its path (exit 2)
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


def _writable_target(path: str, flag: str) -> Path:
    """`path` as a file to create or replace; ConfigError (exit 2) when its folder cannot take it."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError([f"{flag}: the folder {str(folder)!r} does not exist"])
    if not os.access(folder, os.W_OK):
        raise ConfigError([f"{flag}: the folder {str(folder)!r} is not writable"])
    if target.is_dir():
        raise ConfigError([f"{flag}: {path!r} is a folder, not a file"])
    return target


def _real_platform(config: Config, command: str) -> None:
    if config.simulator.embedded:
        raise ConfigError([f"simulator.embedded: {command} talks to a real platform; set simulator.embedded: "
                           "false and platform.base_url, app_id and app_secret"])


def cmd_probe(args: argparse.Namespace) -> int:
    from collector.firstcontact.probe import run_probe
    from collector.firstcontact.report import render
    from collector.firstcontact.settings import write_config
    from collector.logs import configure_logging

    config, path = read_config(args)
    _real_platform(config, "probe")
    target = _writable_target(args.write_config, "--write-config") if args.write_config else None
    configure_logging(args.log_level or "info", "console" if sys.stderr.isatty() else "json", stream=sys.stderr)
    report = asyncio.run(run_probe(config, device=args.device, card=args.card))
    if target is not None:
        report.written = write_config(Path(path), target, report)
    if args.json:
        json.dump(report.as_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        render(report, sys.stdout)
    return report.exit_code


def cmd_capture(args: argparse.Namespace) -> int:
    from collector.firstcontact.capture import CaptureError, prepare_folder, run_capture
    from collector.logs import configure_logging

    config, _path = read_config(args)
    _real_platform(config, "capture")
    if args.devices < 1:
        raise ConfigError([f"--devices: must be >= 1, got {args.devices}"])
    out = Path(args.out)
    try:
        prepare_folder(out)
    except CaptureError as error:
        raise ConfigError([str(error)]) from None
    configure_logging(args.log_level or "info", "console" if sys.stderr.isatty() else "json", stream=sys.stderr)
    try:
        result = asyncio.run(run_capture(config, out, devices=args.devices, pseudonymise=args.pseudonymise))
    except CaptureError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    total = sum(result.files.values())
    sys.stdout.write(f"{total} answer file(s) in {out} ({result.sent} request(s)); secrets removed"
                     f"{'; ids and positions pseudonymised' if result.pseudonymised else ''}\n")
    for endpoint, count in result.files.items():
        sys.stdout.write(f"  {endpoint}: {count}\n")
    for failure in result.failures:
        sys.stdout.write(f"  FAILED {failure}\n")
    if total and not result.pseudonymised:
        sys.stdout.write("The files hold real device numbers, ICCIDs and positions: capture again with "
                         "--pseudonymise before sending them to anyone.\n")
    return result.exit_code


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
        "warnings": list(inventory.warnings),
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
    from collector.alerts.rules import compile_rules

    config, path = read_config(args)
    compile_rules(config.alerts, path)
    summary = budget_summary(config)
    for warning in summary["warnings"]:
        sys.stderr.write(f"warning: {warning}\n")
    if args.json:
        json.dump({"config": path, "ok": True, **summary}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(f"{path}: OK\n")
        print_summary(summary, sys.stdout)
    return 0 if summary["fits"] else EXIT_BUDGET_TOO_SMALL


def client_settings(args: argparse.Namespace) -> ClientSettings:
    """The parts of the configuration a command talking to the running collector needs (its address,
    state directory and API token), read without the secrets the rest of the file names."""
    from collector.config import load_client_settings

    return load_client_settings(args.config or default_config_path())


def daemon_url(args: argparse.Namespace) -> str:
    """Where the running collector's HTTP API is: --url, else from the configuration."""
    if getattr(args, "url", None):
        return str(args.url).rstrip("/")
    settings = client_settings(args)
    if settings.http.port == 0:
        runtime = Path(settings.state_dir) / "collector.json"
        try:
            return str(json.loads(runtime.read_text())["url"])
        except (OSError, ValueError, KeyError):
            raise ConfigError([f"http.port is 0 and {runtime} does not say which port the collector took"],
                              settings.source) from None
    return settings.http.url()


def api_token(args: argparse.Namespace) -> tuple[str, str]:
    """The API token a command that changes something sends, and where it was found. Raises
    TokenUnavailable saying what to do."""
    from collector.apitoken import TokenUnavailable, client_token
    from collector.config import ClientSettings

    if getattr(args, "token_file", None):
        return client_token(ClientSettings(), args.token_file)
    try:
        settings = client_settings(args)
    except ConfigError as exc:
        raise TokenUnavailable(f"no configuration to find the API token in ({exc.source}: "
                               f"{'; '.join(exc.problems)}): pass -c FILE or --token-file FILE") from None
    return client_token(settings)


def fetch_json(url: str) -> Any:
    import httpx

    try:
        response = httpx.get(url, timeout=5.0)
    except httpx.HTTPError as exc:
        raise DaemonUnreachable(f"cannot reach the collector at {url}: {exc}") from None
    if response.status_code >= 400:
        try:
            reason = f": {response.json()['error']}"
        except (ValueError, KeyError, TypeError):
            reason = ""
        raise DaemonUnreachable(f"{url} answered HTTP {response.status_code}{reason}")
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

    p = sub.add_parser("probe", help="first contact with a platform: find the sign recipe, paths, field names "
                                      "and flow unit it uses, with a bounded number of read requests")
    add_config_arg(p)
    p.add_argument("--device", metavar="NO", help="the device to ask about (default: the inventory's first)")
    p.add_argument("--card", metavar="ICCID", help="the card to ask the card endpoints about "
                                                   "(default: a SIM of the device)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a report")
    p.add_argument("--write-config", metavar="OUT",
                   help="write the configuration with the discovered platform settings applied to OUT")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None,
                   help="log level on stderr (default info: one line per request)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("capture", help="store the platform's raw answers for a few devices and their cards as "
                                        "fixture files (secrets removed)")
    add_config_arg(p)
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder for the files")
    p.add_argument("--devices", type=int, default=3, metavar="N",
                   help="how many devices of the inventory (default 3), with their cards")
    p.add_argument("--pseudonymise", "--pseudonymize", action="store_true",
                   help="replace device numbers, ICCIDs, IMEIs, IMSIs, MSISDNs, MACs and positions by "
                        "consistent fakes")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    p.set_defaults(func=cmd_capture)

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

    from collector.report.command import add_arguments as report_arguments

    report_arguments(sub, add_config_arg)

    try:
        from collector.alerts import cli as alerts_cli
    except ImportError:  # pragma: no cover - alerting not installed
        alerts_cli = None  # type: ignore[assignment]
    if alerts_cli is not None:
        alerts_cli.add_arguments(sub, add_config_arg, read_config, daemon_url, api_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_given = sys.argv[1:] if argv is None else argv
    if args_given[:1] == ["simulate"]:
        # The simulator is a second implementation of the platform's contract: its process loads
        # nothing of the client, so it is parsed on its own.
        from collector.simulator import run as simulate

        return simulate(args_given[1:])
    from collector.report.command import UsageError
    from collector.report.model import ReportError

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
    except ReportError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt:
        return 130
