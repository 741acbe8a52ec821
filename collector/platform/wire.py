"""The platform's wire format: the answer envelope, the scalar coercions every endpoint reads its
fields with, and the declarative tables (our field name, wire key, coercion) the endpoint modules
(`collector.endpoints`) describe their records with. The one module holding every inferred reading
of scalars (flow unit, local-time timestamps, sentinels, numbers as strings).

What it promises:

* Structure is strict, scalars are tolerant. A record that is not an object, or lacks its identity
  (`deviceNo`, `iccid`), raises `ParseError` whose `path` names it (`data.sims[1]`). A single optional
  value of the wrong type becomes `None` (or `""`) and its wire key is appended to
  `ParseContext.issues` when the caller passed a list there, so one garbage field never loses a device.
* In list endpoints a bad record is skipped, not fatal: `Parsed.skipped` lists why.
* Numbers may arrive as strings (`"-84"`, `"12.5"`); booleans are never numbers; `null`, `""` and the
  `2000-01-01 00:00:00` sentinel mean "unknown". Ids are always strings: an id sent as a JSON number
  becomes its decimal text (ICCIDs with letters and ids with leading zeros survive untouched), and a
  body holding an integer wider than 64 bits is decoded exactly.
* Zone-less `YYYY-MM-DD HH:MM:SS` timestamps are local time in `ParseContext.tz` (China Standard Time
  by default) and become float Unix seconds (UTC).
* Flow values are multiplied by `ParseContext.flow_unit_bytes` (KiB by default, see
  docs/upstream-api.md) and stored as integer bytes.
* Secret fields (wifiPass, wifiPass5G, webPassword, payPassword) are in no table, so they are never
  read and cannot reach an observation, a log line or a sink.
* `parse_envelope` returns the `data` of an answer or raises `ParseError` / the `ApiError` family;
  nothing else escapes, whatever bytes arrive (pinned by property tests).

Speed matters (100k devices a cycle): plain dicts from orjson, hand-written coercion, no validation
library per record, and a cache for timestamp strings (most of them repeat across a fleet).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from functools import lru_cache
from typing import Any, Generic, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo

import orjson

from collector.platform.errors import ApiError, AuthError, ParseError, RateLimitedError

T = TypeVar("T")
LocationMode = Literal["none", "region", "exact"]

# Field names that hold secrets upstream. No table names them; this set exists so that code copying
# "all other fields" (account assets' extras) can exclude them explicitly.
SECRET_FIELDS = frozenset({"wifiPass", "wifiPass5G", "webPassword", "payPassword"})

# Timestamps meaning "unset" rather than a date (inferred: the sample's warrantyExpire; the MySQL zero
# date is the other classic spelling of the same thing).
SENTINEL_TIMES = frozenset({"2000-01-01 00:00:00", "0000-00-00 00:00:00"})

# Numbers at or above 1e11 cannot be epoch seconds of this era: they are epoch milliseconds (inferred,
# for timestamps an endpoint may send as numbers).
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

# Envelope codes (inferred: the vendor's code page is missing); `platform.error_codes` overrides them.
RATE_LIMITED_CODES = (42900,)
AUTH_CODES = (40001, 40002)
NOT_FOUND_CODES = (40404,)
TRANSIENT_CODES = (50000, 50300)

Overrides = tuple[tuple[str, str], ...]
"""Field-name overrides of one endpoint (`platform.fields.<endpoint>`): (field, wire key) pairs, sorted."""


class PlatformSettings(Protocol):
    """What parsing reads from `PlatformConfig` (kept structural: the configuration imports this module)."""

    @property
    def flow_unit_bytes(self) -> int: ...

    @property
    def timezone(self) -> str: ...

    @property
    def fields(self) -> Mapping[str, Mapping[str, str]]: ...


class PrivacySettings(Protocol):
    @property
    def location(self) -> LocationMode: ...


class CodeTable(Protocol):
    """Which envelope codes mean what (`platform.error_codes`)."""

    @property
    def rate_limited(self) -> Collection[int]: ...

    @property
    def auth(self) -> Collection[int]: ...

    @property
    def transient(self) -> Collection[int]: ...


@dataclass(frozen=True, slots=True)
class ParseContext:
    """Everything a parser needs besides the data: the inferred unit and zone, the privacy choice,
    the field-name overrides and when the answer arrived.

    `issues`, when a list, collects the wire keys of optional fields whose value was unusable and
    became None (the caller owns the list; pass a fresh one per answer). The context is frozen; the
    list is deliberately the one mutable thing in it.
    """

    flow_unit_bytes: int = 1024
    tz: tzinfo = _DEFAULT_TZ
    location: LocationMode = "region"
    polled_at: float = 0.0
    issues: list[str] | None = None
    fields: Mapping[str, Overrides] = field(default_factory=dict)

    @classmethod
    def from_config(cls, platform: PlatformSettings, privacy: PrivacySettings | None = None,
                    polled_at: float = 0.0) -> ParseContext:
        """The context a client configured with `platform` / `privacy` parses with."""
        return cls(
            flow_unit_bytes=platform.flow_unit_bytes,
            tz=ZoneInfo(platform.timezone),
            location="region" if privacy is None else privacy.location,
            polled_at=polled_at,
            fields={name: tuple(sorted(keys.items())) for name, keys in platform.fields.items() if keys},
        )


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """The records of an answer that parsed, and the errors of those that were skipped."""

    items: list[T]
    skipped: list[ParseError] = field(default_factory=list)


# --- scalar coercion --------------------------------------------------------------------------------
# Each reader takes (record, wire key, context) and reads `rec[key]` itself, so that on failure it can
# name the key in `ctx.issues`. The fast path (the value already has the right JSON type) comes first.


def unusable(ctx: ParseContext, key: str) -> None:
    """Note that the value under wire key `key` was unusable and became unknown."""
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
        unusable(ctx, key)
        return None
    # A status code or a dBm value sent as 100.0 is still an integer; 12.5 for an integer field is
    # rounded rather than dropped (the value is real, only its type is off).
    return number if number.__class__ is int else round(number)


def _percent(rec: dict[str, Any], key: str, ctx: ParseContext) -> int | None:
    value = _int(rec, key, ctx)
    if value is not None and not 0 <= value <= 100:
        unusable(ctx, key)
        return None
    return value


def _float(rec: dict[str, Any], key: str, ctx: ParseContext) -> float | None:
    value = rec.get(key)
    if value.__class__ is float and math.isfinite(value):
        return value
    if _is_blank(value):
        return None
    number = _number(value)
    if number is None or not -_MAX_FLOAT <= number <= _MAX_FLOAT:
        unusable(ctx, key)
        return None
    return float(number)


def _flow(rec: dict[str, Any], key: str, ctx: ParseContext) -> int | None:
    """A flow value in the platform's unit as integer bytes; negative values are unusable."""
    value = rec.get(key)
    if value.__class__ is int:
        number: int | float | None = value
    elif _is_blank(value):
        return None
    else:
        number = _number(value)
    if number is None or number < 0:
        unusable(ctx, key)
        return None
    if number.__class__ is int:
        return number * ctx.flow_unit_bytes
    scaled = number * ctx.flow_unit_bytes
    if not math.isfinite(scaled):
        unusable(ctx, key)
        return None
    return round(scaled)


def _text(rec: dict[str, Any], key: str, ctx: ParseContext) -> str:
    """Free text; numbers become their text, anything else (objects, lists, bools) is unusable."""
    value = rec.get(key)
    if value.__class__ is str:
        return value
    if value is None:
        return ""
    if value.__class__ is int or value.__class__ is float:
        return str(value)
    unusable(ctx, key)
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
        unusable(ctx, key)
    return text


# Small on purpose: the strings that repeat (a month's first day, a shared refresh second, the same
# device's unchanged times between polls) stay cached, while a fleet's ever-new refresh times only
# cycle through it. At 65,536 entries (about 17 MB) it took hours to fill at a real fleet's pace,
# which looked like a leak; a miss costs a few microseconds.
@lru_cache(maxsize=4096)
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
            unusable(ctx, key)
        return seconds
    if value is None:
        return None
    number = _number(value) if value.__class__ in (int, float) else None
    if number is None or not 0 < number <= _MAX_FLOAT:
        unusable(ctx, key)
        return None
    return float(number) / 1000.0 if number >= _EPOCH_MS_THRESHOLD else float(number)


def _container(rec: dict[str, Any], key: str, _ctx: ParseContext) -> Any:
    return rec.get(key)


def kind_of(value: Any) -> str:
    """The JSON type of a decoded value, for messages and for comparing answers with the tables."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number"}.get(value.__class__, "null" if value is None else type(value).__name__)


def record(value: Any, path: str, endpoint: str) -> dict[str, Any]:
    """`value` when it is a JSON object, else ParseError naming `path`."""
    if value.__class__ is not dict:
        raise ParseError(f"expected an object, got {_article(kind_of(value))}", path=path, endpoint=endpoint)
    return value


def _article(kind: str) -> str:
    return kind if kind == "null" else f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


# --- declarative tables -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Coercion:
    """How one wire value becomes one field: the reader, and the JSON type the platform should send
    (others may be tolerated: numbers as strings, ids as numbers). `record` names the record a
    container (an object or array of records) holds."""

    name: str
    json_type: str
    read: Callable[[dict[str, Any], str, ParseContext], Any]
    record: str = ""


ID = Coercion("id", "string", _id)
TEXT = Coercion("text", "string", _text)
INT = Coercion("int", "integer", _int)
PERCENT = Coercion("percent", "integer", _percent)
FLOAT = Coercion("float", "number", _float)
FLOW = Coercion("flow", "number", _flow)
TIME = Coercion("time", "string", _time)


def OBJECT(record_name: str) -> Coercion:
    """A container holding one record of `record_name`."""
    return Coercion("object", "object", _container, record_name)


def ARRAY(record_name: str) -> Coercion:
    """A container holding a list of records of `record_name`."""
    return Coercion("array", "array", _container, record_name)


WireField = tuple[str, str, Coercion]
"""(our field name, wire key, coercion)."""


class Record:
    """One record of an answer: its fields as (our name, wire key, coercion) and, for records with an
    identity, the field that must be present (`device_no`, `iccid`)."""

    def __init__(self, name: str, fields: tuple[WireField, ...], identity: str = "") -> None:
        self.name, self.fields, self.identity = name, fields, identity
        self._keys = {n: k for n, k, _c in fields}
        # What `read` walks: the scalar fields, identity excluded.
        self._readers = tuple((n, k, c.read) for n, k, c in fields if not c.record and n != identity)
        self._subsets: dict[frozenset[str], Record] = {}

    def key(self, name: str) -> str:
        """The wire key of field `name`."""
        return self._keys[name]

    def read(self, rec: dict[str, Any], ctx: ParseContext) -> dict[str, Any]:
        """Every scalar field of `rec` (identity excluded), coerced: our name -> value."""
        return {name: read(rec, key, ctx) for name, key, read in self._readers}

    def identify(self, rec: dict[str, Any], path: str, endpoint: str) -> str:
        """The identity of `rec` as text, or ParseError naming the missing key."""
        key = self._keys[self.identity]
        value = id_text(rec.get(key))
        if not value:
            raise ParseError(f"{self.name} has no {key}", path=f"{path}.{key}", endpoint=endpoint)
        return value

    def only(self, names: frozenset[str]) -> Record:
        """The same record reading only `names` (and its identity)."""
        subset = self._subsets.get(names)
        if subset is None:
            subset = self._subsets[names] = Record(
                self.name, tuple(f for f in self.fields if f[0] in names or f[0] == self.identity), self.identity)
        return subset


class WireTable:
    """Every record an endpoint reads, the first one being the answer's `data` itself."""

    def __init__(self, records: tuple[Record, ...]) -> None:
        self.records = records
        self._by_name = {rec.name: rec for rec in records}
        self._resolved: dict[Overrides, WireTable] = {(): self}

    def __getitem__(self, name: str) -> Record:
        return self._by_name[name]

    def override_keys(self) -> list[str]:
        """Each field once, as `platform.fields.<endpoint>` names it: `field` where one record has it,
        `record.field` where several do (`record.field` is accepted for any field)."""
        names = [name for rec in self.records for name, _k, _c in rec.fields]
        return sorted(name if names.count(name) == 1 else f"{rec.name}.{name}"
                      for rec in self.records for name, _k, _c in rec.fields)

    def problems(self, overrides: Mapping[str, str]) -> dict[str, str]:
        """Override key -> what is wrong with it (unknown, naming a field of several records, empty)."""
        out: dict[str, str] = {}
        for key, wire in overrides.items():
            qualifier, _, name = key.rpartition(".")
            owners = [rec.name for rec in self.records
                      if qualifier in ("", rec.name) and any(f[0] == name for f in rec.fields)]
            if not owners:
                out[key] = "unknown field; the fields are " + ", ".join(self.override_keys())
            elif len(owners) > 1:
                out[key] = "names a field of several records: write " + " or ".join(f"{o}.{key}" for o in owners)
            elif not wire.strip():
                out[key] = "the wire key must not be empty"
        return out

    def resolve(self, overrides: Overrides) -> WireTable:
        """This table with the wire keys of `overrides` (checked by the configuration) replaced."""
        table = self._resolved.get(overrides)
        if table is None:
            wanted = dict(overrides)
            table = self._resolved[overrides] = WireTable(tuple(Record(
                rec.name, tuple((n, wanted.get(f"{rec.name}.{n}", wanted.get(n, k)), c) for n, k, c in rec.fields),
                rec.identity) for rec in self.records))
        return table

    def paths(self) -> list[tuple[str, str, WireField]]:
        """(wire path, record name, field) of every field, from `data` down: `data.device.rssi`,
        `data.sims[].iccid`, `data[].iccid` (a record list sent as `data` itself)."""
        out: list[tuple[str, str, WireField]] = []

        def walk(rec: Record, at: str) -> None:
            for f in rec.fields:
                path = f"{at}.{f[1]}" if f[1] else at
                out.append((path, rec.name, f))
                if f[2].record:
                    walk(self[f[2].record], path + ("[]" if f[2].json_type == "array" else ""))

        walk(self.records[0], "data")
        return out


def records_of(data: Any, key: str, endpoint: str) -> list[Any]:
    """The record list of a list endpoint: `data[key]` when a key is configured; else a bare array
    (inferred default), null (no known card in the batch), or an object wrapping the array under
    one of the usual keys."""
    if key:
        data = record(data, "data", endpoint).get(key)
        if data is None:
            return []
        if data.__class__ is not list:
            raise ParseError(f"expected an array, got {_article(kind_of(data))}", path=f"data.{key}",
                             endpoint=endpoint)
        return data
    if data is None:
        return []
    if data.__class__ is list:
        return data
    if data.__class__ is dict:
        for name in _LIST_KEYS:
            inner = data.get(name)
            if inner.__class__ is list:
                return inner
    raise ParseError(f"expected an array of records, got {_article(kind_of(data))}", path="data",
                     endpoint=endpoint)


def parse_records(rows: Sequence[Any], at: str, endpoint: str,
                  one: Callable[[dict[str, Any], str], T]) -> Parsed[T]:
    """Each row through `one(record, path)`; a row that is not an object or fails is skipped."""
    items: list[T] = []
    skipped: list[ParseError] = []
    for i, row in enumerate(rows):
        path = f"{at}[{i}]"
        try:
            items.append(one(record(row, path, endpoint), path))
        except ParseError as error:
            skipped.append(error)
    return Parsed(items, skipped)


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


def parse_envelope(raw: bytes, endpoint: str, *, codes: CodeTable | None = None, trace_id: str = "") -> Any:
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
        raise ParseError(f"answer is a JSON {kind_of(body)}, not an object", endpoint=endpoint,
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
        raise ParseError(f"`code` is not an integer: {kind_of(raw_code)}", path="code", endpoint=endpoint,
                         trace_id=trace_id)
    if code == 0:
        return body.get("data")
    message = body.get("message")
    text = message if message.__class__ is str else ("" if message is None else str(message))
    raise api_error(int(code), text, endpoint=endpoint, trace_id=trace_id, codes=codes)


AUTH_HINT = ("the platform rejected our credentials: check platform.app_id, platform.app_secret and "
             "the signing recipe in platform.sign")


def api_error(code: int, message: str, *, endpoint: str = "", trace_id: str = "",
              codes: CodeTable | None = None) -> ApiError:
    """The typed error for a non-zero envelope code, classified by the (inferred) code table."""
    rate_limited = RATE_LIMITED_CODES if codes is None else codes.rate_limited
    auth = AUTH_CODES if codes is None else codes.auth
    transient = TRANSIENT_CODES if codes is None else codes.transient
    if code in rate_limited:
        return RateLimitedError(code, message, endpoint=endpoint, trace_id=trace_id)
    if code in auth:
        error = AuthError(code, message, endpoint=endpoint, trace_id=trace_id)
        # Loud and actionable, and never quoting the secret (only its configuration key).
        error.message = f"{error.message} ({AUTH_HINT})"
        error.args = (error.message,)
        return error
    return ApiError(code, message, endpoint=endpoint, trace_id=trace_id, transient=code in transient)
