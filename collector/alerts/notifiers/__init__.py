"""Notifiers: where alert notifications go. One module per kind (alertmanager, apprise, webhook,
log); `base` holds routing, grouping, queues and retries; `build_receiver` maps a notifier's
configuration to its run-time object."""

from __future__ import annotations

from typing import Any

from collector.alerts.notifiers.alertmanager import AlertmanagerReceiver
from collector.alerts.notifiers.apprise import AppriseReceiver
from collector.alerts.notifiers.base import Context, Receiver
from collector.alerts.notifiers.log import LogReceiver
from collector.alerts.notifiers.webhook import WebhookReceiver

RECEIVERS: dict[str, type[Receiver]] = {
    "alertmanager": AlertmanagerReceiver,
    "apprise": AppriseReceiver,
    "log": LogReceiver,
    "webhook": WebhookReceiver,
}


def build_receiver(config: Any, ctx: Context) -> Receiver:
    return RECEIVERS[config.type](config, ctx)


__all__ = ["RECEIVERS", "Context", "Receiver", "build_receiver"]
