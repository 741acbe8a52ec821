"""Points: how a measurement is declared and how its lines of InfluxDB line protocol are built.

Each read endpoint (`collector.endpoints`) declares the measurements it writes with `Measurement`;
the alert engine writes `ALERTS`. Every measurement, tag and field is documented in docs/schema.md
(a test keeps the two in step with `collector.endpoints.SCHEMA`). Building is pure: the same values
always give the same bytes, so a replayed line lands on the same series and timestamp.

Rules `Measurement.line` enforces:

- Tags are identities (device_no, iccid, slot, ...) and inventory labels; everything else is a field.
  A built-in tag wins over an inventory label of the same name.
- A field's line-protocol type never changes: `int` fields are always written as integers (`42i`,
  booleans as 0/1), `float` fields always as floats (cast with float(), so 3 is written as the float
  3), `string` fields as strings. None, NaN, infinities and integers outside int64 are omitted rather
  than written as something else. Carriage returns and newlines in string values become spaces.
- Timestamps are integers in nanoseconds (the default precision of `/write`, `/api/v2/write` and
  `influx write`), rounded to whole milliseconds: the poll time fixed by the collector at collection,
  or the upstream event time for events.

The text is what influxdb-client's `Point(...).to_line_protocol()` produces, byte for byte (a
property test holds the two together), built without a Point object: Point's generic path cost about
40% of the collector's CPU per device poll. The escaping follows the line-protocol rules as that
library applies them; the library keeps its escaping functions private, so they are written here.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

FieldType = Literal["int", "float", "string"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": r"\\"})


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field: its line-protocol type (fixed forever), unit and meaning."""

    type: FieldType
    unit: str
    help: str


def int_field(unit: str, help: str) -> FieldSpec:
    """An integer field."""
    return FieldSpec("int", unit, help)


def float_field(unit: str, help: str) -> FieldSpec:
    """A float field."""
    return FieldSpec("float", unit, help)


def string_field(help: str) -> FieldSpec:
    """A string field."""
    return FieldSpec("string", "", help)


def timestamp_ns(seconds: float) -> int:
    """Unix seconds -> integer nanoseconds, rounded to whole milliseconds (deterministic)."""
    return round(seconds * 1000) * 1_000_000


def coerce(kind: FieldType, value: Any) -> int | float | str | None:
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


def _escape_tag_value(value: str) -> str:
    escaped = value.translate(_ESCAPE_KEY)
    # A trailing backslash would escape the separator after it.
    return escaped + " " if escaped.endswith("\\") else escaped


def _field_text(prefix: str, value: int | float | str) -> str:
    # Ints with `i`, floats as repr without a trailing `.0`, strings quoted.
    if isinstance(value, str):
        return f'{prefix}"{value.translate(_ESCAPE_STRING)}"'
    if isinstance(value, float):
        text = repr(value)
        return f"{prefix}{text[:-2] if text.endswith('.0') else text}"
    return f"{prefix}{value}i"


class Measurement:
    """One measurement: its built-in tags (inventory labels are added to these), its fields, what it
    means, and whether extra fields of one type are allowed (the account's extras).

    A field named like an attribute of the observation it describes is read from that attribute
    (`read`); a builder adds the derived ones (staleness, ratios, rates) itself."""

    def __init__(self, name: str, tags: tuple[str, ...], fields: Mapping[str, FieldSpec], help: str,
                 open_fields: FieldType | None = None) -> None:
        self.name = name
        self.tags = tags
        self.fields = fields
        self.help = help
        self.open_fields = open_fields
        self._escaped = name.translate(_ESCAPE_MEASUREMENT)
        # field name -> (type, escaped `name=`), computed once instead of per point
        self._table = {key: (spec.type, key.translate(_ESCAPE_KEY) + "=") for key, spec in fields.items()}
        self._readers: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]], tuple[str, ...]]] = {}

    def read(self, obj: Any) -> dict[str, Any]:
        """The declared fields `obj` has an attribute of the same name for, read from it; empty text
        is no value."""
        reader = self._readers.get(type(obj))
        if reader is None:
            names = tuple(name for name in self.fields if hasattr(obj, name))
            # Two names at least, so that it always returns a tuple.
            get = operator.attrgetter(*names, names[0]) if names else lambda _obj: ()
            texts = tuple(name for name in names if self.fields[name].type == "string")
            reader = self._readers[type(obj)] = (names, get, texts)
        names, get, texts = reader
        values = dict(zip(names, get(obj), strict=False))
        for name in texts:
            if values[name] == "":
                values[name] = None
        return values

    def line(self, tags: Mapping[str, str | None], labels: Mapping[str, str] | None, fields: Mapping[str, Any],
             at: float) -> str | None:
        """One line; fields are coerced to their declared type. None when no field is left.
        Raises KeyError for a field the measurement does not declare (a programming error)."""
        rendered: list[str] = []
        table = self._table
        for key in sorted(fields):
            value = fields[key]
            if value is None:
                continue
            entry = table.get(key)
            if entry is None:
                if self.open_fields is None:
                    raise KeyError(f"{self.name}.{key} is not in the schema")
                entry = (self.open_fields, key.translate(_ESCAPE_KEY) + "=")
            kind, prefix = entry
            if kind == "int" and type(value) is int:  # the common case, without the generic coercion
                if INT64_MIN <= value <= INT64_MAX:
                    rendered.append(f"{prefix}{value}i")
                continue
            coerced = coerce(kind, value)
            if coerced is not None:
                rendered.append(_field_text(prefix, coerced))
        if not rendered:
            return None
        return f"{self._tag_section(tags, labels)} {','.join(rendered)} {timestamp_ns(at)}"

    def _tag_section(self, tags: Mapping[str, str | None], labels: Mapping[str, str] | None) -> str:
        """`measurement,k=v,k=v` with tags sorted by key."""
        merged: dict[str, str] = {k: v for k, v in labels.items() if k not in self.tags} if labels else {}
        for key, tag_value in tags.items():
            if tag_value is not None and tag_value != "":
                merged[key] = str(tag_value)
        parts = [self._escaped]
        for key in sorted(merged):
            escaped_key, escaped_value = key.translate(_ESCAPE_KEY), _escape_tag_value(merged[key])
            if escaped_key and escaped_value:
                parts.append(f"{escaped_key}={escaped_value}")
        return ",".join(parts)


# --- shared pieces of several measurements ---------------------------------------------------------------


def bool01(value: bool | None) -> int | None:
    """A flag as the integer 0/1 (flags are never written as booleans)."""
    return None if value is None else int(bool(value))


def age(polled_at: float, then: float | None) -> float | None:
    """Seconds from `then` to the poll (None when `then` is unknown)."""
    return None if then is None else polled_at - then


def nonempty(text: str) -> str | None:
    """Empty text is no value (the field is left out)."""
    return text or None


ALERTS = Measurement(
    "alerts", ("rule", "severity", "kind", "entity"), {
        "state": string_field("pending, firing, resolved, or inactive (a pending alert that cleared before firing)"),
        "firing": int_field("0/1", "1 while the alert fires"),
        "value": float_field("rule-specific", "the value that triggered the transition"),
        "summary": string_field("rendered summary annotation"),
    },
    "one point per alert state transition (Grafana annotations)")


def alert_point(*, rule: str, state: str, at: float, severity: str = "", kind: str = "",
                entity: str = "", labels: Mapping[str, str] | None = None, value: float | None = None,
                summary: str = "") -> str:
    """The `alerts` line of one alert state transition (`state`: pending, firing or resolved).

    `kind` is the entity kind (device, sim, account...), `entity` its id; `labels` are the alert's
    labels (a label named like a built-in tag is ignored)."""
    fields = {"state": state, "firing": int(state == "firing"), "value": value, "summary": nonempty(summary)}
    tags = {"rule": rule, "severity": severity, "kind": kind, "entity": entity}
    line = ALERTS.line(tags, labels, fields, at)
    assert line is not None  # `state` and `firing` are always present
    return line
