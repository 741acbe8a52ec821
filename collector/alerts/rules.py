"""Compiled alert rules: the shipped default rules (default_rules.yaml), inline rules and rule files,
merged and compiled into `Rule` objects, with their annotation templates and value expressions.

`compile_rules(config)` is called by the engine (at start and at each reload), by `check-config`
and by `alerts test`; loading the configuration only validates its shape. A bad rule raises
ConfigError naming the key's dotted path: `alerts.rules[2] (WeakSignal).condition: unknown field
'rsi_dbm' for kind device`.

Templates are plain text with `{{ expression }}` placeholders; each placeholder is an expression of
the same language as conditions (so `{{ labels.customer }}` and `{{ human_bytes(remaining_bytes) }}`
work), compiled with the rule: an unknown field in a template is a configuration error too.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from collector.alerts.config import AlertsConfig, RuleConfig
from collector.alerts.expr import Compiled, ExprError, Fn, compile_expr, parse
from collector.config import ConfigError, validation_problems
from collector.state import FIELDS, TIME_FIELDS

# The label naming the entity of each kind (account and collector are singletons).
ID_LABEL = {"device": "device_no", "sim": "iccid"}
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


def format_value(value: Any) -> str:
    """How a value shows in an annotation: None as `unknown`, floats rounded to 2 decimals."""
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.2f}".rstrip("0")
    return str(value)


@dataclass(frozen=True, slots=True)
class Template:
    """An annotation template, compiled: literal text and expression closures, alternating."""

    text: str
    parts: tuple[str | Fn, ...]

    def render(self, record: Any, now: float) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            try:
                out.append(format_value(part(record, now)))
            except Exception:  # a template never breaks a notification
                out.append("?")
        return "".join(out)


def compile_template(text: str, kind: str, params: Mapping[str, Any]) -> Template:
    parts: list[str | Fn] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > pos:
            parts.append(text[pos:match.start()])
        parts.append(compile_expr(match.group(1), kind, FIELDS[kind], params).fn)
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    if "{{" in "".join(p for p in parts if isinstance(p, str)):
        raise ExprError("unclosed {{ placeholder")
    return Template(text, tuple(parts))


@dataclass(eq=False, slots=True)
class Rule:
    """One compiled rule. `identity` changes when anything that shapes its alerts' labels changes."""

    name: str
    kind: str
    condition: Compiled
    clear: Compiled | None
    for_: float
    keep_firing_for: float
    severity: str
    labels: dict[str, str]
    annotations: dict[str, Template]
    value: Fn | None
    source: str
    digest: str
    identity: str
    time_based: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    def alert_labels(self, key: str, record: Any) -> dict[str, str]:
        """Rule labels, then the entity's labels, then alertname, kind, entity id and severity."""
        labels = dict(self.labels)
        entity = getattr(record, "labels", None) or {}
        labels.update({k: str(v) for k, v in entity.items()})
        labels["alertname"] = self.name
        labels["kind"] = self.kind
        id_label = ID_LABEL.get(self.kind)
        if id_label:
            labels[id_label] = key
        labels["severity"] = self.severity
        return {k: v for k, v in labels.items() if v != ""}

    def render(self, record: Any, now: float) -> dict[str, str]:
        return {name: t.render(record, now) for name, t in self.annotations.items()}

    def current_value(self, record: Any, now: float) -> float | None:
        """The rule's value for the record (`value:`, else its fallback), when it is a number."""
        if self.value is None:
            return None
        try:
            v = self.value(record, now)
        except Exception:
            return None
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


# --- default rules ------------------------------------------------------------------------------------


@cache
def _default_document() -> dict[str, Any]:
    text = resources.files("collector.alerts").joinpath("default_rules.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def default_params() -> dict[str, Any]:
    """Thresholds of the default rules (override them in `alerts.params`)."""
    return dict(_default_document().get("params") or {})


def default_rule_configs() -> list[dict[str, Any]]:
    return [dict(r) for r in _default_document().get("rules") or []]


# --- compilation ----------------------------------------------------------------------------------------


def fallback_value(condition: str, kind: str) -> str | None:
    """The value of a rule that names none: the first field its condition orders against a threshold
    (`rssi_dbm < -105` -> rssi_dbm). A condition that only tests states (`online == False`, a status
    `in` a list) has no quantity: None."""
    try:
        tree = parse(condition)
    except ExprError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = (node.left, *node.comparators)
            for i, opnode in enumerate(node.ops):
                if isinstance(opnode, ast.Lt | ast.LtE | ast.Gt | ast.GtE):
                    for side in (sides[i], sides[i + 1]):
                        if isinstance(side, ast.Name) and side.id in FIELDS[kind] and side.id != "labels":
                            return side.id
    return None


def _compile_one(cfg: RuleConfig, params: Mapping[str, Any], source: str, where: str,
                 problems: list[str]) -> Rule | None:
    """Compile one rule; each problem is reported as `<where><key>: <reason>`."""
    kind, fields = cfg.kind, FIELDS[cfg.kind]
    before = len(problems)

    def expr(text: str, key: str) -> Compiled | None:
        try:
            return compile_expr(text, kind, fields, params)
        except ExprError as exc:
            problems.append(f"{where}{key}: {exc}")
            return None

    condition = expr(cfg.condition, "condition")
    clear = expr(cfg.clear, "clear") if cfg.clear is not None else None
    annotations: dict[str, Template] = {}
    for name, text in cfg.annotations.items():
        try:
            annotations[name] = compile_template(text, kind, params)
        except ExprError as exc:
            problems.append(f"{where}annotations.{name}: {exc}")
    if cfg.value is not None:
        value = expr(cfg.value, "value")
    else:
        fallback = fallback_value(cfg.condition, kind)
        value = expr(fallback, "condition") if fallback else None
    if len(problems) > before or condition is None:
        return None
    used = condition.fields | (clear.fields if clear else frozenset())
    dump = cfg.model_dump(mode="json", by_alias=True)
    digest = hashlib.sha256(orjson.dumps({"rule": dump, "params": {k: params.get(k) for k in sorted(params)}},
                                         option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    identity = hashlib.sha256(orjson.dumps([cfg.name, cfg.kind, cfg.severity, cfg.labels],
                                           option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return Rule(name=cfg.name, kind=kind, condition=condition, clear=clear, for_=cfg.for_,
                keep_firing_for=cfg.keep_firing_for, severity=cfg.severity, labels=dict(cfg.labels),
                annotations=annotations, value=value.fn if value else None, source=source, digest=digest,
                identity=identity, time_based=bool(used & TIME_FIELDS), config=dump)


def _read_rule_file(path: Path) -> list[Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if doc is None:
        return []
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and set(doc) <= {"rules"} and isinstance(doc.get("rules", []), list):
        return list(doc.get("rules") or [])
    raise ValueError("must be a list of rules or a mapping with a `rules:` list")


def compile_rules(config: AlertsConfig, source: str = "") -> list[Rule]:
    """Merge and compile the effective rules of `config`. Raises ConfigError (with `source`, the
    configuration file, in its message) listing every bad rule by its dotted path.

    Order: default rules (unless `default_rules: false`), then inline rules, then rule files (a
    relative path is relative to the working directory; `load_config` makes them absolute). A rule
    named like a default rule replaces it; any other duplicate name is an error. `disabled_rules`
    removes rules by name."""
    problems: list[str] = []
    defaults = default_params()
    unknown_overrides = [k for k in config.params if k not in defaults]
    params = {**defaults, **config.params}
    for name in params:
        if any(name in FIELDS[k] for k in FIELDS):
            problems.append(f"alerts.params.{name}: a parameter may not be named like an entity field")

    # (rule, where it comes from, prefix of its problems)
    candidates: list[tuple[RuleConfig, str, str]] = []
    if config.default_rules:
        for raw in default_rule_configs():
            cfg = RuleConfig.model_validate(raw)
            candidates.append((cfg, "default", f"alerts.default_rules: {cfg.name}."))
    for i, cfg in enumerate(config.rules):
        candidates.append((cfg, f"alerts.rules[{i}]", f"alerts.rules[{i}] ({cfg.name})."))
    for f_index, name in enumerate(config.rule_files):
        path = Path(name)
        where = f"alerts.rule_files[{f_index}]: "
        try:
            raw_rules = _read_rule_file(path)
        except OSError as exc:
            problems.append(f"{where}cannot read {path}: {exc.strerror}")
            continue
        except (yaml.YAMLError, ValueError) as exc:
            problems.append(f"{where}{path}: {exc}")
            continue
        for r_index, raw in enumerate(raw_rules):
            label = raw.get("name", "?") if isinstance(raw, dict) else "?"
            try:
                cfg = RuleConfig.model_validate(raw)
            except ValidationError as exc:
                problems += [f"{where}{path}: rules[{r_index}] ({label}).{msg}" for msg in validation_problems(exc)]
                continue
            candidates.append((cfg, str(path), f"{where}{path}: rules[{r_index}] ({cfg.name})."))

    chosen: dict[str, tuple[RuleConfig, str, str]] = {}
    for cfg, origin, where in candidates:
        previous = chosen.get(cfg.name)
        if previous is not None and previous[1] != "default":
            problems.append(f"{where}name: rule {cfg.name!r} is already defined in {previous[1]}")
            continue
        chosen[cfg.name] = (cfg, origin, where)  # a user rule named like a default one replaces it
    for i, name in enumerate(config.disabled_rules):
        if name not in chosen:
            problems.append(f"alerts.disabled_rules[{i}]: no rule named {name!r}")
    disabled = set(config.disabled_rules)

    rules: list[Rule] = []
    used_params: set[str] = set()
    for cfg, origin, where in chosen.values():
        if cfg.name in disabled:
            continue
        for text in (cfg.condition, cfg.clear or "", cfg.value or "", *cfg.annotations.values()):
            used_params.update(p for p in params if re.search(rf"\b{re.escape(p)}\b", text))
        rule = _compile_one(cfg, params, origin, where, problems)
        if rule is not None:
            rules.append(rule)
    for name in unknown_overrides:
        if name not in used_params:
            problems.append(f"alerts.params.{name}: not used by any rule (the default rules' parameters are "
                            f"{', '.join(sorted(defaults))})")
    if problems:
        raise ConfigError(problems, source)
    return rules
