"""The Prometheus Alertmanager notifier (API v2, `POST /api/v2/alerts`).

Alertmanager groups, deduplicates, routes and notifies by itself, so this notifier behaves like
Prometheus does towards it: every firing alert is posted with `startsAt` (when it fired), `endsAt` in
the future (four resend intervals ahead, so Alertmanager resolves it by itself if the collector dies)
and re-posted every `resend_interval`; a resolved alert is posted with `endsAt` = its resolution
time. Alertmanager recognises the same alert by its label set, so re-posting never notifies twice.

Silences: an alert silenced here is not posted at all; one Alertmanager already has keeps being
refreshed until it resolves (dropping it would make Alertmanager announce a false resolution).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx
import orjson
import structlog

from collector import __version__
from collector.alerts.alert import Alert, iso
from collector.alerts.notifiers.base import Context, DeliveryError, Receiver, count, retry_delay
from collector.logs import redact_text
from collector.retry import parse_retry_after

log = structlog.get_logger("collector.alerts.notify")


class AlertmanagerReceiver(Receiver):
    type = "alertmanager"

    def __init__(self, config: Any, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.firing_ids: set[str] = set()
        self.posted: set[str] = set()  # firing alerts Alertmanager has accepted
        self.resolved_alerts: dict[str, dict[str, Any]] = {}  # to post once
        self.last_full: float | None = None
        self.attempts = 0
        self._due = False
        self._client: httpx.AsyncClient | None = None

    def firing(self, alert: Alert, now: float) -> None:
        if alert.id not in self.firing_ids:
            self.firing_ids.add(alert.id)
            self.resolved_alerts.pop(alert.id, None)
            self.dirty = True

    def resolved(self, alert: Alert, now: float) -> None:
        self.firing_ids.discard(alert.id)
        if alert.id in self.posted:
            self.posted.discard(alert.id)
            if len(self.resolved_alerts) >= self.config.max_queue:
                oldest = next(iter(self.resolved_alerts))
                del self.resolved_alerts[oldest]
                count(self.name, "dropped")
            self.resolved_alerts[alert.id] = self._payload(alert, ends_at=alert.resolved_at or now)
        self.dirty = True

    def _payload(self, alert: Alert, ends_at: float) -> dict[str, Any]:
        return {
            "labels": alert.labels,
            "annotations": alert.annotations,
            "startsAt": iso(alert.fired_at or alert.active_since),
            "endsAt": iso(ends_at),
            "generatorURL": f"{self.ctx.external_url}/api/alerts?id={alert.id}",
        }

    def _batch(self, now: float) -> tuple[list[dict[str, Any]], list[str], list[str], bool]:
        """What to post now: (payload, firing ids in it, resolved ids in it, is a full resend)."""
        full = self.last_full is None or now - self.last_full >= self.config.resend_interval
        valid_until = now + 4 * self.config.resend_interval
        payload: list[dict[str, Any]] = []
        firing: list[str] = []
        for alert_id in sorted(self.firing_ids):
            alert = self.ctx.get_alert(alert_id)
            if alert is None:
                continue
            if alert_id not in self.posted and self.ctx.silenced_by(alert.labels, now) is not None:
                continue
            if full or alert_id not in self.posted:
                payload.append(self._payload(alert, ends_at=valid_until))
                firing.append(alert_id)
        resolved = list(self.resolved_alerts)
        payload += [self.resolved_alerts[i] for i in resolved]
        return payload, firing, resolved, full

    def tick(self, now: float) -> None:
        payload, _, _, _ = self._batch(now)
        if payload:
            self._due = True
            self._wake.set()

    def backlog(self) -> int:
        return len(self.resolved_alerts) + len(self.firing_ids - self.posted) if self._due else 0

    async def _post(self, payload: list[dict[str, Any]]) -> None:
        if self._client is None:
            auth = None
            if self.config.username:
                password = self.config.password.get_secret_value() if self.config.password else ""
                auth = httpx.BasicAuth(self.config.username, password)
            self._client = httpx.AsyncClient(timeout=self.config.timeout, auth=auth,
                                             headers={"User-Agent": f"iot-collector/{__version__}"})
        url = str(self.config.url).rstrip("/") + "/api/v2/alerts"
        response = await self._client.post(url, content=orjson.dumps(payload),
                                           headers={"Content-Type": "application/json"})
        if response.status_code >= 300:
            raise DeliveryError(f"HTTP {response.status_code} from Alertmanager: {response.text[:200]}",
                                parse_retry_after(response.headers.get("Retry-After")))

    async def run(self) -> None:
        retry = self.config.retry
        while True:
            if not self._due:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self.ctx.clock()
            payload, firing, resolved, full = self._batch(now)
            if not payload:
                self._due = False
                continue
            self._busy = True
            try:
                await asyncio.wait_for(self._post(payload), self.config.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.attempts += 1
                count(self.name, "failed")
                log.warning("Alertmanager post failed", notifier=self.name, attempt=self.attempts,
                            alerts=len(payload), error=redact_text(f"{type(exc).__name__}: {exc}"))
                if self.attempts >= retry.max_attempts:
                    # Firing alerts are re-posted at the next resend anyway; resolved ones are given up.
                    if resolved:
                        count(self.name, "dropped", len(resolved))
                        for alert_id in resolved:
                            self.resolved_alerts.pop(alert_id, None)
                    self.attempts = 0
                    self.last_full = now
                    self._due = False
                    self.dirty = True
                    continue
                retry_after = exc.retry_after if isinstance(exc, DeliveryError) else None
                await asyncio.sleep(retry_delay(retry, self.attempts, retry_after))
                continue
            finally:
                self._busy = False
            count(self.name, "sent")
            self.attempts = 0
            self.posted.update(firing)
            for alert_id in resolved:
                self.resolved_alerts.pop(alert_id, None)
            for alert_id in firing:
                alert = self.ctx.get_alert(alert_id)
                if alert is not None:
                    alert.last_notified = now
            if full:
                self.last_full = now
            self._due = False
            self.dirty = True

    def snapshot(self) -> dict[str, Any]:
        return {"type": self.type, "firing": sorted(self.firing_ids), "posted": sorted(self.posted),
                "resolved": self.resolved_alerts, "last_full": self.last_full}

    def restore(self, data: Mapping[str, Any]) -> None:
        self.firing_ids = set(data.get("firing") or ())
        self.posted = set(data.get("posted") or ())
        self.resolved_alerts = dict(data.get("resolved") or {})
        self.last_full = data.get("last_full")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
