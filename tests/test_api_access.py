"""Who may use a running collector's HTTP API, tried the way an attacker and an operator meet it: a
real daemon, raw HTTP requests (a web page's DNS rebinding or cross-site form, a local process without
the token, a silence of 100000 days), and the real `iot-collector silence` command reading the token
from the state directory or from a systemd credential."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_run import REPO, DaemonProcess, demo_config

EVERYTHING = {"matchers": ["alertname=~.*"], "duration": "30d", "comment": "x", "created_by": "x"}


def raw_request(url: str, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, Any]:
    """One HTTP/1.1 request written byte by byte (the headers exactly as given, Host included)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}", "Connection: close", "", ""]
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall("\r\n".join(lines).encode() + body)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode(errors="replace")


def cli(*args: str, env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "collector", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def api_silences(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [s for s in daemon.get("/api/silences").json()["silences"] if s["source"] == "api"]


def refused(daemon: DaemonProcess) -> dict[str, float]:
    found = re.findall(r'^iot_collector_http_requests_refused_total\{reason="(\w+)"\} (\S+)$',
                       daemon.get("/metrics").text, flags=re.M)
    return {reason: float(value) for reason, value in found}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("api")
    process = DaemonProcess(tmp, demo_config(tmp, alerts={"enabled": True}, logging={"level": "debug",
                                                                                      "format": "json"}))
    process.start()
    try:
        yield process
    finally:
        assert process.stop() == 0


def token_of(daemon: DaemonProcess) -> str:
    return (Path(daemon.config["state_dir"]) / "api-token").read_text().strip()


def test_the_token_is_made_at_first_start_private_and_random(daemon: DaemonProcess) -> None:
    path = Path(daemon.config["state_dir"]) / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token_of(daemon))  # 32 random bytes, URL-safe base64


def test_attacks_on_the_silence_api_are_refused_and_silence_nothing(daemon: DaemonProcess) -> None:
    port = daemon.url.rsplit(":", 1)[1]
    own = f"127.0.0.1:{port}"
    token = token_of(daemon)
    json_body = json.dumps(EVERYTHING).encode()
    good = {"Host": own, "Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    attacks: list[tuple[str, dict[str, str], bytes, int, str]] = [
        # A web page whose name resolves to 127.0.0.1 (DNS rebinding): the browser sends its own name.
        ("dns rebinding", {**good, "Host": f"attacker.example:{port}"}, json_body, 403, "host"),
        ("foreign Origin", {**good, "Origin": "http://attacker.example"}, json_body, 403, "origin"),
        ("another local origin", {**good, "Origin": "http://127.0.0.1:8000"}, json_body, 403, "origin"),
        ("sandboxed page", {**good, "Origin": "null"}, json_body, 403, "origin"),
        ("browser says cross-site", {**good, "Sec-Fetch-Site": "cross-site"}, json_body, 403, "cross_site"),
        ("no token", {k: v for k, v in good.items() if k != "Authorization"}, json_body, 401, "no_token"),
        ("wrong token", {**good, "Authorization": "Bearer " + "x" * 43}, json_body, 401, "bad_token"),
        ("token as basic auth", {**good, "Authorization": f"Basic {token}"}, json_body, 401, "no_token"),
        ("form post", {**good, "Content-Type": "application/x-www-form-urlencoded"},
         b"matchers=alertname%3D~.%2A&duration=30d", 415, "content_type"),
        ("text/plain post", {**good, "Content-Type": "text/plain"}, json_body, 415, "content_type"),
        ("100000 days", good, json.dumps({**EVERYTHING, "duration": "100000d"}).encode(), 400, ""),
    ]
    before = refused(daemon)
    for name, headers, body, status, reason in attacks:
        answer_status, answer = raw_request(daemon.url, "POST", "/api/silences", headers, body)
        assert answer_status == status, (name, answer)
        assert answer["error"], name
        if reason:
            assert refused(daemon).get(reason, 0) > before.get(reason, 0), name
            before = refused(daemon)
    no_host = {k: v for k, v in good.items() if k != "Host"}
    assert raw_request(daemon.url, "POST", "/api/silences", no_host, json_body)[0] in (400, 403)
    assert api_silences(daemon) == []
    assert not any(a.get("silenced_by") for a in daemon.get("/api/alerts").json()["alerts"])
    status, answer = raw_request(daemon.url, "POST", "/api/silences", good,
                                 json.dumps({**EVERYTHING, "duration": "100000d"}).encode())
    assert "at most 30d (alerts.max_silence_duration)" in answer["error"]

    # The same request from the operator, with the token, is served; so is removing it.
    status, answer = raw_request(daemon.url, "POST", "/api/silences", good, json_body)
    assert status == 201, answer
    sid = answer["id"]
    for headers in ({**good, "Host": f"evil.example:{port}"}, {"Host": own},
                    {"Host": own, "Authorization": "Bearer nope"}):
        assert raw_request(daemon.url, "DELETE", f"/api/silences/{sid}", headers)[0] in (401, 403)
    assert [s["id"] for s in api_silences(daemon)] == [sid]
    assert raw_request(daemon.url, "DELETE", f"/api/silences/{sid}",
                       {"Host": own, "Authorization": f"Bearer {token}"})[0] == 204
    assert api_silences(daemon) == []

    logs = daemon.logs()
    assert token not in logs
    refusals = [e for e in daemon.log_events() if e.get("event") == "http request refused"]
    assert refusals and refusals[0]["peer"] == "127.0.0.1" and refusals[0]["level"] == "warning"
    assert len(refusals) <= 2  # at most one line a minute; the rest are counted
    added = [e for e in daemon.log_events() if e.get("event") == "silence added through the API"]
    removed = [e for e in daemon.log_events() if e.get("event") == "silence removed through the API"]
    assert [(e["id"], e["matchers"], e["peer"], e["level"]) for e in added] == \
        [(sid, ["alertname=~.*"], "127.0.0.1", "warning")]
    assert added[0]["ends_at"].endswith("Z")
    assert [(e["id"], e["peer"]) for e in removed] == [(sid, "127.0.0.1")]


def test_probes_and_scrapes_answer_by_any_name_and_the_read_api_only_by_the_collectors_own(
        daemon: DaemonProcess) -> None:
    port = daemon.url.rsplit(":", 1)[1]
    for path in ("/metrics", "/healthz", "/readyz"):
        # A remote Prometheus scrapes by the host's name or address, whatever it is.
        for host in (f"collector.example.net:{port}", f"10.1.2.3:{port}", f"127.0.0.1:{port}"):
            status, _ = raw_request(daemon.url, "GET", path, {"Host": host, "Origin": "http://attacker.example"})
            assert status in (200, 503), (path, host)
    for path in ("/api/status", "/api/alerts", "/api/silences"):
        assert raw_request(daemon.url, "GET", path, {"Host": f"attacker.example:{port}"})[0] == 403, path
        assert raw_request(daemon.url, "GET", path, {"Host": f"localhost:{port}",
                                                     "Origin": "http://attacker.example"})[0] == 403, path
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}", f"[::1]:{port}"):
            assert raw_request(daemon.url, "GET", path, {"Host": host})[0] == 200, (path, host)
        same_origin = {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
        assert raw_request(daemon.url, "GET", path, same_origin)[0] == 200, path


def test_the_cli_adds_lists_and_removes_silences_with_the_token_from_the_state_directory(
        daemon: DaemonProcess) -> None:
    config = str(daemon.config_path)
    added = cli("silence", "add", "customer=acme", "--duration", "2h", "--comment", "maintenance", "-c", config)
    assert added.returncode == 0, added.stderr
    sid = added.stdout.strip()
    listed = cli("silence", "list", "--json", "-c", config)
    assert [s["id"] for s in json.loads(listed.stdout) if s["source"] == "api"] == [sid]
    too_long = cli("silence", "add", "customer=acme", "--duration", "31d", "--comment", "x", "-c", config)
    assert too_long.returncode == 1
    assert "at most 30d (alerts.max_silence_duration)" in too_long.stderr
    removed = cli("silence", "remove", sid, "-c", config)
    assert removed.returncode == 0, removed.stderr
    assert api_silences(daemon) == []

    # Someone else's token file: the command says where it looked and what to do.
    other = daemon.dir / "other-token"
    other.write_text("y" * 43 + "\n")
    wrong = cli("silence", "add", "customer=acme", "--comment", "x", "-c", config, "--token-file", str(other))
    assert wrong.returncode == 1
    assert "HTTP 401" in wrong.stderr and str(other) in wrong.stderr and "Traceback" not in wrong.stderr


def test_a_user_who_cannot_read_the_state_directory_is_told_what_to_do(daemon: DaemonProcess, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the token file to another user")
    # A copy of the state directory's token owned by another user, read without root's privileges.
    state = tmp_path / "state"
    state.mkdir()
    (state / "collector.json").write_text(json.dumps({"url": daemon.url}))
    token = state / "api-token"
    token.write_text(token_of(daemon))
    os.chown(token, 65534, 65534)
    token.chmod(0o600)
    config = tmp_path / "collector.yaml"
    config.write_text(json.dumps({"http": {"port": 0}, "state_dir": str(state)}))
    unprivileged = ("setpriv", "--bounding-set=-all", "--inh-caps=-all")
    done = cli("silence", "add", "customer=acme", "--comment", "x", "-c", str(config), prefix=unprivileged)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"cannot read the API token {token}: permission denied" in done.stderr
    assert "sudo" in done.stderr and "--token-file" in done.stderr
    assert api_silences(daemon) == []


def test_the_token_from_a_systemd_credential_is_used_by_the_daemon_and_the_cli(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    token = "t0ken-from-the-credential-store-0123456789"
    (credentials / "iot-collector.api_token").write_text(token + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    daemon = DaemonProcess(tmp_path, demo_config(tmp_path, alerts={"enabled": True},
                                                 http={"port": 0, "api_token_credential": "iot-collector.api_token"}),
                           env=env)
    daemon.start()
    try:
        config = str(daemon.config_path)
        assert not (tmp_path / "state" / "api-token").exists()
        added = cli("silence", "add", "device_no=1", "--comment", "c", "-c", config, env=env)
        assert added.returncode == 0, added.stderr
        sid = added.stdout.strip()
        assert [s["id"] for s in api_silences(daemon)] == [sid]
        port = daemon.url.rsplit(":", 1)[1]
        assert raw_request(daemon.url, "DELETE", f"/api/silences/{sid}",
                           {"Host": f"127.0.0.1:{port}", "Authorization": f"Bearer {token}"})[0] == 204
        # Outside the service, without $CREDENTIALS_DIRECTORY: systemd's credential store is searched,
        # and the command says what to do when the credential is not there.
        unset = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
        done = subprocess.run([sys.executable, "-m", "collector", "silence", "remove", "x", "-c", config],
                              cwd=REPO, capture_output=True, text=True, timeout=60, env=unset)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "iot-collector.api_token" in done.stderr and "CREDENTIALS_DIRECTORY" in done.stderr
    finally:
        assert daemon.stop() == 0
    assert token not in daemon.logs()


def test_allowed_hosts_and_the_notification_links_host_let_clients_that_use_the_collectors_name_in(
        tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, demo_config(tmp_path, http={"port": 0, "listen": "0.0.0.0",
                                                                  "allowed_hosts": ["collector.example.net"]},
                                                 alerts={"enabled": True,
                                                         "external_url": "http://alerts.example.org:9108"}))
    daemon.start()
    try:
        port = daemon.url.rsplit(":", 1)[1]
        assert daemon.url == f"http://127.0.0.1:{port}"  # the runtime file names a reachable address
        assert raw_request(daemon.url, "GET", "/api/status", {"Host": f"collector.example.net:{port}"})[0] == 200
        assert raw_request(daemon.url, "GET", "/api/status", {"Host": f"Collector.Example.NET:{port}"})[0] == 200
        # The links notifications carry (alerts.external_url) open in a browser.
        assert raw_request(daemon.url, "GET", "/api/alerts?id=x", {"Host": "alerts.example.org:9108"})[0] == 200
        assert raw_request(daemon.url, "GET", "/api/status", {"Host": f"attacker.example:{port}"})[0] == 403
        assert raw_request(daemon.url, "GET", "/api/status", {"Host": f"0.0.0.0:{port}"})[0] == 403
        status = cli("status", "--json", "-c", str(daemon.config_path))
        assert status.returncode == 0, status.stderr
    finally:
        assert daemon.stop() == 0
