"""The report of the current month from the running collector: its fleet state (which devices and
SIMs exist, their labels, status, expiry and remaining data now) and its month ledger (offline days,
cycle counters, month figures). Served by the daemon as `GET /api/report`; no database involved.
"""

from __future__ import annotations

from collections.abc import Iterable
from zoneinfo import ZoneInfo

from collector.report.ledger import Ledger
from collector.report.model import DeviceFacts, Month, Report, SimFacts, build_report
from collector.state import FleetState


def live_report(state: FleetState, ledger: Ledger, month: Month, by: str, tz_name: str, *, now: float,
                top: int = 5, suspended_statuses: Iterable[int] = (5,)) -> Report:
    """The report of `month` (the current one: the fleet state describes now) grouped by label `by`."""
    entry = ledger.months.get(month.key)
    sims = []
    for iccid, s in state.sims.items():
        o = s.obs
        kept = entry.sims.get(iccid) if entry is not None else None
        if o is None and kept is None:
            continue  # known from the inventory, never polled: nothing to report
        sims.append(SimFacts(
            iccid=iccid, group=s.labels.get(by, ""), device_no=s.device_no,
            sim_no=o.sim_no if o is not None else "", sim_status=o.sim_status if o is not None else None,
            expires_at=o.expires_at if o is not None else None,
            remaining_bytes=o.remaining_bytes if o is not None else None,
            usage_rate=s.usage_rate_bytes_per_second,
            ran_out=kept.ran_out if kept is not None else False,
            usage=ledger.usage_table(iccid),
            month_figure=entry.month_figures.get(iccid) if entry is not None else None))
    if entry is not None:
        # Seen this month but not (yet) in the fleet state: after a restart, before the first cycle.
        for iccid, kept in entry.sims.items():
            if iccid in state.sims:
                continue
            device = state.devices.get(kept.device_no)
            sims.append(SimFacts(iccid=iccid, group=device.labels.get(by, "") if device is not None else "",
                                 device_no=kept.device_no, ran_out=kept.ran_out, usage=ledger.usage_table(iccid),
                                 month_figure=entry.month_figures.get(iccid)))
    devices = [DeviceFacts(device_no=d.device_no, group=d.labels.get(by, ""),
                           offline_days=entry.offline.get(d.device_no, ()) if entry is not None else ())
               for d in state.devices.values()]
    return build_report(month, by, tz_name, "collector", sims, devices, as_of=now, now=now, top=top,
                        suspended_statuses=suspended_statuses)


def current_month(now: float, tz_name: str) -> Month:
    return Month.of(now, ZoneInfo(tz_name))
