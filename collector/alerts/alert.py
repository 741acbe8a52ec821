"""One alert: a (rule, entity) pair that is pending or firing, with the labels frozen when it became
active, its rendered annotations and its timers. Also its JSON forms (the persisted one and the
public one: `alerts list`, notifications) and its link (`alert_link`, from `alerts.external_url`)."""

from __future__ import annotations

import datetime as dt
import functools
import string
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"
INACTIVE = "inactive"


def iso(ts: float | None) -> str | None:
    """RFC 3339 in UTC with a Z, as Alertmanager and JSON consumers expect."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str | None) -> float | None:
    """The Unix time of an `iso` string (None stays None)."""
    return None if not text else dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def alert_id(rule: str, key: str) -> str:
    """The stable id (fingerprint) of the alert of `rule` on entity `key`: rule names never hold '/'."""
    return f"{rule}/{key}"


@functools.lru_cache(maxsize=8)
def _placeholders(url: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in string.Formatter().parse(url) if name is not None)


def alert_link(external_url: str, labels: Mapping[str, str], alert_id_: str) -> str | None:
    """Where an alert links to (its generatorURL) under `alerts.external_url`:

    - empty: no link;
    - a base URL (a reverse proxy in front of the collector's API): `<base>/api/alerts?id=<id>`;
    - a template with label placeholders (a Grafana dashboard): the alert's label values filled in,
      URL-quoted; an alert without one of those labels (the account's, for a device link) has none.
    """
    if not external_url:
        return None
    names = _placeholders(external_url)
    if not names:
        base = external_url.format_map({}).rstrip("/")
        return f"{base}/api/alerts?id={urllib.parse.quote(alert_id_, safe='/')}"
    if any(not labels.get(name) for name in names):
        return None
    return external_url.format_map({name: urllib.parse.quote(labels[name], safe="") for name in names})


def external_base(external_url: str) -> str:
    """The link of a whole message (`externalURL`): the base URL, or a template's site
    (`https://grafana.example`); empty without `alerts.external_url`."""
    if not external_url or not _placeholders(external_url):
        return external_url.format_map({}).rstrip("/")
    parts = urllib.parse.urlsplit(external_url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(slots=True, eq=False)
class Alert:
    rule: str
    kind: str
    key: str
    state: str
    active_since: float
    labels: dict[str, str]
    annotations: dict[str, str]
    fired_at: float | None = None
    cleared_since: float | None = None  # firing, condition gone since, kept by keep_firing_for
    resolved_at: float | None = None
    last_notified: float | None = None
    value: float | None = None

    @property
    def id(self) -> str:
        return alert_id(self.rule, self.key)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule, "kind": self.kind, "key": self.key, "state": self.state,
            "active_since": self.active_since, "fired_at": self.fired_at,
            "cleared_since": self.cleared_since, "resolved_at": self.resolved_at,
            "last_notified": self.last_notified, "value": self.value, "labels": self.labels,
            "annotations": self.annotations,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alert:
        return cls(rule=str(data["rule"]), kind=str(data["kind"]), key=str(data["key"]), state=str(data["state"]),
                   active_since=float(data["active_since"]), labels=dict(data.get("labels") or {}),
                   annotations=dict(data.get("annotations") or {}), fired_at=data.get("fired_at"),
                   cleared_since=data.get("cleared_since"),
                   resolved_at=data.get("resolved_at"), last_notified=data.get("last_notified"),
                   value=data.get("value"))

    def public(self, silenced_by: str | None = None) -> dict[str, Any]:
        """The alert as `alerts list`, the HTTP API and notification payloads show it."""
        status = RESOLVED if self.resolved_at is not None else self.state
        return {
            "id": self.id, "rule": self.rule, "kind": self.kind, "entity": self.key, "state": status,
            "severity": self.labels.get("severity", ""), "labels": self.labels,
            "annotations": self.annotations, "value": self.value,
            "active_since": iso(self.active_since), "fired_at": iso(self.fired_at),
            "resolved_at": iso(self.resolved_at), "last_notified": iso(self.last_notified),
            "silenced_by": silenced_by,
        }
