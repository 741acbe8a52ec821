"""The generic webhook notifier: POSTs the grouped message (the JSON document described in
docs/alerts.md) to a URL; with a `secret`, signs the exact body with HMAC-SHA256 in the
`X-IoT-Collector-Signature: sha256=<hex>` header."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx
import orjson

from collector import __version__
from collector.alerts.notifiers.base import DeliveryError, GroupingReceiver
from collector.retry import parse_retry_after

SIGNATURE_HEADER = "X-IoT-Collector-Signature"


def sign(secret: str, body: bytes) -> str:
    """The signature header value for `body`: `sha256=` + hex HMAC-SHA256 with the shared secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookReceiver(GroupingReceiver):
    type = "webhook"
    _client: httpx.AsyncClient | None = None

    async def deliver(self, message: dict[str, Any], target: int) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.config.timeout,
                                             headers={"User-Agent": f"iot-collector/{__version__}"})
        body = orjson.dumps(message)
        headers = {"Content-Type": "application/json", **self.config.headers}
        if self.config.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.config.secret.get_secret_value(), body)
        response = await self._client.post(str(self.config.url), content=body, headers=headers)
        if response.status_code >= 300:
            raise DeliveryError(f"HTTP {response.status_code} from the webhook",
                                parse_retry_after(response.headers.get("Retry-After")))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
