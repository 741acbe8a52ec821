"""`iot-collector simulate`: the simulator as a standalone server, with faults and incidents set by
flags, or a captured folder replayed (`--replay DIR`).

Owns the command's arguments and its start-up banner. Without `-c` it accepts the demo credentials
(`demo` / `demo-secret`); with `-c FILE` it takes credentials, sign recipe, endpoint paths and
parameters, field names, flow unit and zone from that configuration's `platform` section, and defaults
for devices, seed and speed from its `simulator` section (`collector.simulator.settings`: the file is
read as data, the client is never loaded), so a collector using the same file talks to it unchanged,
and a file with another recipe or other paths makes a platform a collector must be configured for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from collector.configfile import ConfigError
from collector.configtypes import parse_duration
from collector.simulator.contract import Endpoint
from collector.simulator.faults import FaultConfig
from collector.simulator.fleet import PROFILE_CACHE
from collector.simulator.replay import CaptureError, ReplayServer
from collector.simulator.server import PlatformServer, Simulator
from collector.simulator.settings import (
    EMBEDDED_APP_ID,
    EMBEDDED_APP_SECRET,
    PlatformSettings,
    SimulatorDefaults,
    load_settings,
)

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


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `simulate` subcommand's arguments (fleet or replay, listening address, faults, incidents)."""
    parser.add_argument("-c", "--config", dest="config", default=None, metavar="FILE",
                        help="take credentials, sign recipe, endpoint paths, field names, flow unit and time zone "
                             "from this configuration's platform section (default: the built-in demo "
                             f"credentials {EMBEDDED_APP_ID}/{EMBEDDED_APP_SECRET})")
    parser.add_argument("--replay", default=None, metavar="DIR",
                        help="serve the answers captured in DIR (iot-collector capture) instead of a simulated fleet")
    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--devices", type=int, default=None, metavar="N", help="number of devices (default 50)")
    fleet.add_argument("--seed", type=int, default=None, metavar="S", help="fleet seed (default 1)")
    fleet.add_argument("--speed", type=float, default=None, metavar="X",
                       help="simulated seconds per wall-clock second (default 1; 60 makes a lively demo)")
    fleet.add_argument("--start", default=None, metavar="TIME",
                       help="simulated start, 'YYYY-MM-DD HH:MM:SS' platform local time or Unix seconds "
                            "(default: now)")
    fleet.add_argument("--times", choices=["wall", "simulated"], default=None,
                       help="the clock answers report instants on: wall (default while time runs: consistent "
                            "with a collector's clock at any speed) or simulated (the simulated dates as they are)")
    fleet.add_argument("--profile-cache", type=int, default=PROFILE_CACHE, metavar="N",
                       help=f"devices whose derived profile stays in memory, about 4.5 KB each (default "
                            f"{PROFILE_CACHE}); raise it to the fleet size for steady-state speed on big fleets")
    fleet.add_argument("--print-inventory", action="store_true",
                       help="print the device list as inventory YAML and exit")
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
    incidents = parser.add_argument_group("incidents from the start (also at run time: POST /_sim/devices/..., "
                                          "/_sim/sims/..., /_sim/account); each repeatable")
    incidents.add_argument("--offline", action="append", default=[], metavar="DEVICE_NO", help="force offline")
    incidents.add_argument("--rssi", action="append", default=[], metavar="DEVICE_NO:DBM",
                           help="pin the signal (e.g. weak: -112)")
    incidents.add_argument("--battery", action="append", default=[], metavar="DEVICE_NO:LEVEL[:RATE]",
                           help="the battery falls to LEVEL %% at RATE %% per simulated hour (at once without)")
    incidents.add_argument("--freeze", action="append", default=[], metavar="DEVICE_NO",
                           help="the platform stops refreshing the device's data (it stays online)")
    incidents.add_argument("--exhaust", action="append", default=[], metavar="ICCID",
                           help="near-zero remaining data")
    incidents.add_argument("--top-up", action="append", default=[], metavar="ICCID",
                           help="the cycle's usage back to zero")
    incidents.add_argument("--expire", action="append", default=[], metavar="ICCID:WHEN",
                           help="the package ends WHEN: a simulated duration from the start with its unit (2h, "
                                "3d) or a time ('YYYY-MM-DD HH:MM:SS' or Unix seconds, as answers report it)")
    incidents.add_argument("--suspend", action="append", default=[], metavar="ICCID", help="suspend")
    incidents.add_argument("--balance", type=_amount, default=None, metavar="AMOUNT",
                           help="pin the account balance (e.g. low: 50)")


def _parse_time(text: str, zone: str) -> float:
    """Unix seconds, or 'YYYY-MM-DD HH:MM:SS' local time in `zone`. Raises ValueError."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not 'YYYY-MM-DD HH:MM:SS' or Unix seconds: {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(zone))).timestamp()


def _split(flag: str, text: str, parts: int) -> list[str]:
    """`text` split at its first `parts - 1` colons (ids have none; a time after the last may)."""
    found = text.split(":", parts - 1)
    if not found[0] or any(not part for part in found[1:]):
        raise ValueError(f"{flag}: expected {'ID' + ':VALUE' * (parts - 1)}, got {text!r}")
    return found


def _settings(args: argparse.Namespace) -> tuple[PlatformSettings, SimulatorDefaults]:
    path = getattr(args, "config", None)
    return load_settings(path) if path else (PlatformSettings.demo(), SimulatorDefaults())


def build(args: argparse.Namespace) -> tuple[PlatformServer, bool]:
    """The server the arguments describe; the flag says whether credentials came from a file.
    Raises ConfigError, CaptureError, ValidationError or ValueError for bad input."""
    platform, defaults = _settings(args)
    faults = FaultConfig(
        latency=args.latency, latency_jitter=args.latency_jitter, error_rate=args.error_rate,
        error_status=args.error_status, drop_rate=args.drop_rate, timeout_rate=args.timeout_rate,
        hang=args.hang, malformed_rate=args.malformed_rate, code_rate=args.code_rate, code=args.code,
        qps_cap=args.qps_cap, throttle_http=args.throttle_http,
        endpoints=[Endpoint(e) for e in args.fault_endpoint],
    )
    seed = args.seed if args.seed is not None else defaults.seed
    from_file = bool(getattr(args, "config", None))
    if getattr(args, "replay", None):
        used = [flag for flag, given in (
            ("--devices", args.devices is not None), ("--speed", args.speed is not None),
            ("--start", args.start is not None), ("--times", args.times is not None),
            ("--offline", args.offline), ("--rssi", args.rssi), ("--battery", args.battery),
            ("--freeze", args.freeze), ("--exhaust", args.exhaust), ("--top-up", args.top_up),
            ("--expire", args.expire), ("--suspend", args.suspend), ("--balance", args.balance is not None),
        ) if given]
        if used:
            raise ValueError(f"--replay serves captured answers as they are: {', '.join(used)} do not apply")
        return ReplayServer(args.replay, platform, faults, seed=seed), from_file
    devices = args.devices if args.devices is not None else defaults.devices
    speed = args.speed if args.speed is not None else defaults.speed
    if devices < 1:
        raise ValueError(f"--devices must be >= 1, got {devices}")
    if speed < 0:
        raise ValueError(f"--speed must be >= 0, got {speed}")
    if args.profile_cache < 0:
        raise ValueError(f"--profile-cache must be >= 0, got {args.profile_cache}")
    if args.times == "wall" and speed == 0:
        raise ValueError("--times wall needs simulated time to run (--speed > 0)")
    start = None
    if args.start is not None:
        try:
            start = _parse_time(args.start, platform.timezone)
        except ValueError as exc:
            raise ValueError(f"--start: {exc}") from None
    simulator = Simulator(devices=devices, seed=seed, speed=speed, platform=platform, faults=faults, start=start,
                          times=args.times, profile_cache=args.profile_cache)
    _inject(simulator, args)
    return simulator, from_file


def _inject(simulator: Simulator, args: argparse.Namespace) -> None:
    """The incident flags, dated at the simulated start."""
    fleet, now = simulator.fleet, simulator.now()

    def device(flag: str, device_no: str) -> int:
        index = fleet.find_device(device_no)
        if index is None:
            raise ValueError(f"{flag}: no device {device_no!r} in this fleet (see --print-inventory)")
        return index

    def card(flag: str, iccid: str) -> int:
        index = fleet.find_sim(iccid)
        if index is None:
            raise ValueError(f"{flag}: no card {iccid!r} in this fleet")
        return index

    def integer(flag: str, text: str, low: int, high: int) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{flag}: {text!r} is not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"{flag}: {value} is not between {low} and {high}")
        return value

    for device_no in args.offline:
        fleet.force_offline(device("--offline", device_no), now)
    for text in args.rssi:
        device_no, dbm = _split("--rssi", text, 2)
        fleet.pin_rssi(device("--rssi", device_no), integer("--rssi", dbm, -140, 0), now)
    for text in args.battery:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--battery: expected DEVICE_NO:LEVEL[:RATE], got {text!r}")
        level = integer("--battery", parts[1], 0, 100)
        rate = None
        if len(parts) == 3:
            try:
                rate = float(parts[2])
            except ValueError:
                raise ValueError(f"--battery: rate {parts[2]!r} is not a number") from None
            if rate < 0:
                raise ValueError(f"--battery: rate must be >= 0, got {rate:g}")
        fleet.drain_battery(device("--battery", parts[0]), now, level, rate)
    for device_no in args.freeze:
        fleet.freeze(device("--freeze", device_no), now)
    for iccid in args.exhaust:
        fleet.exhaust(card("--exhaust", iccid), now)
    for iccid in args.top_up:
        fleet.top_up(card("--top-up", iccid), now)
    for text in args.expire:
        iccid, when = _split("--expire", text, 2)
        try:
            float(when)  # a bare number is a time (Unix seconds); a duration carries its unit
            end = simulator.clock.simulated(float(when))
        except ValueError:
            try:
                end = now + parse_duration(when)
            except ValueError:
                try:
                    end = simulator.clock.simulated(_parse_time(when, simulator.settings.timezone))
                except ValueError as exc:
                    raise ValueError(f"--expire: {when!r} is neither a duration (2h) nor a time: {exc}") from None
        fleet.end_package(card("--expire", iccid), now, end)
    for iccid in args.suspend:
        fleet.suspend(card("--suspend", iccid), now)
    if args.balance is not None:
        fleet.pin_balance(now, args.balance)
    simulator.clock_changed()


def write_inventory(server: Simulator | ReplayServer, out: TextIO) -> None:
    """The devices as an inventory YAML file (`inventory.file`), ids quoted."""
    numbers = server.device_numbers()
    if isinstance(server, ReplayServer):
        out.write(f"# iot-collector replay of {server.capture.root}: {len(numbers)} devices\n")
    else:
        out.write(f"# iot-collector simulator fleet: {len(numbers)} devices, seed {server.seed}\n")
    out.write("devices:\n")
    for device_no in numbers:
        out.write(f'  - "{device_no}"\n')


def banner(server: PlatformServer, from_file: str | None, out: TextIO) -> None:
    url = server.base_url
    if isinstance(server, Simulator):
        fleet = server.fleet
        out.write(f"iot-collector simulator: {len(fleet)} devices, {len(fleet.ids.iccids)} SIMs, "
                  f"seed {server.seed}, speed {server.clock.speed:g}x, "
                  f"simulated time {fleet.face.format(server.now())}, times reported on the "
                  f"{'wall clock' if server.clock.reporting == 'wall' else 'simulated clock'}\n")
        inventory = (f"iot-collector simulate --devices {len(fleet)} --seed {server.seed} "
                     "--print-inventory > sim-devices.yaml")
    elif isinstance(server, ReplayServer):
        capture = server.capture
        answers = ", ".join(f"{e.value} {len(a)}" for e, a in capture.answers.items())
        out.write(f"iot-collector simulator: replaying {capture.root} ({answers})\n")
        platform = capture.platform
        if platform:
            out.write("captured with " + ", ".join(f"{k} {v}" for k, v in platform.items()) +
                      ": read it with the same platform settings\n")
        if capture.ignored:
            out.write(f"not served (unknown endpoints): {', '.join(capture.ignored)}\n")
        inventory = f"iot-collector simulate --replay {capture.root} --print-inventory > sim-devices.yaml"
    if server.settings.not_served:
        out.write(f"not served (unknown to the simulator): platform.{', platform.'.join(server.settings.not_served)}\n")
    out.write(f"listening on {url}   (admin: {url}/_sim/state)\n")
    if from_file:
        out.write(f"app id: {server.app_id!r}, secret and sign recipe as configured in {from_file}\n")
        secret_line = "  app_secret: <as in that file>\n"
    else:
        out.write(f"app id: {EMBEDDED_APP_ID}, app secret: {EMBEDDED_APP_SECRET} (the built-in demo credentials)\n")
        secret_line = f"  app_secret: {EMBEDDED_APP_SECRET}\n"
    changed = server.faults.config.model_dump(exclude_defaults=True)
    if changed:
        out.write(f"faults: {changed}\n")
    out.write("\nPoint a collector at it (collector.yaml):\n"
              "simulator:\n  embedded: false\n"
              f"platform:\n  base_url: {url}\n  app_id: {server.app_id}\n{secret_line}"
              f"inventory:\n  file: sim-devices.yaml   # {inventory}\n"
              "\nCtrl-C stops it.\n")
    out.flush()


async def serve(server: PlatformServer, host: str, port: int, from_file: str | None, out: TextIO) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await server.start(host, port)
    # The fleet's ids and cached profiles live as long as the process: keep the GC from rescanning them.
    gc.freeze()
    try:
        banner(server, from_file, out)
        await stop.wait()
    finally:
        await server.stop()


def main(args: argparse.Namespace) -> int:
    """`iot-collector simulate`: 0 after SIGINT/SIGTERM, 2 for bad arguments or configuration."""
    try:
        server, from_file = build(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'faults'}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid fault settings: {problems}", file=sys.stderr)
        return 2
    except (CaptureError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_inventory:
        assert isinstance(server, Simulator | ReplayServer)
        write_inventory(server, sys.stdout)
        return 0
    try:
        asyncio.run(serve(server, args.host, args.port, args.config if from_file else None, sys.stdout))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def run(argv: Sequence[str], prog: str = "iot-collector simulate") -> int:
    """`iot-collector simulate ARGS` on its own: parses `argv` and runs `main`, loading nothing of the
    collector's client (its schema, endpoint table, signer or parser)."""
    parser = argparse.ArgumentParser(prog=prog, description="run the platform simulator as a server")
    add_arguments(parser)
    return main(parser.parse_args(list(argv)))
