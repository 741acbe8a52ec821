"""A password in a configured URL (`http://admin:PASS@host`) never shows: a real daemon polling the
simulator through a platform URL with user-info, writing to InfluxDB sinks and notifying Alertmanager
and a webhook through URLs with passwords (all of them down, so errors are logged), with logging at
debug level; then every output an operator sees: `/api/*`, `/metrics`, `status`, `alerts list`,
`check-config` (a good and a bad configuration), `once` and the log."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from collector.simulator import EMBEDDED_APP_ID, EMBEDDED_APP_SECRET
from tests.daemon_run import REPO, DaemonProcess, demo_config, wait_for
from tests.servers import free_port

PASSWORDS = {
    "platform": "Pl4tform-Pass",
    "influxdb_v1": "Infl-v1-Pass",
    "influxdb_v2": "T0kenAsUserName",
    "alertmanager": "Alert-Mgr-Pass",
    "webhook": "Hook%40Pass",  # written percent-encoded; "Hook@Pass" decoded
}
SECRETS = [*PASSWORDS.values(), "Hook@Pass"]


def collector(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def failed_notifications(metrics_text: str, notifier: str) -> float:
    prefix = f'iot_collector_notifications_total{{notifier="{notifier}",outcome="failed"}} '
    return next((float(line[len(prefix):]) for line in metrics_text.splitlines() if line.startswith(prefix)), 0.0)


def config_with_passwords(tmp_path: Path, sim_port: int, devices: list[str]) -> dict[str, Any]:
    down = free_port()  # nothing listens there: every sink and notifier fails, and says so
    return demo_config(
        tmp_path,
        simulator={"embedded": False},
        platform={"base_url": f"http://reseller:{PASSWORDS['platform']}@127.0.0.1:{sim_port}",
                  "app_id": EMBEDDED_APP_ID, "app_secret": EMBEDDED_APP_SECRET, "rate_limit": 200},
        inventory={"devices": devices},
        sinks={"file": {"enabled": True, "path": str(tmp_path / "points.lp")},
               "influxdb_v1": {"enabled": True, "url": f"http://admin:{PASSWORDS['influxdb_v1']}@127.0.0.1:{down}",
                               "database": "iot"},
               "influxdb_v2": {"enabled": True, "url": f"http://{PASSWORDS['influxdb_v2']}@127.0.0.1:{down}",
                               "org": "o", "bucket": "b"},
               "flush_interval": "200ms", "retry_max_backoff": "1s"},
        alerts={"enabled": True, "default_rules": False, "evaluation_interval": "1s",
                "rules": [{"name": "Polled", "kind": "device", "condition": "battery_percent >= 0"}],
                "notifiers": [
                    {"type": "alertmanager", "url": f"http://am:{PASSWORDS['alertmanager']}@127.0.0.1:{down}",
                     "resend_interval": "1s", "retry": {"backoff_initial": "100ms", "backoff_max": "200ms"}},
                    {"type": "webhook", "name": "hook", "url": f"http://hook:{PASSWORDS['webhook']}@127.0.0.1:{down}/x",
                     "group_wait": "0s", "retry": {"backoff_initial": "100ms", "backoff_max": "200ms"}}]},
        logging={"level": "debug", "format": "json"})


def test_a_password_in_a_configured_url_is_in_no_output(tmp_path: Path) -> None:
    sim_port = free_port()
    simulator = subprocess.Popen([sys.executable, "-m", "collector", "simulate", "--devices", "3", "--port",
                                  str(sim_port), "--speed", "60"], cwd=REPO, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{sim_port}/"), 30, "the simulator")
        inventory = collector("simulate", "--devices", "3", "--print-inventory")
        devices = yaml.safe_load(inventory.stdout)["devices"]
        config = config_with_passwords(tmp_path, sim_port, devices)
        daemon = DaemonProcess(tmp_path, config)
        daemon.start()
        outputs: dict[str, str] = {}
        try:
            def everything_failed_once() -> bool:
                sinks = daemon.get("/api/status").json()["sinks"]["sinks"]
                text = daemon.get("/metrics").text
                return (all(sinks[name]["last_error"] for name in ("influxdb_v1", "influxdb_v2"))
                        and failed_notifications(text, "alertmanager") > 0
                        and failed_notifications(text, "hook") > 0)

            wait_for(everything_failed_once, 60, "the sinks and notifiers to fail against a closed port")
            time.sleep(1.0)
            for path in ("/api/status", "/api/alerts", "/api/silences", "/metrics"):
                outputs[path] = daemon.get(path).text
            config_path = str(daemon.config_path)
            for args in (("status", "--json"), ("status",), ("alerts", "list"), ("alerts", "list", "--json"),
                         ("silence", "list")):
                done = collector(*args, "-c", config_path)
                assert done.returncode == 0, (args, done.stderr)
                outputs[" ".join(args)] = done.stdout + done.stderr
        finally:
            assert daemon.stop() == 0
        outputs["log"] = daemon.logs()
        for args in (("check-config",), ("check-config", "--json"), ("once", "--json", "--log-level", "debug")):
            done = collector(*args, "-c", str(daemon.config_path))
            assert done.returncode == 0, (args, done.stderr)
            outputs[" ".join(args)] = done.stdout + done.stderr
        broken = dict(config, sinks={**config["sinks"], "influxdb_v1": {
            **config["sinks"]["influxdb_v1"], "url": f"http://admin:{PASSWORDS['influxdb_v1']}@127.0.0.1:99999"}})
        broken_path = tmp_path / "broken.yaml"
        broken_path.write_text(yaml.safe_dump(broken))
        done = collector("check-config", "-c", str(broken_path))
        assert done.returncode == 2 and "sinks.influxdb_v1.url" in done.stderr, done.stderr
        outputs["check-config (bad url)"] = done.stdout + done.stderr
    finally:
        simulator.terminate()
        simulator.wait(10)

    leaks = {(where, secret) for where, text in outputs.items() for secret in SECRETS if secret in text}
    assert not leaks, leaks
    # The URLs are still shown, their user-info hidden (the test looks where the passwords would be).
    status = json.loads(outputs["status --json"])
    targets = {name: sink["target"]["url"] for name, sink in status["sinks"]["sinks"].items()
               if "url" in sink["target"]}
    assert targets["influxdb_v1"].startswith("http://admin:<redacted>@127.0.0.1:")
    assert targets["influxdb_v2"].startswith("http://<redacted>@127.0.0.1:")
    assert "admin:<redacted>@127.0.0.1" in outputs["check-config (bad url)"]
    # The platform was polled through its URL with user-info, and logged at debug level.
    assert '"event": "upstream request", "level": "debug"' in outputs["log"]


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True
