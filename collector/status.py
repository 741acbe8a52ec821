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


def _job_state(job: dict[str, Any]) -> tuple[str, int, int]:
    """(state, entities, failed): the cycle running now (`running 150/300`), else the last one."""
    cycle = job.get("cycle")
    if cycle:
        return (f"running {cycle['done']}/{cycle['entities']}", cycle["entities"],
                cycle["failed"] + cycle["not_found"])
    return job.get("last_outcome") or "-", job.get("last_entities", 0), job.get("last_failures", 0)


def _counts(by_state: dict[str, int], names: tuple[str, ...]) -> str:
    shown = [f"{by_state.get(n, 0)} {n.replace('_', ' ')}" for n in names if by_state.get(n) or n in names[:2]]
    return f"{sum(by_state.values())} ({', '.join(shown)})"


def render_status(status: dict[str, Any], out: TextIO) -> None:
    now = time.time()
    out.write(f"iot-collector {status.get('version')}  pid {status.get('pid')}  "
              f"up {short_duration(status['uptime_seconds'])}"
              f"  {'ready' if status.get('ready') else 'NOT READY'}\n\n")
    out.write(f"{'job':<17} {'every':>6} {'last run':>10} {'state':>16} {'entities':>8} {'failed':>6} "
              f"{'lag':>6} {'skipped':>7} {'overruns':>8} {'next':>9}\n")
    for job in status.get("jobs", []):
        state, entities, failed = _job_state(job)
        out.write(f"{job['name']:<17} {short_duration(job['effective_interval_seconds']):>6} "
                  f"{_ago(job['last_start'], now):>10} {state:>16} {entities:>8} {failed:>6} "
                  f"{job['lag_seconds']:>5.1f}s {job.get('skipped_in_flight', 0):>7} {job['overruns']:>8} "
                  f"{_ago(job['next_run'], now):>9}\n")
    entities = status.get("entities", {})
    devices = _counts(entities.get("device", {}), ("online", "offline", "unknown", "failing", "not_found"))
    sims = _counts(entities.get("sim", {}), ("polled", "unpolled", "not_found"))
    out.write(f"\ndevices: {devices};  SIMs: {sims}\n")
    req = status.get("requests", {})
    current = req.get("current_rate_rps")
    need, stretch = req.get("needed_rps") or 0.0, req.get("stretch") or 1.0
    assumed = f", {req['sims_assumed']} assumed until their devices answer" if req.get("sims_assumed") else ""
    out.write(f"requests: need {need:.2f} req/s of {req.get('rate_limit_rps')} allowed "
              f"(SIMs: {req.get('sims_known', 0)} found{assumed})"
              + (f"; TOO SMALL: intervals stretched x{stretch:.2f}" if stretch > 1.0 else "")
              + f"; polling at {req.get('planned_rps') or 0.0:.2f} req/s"
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
    resting = status.get("backing_off", [])
    if resting:
        out.write("\nnot found by the platform (polled again later):\n")
        for e in resting:
            kind = "device" if e["kind"] == "device" else "SIM"
            out.write(f"  {kind} {e['id']}: not found {e['not_found']}x since {_ago(e['since'], now)}, "
                      f"next poll {_ago(e['until'], now)}  ({e['error']})\n")
    alerts = status.get("alerts", [])
    firing = [a for a in alerts if a.get("state") == "firing"]
    out.write(f"\nalerts: {len(firing)} firing, {len(alerts) - len(firing)} pending\n")
    for a in firing[:20]:
        labels = a.get("labels", {})
        out.write(f"  [{labels.get('severity', '')}] {labels.get('alertname', a.get('rule', ''))} "
                  f"{a.get('entity', '')}: {a.get('annotations', {}).get('summary', '')}\n")
