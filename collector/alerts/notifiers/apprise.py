"""The Apprise notifier: direct delivery to DingTalk, WeCom, Feishu, email, Slack, Telegram, generic
JSON webhooks and everything else Apprise knows, one message per group (title + text listing the
alerts). Each URL is a separate target with its own retries, so one dead chat does not make the
others receive duplicates. Apprise is synchronous: it runs in a worker thread."""

from __future__ import annotations

import asyncio
from typing import Any

from collector.alerts.notifiers.base import Context, GroupingReceiver


def check_url(url: str) -> str | None:
    """Why Apprise cannot use `url`, or None when it can."""
    import apprise

    return None if apprise.Apprise.instantiate(url) is not None else "Apprise does not understand this URL"


class AppriseReceiver(GroupingReceiver):
    type = "apprise"

    def __init__(self, config: Any, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._objects: list[Any] | None = None

    def targets(self) -> int:
        return len(self.config.urls)

    def _apprise(self, target: int) -> Any:
        if self._objects is None:
            import apprise

            objects = []
            for url in self.config.urls:
                obj = apprise.Apprise()
                obj.add(url.get_secret_value())
                if self.config.min_interval is not None:
                    for plugin in obj:  # Apprise throttles each service instance on its own
                        plugin.request_rate_per_sec = self.config.min_interval
                objects.append(obj)
            self._objects = objects
        return self._objects[target]

    async def deliver(self, message: dict[str, Any], target: int) -> None:
        import apprise

        obj = self._apprise(target)
        body = message["text"]
        body_format = apprise.NotifyFormat.MARKDOWN if self.config.format == "markdown" else apprise.NotifyFormat.TEXT
        notify_type = apprise.NotifyType.FAILURE if message["status"] == "firing" else apprise.NotifyType.SUCCESS
        ok = await asyncio.to_thread(obj.notify, body=body, title=message["title"], body_format=body_format,
                                     notify_type=notify_type)
        if not ok:
            raise RuntimeError(f"Apprise could not deliver to URL #{target + 1}")
