"""Renders the running collector's /api/status for a person on a terminal (`iot-collector status`)."""

from __future__ import annotations

import time
from typing import Any, TextIO

from collector.formats import human_bytes, short_duration


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    delta = now - ts
    if delta < 0:
        return f"in {short_duration(-delta)}"
    return f"{short_duration(delta)} ago"


def render_status(status: dict[str, Any], out: TextIO) -> None:
    now = time.time()
    out.write(f"iot-collector {status.get('version')}  pid {status.get('pid')}  "
              f"up {short_duration(status['uptime_seconds'])}"
              f"  {'ready' if status.get('ready') else 'NOT READY'}\n\n")
    out.write(f"{'job':<17} {'every':>6} {'last run':>10} {'outcome':>8} {'items':>6} {'fail':>5} "
              f"{'lag':>6} {'overruns':>8} {'next':>9}\n")
    for job in status.get("jobs", []):
        out.write(f"{job['name']:<17} {short_duration(job['effective_interval_seconds']):>6} "
                  f"{_ago(job['last_start'], now):>10} {job['last_outcome'] or '-':>8} {job['last_items']:>6} "
                  f"{job['last_failures']:>5} {job['lag_seconds']:>5.1f}s {job['overruns']:>8} "
                  f"{_ago(job['next_run'], now):>9}\n")
    entities = status.get("entities", {})
    dev = entities.get("device", {})
    sims = entities.get("sim", {})
    out.write(f"\ndevices: {dev.get('online', 0)} online, {dev.get('offline', 0)} offline, "
              f"{dev.get('unknown', 0)} unknown, {dev.get('failing', 0)} failing;  "
              f"SIMs: {sims.get('tracked', 0)} tracked, {sims.get('polled', 0)} polled\n")
    req = status.get("requests", {})
    current = req.get("current_rate_rps")
    out.write(f"requests: need {req.get('needed_rps') or 0:.2f} req/s of {req.get('rate_limit_rps')} allowed"
              + (f", currently allowed {current:.2f}" if isinstance(current, float) else "") + "\n")
    sinks = status.get("sinks", {})
    spool = sinks.get("spool", {})
    if spool:
        out.write(f"spool: {human_bytes(spool.get('bytes')) or '-'}, oldest unsent "
                  f"{short_duration(spool['oldest_age_seconds']) if spool.get('oldest_age_seconds') else '-'}\n")
    for name, sink in (sinks.get("sinks") or {}).items():
        state = "up" if sink.get("up") else "DOWN"
        err = f"  last error: {sink['last_error']}" if sink.get("last_error") else ""
        out.write(f"sink {name}: {state}, {sink.get('points_written', 0)} points written{err}\n")
    failing = status.get("failing_devices", [])
    if failing:
        out.write("\nfailing devices:\n")
        for d in failing:
            out.write(f"  {d['device_no']}: {d['failures']} failures, {d['error']}\n")
    alerts = status.get("alerts", [])
    firing = [a for a in alerts if a.get("state") == "firing"]
    out.write(f"\nalerts: {len(firing)} firing, {len(alerts) - len(firing)} pending\n")
    for a in firing[:20]:
        labels = a.get("labels", {})
        out.write(f"  [{labels.get('severity', '')}] {labels.get('alertname', a.get('rule', ''))} "
                  f"{a.get('entity', '')}: {a.get('annotations', {}).get('summary', '')}\n")
