"""Budgets that are true, seen as an operator sees them: the rate `status` says the collector needs and
polls at is the rate the platform gets (measured on the simulator and on the collector's own
counter), once the SIMs are discovered; newly found SIMs are polled within a minute; `check-config`
exits 3 when the budget is too small, printing settings that fit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.configtypes import parse_duration
from collector.schedule import CATCH_UP_DELAY, CATCH_UP_SPREAD, plan_budget
from tests.daemon_run import REPO, DaemonProcess, wait_for
from tests.platform_run import SimulatorProcess, collector_config

WINDOW = 20.0  # seconds of requests measured


def own_requests(daemon: DaemonProcess) -> float:
    """The collector's iot_collector_upstream_requests_total, every endpoint and outcome."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in daemon.get("/metrics").text.splitlines()
               if line.startswith("iot_collector_upstream_requests_total{"))


def measure(sim: SimulatorProcess, daemon: DaemonProcess) -> tuple[float, float]:
    """Requests per second over WINDOW: as the simulator served them, and as the collector counted them."""
    served, counted, t0 = sim.stats()["total"], own_requests(daemon), time.monotonic()
    time.sleep(WINDOW)
    elapsed = time.monotonic() - t0
    return (sim.stats()["total"] - served) / elapsed, (own_requests(daemon) - counted) / elapsed


def discovered(daemon: DaemonProcess, sims: int) -> dict[str, Any] | None:
    """The status once every SIM is known and none is assumed any more."""
    status: dict[str, Any] = daemon.get("/api/status").json()
    requests = status["requests"]
    return status if requests["sims_known"] == sims and requests["sims_assumed"] == 0 else None


def expected_need(config: dict[str, Any], devices: int, sims: int) -> float:
    """What plan_budget says for these counts, as the documented batch limits apply them."""
    limits = {"device_status": 1, "device_flow": 1, "card_status": 10, "card_usage": 10, "card_info": 100,
              "card_month_usage": 10, "card_actions": 100, "account_assets": 0}
    counts = {"device_status": devices, "device_flow": devices, "account_assets": 1}
    rows = []
    for job, settings in config["jobs"].items():
        if settings.get("enabled", True):
            rows.append((job, parse_duration(settings["interval"]), limits[job], counts.get(job, sims)))
    return plan_budget(rows, 1.0)[1]


def test_the_rate_status_shows_is_the_rate_the_platform_sees_once_sims_are_discovered(tmp_path: Path) -> None:
    with SimulatorProcess(devices=20) as sim:
        iccids = sim.iccids()
        config = collector_config(tmp_path, sim.url, sim.devices)
        daemon = DaemonProcess(tmp_path, config).start()
        try:
            status = wait_for(lambda: discovered(daemon, len(iccids)), 30, "every SIM discovered")
            # Until a device answers, two SIMs are assumed for it; the simulator's devices have 1 to 4.
            start = next(e for e in daemon.log_events() if e["event"] == "request budget")
            assert start["need_rps"] == pytest.approx(expected_need(config, 20, 40), abs=0.01)
            time.sleep(CATCH_UP_DELAY + CATCH_UP_SPREAD + 2)  # the first polls of the new SIMs are over
            status = daemon.get("/api/status").json()
            requests = status["requests"]
            need = expected_need(config, 20, len(iccids))
            assert requests["needed_rps"] == pytest.approx(need, abs=0.01)
            assert requests["stretch"] == 1.0 and requests["planned_rps"] == pytest.approx(need, abs=0.01)
            served, counted = measure(sim, daemon)
            # The platform sees what status says, within 12% (retries none, cycles of 3-6 s in a 20 s window).
            assert served == pytest.approx(requests["planned_rps"], rel=0.12), (served, requests)
            assert counted == pytest.approx(served, rel=0.05)
        finally:
            assert daemon.stop() == 0


def card_points(path: Path, measurement: str) -> set[str]:
    text = path.read_text() if path.exists() else ""
    return {line.split("iccid=", 1)[1].split(",", 1)[0].split(" ", 1)[0]
            for line in text.splitlines() if line.startswith(measurement + ",")}


def test_a_budget_too_small_stretches_every_interval_and_new_sims_are_polled_within_a_minute(
        tmp_path: Path) -> None:
    with SimulatorProcess(devices=20) as sim:
        iccids = sim.iccids()
        config = collector_config(tmp_path, sim.url, sim.devices, rate_limit=6)
        hourly = {"interval": "1h"}
        config["jobs"] = {"device_status": {"interval": "4s"}, "device_flow": {"interval": "6s"},
                          "card_status": hourly, "card_usage": hourly, "card_info": hourly,
                          "account_assets": hourly, "card_month_usage": {"enabled": False, "interval": "1h"},
                          "card_actions": {"enabled": False, "interval": "1h"}}
        started = time.monotonic()
        daemon = DaemonProcess(tmp_path, config).start()
        try:
            # Card jobs run hourly: the SIMs found in the first device cycles are polled by each of them
            # within a minute, not in the hour of the cycle.
            points = tmp_path / "points.lp"
            wait_for(lambda: card_points(points, "card_status") >= set(iccids)
                     and card_points(points, "card_usage") >= set(iccids)
                     and sim.stats()["cards_requested"].get("card_info", 0) >= len(iccids), 60,
                     "every SIM's first card polls")
            assert time.monotonic() - started < 60
            status = wait_for(lambda: discovered(daemon, len(iccids)), 30, "every SIM discovered")
            need = expected_need(config, 20, len(iccids))
            requests = status["requests"]
            assert requests["needed_rps"] == pytest.approx(need, abs=0.01)
            assert requests["stretch"] == pytest.approx(need / 5.4, rel=0.02)  # 90% of 6 req/s usable
            assert requests["planned_rps"] == pytest.approx(5.4, rel=0.02)
            jobs = {j["name"]: j for j in status["jobs"]}
            assert jobs["device_status"]["effective_interval_seconds"] == pytest.approx(4 * requests["stretch"],
                                                                                        rel=0.02)
            text = subprocess.run([sys.executable, "-m", "collector", "status", "--url", daemon.url],
                                  capture_output=True, text=True, cwd=REPO, timeout=30).stdout
            assert "TOO SMALL: intervals stretched x1." in text
            time.sleep(max(0.0, CATCH_UP_DELAY + CATCH_UP_SPREAD - (time.monotonic() - started) + 5))
            served, counted = measure(sim, daemon)
            assert served == pytest.approx(requests["planned_rps"], rel=0.12), (served, requests)
            assert counted == pytest.approx(served, rel=0.05)
        finally:
            assert daemon.stop() == 0


def check_config(tmp_path: Path, config: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "collector", "check-config", "-c", str(path), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_check_config_exits_3_when_the_budget_is_too_small_and_prints_settings_that_fit(tmp_path: Path) -> None:
    # 500 devices at the default intervals need 2.445 req/s: 2.72 with 10% kept for retries.
    config: dict[str, Any] = {"platform": {"app_id": "x", "app_secret": "y", "rate_limit": 2},
                              "inventory": {"devices": [str(10**14 + i) for i in range(500)]},
                              "state_dir": str(tmp_path / "state")}
    proc = check_config(tmp_path, config)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "TOO SMALL" in proc.stdout and "platform.rate_limit: 2.8 (or more)" in proc.stdout
    intervals = {line.split(".")[1]: line.split(": ", 1)[1].split("   ")[0]
                 for line in proc.stdout.splitlines() if line.strip().startswith("jobs.")}
    assert set(intervals) == {"device_status", "device_flow", "card_status", "card_usage", "card_info",
                              "account_assets"}
    as_json = json.loads(check_config(tmp_path, config, "--json").stdout)
    assert as_json["ok"] is True and as_json["fits"] is False and as_json["rate_limit_to_fit"] == 2.8
    # Either suggestion fits: the rate...
    assert check_config(tmp_path, {**config, "platform": {**config["platform"], "rate_limit": 2.8}}).returncode == 0
    # ...or the intervals, pasted as printed.
    stretched = {**config, "jobs": {job: {"interval": value} for job, value in intervals.items()}}
    proc = check_config(tmp_path, stretched)
    assert proc.returncode == 0, proc.stdout
    assert "fits" in proc.stdout
