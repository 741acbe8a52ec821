"""`GET /api/report?month=YYYY-MM&by=LABEL&top=N` of the running collector: the report of the
current month from its fleet state and month ledger (JSON of `model.Report`). Another month is a 404
that says where it comes from (InfluxDB); a bad parameter a 400 naming it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from collector.report.influx import check_label
from collector.report.ledger import Ledger
from collector.report.live import current_month, live_report
from collector.report.model import Month, ReportError, suspended_statuses
from collector.state import FleetState

if TYPE_CHECKING:
    from collector.config import Config


def report_route(source: Callable[[], tuple[FleetState, Ledger, Config]]
                 ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        state, ledger, config = source()
        tz_name = config.platform.timezone
        now = time.time()
        current = current_month(now, tz_name)
        try:
            month = Month.parse(request.query.get("month", current.key), current.tz)
            by = check_label(request.query.get("by", "customer"))
            top_text = request.query.get("top", "5")
            if not top_text.isdigit():
                raise ReportError(f"top must be a whole number, got {top_text!r}")
        except ReportError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if month.key != current.key:
            return web.json_response({"error": f"the collector keeps the current month only ({current.key}); "
                                               f"{month.key} is read from InfluxDB"}, status=404)
        report = live_report(state, ledger, month, by, tz_name, now=now, top=int(top_text),
                             suspended_statuses=suspended_statuses(config))
        return web.json_response(report.to_json())

    return handle
