"""`iot-collector alerts test` on the operator's fleet, as an operator runs it: against the fleet of a
running collector (the real daemon on the simulator, read through its `/api/entities`), and with
`--poll` against one fresh poll of the platform the configuration names (the simulator started as a
server with `iot-collector simulate`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.daemon_run import REPO, DaemonProcess, demo_config, wait_for

pytestmark = pytest.mark.integration


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def fleet(devices: int, seed: int) -> list[str]:
    listing = cli("simulate", "--devices", str(devices), "--seed", str(seed), "--print-inventory")
    assert listing.returncode == 0, listing.stderr
    return [str(d) for d in yaml.safe_load(listing.stdout)["devices"]]


def test_alerts_test_evaluates_the_rules_of_a_file_on_the_running_collectors_fleet(tmp_path: Path) -> None:
    watched = fleet(12, 5)[:3]
    config = demo_config(tmp_path, simulator={"embedded": True, "devices": 12, "seed": 5, "speed": 60},
                         jobs={"device_status": {"interval": "1s"}},
                         inventory={"devices": [{"device_no": no, "labels": {"customer": "acme"}} for no in watched]},
                         alerts={"enabled": True, "language": "en"})
    daemon = DaemonProcess(tmp_path, config).start()
    try:
        wait_for(lambda: len(daemon.get("/api/entities?kind=device").json()["entities"]["device"]) == 3, 30,
                 "the daemon to poll its three devices")
        # The rules under test: a threshold every device crosses, in a file the daemon does not run.
        trial = tmp_path / "trial.yaml"
        trial.write_text(yaml.safe_dump({**config, "alerts": {
            "enabled": True, "language": "en", "default_rules": False,
            "rules": [{"name": "BatteryBelow101", "kind": "device", "condition": "battery_percent < 101",
                       "annotations": {"summary": "{{ device_no }} at {{ battery_percent }}%"}},
                      {"name": "SimSeen", "kind": "sim", "condition": "polled == True"}]}}))
        result = cli("alerts", "test", "-c", str(trial), "--json")
        assert result.returncode == 0, result.stderr
        found = json.loads(result.stdout)
        assert found["source"] == f"the running collector at {daemon.url}"
        battery = {f["entity"]: f for f in found["would_fire"] if f["rule"] == "BatteryBelow101"}
        assert sorted(battery) == sorted(watched)  # the daemon's devices, not a made-up fleet
        for no, alert in battery.items():
            assert alert["labels"]["customer"] == "acme"
            assert 0 <= alert["value"] <= 100  # the battery the daemon polled
            assert alert["annotations"]["summary"] == f"{no} at {alert['value']:g}%"
        sims = [f for f in found["would_fire"] if f["rule"] == "SimSeen"]
        assert sims and all(f["labels"]["device_no"] in watched for f in sims)  # SIMs name their device

        table = cli("alerts", "test", "-c", str(trial))
        assert table.returncode == 0, table.stderr
        assert table.stdout.startswith(f"fleet: the running collector at {daemon.url}\n")
        assert "evaluated against 3 devices" in table.stdout
    finally:
        assert daemon.stop() == 0
    gone = cli("alerts", "test", "-c", str(daemon.config_path))
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.startswith("error: cannot reach the collector at ")
    assert f"alerts test -c {daemon.config_path} --poll" in gone.stderr and "Traceback" not in gone.stderr


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The simulator as a standalone server (the real `simulate` command), and a configuration file
    whose platform section points at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    platform = {"base_url": f"http://127.0.0.1:{port}", "app_id": "reseller-7", "app_secret": "s3cret-7"}
    sim_cfg = tmp_path / "platform.yaml"
    sim_cfg.write_text(yaml.safe_dump({"platform": platform}))
    proc = subprocess.Popen([sys.executable, "-m", "collector", "simulate", "-c", str(sim_cfg), "--devices", "8",
                             "--seed", "9", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), 20, "the simulator to listen")
        yield platform["base_url"], sim_cfg
    finally:
        proc.terminate()
        proc.wait(10)


def test_alerts_test_poll_polls_the_configured_platform_once(platform: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = platform
    devices = fleet(8, 9)[:4]
    unknown = "860000000000001"
    config: dict[str, Any] = {
        "platform": {"base_url": base_url, "app_id": "reseller-7", "app_secret": "s3cret-7", "rate_limit": 50},
        "inventory": {"devices": [{"device_no": no, "labels": {"customer": "initech"}} for no in devices]
                      + [unknown]},
        "http": {"port": 0}, "state_dir": str(tmp_path / "state"),
        "alerts": {"language": "en", "params": {"low_battery_percent": 101, "low_battery_clear_percent": 101}},
    }
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(config))

    # Without --poll and without a running collector nothing is polled: the platform sees no request.
    refused = cli("alerts", "test", "-c", str(path))
    assert refused.returncode == 1 and "--poll" in refused.stderr
    assert httpx.get(f"{base_url}/_sim/stats").json()["total"] == 0

    result = cli("alerts", "test", "-c", str(path), "--poll", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["source"] == f"one poll of the platform at {base_url}/"
    assert found["entities"]["device"] == 4 and found["entities"]["sim"] >= 4 and found["entities"]["account"] == 1
    low = {f["entity"]: f for f in found["would_fire"] if f["rule"] == "LowBattery"}
    assert sorted(low) == sorted(devices)
    assert all(f["labels"]["customer"] == "initech" for f in low.values())
    # The device the platform does not know is one summary line, not a line per error.
    assert "warning: 1 of 5 devices could not be polled" in result.stderr
    assert result.stderr.count("\n") <= 3, result.stderr
    assert httpx.get(f"{base_url}/_sim/stats").json()["total"] > 0

    # A wrong secret: the platform refuses the first request, nothing more is sent, one clear error.
    path.write_text(yaml.safe_dump({**config, "platform": {**config["platform"], "app_secret": "wrong"}}))
    refused = cli("alerts", "test", "-c", str(path), "--poll")
    assert refused.returncode == 1 and refused.stdout == ""
    assert "warning: 5 of 5 devices could not be polled" in refused.stderr
    assert f"error: no device of the inventory could be polled from the platform at {base_url}/" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) <= 4, refused.stderr
