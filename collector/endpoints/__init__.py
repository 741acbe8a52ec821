"""The read endpoints the collector polls: one module each, listed here once.

Everything about one endpoint lives in its module (`base.ReadEndpoint` says what a module declares):
how it is called, its job, the wire fields it reads, how its answer becomes observations, how those
update the fleet state and which points they yield. The platform client, the pipeline, the
scheduler's jobs, `check-config`'s request budget, the configuration (`platform.endpoints`,
`platform.fields`, `jobs`) and the documented schema all come from `ENDPOINTS`.
docs/development.md walks through adding one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from collector.endpoints import (
    account_assets,
    card_actions,
    card_info,
    card_month_usage,
    card_status,
    card_usage,
    device_flow,
    device_info,
)
from collector.endpoints.base import EndpointSpec, ReadEndpoint
from collector.sinks.points import ALERTS, Measurement

ENDPOINTS: dict[str, ReadEndpoint[Any]] = {ep.name: ep for ep in (
    device_info.ENDPOINT,
    device_flow.ENDPOINT,
    card_status.ENDPOINT,
    card_usage.ENDPOINT,
    card_info.ENDPOINT,
    card_month_usage.ENDPOINT,
    card_actions.ENDPOINT,
    account_assets.ENDPOINT,
)}
"""Every read endpoint by name, in the order their jobs are listed."""

SCHEMA: dict[str, Measurement] = {
    **{m.name: m for ep in ENDPOINTS.values() for m in ep.measurements},
    ALERTS.name: ALERTS,
}
"""Every measurement the collector writes (docs/schema.md documents each)."""

DEFAULT_SPECS: dict[str, EndpointSpec] = {name: ep.call for name, ep in ENDPOINTS.items()}


class WireFieldInfo(NamedTuple):
    """One wire value an endpoint reads: where it is in `data`, which field of which record it fills,
    the JSON type the platform should send and how the value is read (`id`, `flow`, `time`, ...)."""

    path: str
    record: str
    field: str
    key: str
    json_type: str
    coercion: str


def wire_fields(overrides: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, list[WireFieldInfo]]:
    """Per endpoint, every wire key it reads (with `platform.fields` overrides applied): what an
    answer of the real platform is compared against (fields missing, unknown, of the wrong type)."""
    out = {}
    for name, ep in ENDPOINTS.items():
        table = ep.wire.resolve(tuple(sorted((overrides or {}).get(name, {}).items())))
        out[name] = [WireFieldInfo(path, record, f[0], f[1], f[2].json_type, f[2].name)
                     for path, record, f in table.paths()]
    return out
