"""A small line-protocol reader for tests: enough to check what the builders and sinks wrote."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Line:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, tuple[str, Any]]  # name -> (type: int|float|string|bool, value)
    timestamp: int | None

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...], int | None]:
        """Series and timestamp: what InfluxDB deduplicates on."""
        return self.measurement, tuple(sorted(self.tags.items())), self.timestamp


def _split(text: str, sep: str, *, quotes: bool = False, limit: int = -1) -> list[str]:
    parts, current, i, in_quotes = [], [], 0, False
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if quotes and ch == '"':
            in_quotes = not in_quotes
        if ch == sep and not in_quotes and limit != 0:
            parts.append("".join(current))
            current = []
            limit -= 1
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ", =":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _field_value(raw: str) -> tuple[str, Any]:
    if raw.startswith('"'):
        body, out, i = raw[1:-1], [], 0
        while i < len(body):
            if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in '"\\':
                out.append(body[i + 1])
                i += 2
            else:
                out.append(body[i])
                i += 1
        return "string", "".join(out)
    if raw.endswith("i"):
        return "int", int(raw[:-1])
    if raw in ("t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"):
        return "bool", raw[0] in "tT"
    return "float", float(raw)


def parse_line(line: str) -> Line:
    series, rest = _split(line, " ", limit=1)
    # As InfluxDB's scanner: a backslash escapes the next character whatever it is, and the
    # sections are separated by one or more spaces (a tag value ending in a backslash is written
    # with a space after it, which the backslash escapes).
    fields_text, *ts = _split(rest.lstrip(" "), " ", quotes=True)
    name, *tag_parts = _split(series, ",")
    tags = {}
    for part in tag_parts:
        key, value = _split(part, "=", limit=1)
        tags[_unescape(key)] = _unescape(value)
    fields = {}
    for part in _split(fields_text, ",", quotes=True):
        key, value = _split(part, "=", quotes=True, limit=1)
        fields[_unescape(key)] = _field_value(value)
    return Line(_unescape(name), tags, fields, int(ts[0]) if ts else None)
