"""querySimStatus (批量查询卡板最新状态, 10 cards a request): the latest status of each card. Inferred
record: part of the SIM record of queryDeviceFlow, `{iccid, simNo, simStatus, onlineStatus,
internetStatus, lastSimStatusAt}`; the observation is that part of a SIM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from collector.endpoints.base import CardEndpoint, EndpointSpec, card_table
from collector.endpoints.device_flow import SIM
from collector.platform.models import SimObservation
from collector.sinks.points import Measurement, age, float_field, int_field, string_field
from collector.state import Change, FleetState

STATUS = ("sim_status", "online_status", "internet_status", "status_at")

POINTS = Measurement("card_status", ("iccid", "device_no"), {
    "sim_status": int_field("code", "card lifecycle status"),
    "online_status": int_field("code", "card online state"),
    "internet_status": int_field("code", "data service state"),
    "staleness_seconds": float_field("seconds", "poll time - platform status time"),
    "sim_no": string_field("card number (simNo)"),
}, "one point per card from the batch latest-status endpoint")


def status_line(card: SimObservation, labels: Mapping[str, str], device_no: str = "") -> str | None:
    """The `card_status` line of one card; `device_no` is the device it sits in ("" when unknown)."""
    fields = POINTS.read(card)
    fields["staleness_seconds"] = age(card.polled_at, card.status_at)
    return POINTS.line({"iccid": card.iccid, "device_no": device_no}, labels, fields, card.polled_at)


class CardStatus(CardEndpoint[SimObservation]):
    name = job = "card_status"
    call, interval = EndpointSpec("/openapi/iot/querySimStatus", "iccids", 10), 600.0
    wire, model, measurements = card_table(SIM.only(frozenset((*STATUS, "sim_no")))), SimObservation, (POINTS,)

    def observe(self, state: FleetState, items: Sequence[SimObservation]) -> Change:
        return state.update_sims(items, STATUS, kept=("status_at",))

    def points(self, state: FleetState, items: Sequence[SimObservation], change: Change) -> list[str]:
        lines = [status_line(card, sim.labels, sim.device_no)
                 for card in items if (sim := state.sims.get(card.iccid)) is not None]
        return [line for line in lines if line is not None]


ENDPOINT = CardStatus()
