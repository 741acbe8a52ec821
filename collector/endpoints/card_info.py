"""querySimInfo (批量查询卡板信息, 100 cards a request): every detail of a card. Inferred: `data` is a
list of the same SIM records as `data.sims[]` of queryDeviceFlow, so this endpoint reads
`device_flow.SIM` and writes the same `sim` points.
"""

from __future__ import annotations

from collections.abc import Sequence

from collector.endpoints.base import CardEndpoint, EndpointSpec, card_table
from collector.endpoints.device_flow import SIM, sim_line
from collector.platform.models import SimObservation
from collector.state import Change, FleetState, sims_changed


class CardInfo(CardEndpoint[SimObservation]):
    name = job = "card_info"
    call, interval = EndpointSpec("/openapi/iot/querySimInfo", "iccids", 100), 6 * 3600.0
    wire, model = card_table(SIM), SimObservation

    def observe(self, state: FleetState, items: Sequence[SimObservation]) -> Change:
        changed = []
        for sim in items:
            known = state.sims.get(sim.iccid)
            if known is not None:
                changed.append(state.observe_sim(sim, sim.device_no or known.device_no, known.labels, None))
        return sims_changed(changed)

    def points(self, state: FleetState, items: Sequence[SimObservation], change: Change) -> list[str]:
        return [line for line in map(sim_line, change.sim_records) if line is not None]


ENDPOINT = CardInfo()
