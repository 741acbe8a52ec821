"""The Apprise notifier: direct delivery to DingTalk, WeCom, Feishu, email, Slack, Telegram, generic
JSON webhooks and everything else Apprise knows, one message per group (title + text listing the
alerts). Each URL is a separate target with its own retries, so one dead chat does not make the
others receive duplicates. Apprise is synchronous: it runs in a worker thread.

A signed DingTalk URL (`dingtalk://SECRET@TOKEN/`) is signed the way DingTalk checks it (see
`sign_dingtalk_once`)."""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

from collector.alerts.notifiers.base import Context, GroupingReceiver


def check_url(url: str) -> str | None:
    """Why Apprise cannot use `url`, or None when it can."""
    import apprise

    return None if apprise.Apprise.instantiate(url) is not None else "Apprise does not understand this URL"


def sign_dingtalk_once(plugin: Any) -> None:
    """Make Apprise's DingTalk plugin instance `plugin` send its signature URL-quoted once.

    Apprise (2.3) URL-quotes the base64 signature and then passes it to requests as a query
    parameter, which quotes it again; DingTalk decodes it once, finds `...%3D` where it expects
    `...=`, and refuses the message (errcode 310000 "sign not match", with HTTP 200, so Apprise
    even counts it delivered). Unquoting what Apprise computed leaves requests' quoting as the only
    one, and is a no-op on a signature that is not quoted."""
    compute = plugin.get_signature

    def get_signature() -> tuple[str, str]:
        timestamp, signature = compute()
        return timestamp, urllib.parse.unquote(signature if isinstance(signature, str) else signature.decode())

    plugin.get_signature = get_signature


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
                for plugin in obj:
                    if self.config.min_interval is not None:  # Apprise throttles each service instance on its own
                        plugin.request_rate_per_sec = self.config.min_interval
                    if getattr(plugin, "secure_protocol", None) == "dingtalk" and getattr(plugin, "secret", None):
                        sign_dingtalk_once(plugin)
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
