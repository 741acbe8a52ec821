"""What every notifier shares: routing (`match`), its own delivery queue with bounded retries and
exponential backoff (so one receiver that is down never delays or loses another's notifications),
the NOTIFICATIONS{notifier,outcome} counters, and, for the grouping notifiers (log, webhook, apprise),
Alertmanager-style aggregation groups:

- alerts sharing the `group_by` label values form a group; the first message of a new group waits
  `group_wait` (so an outage's alerts arrive together), later ones are considered every
  `group_interval`;
- a message goes out when the group has an alert not in the previous message (new firing) or a
  resolved one that was notified (`send_resolved`), or, with nothing new, every `repeat_interval`
  while alerts fire;
- silenced alerts are left out, firing and resolved alike.

Retries wait as `collector.retry.Backoff` says, at least as long as a `Retry-After` in the refusal
asks (`DeliveryError.retry_after`).

Outcomes counted: `sent` (a message accepted by one target), `failed` (one failed attempt, to be
retried), `dropped` (given up: attempts exhausted or the queue full).
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from collector import metrics
from collector.alerts.alert import Alert, iso
from collector.alerts.matchers import matches_all, parse_matchers
from collector.logs import redact_text
from collector.retry import Backoff

log = structlog.get_logger("collector.alerts.notify")


class Context(Protocol):
    """What a notifier needs from the engine."""

    external_url: str

    def get_alert(self, alert_id: str) -> Alert | None: ...

    def silenced_by(self, labels: Mapping[str, str], now: float) -> str | None: ...

    def clock(self) -> float: ...


class DeliveryError(Exception):
    """A receiver refused a delivery; `retry_after`: how long it asked us to wait (its Retry-After)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_delay(retry: Any, attempt: int, retry_after: float | None) -> float:
    """Seconds to wait after failed attempt `attempt` under a notifier's `retry` settings (the caller
    counts attempts against `retry.max_attempts`)."""
    return Backoff(retry.backoff_initial, retry.backoff_max).delay(attempt, retry_after) or 0.0


def count(notifier: str, outcome: str, n: int = 1) -> None:
    metrics.NOTIFICATIONS.labels(notifier, outcome).inc(n)


class Receiver(ABC):
    """One configured notifier at run time."""

    type: str = ""

    def __init__(self, config: Any, ctx: Context) -> None:
        self.config = config
        self.name: str = config.name
        self.matchers = parse_matchers(config.match)
        self.ctx = ctx
        self.dirty = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        for outcome in ("sent", "failed", "dropped"):
            metrics.NOTIFICATIONS.labels(self.name, outcome)  # exported at 0 from the start

    def accepts(self, labels: Mapping[str, str]) -> bool:
        return matches_all(self.matchers, labels)

    @abstractmethod
    def firing(self, alert: Alert, now: float) -> None:
        """An alert routed here started firing (or is re-announced after a restart or reload)."""

    @abstractmethod
    def resolved(self, alert: Alert, now: float) -> None:
        """An alert routed here resolved."""

    @abstractmethod
    def tick(self, now: float) -> None:
        """Timers: turn what is due into deliveries. Synchronous and cheap."""

    @abstractmethod
    async def run(self) -> None:
        """The delivery worker (one task per notifier)."""

    @abstractmethod
    def backlog(self) -> int:
        """Deliveries waiting (0 when idle)."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any]: ...

    @abstractmethod
    def restore(self, data: Mapping[str, Any]) -> None: ...

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._guarded(), name=f"notifier-{self.name}")

    async def _guarded(self) -> None:
        while True:
            try:
                await self.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in one notifier must not end its deliveries for good
                log.error("notifier crashed, restarting", notifier=self.name,
                          error=redact_text(f"{type(exc).__name__}: {exc}"))
                await asyncio.sleep(1.0)

    def idle(self) -> bool:
        return self.backlog() == 0 and not self._busy

    async def stop(self, within: float) -> None:
        """Let in-flight and queued deliveries finish for up to `within` seconds, then cancel."""
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        # Polling: the condition spans the queue, the worker and the clock.
        while not self.idle() and loop.time() < deadline and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._task = None
        await self.close()

    async def close(self) -> None:  # noqa: B027 - optional hook, most notifiers hold nothing
        """Release clients (HTTP sessions...)."""


# --- grouping notifiers ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    key: str
    labels: dict[str, str]
    next_flush: float
    firing: set[str] = field(default_factory=set)
    resolved: dict[str, dict[str, Any]] = field(default_factory=dict)
    notified: set[str] = field(default_factory=set)
    last_sent: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "next_flush": self.next_flush, "firing": sorted(self.firing),
                "resolved": self.resolved, "notified": sorted(self.notified), "last_sent": self.last_sent}

    @classmethod
    def from_json(cls, key: str, data: Mapping[str, Any]) -> Group:
        return cls(key=key, labels=dict(data.get("labels") or {}), next_flush=float(data["next_flush"]),
                   firing=set(data.get("firing") or ()), resolved=dict(data.get("resolved") or {}),
                   notified=set(data.get("notified") or ()), last_sent=data.get("last_sent"))


def _common(items: list[Mapping[str, str]]) -> dict[str, str]:
    if not items:
        return {}
    common = dict(items[0])
    for other in items[1:]:
        common = {k: v for k, v in common.items() if other.get(k) == v}
    return common


def _line(alert: Mapping[str, Any]) -> str:
    annotations = alert.get("annotations") or {}
    text = annotations.get("summary") or f"{alert.get('rule')} on {alert.get('entity')}"
    return f"- {text}"


def render_text(message: Mapping[str, Any]) -> str:
    """The plain-text body of a grouped message (email, chat, log)."""
    lines: list[str] = []
    firing = [a for a in message["alerts"] if a["state"] != "resolved"]
    resolved = [a for a in message["alerts"] if a["state"] == "resolved"]
    if message["firingCount"]:
        lines.append(f"Firing ({message['firingCount']}):")
        lines += [_line(a) for a in firing]
        hidden = message["firingCount"] - len(firing)
        if hidden:
            lines.append(f"- ... and {hidden} more")
    if message["resolvedCount"]:
        if lines:
            lines.append("")
        lines.append(f"Resolved ({message['resolvedCount']}):")
        lines += [_line(a) for a in resolved]
        hidden = message["resolvedCount"] - len(resolved)
        if hidden:
            lines.append(f"- ... and {hidden} more")
    if len(firing) == 1 and not resolved and firing[0]["annotations"].get("description"):
        lines += ["", firing[0]["annotations"]["description"]]
    if message.get("externalURL"):
        lines += ["", f"Alerts: {message['externalURL']}"]
    return "\n".join(lines)


def title_of(message: Mapping[str, Any]) -> str:
    counts = []
    if message["firingCount"]:
        counts.append(f"FIRING:{message['firingCount']}")
    if message["resolvedCount"]:
        counts.append(f"RESOLVED:{message['resolvedCount']}")
    group = " ".join(f"{k}={v}" for k, v in message["groupLabels"].items() if k != "alertname")
    name = message["groupLabels"].get("alertname") or message["commonLabels"].get("alertname") or "alerts"
    return f"[{', '.join(counts)}] {name}" + (f" ({group})" if group else "")


class GroupingReceiver(Receiver):
    """A notifier that gets one message per group of alerts; subclasses say how to deliver it."""

    def __init__(self, config: Any, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.groups: dict[str, Group] = {}
        self.queue: deque[dict[str, Any]] = deque()
        self._inflight: dict[str, Any] | None = None

    # --- delivery (subclasses) ---

    def targets(self) -> int:
        """How many independent destinations one message goes to (Apprise: one per URL)."""
        return 1

    @abstractmethod
    async def deliver(self, message: dict[str, Any], target: int) -> None:
        """Send `message` to destination `target`; raise on failure."""

    # --- grouping ---

    def _group_key(self, labels: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        values = {k: labels[k] for k in self.config.group_by if labels.get(k)}
        return "|".join(f"{k}={labels.get(k, '')}" for k in self.config.group_by), values

    def firing(self, alert: Alert, now: float) -> None:
        key, values = self._group_key(alert.labels)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(key, values, next_flush=now + self.config.group_wait)
        if alert.id not in group.firing:
            group.firing.add(alert.id)
            group.resolved.pop(alert.id, None)
            self.dirty = True

    def resolved(self, alert: Alert, now: float) -> None:
        key, _ = self._group_key(alert.labels)
        group = self.groups.get(key)
        if group is None:
            return
        group.firing.discard(alert.id)
        if alert.id in group.notified:
            group.resolved[alert.id] = alert.public()
        if not group.firing and not group.resolved:
            del self.groups[key]
        self.dirty = True

    def tick(self, now: float) -> None:
        for group in [g for g in self.groups.values() if g.next_flush <= now]:
            self._flush(group, now)

    def next_due(self) -> float | None:
        return min((g.next_flush for g in self.groups.values()), default=None)

    def _flush(self, group: Group, now: float) -> None:
        cfg = self.config
        firing: list[Alert] = []
        for alert_id in sorted(group.firing):
            alert = self.ctx.get_alert(alert_id)
            if alert is None or alert.resolved_at is not None:
                group.firing.discard(alert_id)
            elif self.ctx.silenced_by(alert.labels, now) is None:
                firing.append(alert)
        resolved = [a for a in group.resolved.values() if self.ctx.silenced_by(a["labels"], now) is None]
        ids = {a.id for a in firing}
        send = bool(ids - group.notified) or (bool(resolved) and cfg.send_resolved)
        if not send and firing and group.last_sent is not None and now - group.last_sent >= cfg.repeat_interval:
            send = True
        if send:
            self.enqueue(self.message(group, firing, resolved if cfg.send_resolved else [], now))
            group.last_sent = now
            for alert in firing:
                alert.last_notified = now
        group.notified = ids
        group.resolved.clear()
        if group.firing:
            group.next_flush = now + cfg.group_interval
        else:
            del self.groups[group.key]
        self.dirty = True

    def message(self, group: Group, firing: list[Alert], resolved: list[dict[str, Any]], now: float) -> dict[str, Any]:
        """The JSON document of one grouped notification (the webhook payload, documented)."""
        limit = self.config.max_alerts
        shown_firing = [a.public() for a in firing[:limit]]
        shown_resolved = resolved[:max(limit - len(shown_firing), 0)]
        all_labels = [a.labels for a in firing] + [a["labels"] for a in resolved]
        all_annotations = [a.annotations for a in firing] + [a["annotations"] for a in resolved]
        message: dict[str, Any] = {
            "version": "1",
            "receiver": self.name,
            "status": "firing" if firing else "resolved",
            "groupKey": group.key,
            "groupLabels": group.labels,
            "commonLabels": _common(all_labels),
            "commonAnnotations": _common(all_annotations),
            "externalURL": self.ctx.external_url,
            "firingCount": len(firing),
            "resolvedCount": len(resolved),
            "truncatedAlerts": len(firing) + len(resolved) - len(shown_firing) - len(shown_resolved),
            "sentAt": iso(now),
            "alerts": shown_firing + shown_resolved,
        }
        message["title"] = title_of(message)
        message["text"] = render_text(message)
        return message

    # --- queue ---

    def enqueue(self, message: dict[str, Any]) -> None:
        if len(self.queue) >= self.config.max_queue:
            victim = 1 if (self._inflight is not None and self.queue and self.queue[0] is self._inflight) else 0
            if victim < len(self.queue):
                dropped = self.queue[victim]
                del self.queue[victim]
                count(self.name, "dropped", len(dropped.get("targets") or [0]))
                log.error("notification queue full: oldest message dropped", notifier=self.name,
                          title=dropped["message"].get("title"))
        self.queue.append({"message": message, "attempts": 0, "targets": list(range(self.targets()))})
        self.dirty = True
        self._wake.set()

    def backlog(self) -> int:
        return len(self.queue)

    async def run(self) -> None:
        retry = self.config.retry
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._inflight = self.queue[0]
            self._busy = True
            retry_after: float | None = None
            try:
                failed: list[int] = []
                for target in list(item["targets"]):
                    try:
                        await asyncio.wait_for(self.deliver(item["message"], target), self.config.timeout)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        if isinstance(exc, DeliveryError) and exc.retry_after is not None:
                            retry_after = max(retry_after or 0.0, exc.retry_after)
                        failed.append(target)
                        count(self.name, "failed")
                        log.warning("notification failed", notifier=self.name, attempt=item["attempts"] + 1,
                                    error=redact_text(f"{type(exc).__name__}: {exc}"))
                    else:
                        count(self.name, "sent")
                item["attempts"] += 1
                item["targets"] = failed
                self.dirty = True
                if not failed or item["attempts"] >= retry.max_attempts:
                    if failed:
                        count(self.name, "dropped", len(failed))
                        log.error("notification dropped after retries", notifier=self.name,
                                  attempts=item["attempts"], title=item["message"].get("title"))
                    if self.queue and self.queue[0] is item:
                        self.queue.popleft()
                    continue
            finally:
                self._inflight = None
                self._busy = False
            await asyncio.sleep(retry_delay(retry, item["attempts"], retry_after))

    # --- persistence ---

    def snapshot(self) -> dict[str, Any]:
        return {"type": self.type, "groups": {k: g.to_json() for k, g in self.groups.items()},
                "queue": list(self.queue)}

    def restore(self, data: Mapping[str, Any]) -> None:
        self.groups = {}
        for key, g in (data.get("groups") or {}).items():
            try:
                self.groups[key] = Group.from_json(key, g)
            except (KeyError, TypeError, ValueError):
                continue
        targets = self.targets()
        self.queue = deque(
            {**item, "targets": [t for t in item.get("targets", range(targets)) if t < targets]}
            for item in data.get("queue") or () if isinstance(item, dict) and "message" in item)
        if self.queue:
            self._wake.set()

