"""The daemon end to end, as an operator runs it: embedded simulator, file sink, /metrics, status,
signals, reloads, sd_notify, malformed upstream data, secrets."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.daemon_run import REPO, DaemonProcess, demo_config, wait_for
from tests.servers import require

MEASUREMENTS = ("device", "sim", "card_status", "card_usage", "card_month_usage", "account")


def measurements_in(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {line.split(",", 1)[0].split(" ", 1)[0] for line in path.read_text().splitlines() if line}


def promtool() -> str:
    return require("promtool", "prometheus")


def test_daemon_polls_the_embedded_simulator_and_writes_every_kind(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, demo_config(tmp_path)).start()
    try:
        points = tmp_path / "points.lp"
        wait_for(lambda: set(MEASUREMENTS) <= measurements_in(points), 40, f"all of {MEASUREMENTS} in the file sink")

        metrics = daemon.get("/metrics").text
        check = subprocess.run([promtool(), "check", "metrics"], input=metrics, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        for name in ("iot_collector_upstream_requests_total", "iot_collector_upstream_request_duration_seconds",
                     "iot_collector_job_runs_total", "iot_collector_points_written_total",
                     "iot_collector_spool_bytes", "iot_collector_entities", "iot_collector_build_info",
                     "iot_collector_device_rssi_dbm", "iot_collector_upstream_rate_limit_requests_per_second"):
            assert name in metrics, name
        assert 'iot_collector_entities{kind="device",state="online"}' in metrics

        status = subprocess.run([sys.executable, "-m", "collector", "status", "-c", str(daemon.config_path)],
                                capture_output=True, text=True, cwd=REPO, timeout=30)
        assert status.returncode == 0, status.stderr
        assert "device_status" in status.stdout and "devices:" in status.stdout and "request" in status.stdout
        as_json = json.loads(subprocess.run(
            [sys.executable, "-m", "collector", "status", "--json", "--url", daemon.url],
            capture_output=True, text=True, cwd=REPO, timeout=30).stdout)
        assert {j["name"] for j in as_json["jobs"]} >= {"device_status", "card_status", "account_assets"}
        assert as_json["entities"]["device"]["online"] + as_json["entities"]["device"]["offline"] == 20

        assert daemon.get("/healthz").status_code == 200
        assert daemon.get("/readyz").json()["ready"] is True
    finally:
        started = time.monotonic()
        code = daemon.stop()
        elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 10, f"SIGTERM took {elapsed:.1f}s"
    events = daemon.log_events()
    assert events and all("level" in e and "event" in e for e in events)  # JSON lines off a terminal
    assert any(e["event"] == "stopped" for e in events)


def test_sd_notify_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    daemon = DaemonProcess(tmp_path, demo_config(tmp_path),
                           env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
    messages: list[str] = []

    def drain() -> None:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                return

    try:
        daemon.start(wait_ready=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in messages) < 3:
            drain()
    finally:
        daemon.stop()
        drain()
        sock.close()
    assert any(m.startswith("READY=1") for m in messages), messages
    assert sum("WATCHDOG=1" in m for m in messages) >= 3, messages  # every 0.5 s from the event loop
    assert messages[-1].startswith("STOPPING=1") or any("STOPPING=1" in m for m in messages[-3:]), messages


def test_sighup_reloads_config_and_inventory_and_rejects_a_bad_one(tmp_path: Path) -> None:
    inventory = tmp_path / "devices.csv"
    # Device numbers come from the simulator's deterministic fleet (seed 7): ask it.
    fleet = json.loads(subprocess.run(
        [sys.executable, "-m", "collector", "once", "-c", str(REPO / "collector.yaml"), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=60).stdout)
    assert fleet, "once printed nothing"
    config = demo_config(tmp_path)
    config["simulator"]["seed"] = 42  # collector.yaml's seed, so the numbers above exist
    config["simulator"]["devices"] = 50
    numbers = [d["device_no"] for d in fleet][:6]
    inventory.write_text("device_no,customer\n" + "".join(f"{n},acme\n" for n in numbers))
    config["inventory"] = {"file": str(inventory)}
    daemon = DaemonProcess(tmp_path, config).start()
    try:
        wait_for(lambda: all(f'device_no="{n}"' in daemon.get("/metrics").text for n in numbers), 30,
                 "all six devices on /metrics")
        # The file changes: one device removed -> it stops being polled and vanishes from /metrics.
        inventory.write_text("device_no,customer\n" + "".join(f"{n},acme\n" for n in numbers[1:]))
        wait_for(lambda: f'device_no="{numbers[0]}"' not in daemon.get("/metrics").text, 30,
                 "the removed device to vanish from /metrics")
        # A broken file is rejected and the old inventory kept.
        inventory.write_text("name,customer\nx,y\n")
        wait_for(lambda: any(e["event"].startswith("inventory rejected") for e in daemon.log_events()), 30,
                 "the bad inventory to be rejected")
        assert f'device_no="{numbers[1]}"' in daemon.get("/metrics").text

        # SIGHUP with a valid change: a new interval applies.
        daemon.config["jobs"]["device_status"]["interval"] = "7s"
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: any(j["name"] == "device_status" and j["interval_seconds"] == 7
                             for j in daemon.get("/api/status").json()["jobs"]), 15, "the new interval")
        # SIGHUP with an invalid file: logged, old configuration kept, daemon alive.
        daemon.config_path.write_text(yaml.safe_dump({**daemon.config, "platform": {"rate_limit": -1}}))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: any(e["event"].startswith("configuration rejected") for e in daemon.log_events()), 15,
                 "the bad configuration to be rejected")
        rejected = next(e for e in daemon.log_events() if e["event"].startswith("configuration rejected"))
        assert any("platform.rate_limit" in p for p in rejected["problems"])
        assert daemon.get("/healthz").status_code == 200
    finally:
        assert daemon.stop() == 0


def test_malformed_upstream_data_is_counted_and_skipped(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, demo_config(tmp_path)).start()
    try:
        started = next(e for e in daemon.log_events() if e["event"] == "embedded simulator started")
        sim_url = started["url"].rstrip("/")
        httpx.post(f"{sim_url}/_sim/faults", json={"malformed_rate": 1.0}, timeout=5).raise_for_status()

        def parse_errors() -> float:
            total = 0.0
            for line in daemon.get("/metrics").text.splitlines():
                if line.startswith("iot_collector_upstream_requests_total{") and 'outcome="parse_error"' in line:
                    total += float(line.rsplit(" ", 1)[1])
            return total

        wait_for(lambda: parse_errors() >= 5, 30, "parse errors to be counted")
        # Every answer is garbage: retries run out, the poll is logged as failed and skipped.
        wait_for(lambda: any(e.get("level") == "warning" and e["event"] == "poll failed"
                             and e.get("error_type") == "ParseError" for e in daemon.log_events()), 30,
                 "a failed poll to be logged")
        httpx.post(f"{sim_url}/_sim/faults", json={"malformed_rate": 0}, timeout=5).raise_for_status()
        before = daemon.get("/api/status").json()["jobs"]
        assert daemon.get("/healthz").status_code == 200
        # Polling goes on: jobs keep running after the fault is cleared.
        wait_for(lambda: sum(j["runs"] for j in daemon.get("/api/status").json()["jobs"])
                 > sum(j["runs"] for j in before), 20, "more job runs")
        assert daemon.get("/readyz").status_code == 200
    finally:
        assert daemon.stop() == 0


def test_secrets_never_reach_logs_points_or_state(tmp_path: Path) -> None:
    secret = "S3cr3t-Never-Logged-42"
    sim_cfg = tmp_path / "sim.yaml"
    sim_cfg.write_text(yaml.safe_dump({"platform": {"app_id": "reseller-1", "app_secret": secret}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = subprocess.Popen([sys.executable, "-m", "collector", "simulate", "--devices", "5", "--seed", "3",
                            "--port", str(port), "-c", str(sim_cfg)], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _open(port), 20, "the simulator to listen")
        listing = subprocess.run([sys.executable, "-m", "collector", "simulate", "--devices", "5", "--seed", "3",
                                  "--print-inventory"], capture_output=True, text=True, cwd=REPO, timeout=30)
        device_numbers = yaml.safe_load(listing.stdout)["devices"]
        assert len(device_numbers) == 5
        config = demo_config(tmp_path, simulator={"embedded": False},
                             platform={"base_url": f"http://127.0.0.1:{port}", "app_id": "reseller-1",
                                       "app_secret": secret, "rate_limit": 100},
                             logging={"level": "debug", "format": "json"})
        config["inventory"] = {"devices": device_numbers}
        daemon = DaemonProcess(tmp_path, config).start(wait_ready=False)
        try:
            wait_for(lambda: (tmp_path / "points.lp").exists() and "device," in (tmp_path / "points.lp").read_text(),
                     30, "device points")
            # A wrong secret fails loudly: a second collector with a bad secret logs an auth error.
            bad = DaemonProcess(tmp_path, {**config, "platform": {**config["platform"],
                                                                   "app_secret": secret + "-wrong"},
                                           "state_dir": str(tmp_path / "state-bad"),
                                           "sinks": {"file": {"enabled": True, "path": str(tmp_path / "bad.lp")}}},
                                name="bad").start(wait_ready=False)
            try:
                wait_for(lambda: any("auth" in json.dumps(e).lower() or "sign" in json.dumps(e).lower()
                                     for e in bad.log_events() if e.get("level") in ("warning", "error")),
                         30, "an auth error from the wrong secret")
            finally:
                bad.stop()
        finally:
            daemon.stop()
        haystacks = [daemon.logs(), bad.logs()]
        for path in tmp_path.rglob("*"):
            if path.is_file() and path.name not in ("sim.yaml", "collector.yaml", "bad.yaml"):
                haystacks.append(path.read_text(errors="replace"))
        for text in haystacks:
            assert secret not in text
            for field in ("wifiPass", "webPassword", "payPassword"):
                assert field not in text
        assert any('"traceID"' in h or "trace_id" in h for h in haystacks[:1])  # debug logs did run
    finally:
        sim.terminate()
        sim.wait(10)


def _open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_status_shows_the_lowered_request_rate_after_the_platform_throttles(tmp_path: Path) -> None:
    """The simulator caps requests per second and answers HTTP 429 above the cap: the daemon's limiter
    halves its rate, and `status`, /api/status and the collector entity's rate_limit_ratio all show
    the rate allowed now, below the configured 200 requests a second."""
    throttled = {"name": "Throttled", "kind": "collector", "condition": "rate_limit_ratio < 1"}
    config = demo_config(tmp_path, alerts={"enabled": True, "default_rules": False, "evaluation_interval": "1s",
                                           "rules": [throttled]})
    daemon = DaemonProcess(tmp_path, config).start()
    try:
        started = next(e for e in daemon.log_events() if e["event"] == "embedded simulator started")
        httpx.post(started["url"].rstrip("/") + "/_sim/faults", json={"qps_cap": 2, "throttle_http": True},
                   timeout=5).raise_for_status()

        def lowered() -> dict[str, float] | None:
            requests = daemon.get("/api/status").json()["requests"]
            return requests if requests["current_rate_rps"] < requests["rate_limit_rps"] else None

        requests = wait_for(lowered, 30, "a lowered request rate in /api/status")
        assert requests["rate_limit_rps"] == 200 and requests["current_rate_rps"] <= 100  # halved at least once

        as_json = json.loads(subprocess.run(
            [sys.executable, "-m", "collector", "status", "--json", "-c", str(daemon.config_path)],
            capture_output=True, text=True, cwd=REPO, timeout=30).stdout)
        assert as_json["requests"]["current_rate_rps"] < as_json["requests"]["rate_limit_rps"] == 200
        text = subprocess.run([sys.executable, "-m", "collector", "status", "--url", daemon.url],
                              capture_output=True, text=True, cwd=REPO, timeout=30).stdout
        current = float(text.split("currently allowed ", 1)[1].split()[0])
        assert current < 200

        def firing() -> bool:
            alerts = daemon.get("/api/status").json()["alerts"]
            return any(a["rule"] == "Throttled" and a["state"] == "firing" for a in alerts)

        wait_for(firing, 30, "the rate_limit_ratio rule to fire")
    finally:
        assert daemon.stop() == 0
