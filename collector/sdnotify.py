"""systemd's sd_notify protocol, spoken directly on $NOTIFY_SOCKET (no dependency): READY=1 after
start, WATCHDOG=1 from the event loop (so a hung loop stops the pings and systemd restarts us),
STOPPING=1 on shutdown. Every call is a no-op outside systemd."""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

log = structlog.get_logger("collector.sdnotify")


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

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
