"""The report of any month from the InfluxDB the collector writes, in InfluxQL: InfluxDB 1.x answers
it on `/query`, 2.x and 3.x on their v1 compatibility `/query` (the database is the bucket, mapped
with `influx v1 dbrp create` on 2.x). Where to ask comes from the configuration's sinks
(`sinks.influxdb_v1` when enabled, else `sinks.influxdb_v2`).

The figures are those of `collector.report.model` computed from the points: the cycle counters of
the `sim` and `card_usage` measurements (the same observations the running collector's ledger sees),
as daily lowest/highest values per billing cycle (a day in which a card's cycle changed is read
point by point), the `card_month_usage` figures, the last status, expiry and remaining data of each
SIM within the month, and the days on which a `device` point said offline. Days are calendar days in
the platform's time zone (`tz()` of InfluxQL).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from collector.config import Config
from collector.report.model import (
    CycleRange,
    DeviceFacts,
    Month,
    Report,
    ReportError,
    SimFacts,
    build_report,
    cycle_key,
)

LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
DAY_MS = 86_400_000
RAW_BATCH = 200  # cards per point-by-point query of the days in which their cycle changed


def ident(name: str) -> str:
    """An InfluxQL identifier, quoted."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(text: str) -> str:
    """An InfluxQL string literal, quoted."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_label(by: str) -> str:
    """`by` if it can be an inventory label (ReportError otherwise)."""
    from collector.config import RESERVED_LABELS

    if not LABEL.fullmatch(by):
        raise ReportError(f"--by must be a label name ([a-zA-Z_][a-zA-Z0-9_]*), got {by!r}")
    if by in RESERVED_LABELS:
        raise ReportError(f"--by {by}: not an inventory label (a built-in tag)")
    return by


@dataclass(frozen=True, slots=True)
class Target:
    """Where InfluxQL is asked: `/query` of `url`, database `database`."""

    url: str
    database: str
    retention_policy: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: tuple[str, str] | None = None

    @property
    def shown(self) -> str:
        """The address without credentials, for messages."""
        url = httpx.URL(self.url)
        return str(url.copy_with(username=None, password=None)) if url.userinfo else str(url)


def target_from_config(config: Config) -> Target:
    """The InfluxDB the configuration's sinks write to (ReportError when none is enabled)."""
    v1, v2 = config.sinks.influxdb_v1, config.sinks.influxdb_v2
    if v1.enabled:
        auth = None
        if v1.username:
            password = v1.password.get_secret_value() if v1.password is not None else ""
            auth = (v1.username, password)
        return Target(str(v1.url), v1.database, v1.retention_policy, auth=auth)
    if v2.enabled:
        headers = {"Authorization": f"Token {v2.token.get_secret_value()}"} if v2.token is not None else {}
        return Target(str(v2.url), v2.bucket, headers=headers)
    raise ReportError("no InfluxDB sink is enabled (sinks.influxdb_v1 or sinks.influxdb_v2): months other than "
                      "the current one are read from the InfluxDB the collector writes")


class InfluxQL:
    """InfluxQL over HTTP; every failure is a ReportError naming the server, never its credentials."""

    def __init__(self, target: Target, timeout: float = 120.0) -> None:
        self.target = target
        self.client = httpx.Client(timeout=timeout, headers=dict(target.headers), auth=target.auth)
        url = httpx.URL(target.url)
        self.endpoint = url.copy_with(username=None, password=None, path=url.path.rstrip("/") + "/query")

    def query(self, q: str) -> list[dict[str, Any]]:
        params = {"db": self.target.database, "epoch": "ms"}
        if self.target.retention_policy:
            params["rp"] = self.target.retention_policy
        try:
            response = self.client.post(self.endpoint, params=params, data={"q": q})
        except httpx.HTTPError as exc:
            raise ReportError(f"cannot query InfluxDB at {self.target.shown}: {type(exc).__name__}: "
                              f"{exc}".replace(self.target.url, self.target.shown)) from None
        if response.status_code >= 400:
            raise ReportError(f"InfluxDB at {self.target.shown} answered HTTP {response.status_code}: "
                              f"{response.text[:300].strip()}")
        try:
            results = response.json()["results"]
        except (ValueError, KeyError, TypeError):
            raise ReportError(f"InfluxDB at {self.target.shown} answered something that is not InfluxQL "
                              "results") from None
        series: list[dict[str, Any]] = []
        for result in results:
            if "error" in result:
                raise ReportError(f"InfluxDB at {self.target.shown} refused a query: {result['error']}")
            series.extend(result.get("series", []))
        return series

    def close(self) -> None:
        self.client.close()


def rows(series: Iterable[dict[str, Any]]) -> Iterable[tuple[dict[str, str], dict[str, Any]]]:
    """(tags, row as column -> value) for every row of every series."""
    for s in series:
        tags = {**s.get("tags", {}), "_measurement": s.get("name", "")}
        columns = s["columns"]
        for values in s.get("values", []):
            yield tags, dict(zip(columns, values, strict=True))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(slots=True)
class _Latest:
    at: int = -1
    value: Any = None


@dataclass(slots=True)
class _Sim:
    group: _Latest = field(default_factory=_Latest)
    device_no: _Latest = field(default_factory=_Latest)
    fields: dict[str, _Latest] = field(default_factory=dict)
    days: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # day start (ms) -> merged aggregates
    usage: dict[str, dict[str, CycleRange]] = field(default_factory=dict)
    ran_out: bool = False
    month_figure: int | None = None

    def latest(self, name: str, at: int, value: Any) -> None:
        kept = self.fields.setdefault(name, _Latest())
        if value is not None and at >= kept.at:
            kept.at, kept.value = at, value


class MonthQueries:
    """The InfluxQL of one month's report, run against one database."""

    def __init__(self, influx: InfluxQL, month: Month, by: str, tz_name: str, until: float) -> None:
        self.influx = influx
        self.month = month
        self.by = check_label(by)
        self.tz = f"tz({literal(tz_name)})"
        self.start_ms = int(month.start * 1000)
        self.end_ms = int(min(month.end, until) * 1000)
        self.sims: dict[str, _Sim] = {}

    def _range(self, start_ms: int | None = None) -> str:
        return f"time >= {self.start_ms if start_ms is None else start_ms}ms AND time < {self.end_ms}ms"

    def _sim(self, iccid: str) -> _Sim:
        sim = self.sims.get(iccid)
        if sim is None:
            sim = self.sims[iccid] = _Sim()
        return sim

    def _identify(self, tags: Mapping[str, str], at: int) -> _Sim:
        sim = self._sim(tags["iccid"])
        if at >= sim.group.at:
            sim.group.at, sim.group.value = at, tags.get(self.by, "")
        if tags.get("device_no") and at >= sim.device_no.at:
            sim.device_no.at, sim.device_no.value = at, tags["device_no"]
        return sim

    def last_values(self) -> None:
        """Each SIM's last status, expiry, remaining data, usage rate and card number in the month,
        its label and its device (the latest point that says)."""
        group = f'GROUP BY "iccid", "device_no", {ident(self.by)}'
        for name, measurements in (("sim_status", '"sim", "card_status"'),
                                   ("expires_at", '"sim", "card_usage"'),
                                   ("remaining_bytes", '"sim", "card_usage"'),
                                   ("usage_rate_bytes_per_second", '"sim", "card_usage"'),
                                   ("sim_no", '"sim", "card_usage", "card_status"')):
            q = f'SELECT last({ident(name)}) AS "v" FROM {measurements} WHERE {self._range()} {group}'
            for tags, row in rows(self.influx.query(q)):
                if tags.get("iccid"):
                    self._identify(tags, row["time"]).latest(name, row["time"], row["v"])

    def counters(self) -> None:
        """The cycle counters of the month and of the month before it (the baseline), per day and
        cycle; days in which a card's cycle changed are read point by point."""
        begin = int(self.month.previous().start * 1000)
        q = ('SELECT max("used_bytes") AS "max_u", min("used_bytes") AS "min_u", max("real_used_bytes") AS "max_r", '
             'min("real_used_bytes") AS "min_r", max("cycle_start") AS "max_c", min("cycle_start") AS "min_c", '
             'min("remaining_bytes") AS "min_left", max("total_bytes") AS "total" '
             f'FROM "sim", "card_usage" WHERE {self._range(begin)} GROUP BY time(1d), "iccid" fill(none) {self.tz}')
        for tags, row in rows(self.influx.query(q)):
            iccid = tags.get("iccid")
            if not iccid:
                continue
            sim = self._sim(iccid)
            values = (row["min_u"], row["max_u"], row["min_r"], row["max_r"], row["min_c"], row["max_c"])
            kept = sim.days.get(row["time"])
            if kept is not None:  # the same day from the other measurement
                values = tuple(_merge(i, a, b) for i, (a, b) in enumerate(zip(kept, values, strict=True)))
            sim.days[row["time"]] = values
            if row["time"] >= self.start_ms and row["min_left"] == 0 and row["total"]:
                sim.ran_out = True
        changed: dict[int, list[str]] = {}
        for iccid, sim in self.sims.items():
            for day, values in sim.days.items():
                if values[4] is not None and values[4] != values[5]:
                    changed.setdefault(day, []).append(iccid)
        raw: dict[tuple[str, int], list[tuple[int, Any, Any, Any]]] = {}
        for day, iccids in changed.items():
            for i in range(0, len(iccids), RAW_BATCH):
                which = " OR ".join(f'"iccid" = {literal(c)}' for c in iccids[i:i + RAW_BATCH])
                q = ('SELECT "used_bytes", "real_used_bytes", "cycle_start" FROM "sim", "card_usage" '
                     f'WHERE time >= {day}ms AND time < {min(day + 2 * DAY_MS, self.end_ms)}ms AND ({which}) '
                     'GROUP BY "iccid"')
                for tags, row in rows(self.influx.query(q)):
                    # A day is at most 25 hours (a DST change); keep what falls within this day's bucket.
                    if self._day_of(row["time"]) == self._day_of(day):
                        raw.setdefault((tags["iccid"], day), []).append(
                            (row["time"], row["used_bytes"], row["real_used_bytes"], row["cycle_start"]))
        for iccid, sim in self.sims.items():
            cycle = ""
            for day in sorted(sim.days):
                min_u, max_u, min_r, max_r, min_c, max_c = sim.days[day]
                month_key = self._month_of(day)
                if min_c is not None and min_c != max_c:
                    for _at, used, real, start in sorted(raw.get((iccid, day), [])):
                        cycle = cycle_key(start) if start is not None else cycle
                        sim.usage.setdefault(month_key, {}).setdefault(cycle, CycleRange()).add(_int(used), _int(real))
                    continue
                if min_c is not None:
                    cycle = cycle_key(min_c)
                if min_u is None and min_r is None:
                    continue
                r = sim.usage.setdefault(month_key, {}).setdefault(cycle, CycleRange())
                r.add(_int(min_u), _int(min_r))
                r.add(_int(max_u), _int(max_r))

    def _day_of(self, ms: int) -> tuple[int, int, int]:
        from datetime import datetime

        t = datetime.fromtimestamp(ms / 1000, self.month.tz)
        return t.year, t.month, t.day

    def _month_of(self, ms: int) -> str:
        return Month.of(ms / 1000, self.month.tz).key

    def month_figures(self) -> None:
        month = self.month.key.replace("-", "")
        q = (f'SELECT last("used_bytes") AS "used" FROM "card_month_usage" WHERE "month" = {literal(month)} '
             f'AND time >= {self.start_ms}ms GROUP BY "iccid"')
        for tags, row in rows(self.influx.query(q)):
            if tags.get("iccid") and row["used"] is not None:
                self._sim(tags["iccid"]).month_figure = int(row["used"])

    def devices(self) -> list[DeviceFacts]:
        q = (f'SELECT min("online") AS "online", count("sim_count") AS "polls" FROM "device" WHERE {self._range()} '
             f'GROUP BY time(1d), "device_no", {ident(self.by)} fill(none) {self.tz}')
        found: dict[str, tuple[int, str, set[int]]] = {}
        for tags, row in rows(self.influx.query(q)):
            device_no = tags.get("device_no")
            if not device_no:
                continue
            at, group, days = found.get(device_no, (-1, "", set()))
            if row["time"] >= at:
                at, group = row["time"], tags.get(self.by, "")
            if row["online"] == 0:
                days.add(self._day_of(row["time"])[2])
            found[device_no] = (at, group, days)
        return [DeviceFacts(device_no, group, days) for device_no, (_at, group, days) in found.items()]

    def sim_facts(self) -> list[SimFacts]:
        out = []
        for iccid, sim in self.sims.items():
            if sim.group.at < 0 and not sim.usage.get(self.month.key) and sim.month_figure is None:
                continue  # only seen in the month before
            def value(name: str, s: _Sim = sim) -> Any:
                kept = s.fields.get(name)
                return None if kept is None else kept.value
            out.append(SimFacts(
                iccid=iccid, group=sim.group.value or "", device_no=sim.device_no.value or "",
                sim_no=str(value("sim_no") or ""), sim_status=_int(value("sim_status")),
                expires_at=None if value("expires_at") is None else float(value("expires_at")),
                remaining_bytes=_int(value("remaining_bytes")),
                usage_rate=None if value("usage_rate_bytes_per_second") is None
                else float(value("usage_rate_bytes_per_second")),
                ran_out=sim.ran_out, usage=sim.usage, month_figure=sim.month_figure))
        return out


def _merge(index: int, a: Any, b: Any) -> Any:
    """Two measurements' aggregates of one day: min of the min columns (even index), max of the max."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b) if index % 2 == 0 else max(a, b)


def influx_report(config: Config, month: Month, by: str, *, now: float, top: int = 5,
                  suspended_statuses: Iterable[int] = (5,), target: Target | None = None) -> Report:
    """The report of `month` from the InfluxDB of the configuration (or `target`)."""
    influx = InfluxQL(target or target_from_config(config))
    try:
        queries = MonthQueries(influx, month, by, config.platform.timezone, until=now)
        queries.last_values()
        queries.counters()
        queries.month_figures()
        devices = queries.devices()
        sims = queries.sim_facts()
    finally:
        influx.close()
    return build_report(month, by, config.platform.timezone, "influxdb", sims, devices, as_of=now, now=now,
                        top=top, suspended_statuses=suspended_statuses)
