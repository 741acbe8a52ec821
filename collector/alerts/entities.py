"""The fleet's entities as alert rules read them, served by a running collector and read back by
`iot-collector alerts test`, so rules under test are evaluated on the fleet the daemon polls:

- `GET /api/entities[?kind=device,sim]` (read-only, on the collector's loopback HTTP server) ->
  `{"time": <Unix seconds>, "entities": {"device": [{<field>: <value>}, ...], "sim": [...],
  "account": [...], "collector": [...]}}`: every field of `collector.state.FIELDS` of every entity
  with data since the collector started (those never polled say nothing and are left out), the
  clock-dependent fields (`status_age_seconds`, `poll_age_seconds`) as of `time`;
- `records_from_document(doc)`: the same entities as records for the rule closures, by kind and key.

A large fleet is read in slices between which the event loop keeps polling, and serialised off it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

from collector.state import FIELDS, FieldRecord, FleetState, field_reader

KEY_FIELD = {"device": "device_no", "sim": "iccid"}  # account and collector are one entity each
SLICE = 2000  # entities read between two returns to the event loop


@functools.cache
def _readers(kind: str) -> tuple[tuple[str, Callable[[Any, float], Any]], ...]:
    return tuple((name, field_reader(name, path)) for name, path in FIELDS[kind].items())


def entity_fields(kind: str, record: Any, now: float) -> dict[str, Any]:
    """Every rule field of one record, JSON-able (labels as a plain dict)."""
    values = {name: read(record, now) for name, read in _readers(kind)}
    values["labels"] = dict(values.get("labels") or {})
    return values


def _has_data(record: Any) -> bool:
    return getattr(record, "polled", True) is not False


def entity_routes(state: Callable[[], FleetState], collector: Callable[[], Any | None]) -> list[web.RouteDef]:
    """The route to mount on the collector's HTTP application: `state()` is the fleet state,
    `collector()` the collector's own record for rules of kind `collector` (None before the first)."""

    def records(kind: str) -> Iterable[Any]:
        fleet = state()
        if kind == "device":
            return list(fleet.devices.values())
        if kind == "sim":
            return list(fleet.sims.values())
        if kind == "account":
            return [fleet.account]
        own = collector()
        return [] if own is None else [own]

    async def list_entities(request: web.Request) -> web.Response:
        wanted = [k for k in request.query.get("kind", "").split(",") if k] or list(FIELDS)
        unknown = [k for k in wanted if k not in FIELDS]
        if unknown:
            return web.json_response({"error": f"unknown kind {unknown[0]!r}; one of {', '.join(FIELDS)}"},
                                     status=400)
        now = time.time()
        out: dict[str, list[dict[str, Any]]] = {}
        for kind in wanted:
            items = out[kind] = []
            for n, record in enumerate(records(kind)):
                if n and n % SLICE == 0:
                    await asyncio.sleep(0)
                if _has_data(record):
                    items.append(entity_fields(kind, record, now))
        body = await asyncio.to_thread(orjson.dumps, {"time": now, "entities": out})
        return web.Response(body=body, content_type="application/json")

    return [web.get("/api/entities", list_entities)]


def records_from_document(doc: Mapping[str, Any]) -> dict[str, dict[str, FieldRecord]]:
    """The entities of a `/api/entities` answer (or of an observation file of entity fields) as
    records by kind and key; a kind given as one object is one entity. Raises ValueError."""
    entities = doc.get("entities", doc)
    if not isinstance(entities, Mapping):
        raise ValueError("`entities` must be an object of lists by kind")
    out: dict[str, dict[str, FieldRecord]] = {}
    for kind in FIELDS:
        items = entities.get(kind) or []
        items = [items] if isinstance(items, Mapping) else items
        if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
            raise ValueError(f"{kind}: must be a list of objects of fields")
        for i, item in enumerate(items):
            key = str(item.get(KEY_FIELD[kind], i)) if kind in KEY_FIELD else kind
            out.setdefault(kind, {})[key] = FieldRecord(kind, item)
    return out
