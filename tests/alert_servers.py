"""Real receivers for the alerting end-to-end tests, all on loopback:

- `AlertmanagerServer`: Debian's `prometheus-alertmanager`, started with a temporary configuration
  (clustering off, storage in a temp dir) that routes every alert to a webhook of `HttpReceiver`,
  so a test can count Alertmanager's own notifications as well as query its API v2;
- `HttpReceiver`: an HTTP server (a thread) recording every JSON POST by path (Apprise `json://`, the
  generic webhook, Alertmanager's webhook);
- `SmtpReceiver`: an aiosmtpd SMTP server recording every message (Apprise `mailto://`);
- `ChatRobots`: DingTalk, WeCom and Feishu robots behind an HTTPS proxy, with their checks
  (DingTalk's signature and keywords, message sizes, rate limits), reached through Apprise's own
  `dingtalk://`, `wecombot://` and `feishu://` URLs.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.message
import email.policy
import hashlib
import hmac
import json
import os
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
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


class _ThreadedHttp:
    """An HTTP server on a free loopback port, served from a background thread between start and stop."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
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


class HttpReceiver(_ThreadedHttp):
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

        self._serve(Handler)

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


# --- chat robots --------------------------------------------------------------------------------------------

ROBOT_HOSTS = ("oapi.dingtalk.com", "qyapi.weixin.qq.com", "open.feishu.cn")


def make_robot_certificates(root: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate it signed for the robots' hosts: (ca.pem, cert.pem, key.pem).
    A process trusting ca.pem (REQUESTS_CA_BUNDLE) reaches the stand-in below as if it were them."""
    openssl = find_binary("/usr/bin/openssl", "openssl")
    root.mkdir(parents=True, exist_ok=True)
    ca, ca_key, cert, key, csr = (root / n for n in ("ca.pem", "ca.key", "cert.pem", "cert.key", "cert.csr"))
    ext = root / "ext.cnf"
    ext.write_text("subjectAltName=" + ",".join(f"DNS:{h}" for h in ROBOT_HOSTS) + "\n"
                   "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    for command in (
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=iot-collector test robots CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", f"/CN={ROBOT_HOSTS[0]}"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ):
        subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=60)
    return ca, cert, key


@dataclass
class RobotMessage:
    """One request a robot received: which service, when, its query, its JSON body (raw and parsed),
    the text it carries, and the robot's answer (errcode 0: accepted)."""

    service: str
    at: float
    path: str
    query: dict[str, str]
    raw: bytes
    body: Any
    text: str
    errcode: int
    errmsg: str


class ChatRobots(_ThreadedHttp):
    """DingTalk, WeCom and Feishu custom robots on loopback, behind an HTTPS proxy: a client given
    `HTTPS_PROXY=<proxy_url>` and the CA opens a tunnel to oapi.dingtalk.com (or the others) and talks
    TLS to this server. Each robot checks what the real one checks and answers as it does (HTTP 200
    with an error code in the body when it refuses):

    - DingTalk (`/robot/send?access_token=`): with a `secret` (加签), `timestamp` (ms, within an hour)
      and `sign` = base64(HMAC-SHA256(secret, f"{timestamp}\\n{secret}")); with `keywords`
      (自定义关键词), the text must hold one; 20 messages a minute; 20000 bytes.
    - WeCom (`/cgi-bin/webhook/send?key=`): 20 messages a minute; a text of at most 2048 bytes.
    - Feishu (`/open-apis/bot/v2/hook/<token>`): 100 a minute and 5 a second.
    """

    def __init__(self, cert: Path, key: Path, dingtalk_secret: str = "", keywords: tuple[str, ...] = ()) -> None:
        self.dingtalk_secret = dingtalk_secret
        self.keywords = keywords
        self.messages: list[RobotMessage] = []
        self._lock = threading.Lock()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(cert), str(key))
        robots = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            host = ""

            def do_CONNECT(self) -> None:  # the proxy: answer, then speak TLS as the robot's host
                self.host = self.path.rsplit(":", 1)[0]
                if self.host not in ROBOT_HOSTS:
                    self.send_error(403, "only the robots' hosts")
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                self.connection = tls.wrap_socket(self.connection, server_side=True)
                self.rfile = self.connection.makefile("rb")
                self.wfile = self.connection.makefile("wb")
                self.close_connection = False

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                answer = robots.receive(self.host, url.path, query, raw)
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._serve(Handler)

    @property
    def proxy_url(self) -> str:
        return self.url

    def of(self, service: str, accepted: bool = True) -> list[RobotMessage]:
        with self._lock:
            return [m for m in self.messages if m.service == service and (m.errcode == 0) == accepted]

    def _recent(self, service: str, now: float, within: float) -> int:
        return sum(1 for m in self.messages if m.service == service and m.errcode == 0 and now - m.at < within)

    def receive(self, host: str, path: str, query: dict[str, str], raw: bytes) -> dict[str, Any]:
        now = time.time()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            if host == "oapi.dingtalk.com" and path == "/robot/send":
                service, text = "dingtalk", str(((body or {}).get("text") or {}).get("content", ""))
                errcode, errmsg = self._dingtalk(query, text, raw, now)
                answer: dict[str, Any] = {"errcode": errcode, "errmsg": errmsg}
            elif host == "qyapi.weixin.qq.com" and path == "/cgi-bin/webhook/send":
                service, text = "wecom", str(((body or {}).get("text") or {}).get("content", ""))
                errcode, errmsg = ((45009, "api freq out of limit") if self._recent("wecom", now, 60) >= 20 else
                                   (40058, "content exceed max length 2048 bytes")
                                   if len(text.encode()) > 2048 else (0, "ok"))
                answer = {"errcode": errcode, "errmsg": errmsg}
            elif host == "open.feishu.cn" and path.startswith("/open-apis/bot/v2/hook/"):
                service, text = "feishu", str(((body or {}).get("content") or {}).get("text", ""))
                limited = self._recent("feishu", now, 60) >= 100 or self._recent("feishu", now, 1) >= 5
                errcode, errmsg = (11232, "frequency limited") if limited else (0, "success")
                answer = {"code": errcode, "msg": errmsg, "data": {}}
            else:
                service, text, errcode, errmsg = host, "", 404, f"no robot at {host}{path}"
                answer = {"errcode": 404, "errmsg": errmsg}
            self.messages.append(RobotMessage(service, now, path, query, raw, body, text, errcode, errmsg))
        return answer

    def _dingtalk(self, query: dict[str, str], text: str, raw: bytes, now: float) -> tuple[int, str]:
        if self.dingtalk_secret:
            timestamp = query.get("timestamp", "")
            if not timestamp.isdigit() or abs(now * 1000 - int(timestamp)) > 3600_000:
                return 310000, "invalid timestamp"
            digest = hmac.new(self.dingtalk_secret.encode(), f"{timestamp}\n{self.dingtalk_secret}".encode(),
                              hashlib.sha256).digest()
            # parse_qsl has already undone the URL quoting of the base64 signature.
            if not hmac.compare_digest(base64.b64encode(digest).decode(), query.get("sign", "")):
                return 310000, "sign not match"
        if self.keywords and not any(k in text for k in self.keywords):
            return 310000, "keywords not in content"
        if len(raw) > 20000:
            return 460101, "message too long"
        if self._recent("dingtalk", now, 60) >= 20:
            return 660026, "send too fast, exceed 20 times per minute"
        return 0, "ok"
