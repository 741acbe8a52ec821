"""`iot-collector simulate`: the simulator as a standalone server, with faults set by flags.

Owns the command's arguments and its start-up banner. Without `-c` it accepts the embedded demo
credentials (`demo` / `demo-secret`); with `-c FILE` it takes credentials, sign recipe, endpoint
paths, flow unit and zone from that configuration's `platform` section, and defaults for devices,
seed and speed from its `simulator` section, so a collector using the same file talks to it unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from datetime import datetime
from typing import TextIO
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from collector.config import ConfigError, PlatformConfig, SimulatorConfig, load_config
from collector.configtypes import parse_duration
from collector.platform.endpoints import Endpoint
from collector.simulator.faults import FaultConfig
from collector.simulator.fleet import PROFILE_CACHE
from collector.simulator.server import EMBEDDED_APP_ID, EMBEDDED_APP_SECRET, Simulator

DEFAULT_PORT = 2000  # the port of the default platform.base_url, http://127.0.0.1:2000


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `simulate` subcommand's arguments (fleet, listening address, faults)."""
    parser.add_argument("-c", "--config", dest="config", default=None, metavar="FILE",
                        help="take credentials, sign recipe, endpoint paths, flow unit and time zone from "
                             "this configuration's platform section (default: the built-in demo "
                             f"credentials {EMBEDDED_APP_ID}/{EMBEDDED_APP_SECRET})")
    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--devices", type=int, default=None, metavar="N", help="number of devices (default 50)")
    fleet.add_argument("--seed", type=int, default=None, metavar="S", help="fleet seed (default 1)")
    fleet.add_argument("--speed", type=float, default=None, metavar="X",
                       help="simulated seconds per wall-clock second (default 1; 60 makes a lively demo)")
    fleet.add_argument("--start", default=None, metavar="TIME",
                       help="simulated start, 'YYYY-MM-DD HH:MM:SS' platform local time or Unix seconds "
                            "(default: now)")
    fleet.add_argument("--profile-cache", type=int, default=PROFILE_CACHE, metavar="N",
                       help=f"devices whose derived profile stays in memory, about 4.5 KB each (default "
                            f"{PROFILE_CACHE}); raise it to the fleet size for steady-state speed on big fleets")
    fleet.add_argument("--print-inventory", action="store_true",
                       help="print the fleet's device list as inventory YAML and exit")
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    net.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="P",
                     help=f"port (default {DEFAULT_PORT}, the default platform.base_url's; 0 = any free)")
    faults = parser.add_argument_group("faults (also settable at run time: POST /_sim/faults)")
    faults.add_argument("--latency", type=_duration, default=0.0, metavar="D", help="added to every answer (50ms)")
    faults.add_argument("--latency-jitter", type=_duration, default=0.0, metavar="D",
                        help="plus a random 0..D on top")
    faults.add_argument("--error-rate", type=_rate, default=0.0, metavar="P", help="answer HTTP 500 (share 0..1)")
    faults.add_argument("--error-status", type=int, default=500, metavar="S", help="status of those (500)")
    faults.add_argument("--drop-rate", type=_rate, default=0.0, metavar="P", help="close the connection unanswered")
    faults.add_argument("--timeout-rate", type=_rate, default=0.0, metavar="P", help="never answer (hold, then close)")
    faults.add_argument("--hang", type=_duration, default=300.0, metavar="D", help="how long a timeout holds (5m)")
    faults.add_argument("--malformed-rate", type=_rate, default=0.0, metavar="P", help="HTTP 200 with truncated JSON")
    faults.add_argument("--code-rate", type=_rate, default=0.0, metavar="P", help="HTTP 200 with a non-zero code")
    faults.add_argument("--code", type=int, default=50000, help="the code of --code-rate answers (50000)")
    faults.add_argument("--qps-cap", type=int, default=0, metavar="N",
                        help="the platform's requests/s cap; over it: code 42900 (0 = no cap)")
    faults.add_argument("--throttle-http", action="store_true", help="over the cap answer HTTP 429 + Retry-After")
    faults.add_argument("--fault-endpoint", action="append", default=[], choices=[e.value for e in Endpoint],
                        metavar="NAME", help="inject faults on this endpoint only (repeatable)")
    faults.add_argument("--offline", action="append", default=[], metavar="DEVICE_NO",
                        help="force offline (repeatable)")
    faults.add_argument("--exhaust", action="append", default=[], metavar="ICCID",
                        help="near-zero remaining data (repeatable)")
    faults.add_argument("--suspend", action="append", default=[], metavar="ICCID", help="suspend (repeatable)")


def _parse_start(text: str | None, zone: str) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--start: not 'YYYY-MM-DD HH:MM:SS' or Unix seconds: {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(zone))).timestamp()


def build(args: argparse.Namespace) -> tuple[Simulator, bool]:
    """The simulator the arguments describe; the flag says whether credentials came from a file.
    Raises ConfigError, ValidationError or ValueError for bad input."""
    path = getattr(args, "config", None)
    if path:
        config = load_config(path)
        platform, defaults = config.platform, config.simulator
    else:
        platform = PlatformConfig(app_id=EMBEDDED_APP_ID, app_secret=EMBEDDED_APP_SECRET)  # type: ignore[arg-type]
        defaults = SimulatorConfig()
    faults = FaultConfig(
        latency=args.latency, latency_jitter=args.latency_jitter, error_rate=args.error_rate,
        error_status=args.error_status, drop_rate=args.drop_rate, timeout_rate=args.timeout_rate,
        hang=args.hang, malformed_rate=args.malformed_rate, code_rate=args.code_rate, code=args.code,
        qps_cap=args.qps_cap, throttle_http=args.throttle_http,
        endpoints=[Endpoint(e) for e in args.fault_endpoint],
    )
    devices = args.devices if args.devices is not None else defaults.devices
    speed = args.speed if args.speed is not None else defaults.speed
    if devices < 1:
        raise ValueError(f"--devices must be >= 1, got {devices}")
    if speed < 0:
        raise ValueError(f"--speed must be >= 0, got {speed}")
    if args.profile_cache < 0:
        raise ValueError(f"--profile-cache must be >= 0, got {args.profile_cache}")
    simulator = Simulator(devices=devices, seed=args.seed if args.seed is not None else defaults.seed,
                          speed=speed, platform=platform, faults=faults,
                          start=_parse_start(args.start, platform.timezone), profile_cache=args.profile_cache)
    fleet, now = simulator.fleet, simulator.now()
    for device_no in args.offline:
        index = fleet.find_device(device_no)
        if index is None:
            raise ValueError(f"--offline: no device {device_no!r} in this fleet (see --print-inventory)")
        fleet.force_offline(index, now)
    for flag, iccids in (("--exhaust", args.exhaust), ("--suspend", args.suspend)):
        for iccid in iccids:
            sim = fleet.find_sim(iccid)
            if sim is None:
                raise ValueError(f"{flag}: no card {iccid!r} in this fleet")
            if flag == "--exhaust":
                fleet.exhaust(sim, now)
            else:
                fleet.suspend(sim, now)
    return simulator, bool(path)


def write_inventory(simulator: Simulator, out: TextIO) -> None:
    """The fleet's devices as an inventory YAML file (`inventory.file`), ids quoted."""
    out.write(f"# iot-collector simulator fleet: {len(simulator.fleet)} devices, seed {simulator.seed}\n")
    out.write("devices:\n")
    for device_no in simulator.device_numbers():
        out.write(f'  - "{device_no}"\n')


def banner(simulator: Simulator, from_file: str | None, out: TextIO) -> None:
    fleet = simulator.fleet
    url = simulator.base_url
    out.write(f"iot-collector simulator: {len(fleet)} devices, {len(fleet.ids.iccids)} SIMs, "
              f"seed {simulator.seed}, speed {simulator.clock.speed:g}x, "
              f"simulated time {fleet.face.format(simulator.now())}\n")
    out.write(f"listening on {url}   (admin: {url}/_sim/state)\n")
    if from_file:
        out.write(f"app id: {simulator.app_id!r}, secret and sign recipe as configured in {from_file}\n")
        secret_line = "  app_secret: <as in that file>\n"
    else:
        out.write(f"app id: {EMBEDDED_APP_ID}, app secret: {EMBEDDED_APP_SECRET} (the built-in demo credentials)\n")
        secret_line = f"  app_secret: {EMBEDDED_APP_SECRET}\n"
    faults = simulator.faults.config
    changed = faults.model_dump(exclude_defaults=True)
    if changed:
        out.write(f"faults: {changed}\n")
    out.write("\nPoint a collector at it (collector.yaml):\n"
              "simulator:\n  embedded: false\n"
              f"platform:\n  base_url: {url}\n  app_id: {simulator.app_id}\n{secret_line}"
              "inventory:\n  file: sim-devices.yaml   # iot-collector simulate "
              f"--devices {len(fleet)} --seed {simulator.seed} --print-inventory > sim-devices.yaml\n"
              "\nCtrl-C stops it.\n")
    out.flush()


async def serve(simulator: Simulator, host: str, port: int, from_file: str | None, out: TextIO) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await simulator.start(host, port)
    # The fleet's ids and cached profiles live as long as the process: keep the GC from rescanning them.
    gc.freeze()
    try:
        banner(simulator, from_file, out)
        await stop.wait()
    finally:
        await simulator.stop()


def main(args: argparse.Namespace) -> int:
    """`iot-collector simulate`: 0 after SIGINT/SIGTERM, 2 for bad arguments or configuration."""
    try:
        simulator, from_file = build(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'faults'}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid fault settings: {problems}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_inventory:
        write_inventory(simulator, sys.stdout)
        return 0
    try:
        asyncio.run(serve(simulator, args.host, args.port, args.config if from_file else None, sys.stdout))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
