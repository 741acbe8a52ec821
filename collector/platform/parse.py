"""Parsing of platform answers into typed observations: the ONE module holding every inferred reading
of the wire format (envelope codes, flow unit, local-time timestamps, sentinels, tolerated shapes).

What it promises:

* Every function here returns a typed object or raises `ParseError` (or, for `parse_envelope`, one of
  the `ApiError` family when the platform answered with a non-zero `code`). Nothing else escapes,
  whatever bytes arrive (pinned by property tests).
* Structure is strict, scalars are tolerant. A record that is not an object, or lacks its identity
  (`deviceNo`, `iccid`), raises `ParseError` whose `path` names it (`data.sims[1]`). A single optional
  value of the wrong type becomes `None` (or `""`) and its field name is appended to
  `ParseContext.issues` when the caller passed a list there, so one garbage field never loses a device.
* In list endpoints a bad record is skipped, not fatal: `Parsed.skipped` lists why.
* Numbers may arrive as strings (`"-84"`, `"12.5"`); booleans are never numbers; `null`, `""` and the
  `2000-01-01 00:00:00` sentinel mean "unknown". Ids are always strings: an id sent as a JSON number
  becomes its decimal text (ICCIDs with letters and ids with leading zeros survive untouched).
* Zone-less `YYYY-MM-DD HH:MM:SS` timestamps are local time in `ParseContext.tz` (China Standard Time
  by default) and become float Unix seconds (UTC).
* Flow values are multiplied by `ParseContext.flow_unit_bytes` (KiB by default, see
  docs/upstream-api.md) and stored as integer bytes.
* Secret fields (wifiPass, wifiPass5G, webPassword, payPassword) are never read, so they cannot reach
  an observation, a log line or a sink.

Speed matters (100k devices a cycle): plain dicts from orjson, hand-written coercion, no validation
library per record, and a cache for timestamp strings (most of them repeat across a fleet).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from functools import lru_cache
from typing import Any, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo

import orjson

from collector.config import ErrorCodesConfig, PlatformConfig, PrivacyConfig
from collector.platform.errors import ApiError, AuthError, ParseError, RateLimitedError
from collector.platform.models import (
    AccountAssets,
    CardAction,
    CardMonthUsage,
    CardStatus,
    CardUsage,
    DeviceEvent,
    DeviceObservation,
    Location,
    SimObservation,
)

T = TypeVar("T")
LocationMode = Literal["none", "region", "exact"]

# Field names that hold secrets upstream. The parsers below never read them; this set exists so that
# code copying "all other fields" (account assets' `extra`) can exclude them explicitly.
SECRET_FIELDS = frozenset({"wifiPass", "wifiPass5G", "webPassword", "payPassword"})

# Timestamps meaning "unset" rather than a date (inferred: the sample's warrantyExpire; the MySQL zero
# date is the other classic spelling of the same thing).
SENTINEL_TIMES = frozenset({"2000-01-01 00:00:00", "0000-00-00 00:00:00"})

# Numbers at or above 1e11 cannot be epoch seconds of this era: they are epoch milliseconds (inferred,
# for timestamps a future endpoint may send as numbers).
_EPOCH_MS_THRESHOLD = 1e11

# Keys under which a list endpoint might wrap its records in an object instead of sending a bare list
# (inferred tolerance: common spellings on Chinese vendor platforms).
_LIST_KEYS = ("list", "records", "rows", "items", "sims", "data")

# orjson turns integers wider than 64 bits into floats, silently losing digits: a 20-digit ICCID sent
# as a JSON number would be mangled. A body holding a 20+ digit number outside a string goes to the
# stdlib decoder, which keeps big integers exact. The check must be cheap (it runs on every answer): a
# C-speed translate maps digits to "0" and value starts (`:`, `,`, `[`) to ":", drops blanks and minus
# signs, and then looks for ":" followed by 20 zeros. Digits inside strings follow a quote, not a ":",
# so string ids (the normal case) do not trigger it; a rare false positive only costs speed.
_DIGIT_MAP = bytes(48 if chr(c).isdigit() and c < 128 else 58 if c in b":,[" else 120 for c in range(256))
_BIG_INT_MARK = b":" + b"0" * 20

_DEFAULT_TZ = ZoneInfo("Asia/Shanghai")
# Integers past this cannot become floats (the stdlib decoder keeps arbitrarily wide integers).
_MAX_FLOAT = 1e308


@dataclass(frozen=True, slots=True)
class ParseContext:
    """Everything a parser needs besides the data: the inferred unit and zone, the privacy choice and
    when the answer arrived.

    `issues`, when a list, collects the names of optional fields whose value was unusable and became
    None (the caller owns the list; pass a fresh one per answer). The context is frozen; the list is
    deliberately the one mutable thing in it.
    """

    flow_unit_bytes: int = 1024
    tz: tzinfo = _DEFAULT_TZ
    location: LocationMode = "region"
    polled_at: float = 0.0
    issues: list[str] | None = None

    @classmethod
    def from_config(cls, platform: PlatformConfig, privacy: PrivacyConfig | None = None,
                    polled_at: float = 0.0) -> ParseContext:
        """The context a client configured with `platform` / `privacy` parses with."""
        return cls(
            flow_unit_bytes=platform.flow_unit_bytes,
            tz=ZoneInfo(platform.timezone),
            location=(privacy or PrivacyConfig()).location,
            polled_at=polled_at,
        )


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """The records of a list endpoint that parsed, and the errors of those that were skipped."""

    items: list[T]
    skipped: list[ParseError] = field(default_factory=list)


# --- scalar coercion --------------------------------------------------------------------------------
# Each helper reads `rec[key]` itself so that on failure it can name the field in `ctx.issues`. The
# fast path (the value already has the right JSON type) comes first: it is the common case.


def _bad(ctx: ParseContext, key: str) -> None:
    if ctx.issues is not None:
        ctx.issues.append(key)


def _number(value: Any) -> int | float | None:
    """A JSON number or numeric string as int/float; None if absent or unusable. Never a bool."""
    cls = value.__class__
    if cls is int:
        return value
    if cls is float:
        return value if math.isfinite(value) else None
    if cls is str:
        text = value.strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _is_blank(value: Any) -> bool:
    return value is None or (value.__class__ is str and not value.strip())


def _int(rec: dict[str, Any], key: str, ctx: ParseContext) -> int | None:
    value = rec.get(key)
    if value.__class__ is int:
        return value
    if _is_blank(value):
        return None
    number = _number(value)
    if number is None:
        _bad(ctx, key)
        return None
    # A status code or a dBm value sent as 100.0 is still an integer; 12.5 for an integer field is
    # rounded rather than dropped (the value is real, only its type is off).
    return number if number.__class__ is int else round(number)


def _float(rec: dict[str, Any], key: str, ctx: ParseContext) -> float | None:
    value = rec.get(key)
    if value.__class__ is float and math.isfinite(value):
        return value
    if _is_blank(value):
        return None
    number = _number(value)
    if number is None or not -_MAX_FLOAT <= number <= _MAX_FLOAT:
        _bad(ctx, key)
        return None
    return float(number)


def _bytes(rec: dict[str, Any], key: str, ctx: ParseContext) -> int | None:
    """A flow value in the platform's unit as integer bytes; negative values are unusable."""
    value = rec.get(key)
    if value.__class__ is int:
        number: int | float | None = value
    elif _is_blank(value):
        return None
    else:
        number = _number(value)
    if number is None or number < 0:
        _bad(ctx, key)
        return None
    if number.__class__ is int:
        return number * ctx.flow_unit_bytes
    scaled = number * ctx.flow_unit_bytes
    if not math.isfinite(scaled):
        _bad(ctx, key)
        return None
    return round(scaled)


def _str(rec: dict[str, Any], key: str, ctx: ParseContext) -> str:
    """Free text; numbers become their text, anything else (objects, lists, bools) is unusable."""
    value = rec.get(key)
    if value.__class__ is str:
        return value
    if value is None:
        return ""
    if value.__class__ is int or value.__class__ is float:
        return str(value)
    _bad(ctx, key)
    return ""


def id_text(value: Any) -> str:
    """An id as text: strings stripped, JSON integers as their decimal digits, anything else "".

    A float id has already lost digits (or was never an id): it is not turned into text, so no
    invented id reaches the fleet state.
    """
    if value.__class__ is str:
        return value.strip()
    if value.__class__ is int:
        return str(value)
    return ""


def _id(rec: dict[str, Any], key: str, ctx: ParseContext) -> str:
    value = rec.get(key)
    text = id_text(value)
    if not text and not _is_blank(value):
        _bad(ctx, key)
    return text


@lru_cache(maxsize=65536)
def _local_seconds(text: str, tz: tzinfo) -> float | None:
    # fromisoformat (3.11) takes "YYYY-MM-DD HH:MM:SS", "YYYY-MM-DDTHH:MM:SS+08:00", "YYYY-MM-DD" and
    # is an order of magnitude faster than strptime. A zone in the text wins over the default zone.
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def _time(rec: dict[str, Any], key: str, ctx: ParseContext) -> float | None:
    value = rec.get(key)
    if value.__class__ is str:
        text = value.strip()
        if not text or text in SENTINEL_TIMES:
            return None
        seconds = _local_seconds(text, ctx.tz)
        if seconds is None:
            _bad(ctx, key)
        return seconds
    if value is None:
        return None
    number = _number(value) if value.__class__ in (int, float) else None
    if number is None or not 0 < number <= _MAX_FLOAT:
        _bad(ctx, key)
        return None
    return float(number) / 1000.0 if number >= _EPOCH_MS_THRESHOLD else float(number)


def _record(value: Any, path: str, endpoint: str) -> dict[str, Any]:
    if value.__class__ is not dict:
        raise ParseError(f"expected an object, got {_kind(value)}", path=path, endpoint=endpoint)
    return value


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number"}.get(value.__class__, "null" if value is None else type(value).__name__)


# --- the envelope -------------------------------------------------------------------------------------


def decode_json(raw: bytes) -> Any:
    """Bytes to Python values, tolerating what orjson alone would not: invalid UTF-8 (a GBK byte in a
    Wi-Fi name) and integers wider than 64 bits. Raises ValueError for anything that is not JSON."""
    if _BIG_INT_MARK in raw.translate(_DIGIT_MAP, b" \t\r\n-"):
        import json  # the slow, exact path: rare

        return json.loads(raw.decode("utf-8", "replace"))
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Invalid UTF-8 is the one failure a lossy decode can rescue; anything else fails again below.
        return orjson.loads(raw.decode("utf-8", "replace"))


def parse_envelope(raw: bytes, endpoint: str, *, codes: ErrorCodesConfig | None = None,
                   trace_id: str = "") -> Any:
    """The `data` of a `{code, message, data, timestamp, traceID}` envelope (None when absent).

    Raises ParseError when the body is not a JSON object with a `code`; a non-zero code raises
    RateLimitedError, AuthError, or ApiError (transient for the configured transient codes),
    carrying code, message and the answer's traceID (or `trace_id`, the request's, if it has none).
    A ParseError for undecodable bytes has `transient = True`: see `PlatformClient` for why.
    """
    try:
        body = decode_json(raw)
    except (ValueError, RecursionError):
        # Quote the start of a body only when it is not JSON-like (a gateway's HTML page says what
        # went wrong); a broken JSON body may hold device fields, secrets included: never quote it.
        head = raw[:80].lstrip()
        what = ("truncated or malformed JSON" if head[:1] in (b"{", b"[")
                else f"starts {head.decode('utf-8', 'replace')!r}" if head else "empty")
        error = ParseError(f"answer is not JSON ({len(raw)} bytes, {what})", endpoint=endpoint,
                           trace_id=trace_id)
        error.transient = True
        raise error from None
    if body.__class__ is not dict:
        raise ParseError(f"answer is a JSON {_kind(body)}, not an object", endpoint=endpoint,
                         trace_id=trace_id)
    answer_trace = body.get("traceID")
    if answer_trace.__class__ is str and answer_trace:
        trace_id = answer_trace
    if "code" not in body:
        raise ParseError("answer has no `code`", path="code", endpoint=endpoint, trace_id=trace_id)
    raw_code = body["code"]
    code = raw_code if raw_code.__class__ is int else _number(raw_code)
    if code.__class__ is float and code.is_integer():
        code = int(code)
    if code is None or code.__class__ is not int:
        raise ParseError(f"`code` is not an integer: {_kind(raw_code)}", path="code", endpoint=endpoint,
                         trace_id=trace_id)
    if code == 0:
        return body.get("data")
    message = body.get("message")
    text = message if message.__class__ is str else ("" if message is None else str(message))
    raise api_error(int(code), text, endpoint=endpoint, trace_id=trace_id, codes=codes)


AUTH_HINT = ("the platform rejected our credentials: check platform.app_id, platform.app_secret and "
             "the signing recipe in platform.sign")


def api_error(code: int, message: str, *, endpoint: str = "", trace_id: str = "",
              codes: ErrorCodesConfig | None = None) -> ApiError:
    """The typed error for a non-zero envelope code, classified by the (inferred) code table."""
    codes = codes or ErrorCodesConfig()
    if code in codes.rate_limited:
        return RateLimitedError(code, message, endpoint=endpoint, trace_id=trace_id)
    if code in codes.auth:
        error = AuthError(code, message, endpoint=endpoint, trace_id=trace_id)
        # Loud and actionable, and never quoting the secret (only its configuration key).
        error.message = f"{error.message} ({AUTH_HINT})"
        error.args = (error.message,)
        return error
    return ApiError(code, message, endpoint=endpoint, trace_id=trace_id, transient=code in codes.transient)


# --- devices and SIMs ---------------------------------------------------------------------------------


def parse_location(position: Any, ctx: ParseContext) -> Location | None:
    """`device.position` cut to the privacy mode: none -> None, region -> codes and region name only,
    exact -> also coordinates and cell ids. A position with nothing usable is None."""
    mode = ctx.location
    if mode == "none" or position.__class__ is not dict:
        return None
    province = _id(position, "provinceCode", ctx)
    city = _id(position, "cityCode", ctx)
    region = _str(position, "regionName", ctx)
    if mode == "region":
        if not (province or city or region):
            return None
        return Location(province_code=province, city_code=city, region_name=region)
    lat = _float(position, "lat", ctx)
    lng = _float(position, "lng", ctx)
    if lat is not None and lng is not None and ((lat == 0.0 and lng == 0.0) or abs(lat) > 90 or abs(lng) > 180):
        # (0, 0) is "no fix", not a point in the Gulf of Guinea; out-of-range pairs are garbage.
        lat = lng = None
    location = Location(
        province_code=province, city_code=city, region_name=region, lat=lat, lng=lng,
        cell_id=_id(position, "cellId", ctx), lac=_id(position, "lac", ctx),
        mcc=_id(position, "mcc", ctx), mnc=_id(position, "mnc", ctx),
    )
    return None if location == Location() else location


def _events(raw: Any, device_no: str, ctx: ParseContext) -> tuple[DeviceEvent, ...]:
    # The event log is secondary data: an entry without a time or a type is dropped, not fatal.
    if raw.__class__ is not list:
        if raw is not None:
            _bad(ctx, "controlResponse")
        return ()
    events = []
    for entry in raw:
        if entry.__class__ is not dict:
            _bad(ctx, "controlResponse")
            continue
        at = _time(entry, "controlAt", ctx)
        kind = _int(entry, "eventType", ctx)
        if at is None or kind is None:
            _bad(ctx, "controlResponse")
            continue
        events.append(DeviceEvent(device_no=device_no, at=at, event_type=kind,
                                  value1=_str(entry, "eventValue1", ctx), value2=_str(entry, "eventValue2", ctx)))
    return tuple(events)


def parse_sim(rec: Any, ctx: ParseContext, *, path: str = "sim", endpoint: str = "",
              device_no: str | None = None) -> SimObservation:
    """One SIM record (`data.sims[]` of a device, or a card info record). Raises ParseError if it is not
    an object or has no `iccid`. `device_no`, when given, is the device the record came inside."""
    rec = _record(rec, path, endpoint)
    iccid = id_text(rec.get("iccid"))
    if not iccid:
        raise ParseError("record has no iccid", path=f"{path}.iccid", endpoint=endpoint)
    slot = _int(rec, "vice", ctx)
    return SimObservation(
        iccid=iccid,
        sim_no=_id(rec, "simNo", ctx),
        imsi=_id(rec, "imsi", ctx),
        device_no=device_no if device_no is not None else _id(rec, "deviceNo", ctx),
        slot=slot,
        total_bytes=_bytes(rec, "totalFlow", ctx),
        used_bytes=_bytes(rec, "useFlow", ctx),
        real_used_bytes=_bytes(rec, "realUseFlow", ctx),
        carrier_used_bytes=_bytes(rec, "dockUserFlow", ctx),
        cycle_start=_time(rec, "dockResetDate", ctx),
        expires_at=_time(rec, "endAt", ctx),
        sim_status=_int(rec, "simStatus", ctx),
        activate_status=_int(rec, "activateStatus", ctx),
        auth_status=_int(rec, "authStatus", ctx),
        internet_status=_int(rec, "internetStatus", ctx),
        online_status=_int(rec, "onlineStatus", ctx),
        cancel_status=_int(rec, "cancelStatus", ctx),
        pool_id=_int(rec, "poolId", ctx),
        balance=_float(rec, "balance", ctx),
        speed_code=_str(rec, "speedCode", ctx),
        break_at=_time(rec, "breakAt", ctx),
        break_remove_at=_time(rec, "breakRemoveAt", ctx),
        status_at=_time(rec, "lastSimStatusAt", ctx),
        last_active_at=_time(rec, "lastActiveAt", ctx),
        polled_at=ctx.polled_at,
    )


def parse_device(data: Any, ctx: ParseContext, *, endpoint: str = "device_flow",
                 device_no: str | None = None) -> DeviceObservation:
    """The `data` of queryDeviceFlow / queryDeviceInfo (`{device: {...}, sims: [...]}`).

    `device_no` is the id the caller asked for. When given it becomes the observation's id (and its
    SIMs' and events'), because the answer may name the device differently: the vendor's own example
    asks for 9176069816 and answers with deviceNo 865214078636124. The answer must still carry a
    `deviceNo`, as proof that it is a device record.
    """
    data = _record(data, "data", endpoint)
    device = _record(data.get("device"), "data.device", endpoint)
    wire_no = id_text(device.get("deviceNo"))
    if not wire_no:
        raise ParseError("device has no deviceNo", path="data.device.deviceNo", endpoint=endpoint)
    key = device_no or wire_no
    raw_sims = data.get("sims")
    if raw_sims is None:
        sims: tuple[SimObservation, ...] = ()
    elif raw_sims.__class__ is list:
        sims = tuple(parse_sim(rec, ctx, path=f"data.sims[{i}]", endpoint=endpoint, device_no=key)
                     for i, rec in enumerate(raw_sims))
    else:
        raise ParseError(f"expected an array, got {_kind(raw_sims)}", path="data.sims", endpoint=endpoint)
    battery = _int(device, "electric", ctx)
    if battery is not None and not 0 <= battery <= 100:
        _bad(ctx, "electric")
        battery = None
    return DeviceObservation(
        device_no=key,
        imei=_id(device, "imei", ctx),
        online_status=_int(device, "onlineStatus", ctx),
        rssi_dbm=_int(device, "rssi", ctx),
        battery_percent=battery,
        effective_sim=_int(device, "effectiveSim", ctx),
        device_status=_int(device, "deviceStatus", ctx),
        wisdom_network=_int(device, "wisdomNetwork", ctx),
        wifi_clients=_int(device, "connCount", ctx),
        wifi_clients_max=_int(device, "maxConnCount", ctx),
        wifi_clients_5g=_int(device, "connCount5G", ctx),
        wifi_clients_5g_max=_int(device, "maxConnCount5G", ctx),
        wifi_name=_str(device, "wifiName", ctx),
        soft_version=_str(device, "softVersion", ctx),
        mac=_str(device, "mac", ctx),
        status_at=_time(device, "lastDeviceStatusAt", ctx),
        flow_at=_time(device, "lastDeviceFlowAt", ctx),
        warranty_expires_at=_time(device, "warrantyExpire", ctx),
        location=parse_location(device.get("position"), ctx),
        events=_events(device.get("controlResponse"), key, ctx),
        sims=sims,
        polled_at=ctx.polled_at,
    )


# --- list endpoints ---------------------------------------------------------------------------------


def _records(data: Any, endpoint: str) -> list[Any]:
    """The record list of a list endpoint: a bare array (inferred default), null (no known card in the
    batch), or an object wrapping the array under one of `_LIST_KEYS`."""
    if data is None:
        return []
    if data.__class__ is list:
        return data
    if data.__class__ is dict:
        for key in _LIST_KEYS:
            inner = data.get(key)
            if inner.__class__ is list:
                return inner
    raise ParseError(f"expected an array of records, got {_kind(data)}", path="data", endpoint=endpoint)


def _parse_list(data: Any, ctx: ParseContext, endpoint: str,
                one: Callable[[dict[str, Any], str, ParseContext], T]) -> Parsed[T]:
    items: list[T] = []
    skipped: list[ParseError] = []
    for i, rec in enumerate(_records(data, endpoint)):
        path = f"data[{i}]"
        try:
            items.append(one(_record(rec, path, endpoint), path, ctx))
        except ParseError as error:
            skipped.append(error)
    return Parsed(items, skipped)


def _iccid(rec: dict[str, Any], path: str, endpoint: str) -> str:
    iccid = id_text(rec.get("iccid"))
    if not iccid:
        raise ParseError("record has no iccid", path=f"{path}.iccid", endpoint=endpoint)
    return iccid


def parse_card_info_list(data: Any, ctx: ParseContext, *, endpoint: str = "card_info") -> Parsed[SimObservation]:
    """querySimInfo: `data: [<sim record, same keys as data.sims[] of queryDeviceFlow>]` (inferred)."""
    return _parse_list(data, ctx, endpoint,
                       lambda rec, path, c: parse_sim(rec, c, path=path, endpoint=endpoint))


def parse_card_status_list(data: Any, ctx: ParseContext, *, endpoint: str = "card_status") -> Parsed[CardStatus]:
    """querySimStatus: `data: [{iccid, simNo, simStatus, onlineStatus, internetStatus, lastSimStatusAt}]`."""
    def one(rec: dict[str, Any], path: str, c: ParseContext) -> CardStatus:
        return CardStatus(
            iccid=_iccid(rec, path, endpoint), sim_no=_id(rec, "simNo", c),
            sim_status=_int(rec, "simStatus", c), online_status=_int(rec, "onlineStatus", c),
            internet_status=_int(rec, "internetStatus", c), status_at=_time(rec, "lastSimStatusAt", c),
            polled_at=c.polled_at,
        )
    return _parse_list(data, ctx, endpoint, one)


def parse_card_usage_list(data: Any, ctx: ParseContext, *, endpoint: str = "card_usage") -> Parsed[CardUsage]:
    """querySimRealFlow: `data: [{iccid, simNo, totalFlow, useFlow, realUseFlow, dockUserFlow,
    dockResetDate, endAt, lastFlowAt}]` (inferred)."""
    def one(rec: dict[str, Any], path: str, c: ParseContext) -> CardUsage:
        return CardUsage(
            iccid=_iccid(rec, path, endpoint), sim_no=_id(rec, "simNo", c),
            total_bytes=_bytes(rec, "totalFlow", c), used_bytes=_bytes(rec, "useFlow", c),
            real_used_bytes=_bytes(rec, "realUseFlow", c), carrier_used_bytes=_bytes(rec, "dockUserFlow", c),
            cycle_start=_time(rec, "dockResetDate", c), expires_at=_time(rec, "endAt", c),
            flow_at=_time(rec, "lastFlowAt", c), polled_at=c.polled_at,
        )
    return _parse_list(data, ctx, endpoint, one)


_MONTH = re.compile(r"\d{6}")


def parse_card_month_usage_list(data: Any, ctx: ParseContext, *, month: str = "",
                                endpoint: str = "card_month_usage") -> Parsed[CardMonthUsage]:
    """querySimMonthFlow: `data: [{iccid, simNo, month, useFlow}]` (inferred). A record without a usable
    `month` (YYYYMM, or YYYY-MM) takes the month that was asked for; with neither it is skipped."""
    def one(rec: dict[str, Any], path: str, c: ParseContext) -> CardMonthUsage:
        iccid = _iccid(rec, path, endpoint)
        text = id_text(rec.get("month")).replace("-", "")
        if not _MONTH.fullmatch(text):
            if not month:
                raise ParseError("record has no month (YYYYMM)", path=f"{path}.month", endpoint=endpoint)
            text = month
        return CardMonthUsage(iccid=iccid, month=text, used_bytes=_bytes(rec, "useFlow", c),
                              sim_no=_id(rec, "simNo", c), polled_at=c.polled_at)
    return _parse_list(data, ctx, endpoint, one)


def parse_card_actions(data: Any, ctx: ParseContext, *, endpoint: str = "card_actions") -> Parsed[CardAction]:
    """querySimAction: `data: [{serialNo, iccid, simNo, actionType, status, remark, createdAt}]` (inferred).
    `actionType` is kept as text whatever its JSON type (its codes are undocumented)."""
    def one(rec: dict[str, Any], path: str, c: ParseContext) -> CardAction:
        return CardAction(
            iccid=_iccid(rec, path, endpoint), serial_no=_id(rec, "serialNo", c), sim_no=_id(rec, "simNo", c),
            action=_str(rec, "actionType", c), status=_int(rec, "status", c), remark=_str(rec, "remark", c),
            created_at=_time(rec, "createdAt", c),
        )
    return _parse_list(data, ctx, endpoint, one)


_ASSET_KEYS = {"balance": "balance", "arrearsBalance": "arrears_balance", "frozenBalance": "frozen_balance"}


def parse_account_assets(data: Any, ctx: ParseContext, *, endpoint: str = "account_assets") -> AccountAssets:
    """queryAccountAssets: `data: {balance, arrearsBalance, frozenBalance}` (inferred; values may be
    strings). Other top-level JSON numbers land in `extra` under their wire name (never a secret field,
    never a bool, never a string: a numeric-looking string could be anything)."""
    rec = _record(data, "data", endpoint)
    extra: dict[str, float] = {}
    for key, value in rec.items():
        if key in _ASSET_KEYS or key in SECRET_FIELDS or key.__class__ is not str:
            continue
        if (value.__class__ is int or value.__class__ is float) and math.isfinite(value):
            extra[key] = float(value)
    return AccountAssets(
        balance=_float(rec, "balance", ctx),
        arrears_balance=_float(rec, "arrearsBalance", ctx),
        frozen_balance=_float(rec, "frozenBalance", ctx),
        polled_at=ctx.polled_at,
        extra=extra,
    )
