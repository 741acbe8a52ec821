"""The log notifier: one structured log line per grouped message (always delivered)."""

from __future__ import annotations

from typing import Any

import structlog

from collector.alerts.notifiers.base import GroupingReceiver

log = structlog.get_logger("collector.alerts")


class LogReceiver(GroupingReceiver):
    type = "log"

    async def deliver(self, message: dict[str, Any], target: int) -> None:
        method = getattr(log, self.config.level)
        method("alert notification", notifier=self.name, title=message["title"], status=message["status"],
               firing=message["firingCount"], resolved=message["resolvedCount"],
               alerts=[f"{a['state']}:{a['id']}" for a in message["alerts"][:20]])
