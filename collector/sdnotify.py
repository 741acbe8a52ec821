"""systemd's sd_notify protocol, spoken directly on $NOTIFY_SOCKET (no dependency): READY=1 after
start, WATCHDOG=1 from the event loop (so a hung loop stops the pings and systemd restarts us),
STATUS= with what the collector is doing now (the line `systemctl status` shows, built from the
daemon's status by `status_line`), STOPPING=1 on shutdown. Every call is a no-op outside systemd."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from collector.formats import human_bytes, short_duration

log = structlog.get_logger("collector.sdnotify")

STATUS_INTERVAL = 5.0  # seconds between looks at the daemon's status; STATUS= is sent only on a change
# The job whose cycle the status line follows, when the daemon runs it.
MAIN_JOB = "device_status"
# A backlog younger than this is the spool doing its job between two flushes, not news.
BACKLOG_AGE = 30.0


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify failed", error=str(exc), message=message.split("=")[0])

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec (from $WATCHDOG_USEC), when the watchdog is on for this process."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 1e6 / 2
        except ValueError:
            return None

    async def watchdog(self, default_interval: float = 10.0) -> None:
        """Ping the watchdog from the event loop until cancelled."""
        interval = self.watchdog_interval() or default_interval
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def publish_status(self, status: Callable[[], Mapping[str, Any]],
                             interval: float = STATUS_INTERVAL) -> None:
        """Send `STATUS=<status_line(status())>` every `interval` seconds when the line changed, until
        cancelled. A status that cannot be read is logged once per kind of error and skipped."""
        sent = ""
        failed = ""
        while True:
            try:
                line = status_line(status())
            except Exception as exc:  # the status must never take the daemon down
                error = f"{type(exc).__name__}: {exc}"
                if error != failed:
                    log.warning("status line failed", error=error)
                    failed = error
            else:
                failed = ""
                if line != sent:
                    self.notify(f"STATUS={line}")
                    sent = line
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _cycle_progress(job: Mapping[str, Any], devices: int, now: float) -> str:
    """`device_status 150/300`: where the current cycle is. The scheduler dispatches a cycle's items
    at even offsets over the job's interval, so the share of the interval gone since the cycle
    started is the share of items dispatched."""
    name = str(job.get("name", "?"))
    cycle = job.get("cycle")
    if cycle:  # the scheduler's own count of the cycle running now
        return f"{name} {cycle['done']}/{cycle['entities']}"
    start, end = job.get("last_start"), job.get("last_end")
    interval = float(job.get("effective_interval_seconds") or 0.0)
    items = int(job.get("last_entities") or job.get("last_items") or 0) or devices
    if start is None:
        return f"{name} waiting for its first cycle"
    if end is not None and end >= start:
        return f"{name} {items}/{items}"
    fraction = (now - float(start)) / interval if interval > 0 else 1.0
    done = min(items, max(0, math.floor(fraction * items)))
    return f"{name} {done}/{items}"


def status_line(status: Mapping[str, Any], now: float | None = None) -> str:
    """One line for `systemctl status` from the daemon's status (`Daemon.status()`): the main job's
    cycle progress and failing devices, a spool backlog or a sink that is down, firing alerts. E.g.
    `device_status 150/300, 2 failing; spool 1.2 MiB behind (oldest 3m); 3 alerts firing`."""
    now = time.time() if now is None else now
    parts: list[str] = []
    device = (status.get("entities") or {}).get("device") or {}
    devices = sum(int(n) for n in device.values())  # each device is in one state
    jobs = list(status.get("jobs") or [])
    job = next((j for j in jobs if j.get("name") == MAIN_JOB), None)
    if job is None and jobs:
        job = min(jobs, key=lambda j: float(j.get("effective_interval_seconds") or math.inf))
    head = _cycle_progress(job, devices, now) if job is not None else _plural(devices, "device")
    if not status.get("ready", True):
        head = f"starting, first cycle: {head}"
    failing = int(device.get("failing", 0))
    parts.append(f"{head}, {failing} failing" if failing else head)

    sinks = status.get("sinks") or {}
    down = sorted(name for name, sink in (sinks.get("sinks") or {}).items() if sink.get("up") is False)
    if down:
        parts.append(f"{'sink' if len(down) == 1 else 'sinks'} {', '.join(down)} down")
    spool = sinks.get("spool") or {}
    behind = max((int(s.get("pending_bytes") or 0) for s in (sinks.get("sinks") or {}).values()), default=0)
    oldest = spool.get("oldest_age_seconds")
    if behind and (down or (oldest is not None and oldest >= BACKLOG_AGE)):
        age = f" (oldest {short_duration(oldest)})" if oldest is not None else ""
        parts.append(f"spool {human_bytes(behind)} behind{age}")
    if spool.get("writable") is False:
        parts.append("spool NOT WRITABLE")

    alerts = status.get("alerts") or []
    firing = sum(1 for a in alerts if a.get("state") == "firing")
    if firing:
        parts.append(f"{_plural(firing, 'alert')} firing")
    return "; ".join(parts)
