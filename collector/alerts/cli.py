"""The `alerts` and `silence` commands of `iot-collector`.

- `alerts list` reads the active alerts of a running collector through its loopback HTTP API.
- `alerts test` evaluates the rules once (ignoring `for`) against a snapshot of the fleet: an
  observation file, or the built-in simulator polled with the real platform client, and prints what
  would fire.
- `silence add|list|remove` manage silences of a running collector.

The daemon's address comes from `--url`, else from the configuration file (`http.listen`/`http.port`);
`iot-collector` hands over how it reads the configuration and finds the daemon (`add_arguments`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import getpass
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from collector.alerts.rules import Rule, compile_rules
from collector.configtypes import parse_duration

AddConfigArg = Callable[[argparse.ArgumentParser], None]
ReadConfig = Callable[[argparse.Namespace], tuple[Any, str]]  # -> (Config, its path)
DaemonUrl = Callable[[argparse.Namespace], str]
Command = Callable[[argparse.Namespace], int]


# --- talking to the daemon ---------------------------------------------------------------------------------


class DaemonUnreachable(Exception):
    """The running collector cannot be reached or refused the request (exit code 1)."""


def _request(url: str, method: str, path: str, body: Any = None) -> Any:
    import httpx

    url += path
    try:
        response = httpx.request(method, url, json=body, timeout=5.0)
    except httpx.HTTPError as exc:
        raise DaemonUnreachable(f"cannot reach the collector at {url}: {exc or type(exc).__name__} "
                                "(is it running, with alerts.enabled and http.enabled?)") from None
    if response.status_code == 404 and path.startswith("/api/alerts"):
        raise DaemonUnreachable(f"{url}: not found (is alerts.enabled true in the running collector?)")
    if response.status_code >= 400:
        try:
            reason = response.json().get("error") or response.text
        except ValueError:
            reason = response.text
        raise DaemonUnreachable(f"{url} answered HTTP {response.status_code}: {reason}")
    return None if response.status_code == 204 else response.json()


def _daemon_command(command: Callable[[argparse.Namespace, str], int], daemon_url: DaemonUrl) -> Command:
    """A command talking to the daemon at `daemon_url(args)`; unreachable: one line, exit code 1."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args, daemon_url(args))
        except DaemonUnreachable as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 1
    return run


def _age(iso_time: str | None, now: float) -> str:
    if not iso_time:
        return "-"
    seconds = now - dt.datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def _table(rows: list[list[str]], out: TextIO) -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")


def print_alerts(alerts: list[dict[str, Any]], out: TextIO, now: float | None = None) -> None:
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    if not alerts:
        out.write("no active alerts\n")
        return
    rows = [["STATE", "SEVERITY", "RULE", "ENTITY", "SINCE", "SUMMARY"]]
    for a in alerts:
        state = a["state"] + (" (silenced)" if a.get("silenced_by") else "")
        rows.append([state, a.get("severity", ""), a["rule"], a["entity"], _age(a.get("active_since"), now),
                     (a.get("annotations") or {}).get("summary", "")])
    _table(rows, out)


def cmd_alerts_list(args: argparse.Namespace, url: str) -> int:
    query = f"?state={args.state}" if args.state else ""
    alerts = _request(url, "GET", "/api/alerts" + query)["alerts"]
    if args.json:
        json.dump(alerts, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print_alerts(alerts, sys.stdout)
    return 0


def cmd_silence_add(args: argparse.Namespace, url: str) -> int:
    body: dict[str, Any] = {"matchers": args.matchers, "comment": args.comment,
                            "created_by": args.author or getpass.getuser()}
    if args.starts_at:
        body["starts_at"] = args.starts_at
    if args.ends_at:
        body["ends_at"] = args.ends_at
    else:
        body["duration"] = parse_duration(args.duration)
    result = _request(url, "POST", "/api/silences", body)
    sys.stdout.write(f"{result['id']}\n")
    return 0


def cmd_silence_list(args: argparse.Namespace, url: str) -> int:
    silences = _request(url, "GET", "/api/silences")["silences"]
    if args.json:
        json.dump(silences, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    if not silences:
        sys.stdout.write("no silences\n")
        return 0
    rows = [["ID", "STATUS", "MATCHERS", "WHEN", "BY", "COMMENT"]]
    for s in silences:
        if s.get("source") == "maintenance_window":
            when = f"{','.join(s['weekdays'])} {s['start']}-{s['end']} {s['timezone']}"
        else:
            when = f"{s.get('starts_at_iso')} .. {s.get('ends_at_iso')}"
        rows.append([s["id"], s.get("status", ""), " ".join(s["matchers"]), when, s.get("created_by", ""),
                     s.get("comment", "") or s.get("name", "")])
    _table(rows, sys.stdout)
    return 0


def cmd_silence_remove(args: argparse.Namespace, url: str) -> int:
    _request(url, "DELETE", f"/api/silences/{args.id}")
    sys.stdout.write(f"removed {args.id}\n")
    return 0


# --- alerts test ------------------------------------------------------------------------------------------------


def would_fire(rules: list[Rule], entities: Mapping[str, Mapping[str, Any]], now: float) -> list[dict[str, Any]]:
    """Every (rule, entity) whose condition holds now, ignoring `for`: what the rules would fire.
    `entities` are records by kind and key (state objects or FieldRecords)."""
    found: list[dict[str, Any]] = []
    for rule in rules:
        for key, record in entities.get(rule.kind, {}).items():
            try:
                holds = rule.condition.fn(record, now)
            except Exception:
                holds = False
            if holds:
                found.append({"rule": rule.name, "severity": rule.severity, "kind": rule.kind, "entity": key,
                              "for": rule.for_, "value": rule.current_value(record, now),
                              "labels": rule.alert_labels(key, record), "annotations": rule.render(record, now)})
    return found


def entities_from_file(path: str, config: Any, now: float) -> dict[str, dict[str, Any]]:
    """Observations from a file: queryDeviceFlow answers (one envelope, or a list of them), or entity
    fields by kind: `{"device": [{"device_no": ..., "rssi_dbm": ...}], "sim": [...], "account": {...}}`."""
    from collector.platform.parse import ParseContext, parse_device
    from collector.state import FieldRecord, FleetState

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(doc, dict) and {"device", "sim", "account", "collector"} & set(doc):
        out: dict[str, dict[str, Any]] = {}
        ids = {"device": "device_no", "sim": "iccid"}
        for kind in ("device", "sim", "account", "collector"):
            items = doc.get(kind) or []
            items = [items] if isinstance(items, dict) else items
            for i, item in enumerate(items):
                key = str(item.get(ids[kind], i)) if kind in ids else kind
                out.setdefault(kind, {})[key] = FieldRecord(kind, item)
        return out
    envelopes = doc if isinstance(doc, list) else [doc]
    ctx = ParseContext.from_config(config.platform, config.privacy, polled_at=now)
    state = FleetState(device_interval=config.jobs.device_status.interval)
    for env in envelopes:
        data = env.get("data", env) if isinstance(env, dict) else env
        obs = parse_device(data, ctx)
        state.sync_inventory({**{d: s.labels for d, s in state.devices.items()}, obs.device_no: {}}, {})
        state.observe_device(obs)
    return _fleet_entities(state)


def _fleet_entities(state: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "device": {no: d for no, d in state.devices.items() if d.obs is not None},
        "sim": {i: s for i, s in state.sims.items() if s.obs is not None},
    }
    if state.account.assets is not None:
        out["account"] = {"account": state.account}
    return out


async def entities_from_simulator(config: Any, now_fn: Callable[[], float]) -> dict[str, dict[str, Any]]:
    """Start the simulator, poll every device (and the account) once with the real client."""
    from collector.daemon import DEMO_CUSTOMERS
    from collector.inventory import load_inventory
    from collector.platform.client import PlatformClient
    from collector.simulator import Simulator
    from collector.state import FleetState

    sim_cfg = config.simulator
    sim = Simulator(devices=sim_cfg.devices, seed=sim_cfg.seed, speed=sim_cfg.speed, platform=config.platform)
    base_url = await sim.start("127.0.0.1", 0)
    try:
        inventory = load_inventory(config.inventory, config.sharding)
        devices = dict(inventory.devices)
        if not devices and not inventory.cards:
            devices = {no: {"customer": DEMO_CUSTOMERS[i % len(DEMO_CUSTOMERS)]}
                       for i, no in enumerate(sim.device_numbers())}
        state = FleetState(device_interval=config.jobs.device_status.interval)
        state.sync_inventory(devices, inventory.cards)
        async with PlatformClient(config.platform, config.privacy, base_url=base_url) as client:
            gate = asyncio.Semaphore(16)

            async def poll(no: str) -> None:
                async with gate:
                    try:
                        state.observe_device(await client.device_flow(no))
                    except Exception as exc:
                        state.record_device_failure(no, str(exc), now_fn())

            await asyncio.gather(*(poll(no) for no in devices))
            with contextlib.suppress(Exception):  # the account is optional for this preview
                state.observe_account(await client.account_assets())
        return _fleet_entities(state)
    finally:
        await sim.stop()


def print_would_fire(found: list[dict[str, Any]], entities: Mapping[str, Mapping[str, Any]], out: TextIO) -> None:
    counted = ", ".join(f"{len(v)} {k}{'s' if len(v) != 1 else ''}" for k, v in entities.items() if v)
    out.write(f"evaluated against {counted or 'nothing'} (ignoring `for`)\n")
    if not found:
        out.write("nothing would fire\n")
        return
    rows = [["RULE", "SEVERITY", "ENTITY", "SUMMARY"]]
    rows += [[f["rule"], f["severity"], f["entity"], f["annotations"].get("summary", "")] for f in found]
    _table(rows, out)
    by_rule: dict[str, int] = {}
    for f in found:
        by_rule[f["rule"]] = by_rule.get(f["rule"], 0) + 1
    out.write("\n" + "  ".join(f"{rule}: {n}" for rule, n in sorted(by_rule.items())) + "\n")


def cmd_alerts_test(args: argparse.Namespace, read_config: ReadConfig) -> int:
    import time

    from collector.logs import configure_logging

    config, path = read_config(args)
    rules = compile_rules(config.alerts, path)
    configure_logging("warning", "console" if sys.stderr.isatty() else "json", stream=sys.stderr)
    now = time.time()
    if args.observations:
        from collector.platform.errors import PlatformError

        try:
            entities = entities_from_file(args.observations, config, now)
        except (OSError, ValueError, AttributeError, PlatformError) as exc:
            sys.stderr.write(f"error: cannot use {args.observations}: {exc}\n")
            return 2
    else:
        entities = asyncio.run(entities_from_simulator(config, time.time))
    found = would_fire(rules, entities, time.time())
    if args.json:
        json.dump({"entities": {k: len(v) for k, v in entities.items()}, "would_fire": found}, sys.stdout,
                  indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print_would_fire(found, entities, sys.stdout)
    return 0


# --- parser ---------------------------------------------------------------------------------------------------------


def _help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2
    return show


def add_arguments(sub: Any, add_config_arg: AddConfigArg, read_config: ReadConfig, daemon_url: DaemonUrl) -> None:
    """Add the `alerts` and `silence` commands to the `iot-collector` subparsers: `read_config` reads
    the configuration named by the arguments, `daemon_url` finds the running collector."""

    def daemon_args(p: argparse.ArgumentParser) -> None:
        add_config_arg(p)
        p.add_argument("--url", help="the collector's HTTP address (default: from the configuration)")

    alerts = sub.add_parser("alerts", help="active alerts of the running collector; test the rules")
    alerts.set_defaults(func=_help(alerts))
    actions = alerts.add_subparsers(dest="alerts_command", metavar="ACTION")
    p = actions.add_parser("list", help="active alerts of the running collector")
    daemon_args(p)
    p.add_argument("--state", choices=["firing", "pending"], help="only alerts in this state")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_daemon_command(cmd_alerts_list, daemon_url))
    p = actions.add_parser("test", help="evaluate the rules once and print what would fire (ignoring `for`)")
    add_config_arg(p)
    p.add_argument("--observations", metavar="FILE.json",
                   help="queryDeviceFlow answers or entity fields (default: poll the built-in simulator)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=functools.partial(cmd_alerts_test, read_config=read_config))

    silence = sub.add_parser("silence", help="silence alerts of the running collector")
    silence.set_defaults(func=_help(silence))
    actions = silence.add_subparsers(dest="silence_command", metavar="ACTION")
    p = actions.add_parser("add", help="add a silence; prints its id")
    daemon_args(p)
    p.add_argument("matchers", nargs="+", metavar="MATCHER",
                   help="label matchers: customer=acme alertname=~'Weak.*' severity!=critical")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--duration", default="2h", help="how long from its start (default 2h)")
    when.add_argument("--ends-at", help="end time (RFC 3339, e.g. 2025-10-01T06:00:00+08:00)")
    p.add_argument("--starts-at", help="start time (default now)")
    p.add_argument("--comment", required=True, help="why (shown in `silence list`)")
    p.add_argument("--author", help="who (default: the current user)")
    p.set_defaults(func=_daemon_command(cmd_silence_add, daemon_url))
    p = actions.add_parser("list", help="silences and maintenance windows")
    daemon_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_daemon_command(cmd_silence_list, daemon_url))
    p = actions.add_parser("remove", help="remove a silence by id")
    daemon_args(p)
    p.add_argument("id")
    p.set_defaults(func=_daemon_command(cmd_silence_remove, daemon_url))

