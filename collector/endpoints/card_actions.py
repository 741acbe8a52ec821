"""querySimAction (查询卡板操作记录): the operation log of cards, which tells whether a batch suspend or
resume was submitted to the carrier. The path is published in an earlier version of the vendor's
documentation; the parameter, the batch limit and the record are inferred:
`{serialNo, iccid, simNo, actionType, status, remark, createdAt}`, `actionType` kept as text whatever
its JSON type (its codes are undocumented). Written at each entry's creation time, not kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from collector.endpoints.base import CardEndpoint, EndpointSpec, card_table
from collector.platform.wire import ID, INT, TEXT, TIME, Record
from collector.sinks.points import Measurement, int_field, string_field
from collector.state import Change, FleetState


@dataclass(frozen=True, slots=True)
class CardAction:
    """One entry of the card operation log: a suspend/resume submitted to the carrier."""

    iccid: str
    created_at: float | None = None
    action: str = ""
    status: int | None = None
    serial_no: str = ""
    sim_no: str = ""
    remark: str = ""
    polled_at: float = 0.0


POINTS = Measurement("card_action", ("iccid", "device_no", "action"), {
    "status": int_field("code", "operation status"),
    "serial_no": string_field("operation serial number"),
    "remark": string_field("operation remark"),
    "sim_no": string_field("card number (simNo)"),
}, "one point per card operation log entry (querySimAction), at its creation time")


def action_line(action: CardAction, labels: Mapping[str, str], device_no: str = "") -> str | None:
    """The `card_action` line of one log entry, at its creation time (None without one); `device_no`
    is the device the card sits in ("" when unknown)."""
    if action.created_at is None:
        return None
    return POINTS.line({"iccid": action.iccid, "device_no": device_no, "action": action.action}, labels,
                       POINTS.read(action), action.created_at)


class CardActions(CardEndpoint[CardAction]):
    name = job = "card_actions"
    call, interval, enabled = EndpointSpec("/openapi/iot/querySimAction", "iccids", 100), 3600.0, False
    wire = card_table(Record("action", (
        ("iccid", "iccid", ID), ("serial_no", "serialNo", ID), ("sim_no", "simNo", ID), ("action", "actionType", TEXT),
        ("status", "status", INT), ("remark", "remark", TEXT), ("created_at", "createdAt", TIME)), identity="iccid"))
    model, measurements = CardAction, (POINTS,)
    absent_means_unknown = False  # the log lists only cards with recent operations

    def points(self, state: FleetState, items: Sequence[CardAction], change: Change) -> list[str]:
        lines = [action_line(a, sim.labels, sim.device_no)
                 for a in items if (sim := state.sims.get(a.iccid)) is not None]
        return [line for line in lines if line is not None]


ENDPOINT = CardActions()
