"""Points: the one place that turns typed observations into InfluxDB line protocol.

Every measurement, tag and field written by the collector is declared in `SCHEMA` below (and
documented in docs/schema.md, which a test keeps in step). The builders are pure functions: the same
observation always gives the same bytes, so a replayed line lands on the same series and timestamp.

Rules the builders enforce:

- Tags are identities (device_no, iccid, slot, ...) and inventory labels; everything else is a field.
  A built-in tag wins over an inventory label of the same name.
- A field's line-protocol type never changes: `int` fields are always written as integers (`42i`,
  booleans as 0/1), `float` fields always as floats (cast with float(), so 3 is written as the float
  3), `string` fields as strings. None, NaN, infinities and integers outside int64 are omitted rather
  than written as something else. Carriage returns and newlines in string values become spaces.
- Timestamps are integers in nanoseconds (the default precision of `/write`, `/api/v2/write` and
  `influx write`), rounded to whole milliseconds: the poll time fixed by the collector at collection,
  or the upstream event time for events.

The lines are built with influxdb_client's `Point` (it escapes measurement, tag and field keys, tag
values and string values); nothing here concatenates line protocol by hand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from influxdb_client.client.write.point import (
    _ESCAPE_MEASUREMENT,
    _escape_key,
    _escape_string,
    _escape_tag_value,
)

from collector.platform.models import (
    DAY,
    AccountAssets,
    CardAction,
    CardMonthUsage,
    CardStatus,
    CardUsage,
    DeviceEvent,
    DeviceObservation,
    SimObservation,
)

FieldType = Literal["int", "float", "string"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field: its line-protocol type (fixed forever), unit and meaning."""

    type: FieldType
    unit: str
    help: str


@dataclass(frozen=True, slots=True)
class MeasurementSpec:
    """One measurement: its built-in tags (inventory labels are added to these) and its fields."""

    name: str
    tags: tuple[str, ...]
    fields: Mapping[str, FieldSpec]
    help: str
    open_fields: FieldType | None = None  # extra fields of this type are allowed (account extras)


def _i(unit: str, help: str) -> FieldSpec:
    return FieldSpec("int", unit, help)


def _f(unit: str, help: str) -> FieldSpec:
    return FieldSpec("float", unit, help)


def _s(help: str) -> FieldSpec:
    return FieldSpec("string", "", help)


_BYTES_FIELDS = {
    "total_bytes": _i("bytes", "package allowance (totalFlow)"),
    "used_bytes": _i("bytes", "usage billed to the end customer (useFlow)"),
    "real_used_bytes": _i("bytes", "real usage on the platform (realUseFlow)"),
    "carrier_used_bytes": _i("bytes", "usage reported by the carrier (dockUserFlow)"),
    "remaining_bytes": _i("bytes", "total_bytes - used_bytes, never below 0"),
    "remaining_ratio": _f("ratio", "remaining_bytes / total_bytes, 0..1"),
    "days_to_expiry": _f("days", "(expires_at - poll time) / 86400; negative once expired"),
    "usage_rate_bytes_per_second": _f("bytes/s", "growth of used_bytes since the previous poll"),
    "cycle_start": _i("unix seconds", "start of the carrier billing cycle (dockResetDate)"),
    "expires_at": _i("unix seconds", "package expiry (endAt)"),
}

SCHEMA: dict[str, MeasurementSpec] = {
    spec.name: spec
    for spec in (
        MeasurementSpec(
            "device", ("device_no",), {
                "online": _i("0/1", "1 when onlineStatus is 1"),
                "online_status": _i("code", "onlineStatus as reported"),
                "rssi_dbm": _i("dBm", "signal strength"),
                "battery_percent": _i("percent", "battery level (electric)"),
                "effective_sim": _i("slot", "SIM slot in use: 1 main, 2 vice1, 3 vice2, 4 usim"),
                "device_status": _i("code", "platform device status (deviceStatus)"),
                "wisdom_network": _i("0/1", "smart network switching on"),
                "wifi_clients": _i("count", "Wi-Fi clients on 2.4 GHz (connCount)"),
                "wifi_clients_max": _i("count", "allowed Wi-Fi clients on 2.4 GHz (maxConnCount)"),
                "wifi_clients_5g": _i("count", "Wi-Fi clients on 5 GHz (connCount5G)"),
                "wifi_clients_5g_max": _i("count", "allowed Wi-Fi clients on 5 GHz (maxConnCount5G)"),
                "sim_count": _i("count", "SIM cards the platform lists in the device"),
                "staleness_seconds": _f("seconds", "poll time - lastDeviceStatusAt"),
                "flow_staleness_seconds": _f("seconds", "poll time - lastDeviceFlowAt"),
                "warranty_expires_at": _i("unix seconds", "warranty end (absent when unset)"),
                "soft_version": _s("firmware version"),
                "region_name": _s("cell-based region name (privacy.location region or exact)"),
                "province_code": _s("province code (privacy.location region or exact)"),
                "city_code": _s("city code (privacy.location region or exact)"),
                "lat": _f("degrees", "latitude (privacy.location exact only)"),
                "lng": _f("degrees", "longitude (privacy.location exact only)"),
                "cell_id": _s("serving cell id (privacy.location exact only)"),
                "lac": _s("location area code (privacy.location exact only)"),
                "mcc": _s("mobile country code (privacy.location exact only)"),
                "mnc": _s("mobile network code (privacy.location exact only)"),
            },
            "one point per device poll (queryDeviceFlow / queryDeviceInfo)"),
        MeasurementSpec(
            "sim", ("iccid", "device_no", "slot"), {
                **_BYTES_FIELDS,
                "sim_status": _i("code", "card lifecycle status (simStatus)"),
                "activate_status": _i("code", "activation status (activateStatus)"),
                "auth_status": _i("code", "real-name verification state (authStatus)"),
                "internet_status": _i("code", "data service state (internetStatus)"),
                "online_status": _i("code", "card online state (onlineStatus)"),
                "cancel_status": _i("code", "cancellation state (cancelStatus)"),
                "pool_id": _i("id", "shared flow pool, > 0 when the card draws on a pool"),
                "balance": _f("currency (unknown unit)", "money on the card"),
                "effective": _i("0/1", "1 when this SIM is the device's effective SIM"),
                "staleness_seconds": _f("seconds", "poll time - lastSimStatusAt"),
                "break_at": _i("unix seconds", "when the card was cut off"),
                "break_remove_at": _i("unix seconds", "when the cut-off is lifted"),
                "last_active_at": _i("unix seconds", "last activity of the card"),
                "sim_no": _s("card number (simNo)"),
                "speed_code": _s("speed limit in force (speedCode)"),
            },
            "one point per SIM seen inside a device poll (data.sims[])"),
        MeasurementSpec(
            "card_status", ("iccid",), {
                "sim_status": _i("code", "card lifecycle status"),
                "online_status": _i("code", "card online state"),
                "internet_status": _i("code", "data service state"),
                "staleness_seconds": _f("seconds", "poll time - platform status time"),
                "sim_no": _s("card number (simNo)"),
            },
            "one point per card from the batch latest-status endpoint"),
        MeasurementSpec(
            "card_usage", ("iccid",), {
                **_BYTES_FIELDS,
                "staleness_seconds": _f("seconds", "poll time - platform flow time"),
                "sim_no": _s("card number (simNo)"),
            },
            "one point per card from the batch real-time usage endpoint"),
        MeasurementSpec(
            "card_month_usage", ("iccid", "month"), {
                "used_bytes": _i("bytes", "usage in the calendar month given by the month tag"),
                "sim_no": _s("card number (simNo)"),
            },
            "one point per card and month from the month usage endpoint"),
        MeasurementSpec(
            "card_action", ("iccid", "action"), {
                "status": _i("code", "operation status"),
                "serial_no": _s("operation serial number"),
                "remark": _s("operation remark"),
                "sim_no": _s("card number (simNo)"),
            },
            "one point per card operation log entry (querySimAction), at its creation time"),
        MeasurementSpec(
            "account", (), {
                "balance": _f("currency (unknown unit)", "account balance"),
                "arrears_balance": _f("currency (unknown unit)", "arrears"),
                "frozen_balance": _f("currency (unknown unit)", "frozen money"),
            },
            "one point per account assets poll", open_fields="float"),
        MeasurementSpec(
            "device_event", ("device_no", "event_type"), {
                "value1": _s("eventValue1"),
                "value2": _s("eventValue2"),
            },
            "one point per controlResponse entry, at its controlAt time"),
        MeasurementSpec(
            "alerts", ("rule", "severity", "kind", "entity"), {
                "state": _s("pending, firing, resolved, or inactive (a pending alert that cleared before firing)"),
                "firing": _i("0/1", "1 while the alert fires"),
                "value": _f("rule-specific", "the value that triggered the transition"),
                "summary": _s("rendered summary annotation"),
            },
            "one point per alert state transition (Grafana annotations)"),
    )
}


# --- building blocks ----------------------------------------------------------------------------------


def timestamp_ns(seconds: float) -> int:
    """Unix seconds -> integer nanoseconds, rounded to whole milliseconds (deterministic)."""
    return round(seconds * 1000) * 1_000_000


def _coerce(kind: FieldType, value: Any) -> int | float | str | None:
    """`value` as the field's fixed type, or None when it cannot be one (then the field is left out)."""
    if value is None:
        return None
    try:
        if kind == "int":
            if isinstance(value, float) and not math.isfinite(value):
                return None
            number = int(value)
            return number if INT64_MIN <= number <= INT64_MAX else None
        if kind == "float":
            number_f = float(value)
            return number_f if math.isfinite(number_f) else None
    except (TypeError, ValueError, OverflowError):
        return None
    text = str(value)
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ") if ("\n" in text or "\r" in text) \
        else text


def _tag_section(measurement: str, tags: Mapping[str, str | None], labels: Mapping[str, str] | None) -> str:
    """`measurement,k=v,k=v` with tags sorted by key, escaped by influxdb-client's own rules."""
    spec_tags = SCHEMA[measurement].tags
    merged: dict[str, str] = {k: v for k, v in labels.items() if k not in spec_tags} if labels else {}
    for key, tag_value in tags.items():
        if tag_value is not None and tag_value != "":
            merged[key] = str(tag_value)
    parts = [measurement.translate(_ESCAPE_MEASUREMENT)]
    for key in sorted(merged):
        escaped_key, escaped_value = _escape_key(key), _escape_tag_value(merged[key])
        if escaped_key and escaped_value:
            parts.append(f"{escaped_key}={escaped_value}")
    return ",".join(parts)


def _field_text(prefix: str, value: int | float | str) -> str:
    # influxdb-client's formatting: ints with `i`, floats as repr without a trailing `.0`, strings quoted.
    if isinstance(value, str):
        return f'{prefix}"{_escape_string(value)}"'
    if isinstance(value, float):
        text = repr(value)
        return f"{prefix}{text[:-2] if text.endswith('.0') else text}"
    return f"{prefix}{value}i"


# Per measurement: field name -> (type, escaped `name=`), computed once instead of per point.
_FIELDS: dict[str, dict[str, tuple[FieldType, str]]] = {
    name: {key: (f.type, _escape_key(key) + "=") for key, f in spec.fields.items()} for name, spec in SCHEMA.items()
}


def _line(measurement: str, tags: Mapping[str, str | None], labels: Mapping[str, str] | None,
          fields: Mapping[str, Any], at: float) -> str | None:
    """One line of `measurement`; fields are coerced to their schema type. None when no field is left.

    The text is what influxdb-client's `Point(...).to_line_protocol()` produces, byte for byte (a
    property test holds the two together), built without a Point object: Point's generic path cost
    about 40% of the collector's CPU per device poll."""
    table = _FIELDS[measurement]
    rendered: list[str] = []
    for key in sorted(fields):
        value = fields[key]
        if value is None:
            continue
        entry = table.get(key)
        if entry is None:
            open_type = SCHEMA[measurement].open_fields
            if open_type is None:
                raise KeyError(f"{measurement}.{key} is not in the schema")
            entry = (open_type, _escape_key(key) + "=")
        kind, prefix = entry
        if kind == "int" and type(value) is int:  # the common case, without the generic coercion
            if INT64_MIN <= value <= INT64_MAX:
                rendered.append(f"{prefix}{value}i")
            continue
        coerced = _coerce(kind, value)
        if coerced is not None:
            rendered.append(_field_text(prefix, coerced))
    if not rendered:
        return None
    return f"{_tag_section(measurement, tags, labels)} {','.join(rendered)} {timestamp_ns(at)}"


def _bool01(value: bool | None) -> int | None:
    return None if value is None else int(bool(value))


def _age(polled_at: float, then: float | None) -> float | None:
    return None if then is None else polled_at - then


def _nonempty(text: str) -> str | None:
    return text or None


def _remaining(total: int | None, used: int | None) -> tuple[int | None, float | None]:
    if total is None or used is None:
        return None, None
    remaining = max(total - used, 0)
    return remaining, (remaining / total if total > 0 else None)


def usage_rate(prev_used: int | None, prev_at: float | None, used: int | None, at: float) -> float | None:
    """Bytes per second between two polls of the same counter; None across a reset or without history."""
    if prev_used is None or prev_at is None or used is None or at <= prev_at or used < prev_used:
        return None
    return (used - prev_used) / (at - prev_at)


def _polled(explicit: float | None, observed: float) -> float:
    return observed if explicit is None else explicit


# --- one builder per measurement ----------------------------------------------------------------------


def device_point(obs: DeviceObservation, labels: Mapping[str, str] | None = None, *,
                 polled_at: float | None = None) -> str | None:
    """The `device` line of one device poll (its SIMs and events have their own builders)."""
    at = _polled(polled_at, obs.polled_at)
    loc = obs.location
    fields: dict[str, Any] = {
        "online": _bool01(obs.online),
        "online_status": obs.online_status,
        "rssi_dbm": obs.rssi_dbm,
        "battery_percent": obs.battery_percent,
        "effective_sim": obs.effective_sim,
        "device_status": obs.device_status,
        "wisdom_network": obs.wisdom_network,
        "wifi_clients": obs.wifi_clients,
        "wifi_clients_max": obs.wifi_clients_max,
        "wifi_clients_5g": obs.wifi_clients_5g,
        "wifi_clients_5g_max": obs.wifi_clients_5g_max,
        "sim_count": len(obs.sims),
        "staleness_seconds": _age(at, obs.status_at),
        "flow_staleness_seconds": _age(at, obs.flow_at),
        "warranty_expires_at": obs.warranty_expires_at,
        "soft_version": _nonempty(obs.soft_version),
    }
    if loc is not None:
        fields.update({
            "region_name": _nonempty(loc.region_name),
            "province_code": _nonempty(loc.province_code),
            "city_code": _nonempty(loc.city_code),
            "lat": loc.lat,
            "lng": loc.lng,
            "cell_id": _nonempty(loc.cell_id),
            "lac": _nonempty(loc.lac),
            "mcc": _nonempty(loc.mcc),
            "mnc": _nonempty(loc.mnc),
        })
    return _line("device", {"device_no": obs.device_no}, labels, fields, at)


def sim_point(sim: SimObservation, labels: Mapping[str, str] | None = None, *,
              polled_at: float | None = None, usage_rate_bps: float | None = None,
              effective: bool | None = None) -> str | None:
    """The `sim` line of one SIM seen in a device poll. `usage_rate_bps` comes from the previous
    observation (see `usage_rate`), `effective` from the device's effective_sim."""
    at = _polled(polled_at, sim.polled_at)
    remaining, ratio = _remaining(sim.total_bytes, sim.used_bytes)
    fields: dict[str, Any] = {
        "total_bytes": sim.total_bytes,
        "used_bytes": sim.used_bytes,
        "real_used_bytes": sim.real_used_bytes,
        "carrier_used_bytes": sim.carrier_used_bytes,
        "remaining_bytes": remaining,
        "remaining_ratio": ratio,
        "days_to_expiry": None if sim.expires_at is None else (sim.expires_at - at) / DAY,
        "usage_rate_bytes_per_second": usage_rate_bps,
        "cycle_start": sim.cycle_start,
        "expires_at": sim.expires_at,
        "sim_status": sim.sim_status,
        "activate_status": sim.activate_status,
        "auth_status": sim.auth_status,
        "internet_status": sim.internet_status,
        "online_status": sim.online_status,
        "cancel_status": sim.cancel_status,
        "pool_id": sim.pool_id,
        "balance": sim.balance,
        "effective": _bool01(effective),
        "staleness_seconds": _age(at, sim.status_at),
        "break_at": sim.break_at,
        "break_remove_at": sim.break_remove_at,
        "last_active_at": sim.last_active_at,
        "sim_no": _nonempty(sim.sim_no),
        "speed_code": _nonempty(sim.speed_code),
    }
    tags = {"iccid": sim.iccid, "device_no": sim.device_no,
            "slot": None if sim.slot is None else str(sim.slot)}
    return _line("sim", tags, labels, fields, at)


def card_status_point(card: CardStatus, labels: Mapping[str, str] | None = None, *,
                      polled_at: float | None = None) -> str | None:
    """The `card_status` line of one card from the batch latest-status endpoint."""
    at = _polled(polled_at, card.polled_at)
    fields = {
        "sim_status": card.sim_status,
        "online_status": card.online_status,
        "internet_status": card.internet_status,
        "staleness_seconds": _age(at, card.status_at),
        "sim_no": _nonempty(card.sim_no),
    }
    return _line("card_status", {"iccid": card.iccid}, labels, fields, at)


def card_usage_point(card: CardUsage, labels: Mapping[str, str] | None = None, *,
                     polled_at: float | None = None, usage_rate_bps: float | None = None) -> str | None:
    """The `card_usage` line of one card from the batch real-time usage endpoint."""
    at = _polled(polled_at, card.polled_at)
    remaining, ratio = _remaining(card.total_bytes, card.used_bytes)
    fields = {
        "total_bytes": card.total_bytes,
        "used_bytes": card.used_bytes,
        "real_used_bytes": card.real_used_bytes,
        "carrier_used_bytes": card.carrier_used_bytes,
        "remaining_bytes": remaining,
        "remaining_ratio": ratio,
        "days_to_expiry": None if card.expires_at is None else (card.expires_at - at) / DAY,
        "usage_rate_bytes_per_second": usage_rate_bps,
        "cycle_start": card.cycle_start,
        "expires_at": card.expires_at,
        "staleness_seconds": _age(at, card.flow_at),
        "sim_no": _nonempty(card.sim_no),
    }
    return _line("card_usage", {"iccid": card.iccid}, labels, fields, at)


def card_month_usage_point(card: CardMonthUsage, labels: Mapping[str, str] | None = None, *,
                           polled_at: float | None = None) -> str | None:
    """The `card_month_usage` line of one card and month (month tag `YYYYMM`)."""
    at = _polled(polled_at, card.polled_at)
    fields = {"used_bytes": card.used_bytes, "sim_no": _nonempty(card.sim_no)}
    return _line("card_month_usage", {"iccid": card.iccid, "month": card.month}, labels, fields, at)


def card_action_point(action: CardAction, labels: Mapping[str, str] | None = None) -> str | None:
    """The `card_action` line of one operation log entry, at its creation time (None without one)."""
    if action.created_at is None:
        return None
    fields = {"status": action.status, "serial_no": _nonempty(action.serial_no),
              "remark": _nonempty(action.remark), "sim_no": _nonempty(action.sim_no)}
    tags = {"iccid": action.iccid, "action": action.action}
    return _line("card_action", tags, labels, fields, action.created_at)


def account_point(assets: AccountAssets, labels: Mapping[str, str] | None = None, *,
                  polled_at: float | None = None) -> str | None:
    """The `account` line. Extra numeric values of the answer become float fields under their name
    (skipped when the name is not a plain identifier or clashes with a fixed field)."""
    at = _polled(polled_at, assets.polled_at)
    fields: dict[str, Any] = {
        "balance": assets.balance,
        "arrears_balance": assets.arrears_balance,
        "frozen_balance": assets.frozen_balance,
    }
    for key, value in assets.extra.items():
        if key.isidentifier() and key.isascii() and key not in fields:
            fields[key] = value
    return _line("account", {}, labels, fields, at)


def device_event_point(event: DeviceEvent, labels: Mapping[str, str] | None = None) -> str:
    """The `device_event` line of one controlResponse entry, at its controlAt time. The same event
    always gives the same line, so re-reading the device's log rewrites nothing new."""
    line = _line("device_event", {"device_no": event.device_no, "event_type": str(event.event_type)},
                 labels, {"value1": event.value1, "value2": event.value2}, event.at)
    assert line is not None  # both string fields are always present
    return line


def device_event_points(events: Iterable[DeviceEvent], labels: Mapping[str, str] | None = None, *,
                        after: float | None = None) -> list[str]:
    """Lines for the events newer than `after` (the last event time already written for the
    device, kept by the caller), so each event is written once."""
    return [device_event_point(e, labels) for e in events if after is None or e.at > after]


def alert_point(*, rule: str, state: str, at: float, severity: str = "", kind: str = "",
                entity: str = "", labels: Mapping[str, str] | None = None, value: float | None = None,
                summary: str = "") -> str:
    """The `alerts` line of one alert state transition (`state`: pending, firing or resolved).

    `kind` is the entity kind (device, sim, account...), `entity` its id; `labels` are the alert's
    labels (a label named like a built-in tag is ignored)."""
    fields = {"state": state, "firing": int(state == "firing"), "value": value,
              "summary": _nonempty(summary)}
    tags = {"rule": rule, "severity": severity, "kind": kind, "entity": entity}
    line = _line("alerts", tags, labels, fields, at)
    assert line is not None  # `state` and `firing` are always present
    return line


def device_lines(obs: DeviceObservation, labels: Mapping[str, str] | None = None, *,
                 sim_labels: Mapping[str, Mapping[str, str]] | None = None,
                 usage_rates: Mapping[str, float | None] | None = None,
                 events_after: float | None = None) -> list[str]:
    """Everything one device poll writes: the device line, one line per SIM (inheriting the device's
    labels, plus `sim_labels[iccid]`), and the events newer than `events_after`."""
    lines: list[str] = []
    device = device_point(obs, labels)
    if device is not None:
        lines.append(device)
    for sim in obs.sims:
        merged = dict(labels or {})
        if sim_labels and sim.iccid in sim_labels:
            merged.update(sim_labels[sim.iccid])
        effective = None if obs.effective_sim is None or sim.slot is None else obs.effective_sim == sim.slot
        rate = usage_rates.get(sim.iccid) if usage_rates else None
        line = sim_point(sim, merged, polled_at=sim.polled_at or obs.polled_at, usage_rate_bps=rate,
                         effective=effective)
        if line is not None:
            lines.append(line)
    lines.extend(device_event_points(obs.events, labels, after=events_after))
    return lines
