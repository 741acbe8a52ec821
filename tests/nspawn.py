"""Boots a real systemd in a container for tests: `systemd-nspawn -D / --volatile=yes -b`, whose root
is a fresh tmpfs with the host's /usr (so /etc, /var and /opt start empty and the test binds in what
the boot needs), with the host's network. A unit named in `wants` is started at boot; it is expected
to write its findings to a bound folder and power the container off.

Needs root and `systemd-nspawn` (Debian: systemd-container, installed by `scripts/setup.sh --test`);
`unavailable()` says why a boot cannot happen here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

NSPAWN = "systemd-nspawn"
PACKAGE = "systemd-container"


def unavailable() -> str | None:
    """Why a container cannot be booted here (None when it can)."""
    if os.geteuid() != 0:
        return "booting a container with systemd-nspawn needs root"
    if shutil.which(NSPAWN) is None:
        return f"{NSPAWN} not found: apt-get install {PACKAGE} (scripts/setup.sh --test does)"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "no systemd in /usr/lib/systemd/systemd to boot (apt-get install systemd)"
    return None


@dataclass
class Boot:
    returncode: int
    seconds: float
    console: str
    timed_out: bool


def boot(*, wants: str, binds: dict[str, Path], ro_binds: dict[str, Path], console_log: Path,
         timeout: float) -> Boot:
    """Boot the host's systemd with `binds` (container path -> host path, read-write) and `ro_binds`
    (read-only), starting the unit `wants`; return when the container has powered off (or after
    `timeout` seconds, when it is asked to power off and then killed)."""
    command = [NSPAWN, "--quiet", "--register=no", "--keep-unit", "--directory=/", "--volatile=yes",
               f"--machine=iotc-{uuid.uuid4().hex[:12]}", "--console=read-only"]
    command += [f"--bind={host}:{inside}" for inside, host in binds.items()]
    command += [f"--bind-ro={host}:{inside}" for inside, host in ro_binds.items()]
    command += ["--boot", "systemd.firstboot=off", f"systemd.wants={wants}"]
    started = time.monotonic()
    with console_log.open("wb") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return Boot(proc.returncode, time.monotonic() - started,
                console_log.read_text(errors="replace"), timed_out)
