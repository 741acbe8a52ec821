"""querySimRealFlow (批量查询卡板实时流量, 10 cards a request): the real-time usage of each card.
Inferred record: the usage part of the SIM record of queryDeviceFlow, `{iccid, simNo, totalFlow,
useFlow, realUseFlow, dockUserFlow, dockResetDate, endAt}`, plus `lastFlowAt` (when the platform
refreshed the usage); flow in the platform's unit. The observation is that part of a SIM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from collector.endpoints.base import CardEndpoint, EndpointSpec, card_table
from collector.endpoints.device_flow import SIM, USAGE_FIELDS, usage_fields
from collector.platform.models import SimObservation
from collector.platform.wire import TIME, Record
from collector.sinks.points import Measurement, age, float_field, string_field
from collector.state import Change, FleetState

USAGE = ("total_bytes", "used_bytes", "real_used_bytes", "carrier_used_bytes", "cycle_start", "expires_at")

POINTS = Measurement("card_usage", ("iccid", "device_no"), {
    **USAGE_FIELDS,
    "staleness_seconds": float_field("seconds", "poll time - platform flow time"),
    "sim_no": string_field("card number (simNo)"),
}, "one point per card from the batch real-time usage endpoint")


def usage_line(u: SimObservation, labels: Mapping[str, str], rate: float | None, device_no: str = "") -> str | None:
    """The `card_usage` line of one card; `rate` is the card's usage rate and `device_no` the device it
    sits in ("" when unknown), both from the fleet state."""
    fields = POINTS.read(u)
    fields.update(usage_fields(u.total_bytes, u.used_bytes, u.expires_at, u.polled_at, rate),
                  staleness_seconds=age(u.polled_at, u.flow_at))
    return POINTS.line({"iccid": u.iccid, "device_no": device_no}, labels, fields, u.polled_at)


class CardUsage(CardEndpoint[SimObservation]):
    name = job = "card_usage"
    call, interval = EndpointSpec("/openapi/iot/querySimRealFlow", "iccids", 10), 1800.0
    wire = card_table(Record("sim", (*SIM.only(frozenset((*USAGE, "sim_no"))).fields, ("flow_at", "lastFlowAt", TIME)),
                             identity="iccid"))
    model, measurements = SimObservation, (POINTS,)

    def observe(self, state: FleetState, items: Sequence[SimObservation]) -> Change:
        return state.update_sims(items, (*USAGE, "flow_at"), kept=("cycle_start", "expires_at"), usage=True)

    def points(self, state: FleetState, items: Sequence[SimObservation], change: Change) -> list[str]:
        lines = [usage_line(u, sim.labels, sim.usage_rate_bytes_per_second, sim.device_no)
                 for u in items if (sim := state.sims.get(u.iccid)) is not None]
        return [line for line in lines if line is not None]


ENDPOINT = CardUsage()
