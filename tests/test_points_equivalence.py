"""The fast line builder writes exactly what influxdb-client's Point builder writes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point

from collector.endpoints import SCHEMA
from collector.sinks.points import coerce, timestamp_ns

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=12)


def reference(measurement: str, tags: dict[str, str | None], labels: dict[str, str], fields: dict[str, Any],
              at: float) -> str | None:
    spec = SCHEMA[measurement]
    point = Point(measurement)
    for key, value in labels.items():
        if key not in spec.tags:
            point.tag(key, value)
    for key, tag_value in tags.items():
        if tag_value is not None and tag_value != "":
            point.tag(key, str(tag_value))
    written = 0
    for key, value in fields.items():
        coerced = coerce(spec.fields[key].type, value)
        if coerced is not None:
            point.field(key, coerced)
            written += 1
    if not written:
        return None
    point.time(timestamp_ns(at))
    return str(point.to_line_protocol())


@st.composite
def lines(draw: st.DrawFn) -> tuple[str, dict[str, str | None], dict[str, str], dict[str, Any], float]:
    measurement = draw(st.sampled_from(sorted(SCHEMA)))
    spec = SCHEMA[measurement]
    tags = {t: draw(st.one_of(st.none(), text)) for t in spec.tags}
    labels = draw(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), text, max_size=4))
    fields: dict[str, Any] = {}
    for name, field in spec.fields.items():
        if draw(st.booleans()):
            if field.type == "int":
                fields[name] = draw(st.one_of(st.none(), st.integers(-(2**70), 2**70)))
            elif field.type == "float":
                fields[name] = draw(st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-1000, 1000)))
            else:
                fields[name] = draw(st.one_of(st.none(), text))
    at = draw(st.floats(min_value=0, max_value=4e9))
    return measurement, tags, labels, fields, at


@settings(max_examples=400, deadline=None)
@given(lines())
def test_fast_builder_matches_influxdb_client_point(case: tuple[Any, ...]) -> None:
    measurement, tags, labels, fields, at = case
    assert SCHEMA[measurement].line(tags, labels, fields, at) == reference(measurement, tags, labels, fields, at)
