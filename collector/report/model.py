"""The reseller report of one calendar month, and how it is computed from facts about each SIM and
device. The facts come from the running collector (`collector.report.live`: the fleet state and the
month ledger it keeps) or from InfluxDB (`collector.report.influx`); both hand the same `SimFacts` and
`DeviceFacts` to `build_report`, so every figure means the same whichever source gave it
(docs/reports.md defines each one).

Usage in a month, from the cycle counters (`useFlow` billed, `realUseFlow` real): the counters count
from the start of a billing cycle (`dockResetDate`). For each cycle seen during the month, the month's
usage is the highest value seen in the month minus the highest value of the same cycle seen before
the month; when the cycle was not seen before, minus 0 if it began within the month, else minus the
lowest value seen in the month (usage before the first poll is unknown: the figure is `partial`).
The platform's own month figure (the month usage endpoint) replaces the billed counter figure where
present.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, tzinfo
from typing import Any

MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
NO_GROUP = "(none)"

# How each SIM's billed figure was obtained.
SOURCE_MONTH = "month endpoint"  # the platform's month figure (card_month_usage)
SOURCE_COUNTER = "counter"  # the growth of the cycle counter
SOURCE_PARTIAL = "partial"  # the counter's growth since the first poll in the month


class ReportError(Exception):
    """A report that cannot be made (bad arguments, an unreachable source); the message says why."""


@dataclass(frozen=True, slots=True)
class Month:
    """A calendar month in the platform's time zone."""

    year: int
    month: int
    tz: tzinfo

    @classmethod
    def parse(cls, text: str, tz: tzinfo) -> Month:
        match = MONTH.fullmatch(text)
        if match is None:
            raise ReportError(f"--month must be YYYY-MM, got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)), tz)

    @classmethod
    def of(cls, at: float, tz: tzinfo) -> Month:
        t = datetime.fromtimestamp(at, tz)
        return cls(t.year, t.month, tz)

    @property
    def key(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> float:
        return datetime(self.year, self.month, 1, tzinfo=self.tz).timestamp()

    @property
    def end(self) -> float:
        return self.next().start

    @property
    def days(self) -> int:
        return calendar.monthrange(self.year, self.month)[1]

    def next(self) -> Month:
        return Month(self.year + 1, 1, self.tz) if self.month == 12 else Month(self.year, self.month + 1, self.tz)

    def previous(self) -> Month:
        return Month(self.year - 1, 12, self.tz) if self.month == 1 else Month(self.year, self.month - 1, self.tz)

    def day_of(self, at: float) -> int:
        """The day of the month (1..31) of a time within the month."""
        return datetime.fromtimestamp(at, self.tz).day


@dataclass(slots=True)
class CycleRange:
    """The lowest and highest value of a SIM's cycle counters seen within one month and one billing
    cycle (None: never reported)."""

    min_used: int | None = None
    max_used: int | None = None
    min_real: int | None = None
    max_real: int | None = None

    def add(self, used: int | None, real: int | None) -> None:
        if used is not None:
            self.min_used = used if self.min_used is None else min(self.min_used, used)
            self.max_used = used if self.max_used is None else max(self.max_used, used)
        if real is not None:
            self.min_real = real if self.min_real is None else min(self.min_real, real)
            self.max_real = real if self.max_real is None else max(self.max_real, real)

    def merge(self, other: CycleRange) -> None:
        for used in (other.min_used, other.max_used):
            self.add(used, None)
        for real in (other.min_real, other.max_real):
            self.add(None, real)

    def to_list(self) -> list[int | None]:
        return [self.min_used, self.max_used, self.min_real, self.max_real]

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> CycleRange:
        return cls(*(None if v is None else int(v) for v in values[:4]))


def cycle_key(cycle_start: float | None) -> str:
    """How a billing cycle is named in the tables: its start in Unix seconds ("" when unknown)."""
    return "" if cycle_start is None else str(int(cycle_start))


# month key -> cycle key -> range: everything known about one SIM's counters around a month.
UsageTable = Mapping[str, Mapping[str, CycleRange]]


@dataclass(frozen=True, slots=True)
class Growth:
    billed: int | None
    real: int | None
    partial: bool


def _growth(ranges: Sequence[tuple[str, CycleRange, CycleRange | None]], month: Month,
            lo: str, hi: str) -> tuple[int | None, bool]:
    total: int | None = None
    partial = False
    for key, in_month, before in ranges:
        top = getattr(in_month, hi)
        if top is None:
            continue
        earlier = None if before is None else getattr(before, hi)
        if earlier is not None:
            base = earlier
        elif key and int(key) >= month.start:
            base = 0
        else:
            base = getattr(in_month, lo)
            partial = True
        total = (total or 0) + max(top - base, 0)
    return total, partial


def month_growth(table: UsageTable, month: Month) -> Growth:
    """How much a SIM used in `month` by its cycle counters (the module's definition)."""
    here = table.get(month.key, {})
    ranges = []
    for key, in_month in here.items():
        before = CycleRange()
        for other, cycles in table.items():
            if other < month.key and key in cycles:
                before.merge(cycles[key])
        ranges.append((key, in_month, before if before.max_used is not None or before.max_real is not None else None))
    billed, partial_b = _growth(ranges, month, "min_used", "max_used")
    real, _partial_r = _growth(ranges, month, "min_real", "max_real")
    return Growth(billed, real, partial_b)


# --- what a source knows ---------------------------------------------------------------------------


@dataclass(slots=True)
class SimFacts:
    """One SIM as known at the end of the month (or now, for the current month)."""

    iccid: str
    group: str
    device_no: str = ""
    sim_no: str = ""
    sim_status: int | None = None
    expires_at: float | None = None
    remaining_bytes: int | None = None
    usage_rate: float | None = None  # bytes per second, recent
    ran_out: bool = False  # its remaining data was 0 at a poll within the month
    usage: UsageTable = field(default_factory=dict)
    month_figure: int | None = None  # the platform's own figure for the month (card_month_usage)


@dataclass(slots=True)
class DeviceFacts:
    device_no: str
    group: str
    offline_days: Iterable[int] = ()  # days of the month on which a poll saw it offline


# --- the report --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SimLine:
    iccid: str
    group: str
    device_no: str
    sim_no: str
    billed_bytes: int | None
    real_bytes: int | None
    source: str  # SOURCE_*, or "" when no usage was seen
    sim_status: int | None
    suspended: bool
    expires_at: float | None
    expires_this_month: bool
    runs_out: str  # "ran out", "projected" (at its recent rate, before the month ends) or ""
    remaining_bytes: int | None


@dataclass(slots=True)
class DeviceLine:
    device_no: str
    group: str
    sims: int
    billed_bytes: int | None
    real_bytes: int | None
    offline_days: list[int]


@dataclass(slots=True)
class GroupReport:
    name: str
    devices: int
    sims: int
    billed_bytes: int
    real_bytes: int | None
    top_sims: list[str]
    top_devices: list[str]
    expiring: list[str]
    running_out: list[str]
    suspended: list[str]
    offline_devices: list[str]


@dataclass(slots=True)
class Report:
    month: str
    by: str
    timezone: str
    source: str  # "collector" or "influxdb"
    generated_at: float
    as_of: float  # the figures cover the month up to this time
    complete: bool  # the month is over
    groups: list[GroupReport]
    sims: list[SimLine]
    devices: list[DeviceLine]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        values = dict(data)
        values["groups"] = [GroupReport(**g) for g in data["groups"]]
        values["sims"] = [SimLine(**s) for s in data["sims"]]
        values["devices"] = [DeviceLine(**d) for d in data["devices"]]
        return cls(**values)

    def sim(self, iccid: str) -> SimLine:
        return next(s for s in self.sims if s.iccid == iccid)

    def device(self, device_no: str) -> DeviceLine:
        return next(d for d in self.devices if d.device_no == device_no)


def _sum(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def build_report(month: Month, by: str, tz_name: str, source: str, sims: Iterable[SimFacts],
                 devices: Iterable[DeviceFacts], *, as_of: float, now: float, top: int = 5,
                 suspended_statuses: Iterable[int] = (5,)) -> Report:
    """The report of `month` grouped by the label `by`, from what a source knows as of `as_of`."""
    suspended_codes = set(suspended_statuses)
    end = month.end
    sim_lines: list[SimLine] = []
    for s in sorted(sims, key=lambda s: s.iccid):
        growth = month_growth(s.usage, month)
        billed, source_of = growth.billed, (SOURCE_PARTIAL if growth.partial else SOURCE_COUNTER)
        if s.month_figure is not None:
            billed, source_of = s.month_figure, SOURCE_MONTH
        elif billed is None:
            source_of = ""
        runs_out = ""
        if s.ran_out:
            runs_out = "ran out"
        elif (as_of < end and s.remaining_bytes is not None and s.usage_rate and s.usage_rate > 0
              and as_of + s.remaining_bytes / s.usage_rate < end):
            runs_out = "projected"
        expires = s.expires_at is not None and month.start <= s.expires_at < end
        sim_lines.append(SimLine(
            iccid=s.iccid, group=s.group or NO_GROUP, device_no=s.device_no, sim_no=s.sim_no,
            billed_bytes=billed, real_bytes=growth.real, source=source_of, sim_status=s.sim_status,
            suspended=s.sim_status in suspended_codes, expires_at=s.expires_at, expires_this_month=expires,
            runs_out=runs_out, remaining_bytes=s.remaining_bytes))
    by_device: dict[str, list[SimLine]] = {}
    for line in sim_lines:
        if line.device_no:
            by_device.setdefault(line.device_no, []).append(line)
    device_lines: list[DeviceLine] = []
    for d in sorted(devices, key=lambda d: d.device_no):
        its = by_device.get(d.device_no, [])
        device_lines.append(DeviceLine(
            device_no=d.device_no, group=d.group or NO_GROUP, sims=len(its),
            billed_bytes=_sum(s.billed_bytes for s in its), real_bytes=_sum(s.real_bytes for s in its),
            offline_days=sorted(set(d.offline_days))))
    names = sorted({s.group for s in sim_lines} | {d.group for d in device_lines})
    groups = []
    for name in names:
        g_sims = [s for s in sim_lines if s.group == name]
        g_devices = [d for d in device_lines if d.group == name]
        used = [s for s in g_sims if s.billed_bytes]
        used.sort(key=lambda s: (-(s.billed_bytes or 0), s.iccid))
        busy = [d for d in g_devices if d.billed_bytes]
        busy.sort(key=lambda d: (-(d.billed_bytes or 0), d.device_no))
        groups.append(GroupReport(
            name=name, devices=len(g_devices), sims=len(g_sims),
            billed_bytes=sum(s.billed_bytes or 0 for s in g_sims),
            real_bytes=_sum(s.real_bytes for s in g_sims),
            top_sims=[s.iccid for s in used[:top]], top_devices=[d.device_no for d in busy[:top]],
            expiring=[s.iccid for s in g_sims if s.expires_this_month],
            running_out=[s.iccid for s in g_sims if s.runs_out],
            suspended=[s.iccid for s in g_sims if s.suspended],
            offline_devices=[d.device_no for d in g_devices if d.offline_days]))
    return Report(month=month.key, by=by, timezone=tz_name, source=source, generated_at=now, as_of=min(as_of, end),
                  complete=as_of >= end, groups=groups, sims=sim_lines, devices=device_lines)


def suspended_statuses(config: Any) -> list[int]:
    """The `simStatus` codes of a suspended card: the alert rules' `sim_suspended_statuses` (inferred:
    5, as docs/upstream-api.md), so the report and the SimSuspended alert agree."""
    value = config.alerts.params.get("sim_suspended_statuses", [5])
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int | float | str) and str(v).lstrip("-").isdigit()]
