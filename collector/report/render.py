"""The report as a terminal table, as CSV (UTF-8 with a byte order mark, which Excel needs to read
Chinese text; sections separated by an empty line) or as an .xlsx workbook (sheets Summary, SIMs,
Devices; through xlsxwriter)."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import IO, Any
from zoneinfo import ZoneInfo

from collector.formats import human_bytes
from collector.report.model import Report

GIB = 1024**3


def _date(report: Report, at: float | None, with_time: bool = True) -> str:
    if at is None:
        return ""
    t = datetime.fromtimestamp(at, ZoneInfo(report.timezone))
    return t.strftime("%Y-%m-%d %H:%M" if with_time else "%Y-%m-%d")


def _days(report: Report, days: Sequence[int]) -> str:
    return " ".join(f"{report.month}-{day:02d}" for day in days)


def _gib(value: int | None) -> float | None:
    return None if value is None else round(value / GIB, 3)


def _bytes(value: int | None) -> str:
    return human_bytes(value) or "-"


def _title(report: Report) -> str:
    source = "the running collector" if report.source == "collector" else "InfluxDB"
    state = "complete" if report.complete else f"in progress, as of {_date(report, report.as_of)}"
    return f"Report of {report.month} by {report.by} ({report.timezone}), from {source}: {state}"


# --- table ------------------------------------------------------------------------------------------------


def _width(text: str) -> int:
    """Columns a terminal gives the text: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int, right: bool) -> str:
    gap = " " * (width - _width(text))
    return gap + text if right else text + gap


def _table(out: IO[str], headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> None:
    """Columns aligned; every column but the first (names and ids) right-aligned when it holds numbers
    or sizes."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(headers))]
    right = [i > 0 and all(_numeric(r[i]) for r in cells[1:]) for i in range(len(headers))]
    for row in cells:
        text = "  ".join(_pad(c, w, r) for c, w, r in zip(row, widths, right, strict=True))
        out.write(indent + text.rstrip() + "\n")


def _numeric(text: str) -> bool:
    head = text.split(" ")[0]
    return text == "-" or head.replace(".", "", 1).lstrip("-").isdigit()


def write_table(report: Report, out: IO[str]) -> None:
    out.write(_title(report) + "\n\n")
    summary = [(g.name, g.devices, g.sims, _bytes(g.billed_bytes), _bytes(g.real_bytes), len(g.expiring),
                len(g.running_out), len(g.suspended), len(g.offline_devices)) for g in report.groups]
    summary.append(("total", sum(g.devices for g in report.groups), sum(g.sims for g in report.groups),
                    _bytes(sum(g.billed_bytes for g in report.groups)),
                    _bytes(sum(g.real_bytes or 0 for g in report.groups)
                           if any(g.real_bytes is not None for g in report.groups) else None),
                    sum(len(g.expiring) for g in report.groups), sum(len(g.running_out) for g in report.groups),
                    sum(len(g.suspended) for g in report.groups), sum(len(g.offline_devices) for g in report.groups)))
    _table(out, (report.by, "devices", "SIMs", "billed", "real", "expiring", "running out", "suspended",
                 "offline devices"), summary, indent="")
    for g in report.groups:
        out.write(f"\n== {report.by} {g.name}: {g.devices} devices, {g.sims} SIMs, {_bytes(g.billed_bytes)} billed, "
                  f"{_bytes(g.real_bytes)} real ==\n")
        if g.top_sims:
            out.write("Top SIMs\n")
            _table(out, ("iccid", "device", "billed", "real", "figure"),
                   [(s.iccid, s.device_no or "-", _bytes(s.billed_bytes), _bytes(s.real_bytes), s.source)
                    for s in map(report.sim, g.top_sims)])
        if g.top_devices:
            out.write("Top devices\n")
            _table(out, ("device", "SIMs", "billed", "real"),
                   [(d.device_no, d.sims, _bytes(d.billed_bytes), _bytes(d.real_bytes))
                    for d in map(report.device, g.top_devices)])
        if g.expiring:
            out.write("Packages expiring this month\n")
            _table(out, ("iccid", "device", "expires", "remaining"),
                   [(s.iccid, s.device_no or "-", _date(report, s.expires_at), _bytes(s.remaining_bytes))
                    for s in map(report.sim, g.expiring)])
        if g.running_out:
            out.write("Data run out or running out this month\n")
            _table(out, ("iccid", "device", "state", "remaining"),
                   [(s.iccid, s.device_no or "-", s.runs_out, _bytes(s.remaining_bytes))
                    for s in map(report.sim, g.running_out)])
        if g.suspended:
            out.write("Suspended SIMs\n")
            _table(out, ("iccid", "device", "status"),
                   [(s.iccid, s.device_no or "-", s.sim_status) for s in map(report.sim, g.suspended)])
        if g.offline_devices:
            out.write("Days offline\n")
            _table(out, ("device", "days", "dates"),
                   [(d.device_no, len(d.offline_days), _days(report, d.offline_days))
                    for d in map(report.device, g.offline_devices)])


# --- CSV ----------------------------------------------------------------------------------------------------


def _top_rank(report: Report) -> dict[str, int]:
    """A SIM's or device's place among its group's top consumers."""
    rank: dict[str, int] = {}
    for g in report.groups:
        rank.update({key: n for n, key in enumerate(g.top_sims, start=1)})
        rank.update({key: n for n, key in enumerate(g.top_devices, start=1)})
    return rank


SUMMARY_HEADER = ("group", "devices", "sims", "billed_bytes", "billed_gib", "real_bytes", "real_gib",
                  "expiring", "running_out", "suspended", "offline_devices")
SIM_HEADER = ("group", "iccid", "sim_no", "device_no", "billed_bytes", "billed_gib", "real_bytes", "real_gib",
              "figure", "top_rank", "sim_status", "suspended", "expires_at", "expires_this_month", "runs_out",
              "remaining_bytes")
DEVICE_HEADER = ("group", "device_no", "sims", "billed_bytes", "billed_gib", "real_bytes", "real_gib", "top_rank",
                 "offline_day_count", "offline_days")


def sheets(report: Report) -> dict[str, tuple[Sequence[str], list[list[Any]]]]:
    """The report's three tables (header, rows) as written to CSV and xlsx."""
    rank = _top_rank(report)
    summary = [[g.name, g.devices, g.sims, g.billed_bytes, _gib(g.billed_bytes), g.real_bytes, _gib(g.real_bytes),
                len(g.expiring), len(g.running_out), len(g.suspended), len(g.offline_devices)] for g in report.groups]
    sims = [[s.group, s.iccid, s.sim_no, s.device_no, s.billed_bytes, _gib(s.billed_bytes), s.real_bytes,
             _gib(s.real_bytes), s.source, rank.get(s.iccid), s.sim_status, int(s.suspended),
             _date(report, s.expires_at), int(s.expires_this_month), s.runs_out, s.remaining_bytes]
            for s in sorted(report.sims, key=lambda s: (s.group, -(s.billed_bytes or 0), s.iccid))]
    devices = [[d.group, d.device_no, d.sims, d.billed_bytes, _gib(d.billed_bytes), d.real_bytes, _gib(d.real_bytes),
                rank.get(d.device_no), len(d.offline_days), _days(report, d.offline_days)]
               for d in sorted(report.devices, key=lambda d: (d.group, -(d.billed_bytes or 0), d.device_no))]
    return {"Summary": (SUMMARY_HEADER, summary), "SIMs": (SIM_HEADER, sims), "Devices": (DEVICE_HEADER, devices)}


def write_csv(report: Report, out: IO[bytes]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(["report", report.month, "by", report.by, "timezone", report.timezone, "source", report.source,
                     "as_of", _date(report, report.as_of), "complete", int(report.complete)])
    for _name, (header, rows) in sheets(report).items():
        writer.writerow([])
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    out.write(text.getvalue().encode("utf-8-sig"))


# --- xlsx -----------------------------------------------------------------------------------------------------


def write_xlsx(report: Report, out: IO[bytes]) -> None:
    import xlsxwriter

    book = xlsxwriter.Workbook(out, {"in_memory": True})
    bold = book.add_format({"bold": True})
    gib = book.add_format({"num_format": "0.000"})
    title = book.add_format({"bold": True, "font_size": 13})
    for name, (header, rows) in sheets(report).items():
        sheet = book.add_worksheet(name)
        first = 0
        if name == "Summary":
            sheet.write(0, 0, _title(report), title)
            first = 2
        sheet.write_row(first, 0, header, bold)
        for r, row in enumerate(rows, start=first + 1):
            for c, value in enumerate(row):
                if value is None:
                    continue
                if header[c].endswith("_gib"):
                    sheet.write_number(r, c, value, gib)
                else:
                    sheet.write(r, c, value)
        for c, h in enumerate(header):
            width = max([len(h)] + [len(str(row[c])) for row in rows if row[c] is not None])
            sheet.set_column(c, c, min(width + 2, 60))
        sheet.freeze_panes(first + 1, 0)
        if rows:
            sheet.autofilter(first, 0, first + len(rows), len(header) - 1)
    book.close()
