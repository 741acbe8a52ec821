"""querySimStatus (批量查询卡板最新状态, 10 cards a request): the latest status of each card. Inferred
record: `{iccid, simNo, simStatus, onlineStatus, internetStatus, lastSimStatusAt}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from collector.endpoints.base import CardEndpoint, EndpointSpec, card_record, card_table
from collector.platform.models import SimObservation
from collector.platform.wire import ID, INT, TIME
from collector.sinks.points import Measurement, age, float_field, int_field, nonempty, string_field
from collector.state import Change, FleetState, sims_changed


@dataclass(frozen=True, slots=True)
class CardStatus:
    """Latest status of one card."""

    iccid: str
    sim_no: str = ""
    sim_status: int | None = None
    online_status: int | None = None
    internet_status: int | None = None
    status_at: float | None = None
    polled_at: float = 0.0


POINTS = Measurement("card_status", ("iccid",), {
    "sim_status": int_field("code", "card lifecycle status"),
    "online_status": int_field("code", "card online state"),
    "internet_status": int_field("code", "data service state"),
    "staleness_seconds": float_field("seconds", "poll time - platform status time"),
    "sim_no": string_field("card number (simNo)"),
}, "one point per card from the batch latest-status endpoint")


def status_line(card: CardStatus, labels: Mapping[str, str]) -> str | None:
    """The `card_status` line of one card."""
    fields = {"sim_status": card.sim_status, "online_status": card.online_status,
              "internet_status": card.internet_status, "staleness_seconds": age(card.polled_at, card.status_at),
              "sim_no": nonempty(card.sim_no)}
    return POINTS.line({"iccid": card.iccid}, labels, fields, card.polled_at)


class CardStatusEndpoint(CardEndpoint[CardStatus]):
    name = "card_status"
    summary = "the latest status of each card, 10 cards a request"
    call = EndpointSpec("/openapi/iot/querySimStatus", "iccids", 10)
    job = "card_status"
    interval = 600.0
    wire = card_table(card_record(
        ("sim_no", "simNo", ID), ("sim_status", "simStatus", INT), ("online_status", "onlineStatus", INT),
        ("internet_status", "internetStatus", INT), ("status_at", "lastSimStatusAt", TIME)))
    model = CardStatus
    measurements = (POINTS,)

    def observe(self, state: FleetState, items: Sequence[CardStatus]) -> Change:
        changed = []
        for card in items:
            sim = state.sims.get(card.iccid)
            if sim is None:
                continue
            base = sim.obs or SimObservation(iccid=card.iccid, sim_no=card.sim_no)
            sim.obs = replace(base, sim_status=card.sim_status, online_status=card.online_status,
                              internet_status=card.internet_status,
                              status_at=card.status_at if card.status_at is not None else base.status_at,
                              polled_at=card.polled_at)
            sim.polled_at = card.polled_at
            sim.derive()
            changed.append(sim)
        return sims_changed(changed)

    def points(self, state: FleetState, items: Sequence[CardStatus], change: Change) -> list[str]:
        lines = [status_line(card, state.sims[card.iccid].labels) for card in items if card.iccid in state.sims]
        return [line for line in lines if line is not None]


ENDPOINT = CardStatusEndpoint()
