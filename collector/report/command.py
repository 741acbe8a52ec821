"""`iot-collector report`: the month's report from the running collector (the current month) or from
InfluxDB (any month), as a table, CSV or xlsx, on stdout or in a file.

Exit codes: 0 written; 1 the source could not answer (collector not running and no InfluxDB sink,
InfluxDB down or refusing); 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from collector.report.influx import check_label, influx_report
from collector.report.model import Month, Report, ReportError, suspended_statuses
from collector.report.render import write_csv, write_table, write_xlsx


class UsageError(ReportError):
    """Arguments that cannot make a report (exit 2)."""


def add_arguments(sub: Any, add_config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("report", help="a month's report per customer (or any inventory label)",
                       description="Devices and SIMs, data used (billed and real), top consumers, packages "
                                   "expiring, data running out, suspended SIMs and days offline, per customer "
                                   "or any inventory label, for a calendar month in the platform's time zone. "
                                   "The current month comes from the running collector, other months from "
                                   "the InfluxDB of the configuration's sinks.")
    add_config_arg(p)
    p.add_argument("--month", metavar="YYYY-MM", help="the month (default: the current one)")
    p.add_argument("--by", default="customer", metavar="LABEL",
                   help="the inventory label to group by (default: customer)")
    p.add_argument("--format", choices=["table", "csv", "xlsx"], default="table")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout (needed for xlsx on a terminal)")
    p.add_argument("--top", type=int, default=5, metavar="N", help="top consumers listed per group (default 5)")
    p.add_argument("--source", choices=["auto", "collector", "influxdb"], default="auto",
                   help="auto: the running collector for the current month (InfluxDB if it is not running), "
                        "InfluxDB for other months")
    p.add_argument("--url", help="the collector's HTTP address (default: from the configuration)")
    p.set_defaults(func=cmd_report)


def from_collector(url: str, month: Month, by: str, top: int) -> Report:
    try:
        response = httpx.get(f"{url}/api/report", params={"month": month.key, "by": by, "top": str(top)},
                             timeout=30.0)
    except httpx.HTTPError as exc:
        raise CollectorUnreachable(f"cannot reach the collector at {url}: {exc}") from None
    if response.status_code == 404 and response.headers.get("content-type", "").startswith("application/json"):
        raise ReportError(f"the collector at {url}: {response.json().get('error')}")
    if response.status_code >= 400:
        raise CollectorUnreachable(f"{url}/api/report answered HTTP {response.status_code}: {response.text[:200]}")
    return Report.from_json(response.json())


class CollectorUnreachable(ReportError):
    pass


def cmd_report(args: argparse.Namespace) -> int:
    from collector.cli import daemon_url, read_config

    config, _path = read_config(args)
    tz = ZoneInfo(config.platform.timezone)
    now = time.time()
    current = Month.of(now, tz)
    try:
        month = Month.parse(args.month, tz) if args.month else current
        by = check_label(args.by)
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    if month.key > current.key:
        raise UsageError(f"{month.key} has not begun (the current month is {current.key})")
    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    if args.format == "xlsx" and not args.out and sys.stdout.isatty():
        raise UsageError("--format xlsx writes a workbook: give --out FILE (or redirect stdout)")
    source = args.source
    if source == "auto":
        source = "collector" if month.key == current.key else "influxdb"
    if source == "collector":
        try:
            report = from_collector(daemon_url(args), month, by, args.top)
        except CollectorUnreachable as exc:
            if args.source != "auto" or not (config.sinks.influxdb_v1.enabled or config.sinks.influxdb_v2.enabled):
                raise
            sys.stderr.write(f"note: {exc}; reading InfluxDB instead\n")
            source = "influxdb"
    if source == "influxdb":
        report = influx_report(config, month, by, now=now, top=args.top,
                               suspended_statuses=suspended_statuses(config))
    write(report, args.format, args.out)
    return 0


def render(report: Report, fmt: str) -> bytes:
    """The report in `fmt` (table: UTF-8 text; csv: UTF-8 with a byte order mark; xlsx)."""
    if fmt == "table":
        text = io.StringIO()
        write_table(report, text)
        return text.getvalue().encode("utf-8")
    binary = io.BytesIO()
    (write_csv if fmt == "csv" else write_xlsx)(report, binary)
    return binary.getvalue()


def write(report: Report, fmt: str, out: str | None) -> None:
    data = render(report, fmt)
    if out is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None
    sys.stderr.write(f"wrote {path}\n")
