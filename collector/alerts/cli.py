"""The `alerts` and `silence` commands of `iot-collector`.

- `alerts list` reads the active alerts of a running collector through its loopback HTTP API.
- `alerts test` evaluates the rules of a configuration once (ignoring `for`) and prints what would
  fire, against the fleet of the running collector (its `/api/entities`), or with `--poll` against
  one fresh poll of the configured platform (the inventory's devices with their SIMs, its standalone
  cards and the account, through the real client; the built-in simulator only when the configuration
  says `simulator.embedded: true`), or against an observation file.
- `silence add|list|remove` manage silences of a running collector. Adding and removing send the API
  token (`collector.apitoken.client_token`: `--token-file`, else the configuration's `http.api_token`,
  else the one the collector keeps in its state directory).

The daemon's address comes from `--url`, else from the configuration file (`http.listen`/`http.port`);
`iot-collector` hands over how it reads the configuration, finds the daemon and its token
(`add_arguments`).
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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from collector.alerts.rules import Rule, compile_rules
from collector.config import ConfigError
from collector.configtypes import parse_duration

AddConfigArg = Callable[[argparse.ArgumentParser], None]
ReadConfig = Callable[[argparse.Namespace], tuple[Any, str]]  # -> (Config, its path)
DaemonUrl = Callable[[argparse.Namespace], str]
ApiToken = Callable[[argparse.Namespace], tuple[str, str]]  # -> (token, where it was found)
Command = Callable[[argparse.Namespace], int]


# --- talking to the daemon ---------------------------------------------------------------------------------


class DaemonUnreachable(Exception):
    """The running collector cannot be reached or refused the request (exit code 1)."""


class TokenMissing(Exception):
    """The command cannot send the API token; the message says what to do (exit code 2)."""


def _request(url: str, method: str, path: str, body: Any = None, token: tuple[str, str] | None = None,
             timeout: float = 5.0) -> Any:
    """`token` is (the API token, where it was found), sent on changes."""
    import httpx

    url += path
    headers = {"Authorization": f"Bearer {token[0]}"} if token else {}
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DaemonUnreachable(f"cannot reach the collector at {url}: {exc or type(exc).__name__} "
                                "(is it running, with http.enabled?)") from None
    if response.status_code == 404 and path.startswith("/api/alerts"):
        raise DaemonUnreachable(f"{url}: not found (is alerts.enabled true in the running collector?)")
    if response.status_code == 404 and path.startswith("/api/entities"):
        raise DaemonUnreachable(f"{url}: not found (the running collector is older than this command: restart it)")
    if response.status_code >= 400:
        try:
            reason = response.json().get("error") or response.text
        except ValueError:
            reason = response.text
        if response.status_code == 401 and token:
            reason += f" (the token sent came from {token[1]}; is it the running collector's?)"
        raise DaemonUnreachable(f"{url} answered HTTP {response.status_code}: {reason}")
    return None if response.status_code == 204 else response.json()


def _daemon_command(command: Callable[[argparse.Namespace, str], int], daemon_url: DaemonUrl) -> Command:
    """A command talking to the daemon at `daemon_url(args)`; unreachable: one line, exit code 1;
    no token to send: one line saying what to do, exit code 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args, daemon_url(args))
        except DaemonUnreachable as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 1
        except TokenMissing as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
    return run


def _change(url: str, method: str, path: str, api_token: ApiToken, args: argparse.Namespace,
            body: Any = None) -> Any:
    """A request that changes something, with the API token. Without a token to send, a collector
    that is not there is still the first thing to say (exit code 1), else what to do (TokenMissing)."""
    import httpx

    from collector.apitoken import TokenUnavailable

    try:
        token = api_token(args)
    except TokenUnavailable as exc:
        try:
            httpx.get(url + "/healthz", timeout=5.0)
        except httpx.HTTPError as unreachable:
            raise DaemonUnreachable(f"cannot reach the collector at {url}{path}: {unreachable} "
                                    "(is it running, with alerts.enabled and http.enabled?)") from None
        raise TokenMissing(str(exc)) from None
    return _request(url, method, path, body, token)


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


def cmd_silence_add(args: argparse.Namespace, url: str, api_token: ApiToken) -> int:
    body: dict[str, Any] = {"matchers": args.matchers, "comment": args.comment,
                            "created_by": args.author or getpass.getuser()}
    if args.starts_at:
        body["starts_at"] = args.starts_at
    if args.ends_at:
        body["ends_at"] = args.ends_at
    else:
        body["duration"] = parse_duration(args.duration)
    result = _change(url, "POST", "/api/silences", api_token, args, body)
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


def cmd_silence_remove(args: argparse.Namespace, url: str, api_token: ApiToken) -> int:
    _change(url, "DELETE", f"/api/silences/{args.id}", api_token, args)
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
    fields by kind: `{"device": [{"device_no": ..., "rssi_dbm": ...}], "sim": [...], "account": {...}}`
    (what `/api/entities` answers, too)."""
    from collector.alerts.entities import records_from_document
    from collector.platform.parse import ParseContext, parse_device
    from collector.state import FleetState

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(doc, dict) and ({"device", "sim", "account", "collector"} & set(doc) or "entities" in doc):
        return dict(records_from_document(doc))
    envelopes = doc if isinstance(doc, list) else [doc]
    ctx = ParseContext.from_config(config.platform, config.privacy, polled_at=now)
    state = FleetState(device_interval=config.jobs.device_status.interval,
                       refresh_period=config.platform.refresh_period)
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


def entities_from_daemon(url: str, kinds: set[str]) -> dict[str, dict[str, Any]]:
    """The entities of the running collector at `url` (those of `kinds`), as it last polled them.
    Raises DaemonUnreachable."""
    from collector.alerts.entities import records_from_document

    query = ",".join(k for k in ("device", "sim", "account", "collector") if k in kinds)
    doc = _request(url, "GET", f"/api/entities?kind={query}", timeout=120.0)
    try:
        return dict(records_from_document(doc))
    except (ValueError, AttributeError) as exc:
        raise DaemonUnreachable(f"{url}/api/entities: unexpected answer ({exc})") from None


@dataclass
class PollReport:
    """What `--poll` polled: its entities, and the devices whose poll failed, with their errors."""

    entities: dict[str, dict[str, Any]]
    devices: int
    failed: dict[str, str]
    cards_failed: list[tuple[int, str]]  # (cards in the request, error) per failed card request


async def entities_from_poll(config: Any, progress: TextIO | None = None) -> PollReport:
    """One poll of the configured platform through the real client, as the daemon would do it: every
    device of the inventory (queryDeviceFlow: the device and its SIMs), the inventory's standalone
    cards (card info) and the account's assets. The built-in simulator is started and polled
    instead only when `simulator.embedded` is true (then, with no inventory, its whole fleet)."""
    from collector.daemon import DEMO_CUSTOMERS
    from collector.endpoints import card_info
    from collector.inventory import load_inventory
    from collector.once import poll_devices
    from collector.platform.client import PlatformClient
    from collector.platform.errors import AuthError, PlatformError
    from collector.state import FleetState

    inventory = load_inventory(config.inventory, config.sharding)
    devices = dict(inventory.devices)
    sim = None
    base_url: str | None = None
    if config.simulator.embedded:
        from collector.simulator import Simulator

        sim_cfg = config.simulator
        sim = Simulator(devices=sim_cfg.devices, seed=sim_cfg.seed, speed=sim_cfg.speed, platform=config.platform)
        base_url = await sim.start("127.0.0.1", 0)
        if not devices and not inventory.cards:
            devices = {no: {**config.inventory.labels, "customer": DEMO_CUSTOMERS[i % len(DEMO_CUSTOMERS)]}
                       for i, no in enumerate(sim.device_numbers())}
    try:
        state = FleetState(device_interval=config.jobs.device_status.interval,
                           refresh_period=config.platform.refresh_period)
        state.sync_inventory(devices, inventory.cards)
        failed: dict[str, str] = {}
        cards_failed: list[tuple[int, str]] = []
        async with PlatformClient(config.platform, config.privacy, base_url=base_url) as client:
            numbers = list(devices)
            results = await poll_devices(client, numbers, workers=config.platform.max_concurrency,
                                         progress=progress) if numbers else []
            for no, result in zip(numbers, results, strict=True):
                if isinstance(result, PlatformError):
                    failed[no] = result.message
                    state.record_device_failure(no, result.message, time.time())
                else:
                    state.observe_device(result)
            refused = any(isinstance(r, AuthError) for r in results)  # every other request would be refused too
            if inventory.cards and not refused:
                batch = await client.fetch(card_info.ENDPOINT, list(inventory.cards))
                card_info.ENDPOINT.observe(state, batch.items)
                cards_failed = [(len(ids), error.message) for ids, error in batch.failed]
            if not refused:
                with contextlib.suppress(PlatformError):  # the account is one entity among many here
                    state.observe_account(await client.account_assets())
        return PollReport(_fleet_entities(state), len(numbers), failed, cards_failed)
    finally:
        if sim is not None:
            await sim.stop()


def print_would_fire(found: list[dict[str, Any]], entities: Mapping[str, Mapping[str, Any]], out: TextIO,
                     source: str = "") -> None:
    counted = ", ".join(f"{len(v)} {k}{'s' if len(v) != 1 else ''}" for k, v in entities.items() if v)
    if source:
        out.write(f"fleet: {source}\n")
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


def _failures(report: PollReport, out: TextIO) -> None:
    """One line for the devices that failed, then their errors counted (not one line each)."""
    for cards, message in report.cards_failed:
        out.write(f"warning: a request for {cards} standalone cards failed: {message}\n")
    if not report.failed:
        return
    by_error: dict[str, int] = {}
    for message in report.failed.values():
        by_error[message] = by_error.get(message, 0) + 1
    out.write(f"warning: {len(report.failed)} of {report.devices} devices could not be polled "
              "(their rules are not evaluated):\n")
    for message, n in sorted(by_error.items(), key=lambda item: -item[1])[:10]:
        out.write(f"  {n} x {message}\n")


def cmd_alerts_test(args: argparse.Namespace, read_config: ReadConfig, daemon_url: DaemonUrl) -> int:
    from collector.logs import configure_logging

    config, path = read_config(args)
    rules = compile_rules(config.alerts, path)
    # Failed requests are summed up below, not logged one by one.
    configure_logging("critical", "console" if sys.stderr.isatty() else "json", stream=sys.stderr)
    now = time.time()
    if args.observations:
        from collector.platform.errors import PlatformError

        try:
            entities = entities_from_file(args.observations, config, now)
        except (OSError, ValueError, AttributeError, PlatformError) as exc:
            sys.stderr.write(f"error: cannot use {args.observations}: {exc}\n")
            return 2
        source = f"observations in {args.observations}"
    elif args.poll:
        where = "the built-in simulator" if config.simulator.embedded else f"the platform at {config.platform.base_url}"
        progress = sys.stderr if sys.stderr.isatty() else None
        report = asyncio.run(entities_from_poll(config, progress))
        _failures(report, sys.stderr)
        if report.devices and len(report.failed) == report.devices:
            sys.stderr.write(f"error: no device of the inventory could be polled from {where}\n")
            return 1
        entities = report.entities
        source = f"one poll of {where}"
    else:
        if not config.http.enabled and not args.url:
            sys.stderr.write("error: http.enabled is false in this configuration: the running collector serves no "
                             "API to read its fleet from; use --poll to poll the platform once instead\n")
            return 1
        try:
            url = daemon_url(args)
            entities = entities_from_daemon(url, {rule.kind for rule in rules})
        except (DaemonUnreachable, ConfigError) as exc:
            reason = (f"cannot find the running collector: {'; '.join(exc.problems)}" if isinstance(exc, ConfigError)
                      else str(exc))
            sys.stderr.write(f"error: {reason}\n  alerts test reads the fleet of the running collector; to poll the "
                             "platform once instead (it costs requests of its budget): "
                             f"iot-collector alerts test -c {path} --poll\n")
            return 1
        source = f"the running collector at {url}"
    found = would_fire(rules, entities, time.time())
    if args.json:
        json.dump({"source": source, "entities": {k: len(v) for k, v in entities.items()}, "would_fire": found},
                  sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print_would_fire(found, entities, sys.stdout, source)
    return 0


# --- parser ---------------------------------------------------------------------------------------------------------


def _help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2
    return show


def add_arguments(sub: Any, add_config_arg: AddConfigArg, read_config: ReadConfig, daemon_url: DaemonUrl,
                  api_token: ApiToken) -> None:
    """Add the `alerts` and `silence` commands to the `iot-collector` subparsers: `read_config` reads
    the configuration named by the arguments, `daemon_url` finds the running collector and
    `api_token` the token its changes need."""

    def daemon_args(p: argparse.ArgumentParser, changes: bool = False) -> None:
        add_config_arg(p)
        p.add_argument("--url", help="the collector's HTTP address (default: from the configuration)")
        if changes:
            p.add_argument("--token-file", metavar="FILE",
                           help="read the API token from FILE (default: http.api_token of the configuration, "
                                "else api-token in the collector's state directory)")

    alerts = sub.add_parser("alerts", help="active alerts of the running collector; test the rules")
    alerts.set_defaults(func=_help(alerts))
    actions = alerts.add_subparsers(dest="alerts_command", metavar="ACTION")
    p = actions.add_parser("list", help="active alerts of the running collector")
    daemon_args(p)
    p.add_argument("--state", choices=["firing", "pending"], help="only alerts in this state")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_daemon_command(cmd_alerts_list, daemon_url))
    p = actions.add_parser("test", help="evaluate the rules of a configuration once against the running "
                                        "collector's fleet and print what would fire (ignoring `for`)")
    daemon_args(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--poll", action="store_true",
                        help="poll the configured platform once instead (the inventory's devices, their SIMs, "
                             "standalone cards and the account; costs requests of the platform's budget)")
    source.add_argument("--observations", metavar="FILE.json",
                        help="evaluate saved queryDeviceFlow answers or entity fields instead")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=functools.partial(cmd_alerts_test, read_config=read_config, daemon_url=daemon_url))

    silence = sub.add_parser("silence", help="silence alerts of the running collector")
    silence.set_defaults(func=_help(silence))
    actions = silence.add_subparsers(dest="silence_command", metavar="ACTION")
    p = actions.add_parser("add", help="add a silence; prints its id")
    daemon_args(p, changes=True)
    p.add_argument("matchers", nargs="+", metavar="MATCHER",
                   help="label matchers: customer=acme alertname=~'Weak.*' severity!=critical")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--duration", default="2h", help="how long from its start (default 2h)")
    when.add_argument("--ends-at", help="end time (RFC 3339, e.g. 2025-10-01T06:00:00+08:00)")
    p.add_argument("--starts-at", help="start time (default now)")
    p.add_argument("--comment", required=True, help="why (shown in `silence list`)")
    p.add_argument("--author", help="who (default: the current user)")
    p.set_defaults(func=_daemon_command(functools.partial(cmd_silence_add, api_token=api_token), daemon_url))
    p = actions.add_parser("list", help="silences and maintenance windows")
    daemon_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_daemon_command(cmd_silence_list, daemon_url))
    p = actions.add_parser("remove", help="remove a silence by id")
    daemon_args(p, changes=True)
    p.add_argument("id")
    p.set_defaults(func=_daemon_command(functools.partial(cmd_silence_remove, api_token=api_token), daemon_url))

