"""queryDeviceFlow (查询设备流量), the one endpoint the vendor documents: a device and its SIMs.

`data = {device: {...}, sims: [...]}` (docs/upstream-api.md). The device record's id is the number
we asked for: the vendor's own example asks for 9176069816 and answers with deviceNo
865214078636124, and the inventory knows the first; the answer must still carry a `deviceNo` as
proof that it is a device record. The SIM record is also the record of the card info endpoint
(`card_info` reads it from here), and the `sim` points are written by both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from collector.endpoints.base import EndpointSpec, Query, ReadEndpoint
from collector.platform.errors import ParseError
from collector.platform.models import DAY, DeviceEvent, DeviceObservation, Location, SimObservation
from collector.platform.wire import (
    ARRAY,
    FLOAT,
    FLOW,
    ID,
    INT,
    OBJECT,
    PERCENT,
    TEXT,
    TIME,
    ParseContext,
    Parsed,
    Record,
    WireTable,
    kind_of,
    record,
    unusable,
)
from collector.sinks.points import Measurement, age, bool01, float_field, int_field, string_field
from collector.state import Change, FleetState, SimState, merge

SIM = Record("sim", (
    ("iccid", "iccid", ID), ("sim_no", "simNo", ID), ("imsi", "imsi", ID), ("device_no", "deviceNo", ID),
    ("slot", "vice", INT), ("total_bytes", "totalFlow", FLOW), ("used_bytes", "useFlow", FLOW),
    ("real_used_bytes", "realUseFlow", FLOW), ("carrier_used_bytes", "dockUserFlow", FLOW),
    ("cycle_start", "dockResetDate", TIME), ("expires_at", "endAt", TIME), ("sim_status", "simStatus", INT),
    ("activate_status", "activateStatus", INT), ("auth_status", "authStatus", INT),
    ("internet_status", "internetStatus", INT), ("online_status", "onlineStatus", INT),
    ("cancel_status", "cancelStatus", INT), ("pool_id", "poolId", INT), ("balance", "balance", FLOAT),
    ("speed_code", "speedCode", TEXT), ("break_at", "breakAt", TIME), ("break_remove_at", "breakRemoveAt", TIME),
    ("status_at", "lastSimStatusAt", TIME), ("last_active_at", "lastActiveAt", TIME),
), identity="iccid")

WIRE = WireTable((
    Record("data", (("device", "device", OBJECT("device")), ("sims", "sims", ARRAY("sim")))),
    Record("device", (
        ("device_no", "deviceNo", ID), ("imei", "imei", ID), ("online_status", "onlineStatus", INT),
        ("rssi_dbm", "rssi", INT), ("battery_percent", "electric", PERCENT), ("effective_sim", "effectiveSim", INT),
        ("device_status", "deviceStatus", INT), ("wisdom_network", "wisdomNetwork", INT),
        ("wifi_clients", "connCount", INT), ("wifi_clients_max", "maxConnCount", INT),
        ("wifi_clients_5g", "connCount5G", INT), ("wifi_clients_5g_max", "maxConnCount5G", INT),
        ("wifi_name", "wifiName", TEXT), ("soft_version", "softVersion", TEXT), ("mac", "mac", TEXT),
        ("status_at", "lastDeviceStatusAt", TIME), ("flow_at", "lastDeviceFlowAt", TIME),
        ("warranty_expires_at", "warrantyExpire", TIME),
        ("location", "position", OBJECT("location")), ("events", "controlResponse", ARRAY("event")),
    ), identity="device_no"),
    Record("location", (
        ("province_code", "provinceCode", ID), ("city_code", "cityCode", ID), ("region_name", "regionName", TEXT),
        ("lat", "lat", FLOAT), ("lng", "lng", FLOAT), ("cell_id", "cellId", ID), ("lac", "lac", ID),
        ("mcc", "mcc", ID), ("mnc", "mnc", ID),
    )),
    Record("event", (("at", "controlAt", TIME), ("event_type", "eventType", INT), ("value1", "eventValue1", TEXT),
                     ("value2", "eventValue2", TEXT))),
    SIM,
))

# What `privacy.location: region` keeps of a position.
REGION = frozenset({"province_code", "city_code", "region_name"})
# What a SIM record inside a device answer is read for (its device is the one asked for).
IN_DEVICE = frozenset(name for name, _key, _c in SIM.fields if name != "device_no")

USAGE_FIELDS = {
    "total_bytes": int_field("bytes", "package allowance (totalFlow)"),
    "used_bytes": int_field("bytes", "usage billed to the end customer (useFlow)"),
    "real_used_bytes": int_field("bytes", "real usage on the platform (realUseFlow)"),
    "carrier_used_bytes": int_field("bytes", "usage reported by the carrier (dockUserFlow)"),
    "remaining_bytes": int_field("bytes", "total_bytes - used_bytes, never below 0"),
    "remaining_ratio": float_field("ratio", "remaining_bytes / total_bytes, 0..1"),
    "days_to_expiry": float_field("days", "(expires_at - poll time) / 86400; negative once expired"),
    "usage_rate_bytes_per_second": float_field("bytes/s", "growth of used_bytes since the previous poll"),
    "cycle_start": int_field("unix seconds", "start of the carrier billing cycle (dockResetDate)"),
    "expires_at": int_field("unix seconds", "package expiry (endAt)"),
}
"""The usage fields of a SIM, written by the `sim` and `card_usage` measurements alike."""

DEVICE_POINTS = Measurement("device", ("device_no",), {
    "online": int_field("0/1", "1 when onlineStatus is 1"),
    "online_status": int_field("code", "onlineStatus as reported"),
    "rssi_dbm": int_field("dBm", "signal strength"),
    "battery_percent": int_field("percent", "battery level (electric)"),
    "effective_sim": int_field("slot", "SIM slot in use: 1 main, 2 vice1, 3 vice2, 4 usim"),
    "device_status": int_field("code", "platform device status (deviceStatus)"),
    "wisdom_network": int_field("0/1", "smart network switching on"),
    "wifi_clients": int_field("count", "Wi-Fi clients on 2.4 GHz (connCount)"),
    "wifi_clients_max": int_field("count", "allowed Wi-Fi clients on 2.4 GHz (maxConnCount)"),
    "wifi_clients_5g": int_field("count", "Wi-Fi clients on 5 GHz (connCount5G)"),
    "wifi_clients_5g_max": int_field("count", "allowed Wi-Fi clients on 5 GHz (maxConnCount5G)"),
    "sim_count": int_field("count", "SIM cards the platform lists in the device"),
    "staleness_seconds": float_field("seconds", "poll time - lastDeviceStatusAt"),
    "flow_staleness_seconds": float_field("seconds", "poll time - lastDeviceFlowAt"),
    "warranty_expires_at": int_field("unix seconds", "warranty end (absent when unset)"),
    "soft_version": string_field("firmware version"),
    "region_name": string_field("cell-based region name (privacy.location region or exact)"),
    "province_code": string_field("province code (privacy.location region or exact)"),
    "city_code": string_field("city code (privacy.location region or exact)"),
    "lat": float_field("degrees", "latitude (privacy.location exact only)"),
    "lng": float_field("degrees", "longitude (privacy.location exact only)"),
    "cell_id": string_field("serving cell id (privacy.location exact only)"),
    "lac": string_field("location area code (privacy.location exact only)"),
    "mcc": string_field("mobile country code (privacy.location exact only)"),
    "mnc": string_field("mobile network code (privacy.location exact only)"),
}, "one point per device poll (queryDeviceFlow / queryDeviceInfo)")

SIM_POINTS = Measurement("sim", ("iccid", "device_no", "slot"), {
    **USAGE_FIELDS,
    "sim_status": int_field("code", "card lifecycle status (simStatus)"),
    "activate_status": int_field("code", "activation status (activateStatus)"),
    "auth_status": int_field("code", "real-name verification state (authStatus)"),
    "internet_status": int_field("code", "data service state (internetStatus)"),
    "online_status": int_field("code", "card online state (onlineStatus)"),
    "cancel_status": int_field("code", "cancellation state (cancelStatus)"),
    "pool_id": int_field("id", "shared flow pool, > 0 when the card draws on a pool"),
    "balance": float_field("currency (unknown unit)", "money on the card"),
    "effective": int_field("0/1", "1 when this SIM is the device's effective SIM"),
    "staleness_seconds": float_field("seconds", "poll time - lastSimStatusAt"),
    "break_at": int_field("unix seconds", "when the card was cut off"),
    "break_remove_at": int_field("unix seconds", "when the cut-off is lifted"),
    "last_active_at": int_field("unix seconds", "last activity of the card"),
    "sim_no": string_field("card number (simNo)"),
    "speed_code": string_field("speed limit in force (speedCode)"),
}, "one point per SIM seen inside a device poll (data.sims[]) or a card info poll")

EVENT_POINTS = Measurement("device_event", ("device_no", "event_type"), {
    "value1": string_field("eventValue1"),
    "value2": string_field("eventValue2"),
}, "one point per controlResponse entry, at its controlAt time")


# --- parsing ---------------------------------------------------------------------------------------


def parse_sim(rec: Any, ctx: ParseContext, sim: Record, path: str, endpoint: str,
              device_no: str | None = None, flow_at: float | None = None) -> SimObservation:
    """One SIM record (`data.sims[]`, or a card info record). `device_no`, when given, is the device
    the record came inside, and `flow_at` when that device's platform last refreshed the flow numbers
    (`lastDeviceFlowAt`): the time the SIM's usage is as of."""
    rec = record(rec, path, endpoint)
    iccid = sim.identify(rec, path, endpoint)
    if device_no is None:
        return SimObservation(iccid=iccid, **sim.read(rec, ctx), polled_at=ctx.polled_at)
    return SimObservation(iccid=iccid, device_no=device_no, **sim.only(IN_DEVICE).read(rec, ctx),
                          flow_at=flow_at, polled_at=ctx.polled_at)


def parse_location(position: Any, ctx: ParseContext, location: Record) -> Location | None:
    """`device.position` cut to the privacy mode: none -> None, region -> codes and region name only,
    exact -> also coordinates and cell ids. A position with nothing usable is None."""
    mode = ctx.location
    if mode == "none" or position.__class__ is not dict:
        return None
    if mode == "region":
        values = location.only(REGION).read(position, ctx)
        return Location(**values) if any(values.values()) else None
    values = location.read(position, ctx)
    lat, lng = values["lat"], values["lng"]
    if lat is not None and lng is not None and ((lat == 0.0 and lng == 0.0) or abs(lat) > 90 or abs(lng) > 180):
        # (0, 0) is "no fix", not a point in the Gulf of Guinea; out-of-range pairs are garbage.
        values["lat"] = values["lng"] = None
    found = Location(**values)
    return None if found == Location() else found


def parse_events(raw: Any, key: str, device_no: str, ctx: ParseContext, event: Record) -> tuple[DeviceEvent, ...]:
    """`device.controlResponse`. The event log is secondary data: an entry without a time or a type is
    dropped (and noted under the log's key), not fatal."""
    if raw.__class__ is not list:
        if raw is not None:
            unusable(ctx, key)
        return ()
    events = []
    for entry in raw:
        values = event.read(entry, ctx) if entry.__class__ is dict else None
        if values is None or values["at"] is None or values["event_type"] is None:
            unusable(ctx, key)
            continue
        events.append(DeviceEvent(device_no=device_no, **values))
    return tuple(events)


# --- points ------------------------------------------------------------------------------------------


def usage_fields(total: int | None, used: int | None, expires: float | None, at: float,
                 rate: float | None) -> dict[str, Any]:
    """The derived usage fields of a SIM or a card usage observation polled at `at`."""
    left = None if total is None or used is None else max(total - used, 0)
    return {"remaining_bytes": left,
            "remaining_ratio": None if left is None or total is None or total <= 0 else left / total,
            "days_to_expiry": None if expires is None else (expires - at) / DAY, "usage_rate_bytes_per_second": rate}


def device_line(obs: DeviceObservation, labels: Mapping[str, str]) -> str | None:
    """The `device` line of one device poll; `sim_count` counts the SIMs the answer listed."""
    at = obs.polled_at
    fields = DEVICE_POINTS.read(obs)
    fields.update(sim_count=len(obs.sims), staleness_seconds=age(at, obs.status_at),
                  flow_staleness_seconds=age(at, obs.flow_at))
    if obs.location is not None:
        fields.update(DEVICE_POINTS.read(obs.location))
    return DEVICE_POINTS.line({"device_no": obs.device_no}, labels, fields, at)


def sim_line(sim: SimState) -> str | None:
    """The `sim` line of a SIM just observed (its usage rate and effective flag from the state)."""
    o = sim.obs
    if o is None:
        return None
    fields = SIM_POINTS.read(o)
    fields.update(usage_fields(o.total_bytes, o.used_bytes, o.expires_at, o.polled_at, sim.usage_rate_bytes_per_second),
                  effective=bool01(sim.effective),
                  staleness_seconds=age(o.polled_at, o.status_at))
    tags = {"iccid": o.iccid, "device_no": o.device_no, "slot": None if o.slot is None else str(o.slot)}
    return SIM_POINTS.line(tags, sim.labels, fields, o.polled_at)


def event_line(event: DeviceEvent, labels: Mapping[str, str]) -> str | None:
    """The `device_event` line of one controlResponse entry, at its controlAt time. The same event
    always gives the same line."""
    return EVENT_POINTS.line({"device_no": event.device_no, "event_type": str(event.event_type)}, labels,
                             {"value1": event.value1, "value2": event.value2}, event.at)


# --- the endpoint ------------------------------------------------------------------------------------


class DeviceFlow(ReadEndpoint[DeviceObservation]):
    name = job = "device_flow"
    call, interval = EndpointSpec("/openapi/iot/queryDeviceFlow", "deviceNo", 1, documented=True), 900.0
    entity, wire, measurements = "device", WIRE, (DEVICE_POINTS, SIM_POINTS, EVENT_POINTS)

    def parse(self, data: Any, ctx: ParseContext, query: Query) -> Parsed[DeviceObservation]:
        t = self.table(ctx)
        root, device_record = t["data"], t["device"]
        data = record(data, "data", self.name)
        at = f"data.{root.key('device')}"
        device = record(data.get(root.key("device")), at, self.name)
        wire_no = device_record.identify(device, at, self.name)
        key = query.ids[0] if len(query.ids) == 1 else wire_no
        values = device_record.read(device, ctx)
        sims_key = root.key("sims")
        raw_sims = data.get(sims_key)
        if raw_sims is None:
            sims: tuple[SimObservation, ...] = ()
        elif raw_sims.__class__ is list:
            sim = t["sim"]
            flow_at = values["flow_at"]
            sims = tuple(parse_sim(rec, ctx, sim, f"data.{sims_key}[{i}]", self.name, key, flow_at)
                         for i, rec in enumerate(raw_sims))
        else:
            raise ParseError(f"expected an array, got {kind_of(raw_sims)}", path=f"data.{sims_key}",
                             endpoint=self.name)
        events_key = device_record.key("events")
        return Parsed([DeviceObservation(
            device_no=key, **values,
            location=parse_location(device.get(device_record.key("location")), ctx, t["location"]),
            events=parse_events(device.get(events_key), events_key, key, ctx, t["event"]),
            sims=sims, polled_at=ctx.polled_at)])

    def answers_for(self, item: DeviceObservation) -> tuple[str, ...]:
        return (item.device_no,)

    def observe(self, state: FleetState, items: Sequence[DeviceObservation]) -> Change:
        return merge([state.observe_device(obs) for obs in items])

    def points(self, state: FleetState, items: Sequence[DeviceObservation], change: Change) -> list[str]:
        lines = []
        for obs in items:
            device = state.devices.get(obs.device_no)
            if device is not None and obs.device_no in change.devices:
                lines.append(device_line(obs, device.labels))
        lines.extend(sim_line(sim) for sim in change.sim_records)
        for event in change.new_events:
            device = state.devices.get(event.device_no)
            lines.append(event_line(event, device.labels if device is not None else {}))
        return [line for line in lines if line is not None]

    def failed(self, state: FleetState, ids: Sequence[str], error: str, at: float) -> Change:
        for device_no in ids:
            state.record_device_failure(device_no, error, at)
        records = tuple(d for d in (state.devices.get(no) for no in ids) if d is not None)
        return Change(devices=tuple(d.device_no for d in records), device_records=records)


ENDPOINT = DeviceFlow()
