"""The simulator's own reading of the platform contract, written from docs/upstream-api.md and kept
apart from the client's (nothing here comes from `collector.platform` or `collector.endpoints`), so a
wrong guess on one side shows up as a failure against the other.

Owns: the read endpoints' names (the keys of `platform.endpoints` and `platform.fields`), their default
paths, id parameters and batch limits; the envelope codes; the signature check over the recipe space
of `platform.sign`; and the vocabulary of `platform.fields` (per endpoint, the records of an answer
and, for each of our field names, the wire key the platform sends by default), used to rename the
keys of an answer when a configuration says the platform names a field otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import string
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal


class Endpoint(StrEnum):
    """The read endpoints the simulator answers (their names are configuration keys)."""

    DEVICE_FLOW = "device_flow"
    DEVICE_INFO = "device_info"
    CARD_INFO = "card_info"
    CARD_STATUS = "card_status"
    CARD_USAGE = "card_usage"
    CARD_MONTH_USAGE = "card_month_usage"
    ACCOUNT_ASSETS = "account_assets"
    CARD_ACTIONS = "card_actions"


DEVICE_ENDPOINTS = frozenset({Endpoint.DEVICE_FLOW, Endpoint.DEVICE_INFO})
CARD_ENDPOINTS = frozenset({Endpoint.CARD_INFO, Endpoint.CARD_STATUS, Endpoint.CARD_USAGE,
                            Endpoint.CARD_MONTH_USAGE, Endpoint.CARD_ACTIONS})


@dataclass(frozen=True, slots=True)
class Route:
    """How one endpoint is called: its path, the form field carrying the id(s) (comma-separated for
    cards) and the most ids a request may carry (0: no id, or no limit)."""

    path: str
    param: str
    batch_limit: int


# docs/upstream-api.md, "Endpoints": queryDeviceFlow is documented, the rest inferred.
DEFAULT_ROUTES: dict[Endpoint, Route] = {
    Endpoint.DEVICE_FLOW: Route("/openapi/iot/queryDeviceFlow", "deviceNo", 1),
    Endpoint.DEVICE_INFO: Route("/openapi/iot/queryDeviceInfo", "deviceNo", 1),
    Endpoint.CARD_INFO: Route("/openapi/iot/querySimInfo", "iccids", 100),
    Endpoint.CARD_STATUS: Route("/openapi/iot/querySimStatus", "iccids", 10),
    Endpoint.CARD_USAGE: Route("/openapi/iot/querySimRealFlow", "iccids", 10),
    Endpoint.CARD_MONTH_USAGE: Route("/openapi/iot/querySimMonthFlow", "iccids", 10),
    Endpoint.ACCOUNT_ASSETS: Route("/openapi/iot/queryAccountAssets", "", 0),
    Endpoint.CARD_ACTIONS: Route("/openapi/iot/querySimAction", "iccids", 100),
}
MONTH_PARAM = "month"  # card_month_usage: the month asked for, YYYYMM

# Envelope codes (inferred: the vendor's code page is missing; the defaults of `platform.error_codes`).
CODE_OK = 0
CODE_BAD_REQUEST = 40000
CODE_BAD_SIGN = 40001
CODE_UNKNOWN_APP = 40002
CODE_STALE_TIMESTAMP = 40003
CODE_NO_ENDPOINT = 40400
CODE_UNKNOWN_DEVICE = 40404
CODE_RATE_LIMITED = 42900
CODE_INTERNAL = 50000
OK_MESSAGE = "操作成功"

# --- signing ---------------------------------------------------------------------------------------------

HashName = Literal["md5", "sha1", "sha256", "hmac-md5", "hmac-sha256"]
TimestampUnit = Literal["seconds", "milliseconds"]
DEFAULT_TEMPLATE = "appID={appID}&body={body}&timestamp={timestamp}&traceID={traceID}&secret={secret}"
TEMPLATE_FIELDS = frozenset({"appID", "apiVersion", "traceID", "timestamp", "secret", "body"})


def template_names(template: str) -> set[str]:
    """The `{names}` a sign template uses. Raises ValueError for a malformed template."""
    return {name for _text, name, _spec, _conv in string.Formatter().parse(template) if name is not None}


class SignVerifier:
    """Checks the `sign` and `timestamp` headers of a request against one recipe of `platform.sign`:
    `hash` over `template` filled with the request's header values, the sorted non-empty form fields
    (`{body}`, `k1=v1&k2=v2`, values as sent, not URL-encoded) and the secret (`hmac-*`: also the key),
    as `case` hex; `timestamp` in `unit`. Holds the secret: never log or repr it."""

    def __init__(self, secret: str, hash: HashName = "md5", template: str = DEFAULT_TEMPLATE,
                 case: Literal["lower", "upper"] = "lower", unit: TimestampUnit = "seconds") -> None:
        self._secret = secret.encode()
        self._secret_text = secret
        self._template = template
        self._hmac = hash.startswith("hmac-")
        self._digest = hash.removeprefix("hmac-")
        self._upper = case == "upper"
        self.unit = unit
        self.recipe = f"{hash}({template}), {case} hex, timestamp in {unit}"

    def __repr__(self) -> str:
        return f"SignVerifier({self.recipe}, secret=<redacted>)"

    def expected(self, headers: Mapping[str, str], form: Mapping[str, str]) -> str:
        """The sign this recipe gives for these header values and form."""
        body = "&".join(f"{key}={form[key]}" for key in sorted(form) if form[key] != "")
        values = {"appID": headers.get("appID", ""), "apiVersion": headers.get("apiVersion", ""),
                  "traceID": headers.get("traceID", ""), "timestamp": headers.get("timestamp", ""),
                  "secret": self._secret_text, "body": body}
        text = self._template.format_map(values).encode()
        if self._hmac:
            digest = hmac.new(self._secret, text, self._digest).hexdigest()
        else:
            digest = hashlib.new(self._digest, text, usedforsecurity=False).hexdigest()
        return digest.upper() if self._upper else digest

    def verify(self, headers: Mapping[str, str], form: Mapping[str, str]) -> bool:
        """Whether the request's `sign` header is exactly this recipe's (hex case included)."""
        return hmac.compare_digest(self.expected(headers, form).encode(), headers.get("sign", "").encode())

    def skew(self, stamp: str, now: float) -> float:
        """Seconds between the `timestamp` header (in this recipe's unit) and `now`; inf if unreadable."""
        try:
            value = int(stamp)
        except ValueError:
            return float("inf")
        return abs(now - (value / 1000 if self.unit == "milliseconds" else value))


# --- platform.fields: our names for the wire keys ------------------------------------------------------
#
# Per endpoint, the records of an answer (the first one is `data` itself) and, per record, our field
# name -> the wire key the platform sends (docs/upstream-api.md "Field names", docs/schema.md). A field
# whose value is a container of records names that record in CONTAINERS. `records` is the key a list
# endpoint's records sit under: "" (the default) sends them as a bare array.

_DEVICE = {
    "device_no": "deviceNo", "imei": "imei", "online_status": "onlineStatus", "rssi_dbm": "rssi",
    "battery_percent": "electric", "effective_sim": "effectiveSim", "device_status": "deviceStatus",
    "wisdom_network": "wisdomNetwork", "wifi_clients": "connCount", "wifi_clients_max": "maxConnCount",
    "wifi_clients_5g": "connCount5G", "wifi_clients_5g_max": "maxConnCount5G", "wifi_name": "wifiName",
    "soft_version": "softVersion", "mac": "mac", "status_at": "lastDeviceStatusAt",
    "flow_at": "lastDeviceFlowAt", "warranty_expires_at": "warrantyExpire", "location": "position",
    "events": "controlResponse",
}
_LOCATION = {
    "province_code": "provinceCode", "city_code": "cityCode", "region_name": "regionName", "lat": "lat",
    "lng": "lng", "cell_id": "cellId", "lac": "lac", "mcc": "mcc", "mnc": "mnc",
}
_EVENT = {"at": "controlAt", "event_type": "eventType", "value1": "eventValue1", "value2": "eventValue2"}
_SIM = {
    "iccid": "iccid", "sim_no": "simNo", "imsi": "imsi", "device_no": "deviceNo", "slot": "vice",
    "total_bytes": "totalFlow", "used_bytes": "useFlow", "real_used_bytes": "realUseFlow",
    "carrier_used_bytes": "dockUserFlow", "cycle_start": "dockResetDate", "expires_at": "endAt",
    "sim_status": "simStatus", "activate_status": "activateStatus", "auth_status": "authStatus",
    "internet_status": "internetStatus", "online_status": "onlineStatus", "cancel_status": "cancelStatus",
    "pool_id": "poolId", "balance": "balance", "speed_code": "speedCode", "break_at": "breakAt",
    "break_remove_at": "breakRemoveAt", "status_at": "lastSimStatusAt", "last_active_at": "lastActiveAt",
}
_CARD_STATUS = {k: _SIM[k] for k in ("iccid", "sim_no", "sim_status", "internet_status", "online_status",
                                     "status_at")}
_CARD_USAGE = {**{k: _SIM[k] for k in ("iccid", "sim_no", "total_bytes", "used_bytes", "real_used_bytes",
                                       "carrier_used_bytes", "cycle_start", "expires_at")},
               "flow_at": "lastFlowAt"}
_LIST = {"records": ""}

_DEVICE_ANSWER: dict[str, dict[str, str]] = {
    "data": {"device": "device", "sims": "sims"}, "device": _DEVICE, "location": _LOCATION,
    "event": _EVENT, "sim": _SIM}
FIELD_RECORDS: dict[Endpoint, dict[str, dict[str, str]]] = {
    Endpoint.DEVICE_FLOW: _DEVICE_ANSWER,
    Endpoint.DEVICE_INFO: _DEVICE_ANSWER,
    Endpoint.CARD_INFO: {"data": _LIST, "sim": _SIM},
    Endpoint.CARD_STATUS: {"data": _LIST, "sim": _CARD_STATUS},
    Endpoint.CARD_USAGE: {"data": _LIST, "sim": _CARD_USAGE},
    Endpoint.CARD_MONTH_USAGE: {"data": _LIST, "month_usage": {
        "iccid": "iccid", "sim_no": "simNo", "month": "month", "used_bytes": "useFlow"}},
    Endpoint.CARD_ACTIONS: {"data": _LIST, "action": {
        "iccid": "iccid", "serial_no": "serialNo", "sim_no": "simNo", "action": "actionType",
        "status": "status", "remark": "remark", "created_at": "createdAt"}},
    Endpoint.ACCOUNT_ASSETS: {"account": {
        "balance": "balance", "arrears_balance": "arrearsBalance", "frozen_balance": "frozenBalance"}},
}
# Container fields: the record their value holds.
CONTAINERS = {"device": "device", "sims": "sim", "location": "location", "events": "event"}


def field_problems(endpoint: Endpoint, overrides: Mapping[str, str]) -> dict[str, str]:
    """`platform.fields.<endpoint>` key -> what is wrong with it (unknown, ambiguous, empty)."""
    records = FIELD_RECORDS[endpoint]
    out = {}
    for key, wire in overrides.items():
        qualifier, _, name = key.rpartition(".")
        owners = [rec for rec, fields in records.items() if qualifier in ("", rec) and name in fields]
        if not owners:
            known = sorted({f"{rec}.{name}" if sum(name in f for f in records.values()) > 1 else name
                            for rec, fields in records.items() for name in fields})
            out[key] = "unknown field; the fields are " + ", ".join(known)
        elif len(owners) > 1:
            out[key] = "names a field of several records: write " + " or ".join(f"{o}.{key}" for o in owners)
        elif not isinstance(wire, str) or not wire.strip():
            out[key] = "the wire key must be a non-empty string"
    return out


class Renamer:
    """Renames the keys of one endpoint's answer (`data`, built with the default wire keys) to those a
    configuration's `platform.fields.<endpoint>` names; `None` when nothing changes."""

    def __init__(self, endpoint: Endpoint, overrides: Mapping[str, str]) -> None:
        self.endpoint = endpoint
        records = FIELD_RECORDS[endpoint]
        # Per record: default wire key -> configured one (only those that change).
        self.keys: dict[str, dict[str, str]] = {}
        for rec, fields in records.items():
            changed = {}
            for name, default in fields.items():
                wire = overrides.get(f"{rec}.{name}", overrides.get(name, default))
                if wire != default:
                    changed[default] = wire
            self.keys[rec] = changed
        self.records_key = self.keys.get("data", {}).get("", "")
        self._empty = not any(self.keys.values())

    @classmethod
    def build(cls, endpoint: Endpoint, overrides: Mapping[str, str] | None) -> Renamer | None:
        renamer = cls(endpoint, overrides or {})
        return None if renamer._empty else renamer

    def _rec(self, rec: str, value: Any) -> Any:
        keys = self.keys.get(rec)
        if not keys or not isinstance(value, dict):
            return value
        return {keys.get(k, k): v for k, v in value.items()}

    def device(self, data: dict[str, Any]) -> dict[str, Any]:
        """A device answer's `data`: `{device: {..., position, controlResponse}, sims: [...]}`."""
        device = dict(data["device"])
        position, events = _DEVICE["location"], _DEVICE["events"]
        if isinstance(device.get(position), dict):
            device[position] = self._rec("location", device[position])
        device[events] = [self._rec("event", e) for e in device.get(events) or []]
        out = {"device": self._rec("device", device), "sims": [self._rec("sim", s) for s in data["sims"]]}
        return self._rec("data", out)

    def records(self, rec: str, rows: list[Any]) -> Any:
        """A list endpoint's records, under `records` when one is configured."""
        renamed = [self._rec(rec, row) for row in rows]
        return {self.records_key: renamed} if self.records_key else renamed

    def record(self, rec: str, value: dict[str, Any]) -> dict[str, Any]:
        """One record answered as `data` itself (the account)."""
        return dict(self._rec(rec, value))
