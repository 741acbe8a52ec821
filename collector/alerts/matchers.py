"""Label matchers, as Alertmanager and amtool write them: `name=value`, `name!=value`,
`name=~regex`, `name!~regex` (regexes anchored at both ends; a missing label matches as "").
Used by notifier routing (`match`), silences and maintenance windows."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_MATCHER = re.compile(r"^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|==|=)\s*(.*?)\s*$")


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    op: str  # one of =, !=, =~, !~
    value: str
    pattern: re.Pattern[str] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.pattern is not None
        found = self.pattern.fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def parse_matcher(text: str) -> Matcher:
    """`customer=acme`, `severity=~"critical|warning"`, `alertname!=WeakSignal`. Raises ValueError."""
    match = _MATCHER.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"not a label matcher: {text!r} (write name=value, name!=value, name=~regex "
                         "or name!~regex)")
    name, op, value = match.groups()
    op = "=" if op == "==" else op
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    pattern = None
    if op in ("=~", "!~"):
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"{text!r}: bad regular expression: {exc}") from None
    return Matcher(name, op, value, pattern)


def parse_matchers(texts: Iterable[str]) -> tuple[Matcher, ...]:
    return tuple(parse_matcher(t) for t in texts)


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
