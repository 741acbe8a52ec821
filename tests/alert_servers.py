"""Real receivers for the alerting end-to-end tests, all on loopback:

- `AlertmanagerServer`: Debian's `prometheus-alertmanager`, started with a temporary configuration
  (clustering off, storage in a temp dir) that routes every alert to a webhook of `HttpReceiver`,
  so a test can count Alertmanager's own notifications as well as query its API v2;
- `HttpReceiver`: an aiohttp server recording every JSON POST by path (Apprise `json://`, the
  generic webhook, Alertmanager's webhook);
- `SmtpReceiver`: an aiosmtpd SMTP server recording every message (Apprise `mailto://`).
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.servers import ServerUnavailable, _Server, find_binary, free_port

ALERTMANAGER = os.environ.get("ALERTMANAGER", "/usr/bin/prometheus-alertmanager")


class AlertmanagerServer(_Server):
    """Alertmanager that forwards every notification (firing and resolved) to `webhook_url`."""

    name = "alertmanager"
    ready_path = "/-/ready"

    def __init__(self, root: Path, webhook_url: str) -> None:
        self.binary = find_binary(ALERTMANAGER, "prometheus-alertmanager")
        super().__init__(root)
        self.config_path = root / "alertmanager.yml"
        self.config_path.write_text(f"""
route:
  receiver: hook
  group_by: [alertname, customer]
  group_wait: 500ms
  group_interval: 500ms
  repeat_interval: 1h
  routes:
    # Alerts whose startsAt is older than group_wait are flushed at once, as they arrive: a batch
    # of hundreds needs a group_wait longer than its own age to land in one notification (its
    # polls' answers may be seconds old by the time they are evaluated on a busy host).
    - matchers: [bulk="yes"]
      group_wait: 10s
receivers:
  - name: hook
    webhook_configs:
      - url: {webhook_url}
        send_resolved: true
""")

    def command(self) -> list[str]:
        return [self.binary, f"--config.file={self.config_path}", f"--storage.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
                "--log.level=warn"]

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """GET /api/v2/alerts, filtered by label equality (`alertname="DeviceOffline"`)."""
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("filter", f'{k}="{v}"') for k, v in filters.items()]
        response = httpx.get(self.url + "/api/v2/alerts", params=params, timeout=5.0)
        response.raise_for_status()
        return list(response.json())


def start_alertmanager(root: Path, webhook_url: str) -> AlertmanagerServer:
    server = AlertmanagerServer(root, webhook_url)
    server.start()
    return server


class HttpReceiver:
    """Records JSON POSTs in a background thread: `received[path]` is a list of (headers, raw body,
    parsed JSON). Paths in `fail_paths` answer 503."""

    def __init__(self) -> None:
        self.received: dict[str, list[tuple[dict[str, str], bytes, Any]]] = {}
        self.fail_paths: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                if path in receiver.fail_paths:
                    self.send_response(503)
                    self.end_headers()
                    return
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                with receiver._lock:
                    receiver.received.setdefault(path, []).append((dict(self.headers), body, parsed))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def bodies(self, path: str) -> list[Any]:
        with self._lock:
            return [parsed for _h, _b, parsed in self.received.get(path, [])]

    def requests(self, path: str) -> list[tuple[dict[str, str], bytes, Any]]:
        with self._lock:
            return list(self.received.get(path, []))


class _SmtpHandler:
    def __init__(self, messages: list[email.message.EmailMessage]) -> None:
        self.messages = messages

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(message)
        return "250 Message accepted for delivery"


class SmtpReceiver:
    """A plain SMTP server (no TLS, no auth) on loopback, keeping every message."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.port = free_port()
        self._controller: Any = None

    def start(self) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError as exc:  # pragma: no cover - a dev dependency
            raise ServerUnavailable(f"aiosmtpd is not installed: {exc}") from None
        self._controller = Controller(_SmtpHandler(self.messages), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()

    def apprise_url(self, to: str = "ops@example.com") -> str:
        """An Apprise URL for this server: plain SMTP on its port (mailto://, not mailtos://)."""
        return f"mailto://localhost:{self.port}?smtp=127.0.0.1&from=alerts@example.com&to={to}"

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]


async def wait_for(predicate: Any, within: float = 10.0, interval: float = 0.05) -> bool:
    """Poll `predicate()` until it is true or `within` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())
