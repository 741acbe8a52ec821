"""The STATUS= line `systemctl status` shows (collector/sdnotify.py): built from the daemon's status
(the dict `Daemon.status()` returns and /api/status serves), and sent on $NOTIFY_SOCKET only when it
changes. The notify socket here is a real AF_UNIX datagram socket, as systemd's."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.sdnotify import Notifier, status_line

NOW = 1_800_000_000.0


def daemon_status(*, now: float = NOW, ready: bool = True, online: int = 280, offline: int = 15, unknown: int = 5,
                  failing: int = 0,
                  job: dict[str, Any] | None = None, sinks: dict[str, Any] | None = None,
                  spool: dict[str, Any] | None = None, alerts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A status shaped as Daemon.status() returns it (the keys the line reads)."""
    device_status = {"name": "device_status", "interval_seconds": 300.0, "effective_interval_seconds": 300.0,
                     "runs": 3, "last_start": now - 150.0, "last_end": now - 160.0, "last_outcome": "ok",
                     "last_failures": 0, "last_items": 300, "next_run": now + 150.0}
    device_status.update(job or {})
    return {
        "ready": ready,
        "jobs": [{"name": "account_assets", "effective_interval_seconds": 3600.0, "last_start": now - 10,
                  "last_end": now - 9, "last_items": 1},
                 device_status],
        "entities": {"device": {"online": online, "offline": offline, "unknown": unknown, "failing": failing},
                     "sim": {"tracked": 0, "polled": 0}},
        "sinks": {"sinks": sinks if sinks is not None else {"influxdb_v1": {"up": True, "pending_bytes": 0}},
                  "spool": {"bytes": 8, "oldest_age_seconds": None, "writable": True, **(spool or {})}},
        "alerts": alerts or [],
    }


def test_line_shows_the_device_cycle_progress_failures_backlog_and_firing_alerts() -> None:
    status = daemon_status(
        failing=2,
        sinks={"influxdb_v1": {"up": False, "pending_bytes": int(1.2 * 1024**2)}},
        spool={"oldest_age_seconds": 185.0},
        alerts=[{"state": "firing"}, {"state": "firing"}, {"state": "pending"}, {"state": "firing"}],
    )
    assert status_line(status, NOW) == ("device_status 150/300, 2 failing; sink influxdb_v1 down; "
                                        "spool 1.2 MiB behind (oldest 3.1m); 3 alerts firing")


def test_a_quiet_healthy_collector_shows_only_its_progress() -> None:
    # A backlog of a few seconds is the spool between two flushes, not worth a word.
    status = daemon_status(sinks={"influxdb_v1": {"up": True, "pending_bytes": 900}},
                           spool={"oldest_age_seconds": 2.0}, alerts=[{"state": "pending"}])
    assert status_line(status, NOW) == "device_status 150/300"


def test_progress_advances_with_the_cycle_and_reads_full_once_the_cycle_ended() -> None:
    lines = [status_line(daemon_status(), NOW + dt) for dt in (-150.0, -75.0, 0.0, 75.0, 149.0)]
    assert lines == ["device_status 0/300", "device_status 75/300", "device_status 150/300",
                     "device_status 225/300", "device_status 299/300"]
    done = daemon_status(job={"last_start": NOW - 300.0, "last_end": NOW - 1.0, "last_items": 300})
    assert status_line(done, NOW) == "device_status 300/300"
    # A cycle that took longer than its interval says all dispatched, never more.
    late = daemon_status(job={"last_start": NOW - 400.0, "last_end": NOW - 700.0})
    assert status_line(late, NOW) == "device_status 300/300"


def test_first_cycle_counts_the_inventory_and_says_the_collector_is_starting() -> None:
    status = daemon_status(ready=False, online=3, offline=0, unknown=17,
                           job={"last_start": NOW - 10.0, "last_end": None, "last_items": 0,
                                "effective_interval_seconds": 20.0})
    assert status_line(status, NOW) == "starting, first cycle: device_status 10/20"
    waiting = daemon_status(ready=False, job={"last_start": None, "last_end": None, "last_items": 0})
    assert status_line(waiting, NOW) == "starting, first cycle: device_status waiting for its first cycle"


def test_without_the_device_job_the_shortest_job_is_followed() -> None:
    status = daemon_status()
    status["jobs"] = [j for j in status["jobs"] if j["name"] != "device_status"]
    assert status_line(status, NOW) == "account_assets 1/1"
    status["jobs"] = []
    assert status_line(status, NOW) == "300 devices"


def test_unwritable_spool_and_several_down_sinks_are_named() -> None:
    status = daemon_status(sinks={"influxdb_v1": {"up": False, "pending_bytes": 2048},
                                  "file": {"up": False, "pending_bytes": 0}, "influxdb_v2": {"up": None}},
                           spool={"writable": False, "oldest_age_seconds": 4.0},
                           alerts=[{"state": "firing"}])
    assert status_line(status, NOW) == ("device_status 150/300; sinks file, influxdb_v1 down; "
                                        "spool 2 KiB behind (oldest 4s); spool NOT WRITABLE; 1 alert firing")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket where a Notifier sends, as systemd's $NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_status_is_sent_when_it_changes_and_only_then(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = Notifier(path)
    # What the daemon reports at each look: the same line three times, then a device fails.
    done = {"last_end": NOW - 1.0}  # a finished cycle: the line does not move with the clock
    sequence = [daemon_status(job=done), daemon_status(job=done), daemon_status(job=done),
                daemon_status(job=done, failing=1)]
    looks = iter(sequence)
    task = asyncio.create_task(notifier.publish_status(lambda: next(looks), interval=0.01))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if task.done():
            break
    # The iterator running out ends the task with an error it logs and survives; stop it.
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    notifier.close()
    messages = received(sock)
    assert [m for m in messages if m.startswith("STATUS=")] == messages
    lines = [m.removeprefix("STATUS=") for m in messages]
    assert len(lines) == 2, lines
    assert not lines[0].endswith("failing") and lines[1].endswith(", 1 failing")


async def test_a_status_that_fails_is_skipped_and_the_publisher_keeps_going(
        notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = Notifier(path)
    calls = 0
    enough = asyncio.Event()

    def status() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls >= 5:
            enough.set()
        if calls <= 2:
            raise RuntimeError("scheduler not started")
        # A finished cycle: the line does not move with the clock.
        return daemon_status(job={"last_end": NOW - 1.0}, alerts=[{"state": "firing"}])

    task = asyncio.create_task(notifier.publish_status(status, interval=0.01))
    await asyncio.wait_for(enough.wait(), timeout=10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    notifier.close()
    assert received(sock) == ["STATUS=device_status 300/300; 1 alert firing"]


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.notify("STATUS=x")  # no socket, no error
