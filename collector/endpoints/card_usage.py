"""querySimRealFlow (批量查询卡板实时流量, 10 cards a request): the real-time usage of each card.
Inferred record: `{iccid, simNo, totalFlow, useFlow, realUseFlow, dockUserFlow, dockResetDate, endAt,
lastFlowAt}`, flow in the platform's unit as in queryDeviceFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from collector.endpoints.base import CardEndpoint, EndpointSpec, card_record, card_table
from collector.endpoints.device_flow import USAGE_FIELDS, remaining
from collector.platform.models import DAY, SimObservation
from collector.platform.wire import FLOW, ID, TIME
from collector.sinks.points import Measurement, age, float_field, nonempty, string_field
from collector.state import Change, FleetState, sims_changed


@dataclass(frozen=True, slots=True)
class CardUsage:
    """Real-time usage of one card."""

    iccid: str
    sim_no: str = ""
    total_bytes: int | None = None
    used_bytes: int | None = None
    real_used_bytes: int | None = None
    carrier_used_bytes: int | None = None
    cycle_start: float | None = None
    expires_at: float | None = None
    flow_at: float | None = None
    polled_at: float = 0.0


POINTS = Measurement("card_usage", ("iccid",), {
    **USAGE_FIELDS,
    "staleness_seconds": float_field("seconds", "poll time - platform flow time"),
    "sim_no": string_field("card number (simNo)"),
}, "one point per card from the batch real-time usage endpoint")


def usage_line(u: CardUsage, labels: Mapping[str, str], rate: float | None) -> str | None:
    """The `card_usage` line of one card; `rate` is the card's usage rate (from the fleet state)."""
    at = u.polled_at
    left, ratio = remaining(u.total_bytes, u.used_bytes)
    fields = {
        "total_bytes": u.total_bytes, "used_bytes": u.used_bytes, "real_used_bytes": u.real_used_bytes,
        "carrier_used_bytes": u.carrier_used_bytes, "remaining_bytes": left, "remaining_ratio": ratio,
        "days_to_expiry": None if u.expires_at is None else (u.expires_at - at) / DAY,
        "usage_rate_bytes_per_second": rate, "cycle_start": u.cycle_start, "expires_at": u.expires_at,
        "staleness_seconds": age(at, u.flow_at), "sim_no": nonempty(u.sim_no),
    }
    return POINTS.line({"iccid": u.iccid}, labels, fields, at)


class CardUsageEndpoint(CardEndpoint[CardUsage]):
    name = "card_usage"
    summary = "the real-time usage of each card, 10 cards a request"
    call = EndpointSpec("/openapi/iot/querySimRealFlow", "iccids", 10)
    job = "card_usage"
    interval = 1800.0
    wire = card_table(card_record(
        ("sim_no", "simNo", ID), ("total_bytes", "totalFlow", FLOW), ("used_bytes", "useFlow", FLOW),
        ("real_used_bytes", "realUseFlow", FLOW), ("carrier_used_bytes", "dockUserFlow", FLOW),
        ("cycle_start", "dockResetDate", TIME), ("expires_at", "endAt", TIME), ("flow_at", "lastFlowAt", TIME)))
    model = CardUsage
    measurements = (POINTS,)

    def observe(self, state: FleetState, items: Sequence[CardUsage]) -> Change:
        changed = []
        for u in items:
            sim = state.sims.get(u.iccid)
            if sim is None:
                continue
            base = sim.obs or SimObservation(iccid=u.iccid, sim_no=u.sim_no)
            sim.obs = replace(
                base, total_bytes=u.total_bytes, used_bytes=u.used_bytes, real_used_bytes=u.real_used_bytes,
                carrier_used_bytes=u.carrier_used_bytes,
                cycle_start=u.cycle_start if u.cycle_start is not None else base.cycle_start,
                expires_at=u.expires_at if u.expires_at is not None else base.expires_at, polled_at=u.polled_at)
            sim.polled_at = u.polled_at
            sim.record_usage(u.polled_at, u.used_bytes)
            sim.derive()
            changed.append(sim)
        return sims_changed(changed)

    def points(self, state: FleetState, items: Sequence[CardUsage], change: Change) -> list[str]:
        lines = []
        for u in items:
            sim = state.sims.get(u.iccid)
            if sim is not None:
                lines.append(usage_line(u, sim.labels, sim.usage_rate_bytes_per_second))
        return [line for line in lines if line is not None]


ENDPOINT = CardUsageEndpoint()
