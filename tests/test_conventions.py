"""The conventions operators expect, seen on a real daemon: the standard process and Python metrics,
no `_created` series, entity states that add up to the fleet, inventory labels on per-entity series
and a warning when those are cut; records of other libraries as JSON lines of the same shape, Chinese
text readable in them, and a periodic summary line."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path

from tests.daemon_run import DaemonProcess, wait_for
from tests.platform_run import SimulatorProcess, SlowProxy, collector_config, free_port
from tests.servers import require

UNKNOWN = "000000000000042"
SAMPLE = re.compile(r'^(\w+)(?:\{(.*)\})? (\S+)$')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            out.append((labels, float(match.group(3))))
    return out


def test_metrics_follow_exporter_conventions_and_states_add_up_to_the_fleet(tmp_path: Path) -> None:
    with SimulatorProcess(devices=10) as sim:
        refused = sim.devices[1]
        with SlowProxy(sim.url, set(), refused={refused}) as proxy:
            config = collector_config(tmp_path, proxy.url, [])
            customers = {n: "acme" if i % 2 else "globex" for i, n in enumerate([*sim.devices, UNKNOWN])}
            config["inventory"] = {"devices": [{"device_no": n, "labels": {"customer": c}}
                                               for n, c in customers.items()]}
            config["http"].update({"entity_metrics_labels": ["customer"], "entity_metrics_limit": 5})
            daemon = DaemonProcess(tmp_path, config).start()
            try:
                # A device the platform refuses fails before it was ever observed; one it does not know
                # backs off: each is counted once, in its own state.
                def settled() -> dict[str, int] | None:
                    devices: dict[str, int] = daemon.get("/api/status").json()["entities"]["device"]
                    return devices if devices["failing"] == 1 and devices["not_found"] == 1 else None

                wait_for(settled, 30, "a failing and an unknown device")
                for _ in range(3):
                    text = daemon.get("/metrics").text
                status = daemon.get("/api/status").json()
            finally:
                assert daemon.stop() == 0

    check = subprocess.run([require("promtool", "prometheus"), "check", "metrics"], input=text,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                 "process_start_time_seconds", "python_info", "python_gc_collections_total"):
        assert samples(text, name), name
    assert "_created" not in text

    by_kind: dict[str, dict[str, float]] = defaultdict(dict)
    for labels, value in samples(text, "iot_collector_entities"):
        by_kind[labels["kind"]][labels["state"]] = value
    assert sum(by_kind["device"].values()) == len(customers) == 11
    assert by_kind["device"]["failing"] == 1 and by_kind["device"]["not_found"] == 1
    assert sum(by_kind["sim"].values()) == sum(status["entities"]["sim"].values()) > 0

    rssi = samples(text, "iot_collector_device_rssi_dbm")
    assert 0 < len(rssi) <= 5
    assert all(labels["customer"] == customers[labels["device_no"]] for labels, _ in rssi)
    sims = samples(text, "iot_collector_sim_used_bytes")
    assert sims and all(labels["customer"] == customers[labels["device_no"]] for labels, _ in sims)
    cut = {labels["kind"]: value for labels, value in samples(text, "iot_collector_entity_metrics_cut_series")}
    assert cut["device"] > 0 and cut["sim"] > 0
    warnings = [e for e in daemon.log_events() if e["event"].startswith("per-entity metrics cut")]
    assert sorted(e["kind"] for e in warnings) == ["device", "sim"]  # once each, not once per scrape
    assert all(e["level"] == "warning" and e["limit"] == 5 for e in warnings)


def test_library_records_and_summaries_are_json_lines_with_readable_chinese(tmp_path: Path) -> None:
    with SimulatorProcess(devices=5) as sim:
        config = collector_config(tmp_path, sim.url, [*sim.devices, UNKNOWN])
        config["logging"]["summary_interval"] = "2s"
        # Every polled device fires; Apprise posts to a port nobody listens on and logs its failure
        # through the standard logging module.
        config["alerts"] = {
            "enabled": True, "default_rules": False, "evaluation_interval": "1s",
            "rules": [{"name": "Polled", "kind": "device", "condition": "rssi_dbm < 0"}],
            "notifiers": [{"type": "apprise", "urls": [f"json://127.0.0.1:{free_port()}/hook"], "group_wait": "0s"}],
        }
        daemon = DaemonProcess(tmp_path, config).start()
        try:
            wait_for(lambda: any(e.get("logger", "").startswith("apprise") for e in daemon.log_events()), 60,
                     "a record of Apprise in the log")
            wait_for(lambda: len([e for e in daemon.log_events() if e["event"] == "summary"]) >= 2, 30,
                     "two summary lines")
        finally:
            assert daemon.stop() == 0
    raw = daemon.logs()
    lines = [line for line in raw.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, the libraries' included, is JSON
    assert all({"event", "level", "timestamp"} <= set(r) for r in records)
    apprise = [r for r in records if r.get("logger", "").startswith("apprise")]
    assert apprise and all(r["level"] in ("warning", "error") for r in apprise)
    # The platform's message for the unknown device, as it said it.
    assert "设备不存在" in raw and "\\u8bbe" not in raw
    summaries = [r for r in records if r["event"] == "summary"]
    assert all({"polls_ok", "polls_failed", "points_collected", "points_written", "alerts_firing",
                "spool_backlog", "requests_per_second"} <= set(r) for r in summaries)
    assert sum(r["polls_ok"] for r in summaries) > 0 and sum(r["points_collected"] for r in summaries) > 0
    assert any(r["alerts_firing"] > 0 for r in summaries)
    assert all(r["level"] == "info" for r in summaries)


def test_every_metric_the_collector_exports_is_in_the_operations_metrics_list() -> None:
    from collector import metrics
    from collector.config import HttpConfig
    from collector.state import FleetState
    from collector.telemetry import FleetMetrics

    fleet = asyncio.run(FleetMetrics(lambda: FleetState(), lambda: (0, None), lambda: HttpConfig()).render())
    suffix = {"counter": "_total", "info": "_info"}
    exported = {family.name + suffix.get(family.type, "")
                for family in metrics.REGISTRY.collect() if family.name.startswith("iot_collector_")}
    exported.update(re.findall(r"^# TYPE (iot_collector_\w+) gauge$", fleet, re.M))
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    section = doc.split("### Metrics", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    listed = set(re.findall(r"`(iot_collector_\w+)`", section))
    assert exported - listed == set(), "exported but not in docs/operations.md, Metrics"
    assert listed - exported == set(), "in docs/operations.md, Metrics, but not exported"
