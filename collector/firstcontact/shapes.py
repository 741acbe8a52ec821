"""An answer's `data` compared with what the parser reads: the endpoint module's wire table
(`ReadEndpoint.wire`, with `platform.fields` applied). Fields missing, unknown fields, values of the
wrong type, each with an example value (secrets never shown, ids masked), and `platform.fields`
proposals when a field the parser reads is missing but a similarly named one is present.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from collector.endpoints.base import ReadEndpoint
from collector.platform.errors import ParseError
from collector.platform.wire import ParseContext, Record, WireTable, kind_of, records_of

# Keys whose values are secrets (at any depth): never shown, never stored by `capture`.
SECRET_KEY = re.compile(r"password|passwd|pwd|secret|token|api_?key|access_?key|private_?key|pass(5g)?$",
                        re.IGNORECASE)

# Keys whose values identify a device, a card, a person or a place: shown masked.
ID_KEYS = frozenset({
    "deviceno", "imei", "iccid", "imsi", "simno", "dockno", "mobile", "msisdn", "mac", "lastterminalmac",
    "mainsimno", "mainiccid", "vice1simno", "vice1iccid", "vice2simno", "vice2iccid", "usimno", "usimiccid",
    "cellid", "lac", "lat", "lng", "lastloginip", "serialno", "cardno",
})

_EXAMPLE_WIDTH = 40


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key))


def mask(text: str) -> str:
    """An id with only its first and last few characters kept: `8986****0999`."""
    n = len(text)
    keep = 4 if n >= 12 else 2 if n >= 6 else 1 if n >= 3 else 0
    return text[:keep] + "*" * (n - 2 * keep) + (text[-keep:] if keep else "")


def example(key: str, value: Any, *, is_id: bool = False) -> str:
    """A value fit for a report: secrets hidden, ids masked, long text cut."""
    if is_secret_key(key):
        return "<secret, not shown>"
    if isinstance(value, dict):
        return "{...}" if value else "{}"
    if isinstance(value, list):
        return f"[{len(value)} item(s)]"
    if value is None:
        return "null"
    text = value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    if is_id or key.lower() in ID_KEYS or key.lower().endswith(("iccid", "simno", "imei", "mac")):
        text = mask(text)
    shown = text if text or not isinstance(value, str) else '""'
    return shown if len(shown) <= _EXAMPLE_WIDTH else shown[:_EXAMPLE_WIDTH - 3] + "..."


def _normal(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def similarity(wanted: str, candidate: str) -> float | None:
    """How alike two wire keys are (0 best), or None when not alike: the same but for case and
    camel/snake spelling, a small edit distance, the same but for a plural or list suffix, or one
    containing the other."""
    a, b = _normal(wanted), _normal(candidate)
    if a == b:
        return 0.0
    distance = edit_distance(a, b)
    if distance <= max(1, min(len(a), len(b)) // 4):
        return float(distance)
    if _stem(a) == _stem(b):
        return 1.5
    if min(len(a), len(b)) >= 4 and (a in b or b in a):
        return 2.5 + abs(len(a) - len(b)) / 10
    return None


def _stem(name: str) -> str:
    """A container key without its plural or list suffix: `sims`, `simlist`, `simarray` -> `sim`."""
    for suffix in ("list", "array", "arr", "s"):
        if name.endswith(suffix) and len(name) > len(suffix) + 1:
            return name[: -len(suffix)]
    return name


@dataclass
class FieldFinding:
    """One wire key of a record: missing, of an unusable type, or sent as another JSON type than
    expected but still read (`tolerated`)."""

    record: str
    field: str
    key: str
    problem: str  # "missing" | "wrong type" | "tolerated"
    expected: str
    got: str = ""
    example: str = ""


@dataclass
class Proposal:
    """`platform.fields.<endpoint>.<override>: <wire key>` for a missing field a similar key may hold."""

    endpoint: str
    override: str  # the key under platform.fields.<endpoint> (`rssi_dbm`, `sim.online_status`)
    field: str
    missing: str
    wire_key: str
    example: str
    unambiguous: bool
    applied: bool = False

    @property
    def setting(self) -> str:
        return f"platform.fields.{self.endpoint}.{self.override}: {self.wire_key}"


@dataclass
class ShapeReport:
    """How one endpoint's answer compares with its wire table."""

    endpoint: str
    records: dict[str, int] = field(default_factory=dict)  # record name -> instances found
    findings: list[FieldFinding] = field(default_factory=list)
    unknown: dict[str, dict[str, str]] = field(default_factory=dict)  # record -> wire key -> example
    proposals: list[Proposal] = field(default_factory=list)
    structure: str = ""  # a problem with the answer's structure, in words

    def missing(self) -> list[FieldFinding]:
        return [f for f in self.findings if f.problem == "missing"]

    def wrong(self) -> list[FieldFinding]:
        return [f for f in self.findings if f.problem == "wrong type"]

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "missing": [{"field": f.field, "key": f.key, "record": f.record, "expected": f.expected}
                        for f in self.missing()],
            "wrong_types": [{"field": f.field, "key": f.key, "record": f.record, "expected": f.expected,
                             "got": f.got, "example": f.example} for f in self.wrong()],
            "tolerated_types": [{"field": f.field, "key": f.key, "record": f.record, "expected": f.expected,
                                 "got": f.got, "example": f.example}
                                for f in self.findings if f.problem == "tolerated"],
            "unknown": self.unknown,
            "proposals": [{"setting": p.setting, "field": p.field, "missing": p.missing, "present": p.wire_key,
                           "example": p.example, "unambiguous": p.unambiguous, "applied": p.applied}
                          for p in self.proposals],
            "structure": self.structure,
        }


def _override_name(table: WireTable, record: str, name: str) -> str:
    owners = sum(1 for rec in table.records for f in rec.fields if f[0] == name)
    return name if owners == 1 else f"{record}.{name}"


def instances(table: WireTable, data: Any, endpoint: str, report: ShapeReport) -> dict[str, list[dict[str, Any]]]:
    """Every record instance of `data`, by record name, walked as the parser walks it."""
    found: dict[str, list[dict[str, Any]]] = {rec.name: [] for rec in table.records}

    def walk(rec: Record, value: Any, at: str) -> None:
        if isinstance(value, dict):
            found[rec.name].append(value)
        for name, key, coercion in rec.fields:
            if not coercion.record:
                continue
            child = table[coercion.record]
            if key == "":  # the records of a list endpoint: data itself, or wrapped in an object
                try:
                    inner: Any = records_of(value, "", endpoint)
                except ParseError as error:
                    report.structure = str(error)
                    _propose_records(table, value, endpoint, report)
                    continue
            elif isinstance(value, dict):
                if key not in value:
                    continue
                inner = value[key]
            else:
                continue
            if coercion.json_type == "array":
                if isinstance(inner, list):
                    for item in inner:
                        walk(child, item, f"{at}.{key}[]")
                elif inner is not None:
                    report.findings.append(FieldFinding(rec.name, name, key, "wrong type", "array", kind_of(inner)))
            elif isinstance(inner, dict):
                walk(child, inner, f"{at}.{key}")
            elif inner is not None:
                report.findings.append(FieldFinding(rec.name, name, key, "wrong type", "object", kind_of(inner)))

    walk(table.records[0], data, "data")
    return found


def _propose_records(table: WireTable, value: Any, endpoint: str, report: ShapeReport) -> None:
    """A list endpoint whose `data` is an object holding its list under an unusual key: name it."""
    if not isinstance(value, dict):
        return
    lists = [k for k, v in value.items() if isinstance(v, list)]
    if len(lists) == 1:
        report.proposals.append(Proposal(endpoint, "records", "records", "(a bare list)", lists[0],
                                         f"[{len(value[lists[0]])} item(s)]", True))


def compare(endpoint: ReadEndpoint[Any], data: Any, overrides: Mapping[str, str] | None = None,
            ctx: ParseContext | None = None) -> ShapeReport:
    """Compare `data` (an answer's `data`) with what `endpoint` reads, `overrides` being its
    `platform.fields` entry."""
    table = endpoint.wire.resolve(tuple(sorted((overrides or {}).items())))
    report = ShapeReport(endpoint.name)
    found = instances(table, data, endpoint.name, report)
    base = ctx or ParseContext()
    for rec in table.records:
        found_here = found[rec.name]
        report.records[rec.name] = len(found_here)
        if not found_here:
            continue
        read_keys = {key for _n, key, _c in rec.fields}
        present: dict[str, Any] = {}
        for instance in found_here:
            for key, value in instance.items():
                if key not in present or (present[key] in (None, "") and value not in (None, "")):
                    present[key] = value
        wrappers = _wrapper_keys(rec, found_here)
        unknown = {key: example(key, value) for key, value in present.items()
                   if key not in read_keys and key not in wrappers}
        if unknown:
            report.unknown[rec.name] = unknown
        missing: list[tuple[str, str, str]] = []
        for name, key, coercion in rec.fields:
            if key not in present:
                if key:  # "" is a list endpoint's records, located above
                    report.findings.append(FieldFinding(rec.name, name, key, "missing", coercion.json_type))
                    missing.append((name, key, coercion.json_type))
                continue
            if coercion.record:
                continue
            for instance in found_here:
                value = instance.get(key)
                if value is None or value == "":
                    continue
                issues: list[str] = []
                ctx_one = ParseContext(flow_unit_bytes=base.flow_unit_bytes, tz=base.tz, location="exact",
                                       issues=issues)
                coercion.read({key: value}, key, ctx_one)
                is_id = coercion.name == "id"
                if issues:
                    report.findings.append(FieldFinding(rec.name, name, key, "wrong type", coercion.json_type,
                                                        kind_of(value), example(key, value, is_id=is_id)))
                    break
                if kind_of(value) != coercion.json_type and not (
                        coercion.json_type == "number" and kind_of(value) == "integer"):
                    report.findings.append(FieldFinding(rec.name, name, key, "tolerated", coercion.json_type,
                                                        kind_of(value), example(key, value, is_id=is_id)))
                    break
        _propose(report, table, rec, missing, unknown, present)
    return report


def _wrapper_keys(rec: Record, instances: list[dict[str, Any]]) -> set[str]:
    """The keys of a list endpoint's `data` object that hold its records (`list`, `rows`...): the
    wrapper the parser unwraps by itself, not an unknown field."""
    if not any(key == "" for _n, key, _c in rec.fields):
        return set()
    out: set[str] = set()
    for instance in instances:
        try:
            inner = records_of(instance, "", "")
        except ParseError:
            continue
        out.update(k for k, v in instance.items() if v is inner)
    return out


def _propose(report: ShapeReport, table: WireTable, rec: Record, missing: list[tuple[str, str, str]],
             unknown: dict[str, str], present: dict[str, Any]) -> None:
    """Pair missing fields with present unknown keys, the most similar pairs first, each key used once."""
    pairs = []
    for name, key, json_type in missing:
        for candidate in unknown:
            if is_secret_key(candidate):
                continue
            score = similarity(key, candidate)
            if score is not None and _compatible(json_type, present[candidate]):
                pairs.append((score, name, key, candidate))
    pairs.sort()
    taken_fields: set[str] = set()
    taken_keys: set[str] = set()
    for score, name, key, candidate in pairs:
        if name in taken_fields or candidate in taken_keys:
            continue
        taken_fields.add(name)
        taken_keys.add(candidate)
        rivals = sum(1 for s, n, _k, c in pairs if n == name and s == score and c != candidate)
        report.proposals.append(Proposal(report.endpoint, _override_name(table, rec.name, name), name, key,
                                         candidate, unknown[candidate], rivals == 0))


def _compatible(json_type: str, value: Any) -> bool:
    """Whether a value could be what a field of `json_type` expects (numbers may come as strings)."""
    kind = kind_of(value)
    if value is None or kind == "null":
        return True
    if json_type in ("object", "array"):
        return kind == json_type
    return kind not in ("object", "array")
