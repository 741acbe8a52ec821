"""querySimMonthFlow (批量查询卡板指定月流量, 10 cards a request): each card's usage in one calendar
month, asked with the extra form field `month` (`YYYYMM`; a poll asks for the current month in the
platform's time zone). Inferred record: `{iccid, simNo, month, useFlow}`; a record without a usable
month (YYYYMM or YYYY-MM) takes the month asked for. Written, and kept by the report's month ledger
(not in the fleet state).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from collector.endpoints.base import CardEndpoint, EndpointSpec, Query, card_table
from collector.platform.errors import ParseError
from collector.platform.wire import FLOW, ID, ParseContext, Record
from collector.sinks.points import Measurement, int_field, string_field
from collector.state import Change, FleetState

MONTH_PARAM = "month"
_ASKED = re.compile(r"\d{4}(0[1-9]|1[0-2])")
_ANSWERED = re.compile(r"\d{6}")


@dataclass(frozen=True, slots=True)
class CardMonthUsage:
    """Usage of one card for one calendar month (`month` as YYYYMM)."""

    iccid: str
    month: str
    used_bytes: int | None = None
    sim_no: str = ""
    polled_at: float = 0.0


POINTS = Measurement("card_month_usage", ("iccid", "device_no", "month"), {
    "used_bytes": int_field("bytes", "usage in the calendar month given by the month tag"),
    "sim_no": string_field("card number (simNo)"),
}, "one point per card and month from the month usage endpoint")


def month_line(u: CardMonthUsage, labels: Mapping[str, str], device_no: str = "") -> str | None:
    """The `card_month_usage` line of one card and month; `device_no` is the device the card sits in
    ("" when unknown)."""
    return POINTS.line({"iccid": u.iccid, "device_no": device_no, "month": u.month}, labels, POINTS.read(u),
                       u.polled_at)


class CardMonthUsageEndpoint(CardEndpoint[CardMonthUsage]):
    name = job = "card_month_usage"
    call, interval, enabled = EndpointSpec("/openapi/iot/querySimMonthFlow", "iccids", 10), 24 * 3600.0, False
    wire = card_table(Record("month_usage", (("iccid", "iccid", ID), ("sim_no", "simNo", ID), ("month", "month", ID),
                                             ("used_bytes", "useFlow", FLOW)), identity="iccid"))
    measurements = (POINTS,)

    def extra_form(self, now: float, tz: tzinfo, given: Mapping[str, str] | None = None) -> dict[str, str]:
        if given is None:
            return {MONTH_PARAM: datetime.fromtimestamp(now, tz).strftime("%Y%m")}
        month = given.get(MONTH_PARAM, "")
        if not _ASKED.fullmatch(month):
            raise ValueError(f"month must be YYYYMM, got {month!r}")
        return dict(given)

    def one(self, rec: dict[str, Any], path: str, row: Record, ctx: ParseContext, query: Query) -> CardMonthUsage:
        iccid = row.identify(rec, path, self.name)
        values = row.read(rec, ctx)
        month = values.pop("month").replace("-", "")
        if not _ANSWERED.fullmatch(month):
            month = query.form.get(MONTH_PARAM, "")
            if not month:
                raise ParseError("record has no month (YYYYMM)", path=f"{path}.{row.key('month')}",
                                 endpoint=self.name)
        return CardMonthUsage(iccid=iccid, month=month, **values, polled_at=ctx.polled_at)

    def observe(self, state: FleetState, items: Sequence[CardMonthUsage]) -> Change:
        # Not kept in the fleet state; the report's ledger keeps the month figures.
        if state.recorder is not None:
            for u in items:
                if u.iccid in state.sims:
                    state.recorder.month_figure(u.iccid, u.month, u.used_bytes)
        return Change()

    def points(self, state: FleetState, items: Sequence[CardMonthUsage], change: Change) -> list[str]:
        lines = [month_line(u, sim.labels, sim.device_no)
                 for u in items if (sim := state.sims.get(u.iccid)) is not None]
        return [line for line in lines if line is not None]


ENDPOINT = CardMonthUsageEndpoint()
