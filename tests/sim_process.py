"""The platform simulator as an operator runs it (`iot-collector simulate -c FILE`, a subprocess on a
free loopback port), and the `iot-collector` command run the same way, for the first-contact tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
APP_ID = "reseller-7"
APP_SECRET = "s3cr3t-Value-7781"


@dataclass
class SimProcess:
    """A running simulator: its URL, configuration file and admin API."""

    url: str
    config: Path
    process: subprocess.Popen[str]

    def admin(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"{self.url}/_sim/{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def requests(self) -> int:
        return int(self.admin("stats")["total"])

    def devices(self) -> list[str]:
        return [d["deviceNo"] for d in self.admin("inventory")["devices"]]


@contextmanager
def simulator(folder: Path, platform: dict[str, Any] | None = None, *, devices: int = 4, seed: int = 5,
              replay: Path | None = None, name: str = "sim.yaml") -> Iterator[SimProcess]:
    """`iot-collector simulate -c <folder>/sim.yaml --port 0 --speed 0` with `platform` merged over
    the test credentials (or, with `replay`, `--replay DIR` serving a capture); stopped with SIGTERM
    on exit."""
    config = folder / name
    config.write_text(yaml.safe_dump({"platform": {"app_id": APP_ID, "app_secret": APP_SECRET, **(platform or {})}}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    source = ["--replay", str(replay)] if replay is not None else [
        "--speed", "0", "--devices", str(devices), "--seed", str(seed)]
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "simulate", "-c", str(config), "--port", "0", *source],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert process.stdout is not None
        url = ""
        for _ in range(20):
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith("listening on"):
                url = line.split()[2]
                break
        if not url:
            process.kill()
            raise RuntimeError(f"the simulator did not start: {process.stderr.read() if process.stderr else ''}")
        yield SimProcess(url, config, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def collector_config(folder: Path, url: str, devices: Sequence[str], name: str = "collector.yaml",
                     **platform: Any) -> Path:
    """A collector configuration on its defaults for the simulator at `url`, the secret read from
    $APP_SECRET (as an operator keeps it out of the file)."""
    path = folder / name
    body = {"platform": {"base_url": url, "app_id": APP_ID, "app_secret": "${APP_SECRET}", **platform},
            "inventory": {"devices": list(devices)}}
    path.write_text("# the collector's configuration, on its defaults\n" + yaml.safe_dump(body, sort_keys=False))
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`iot-collector ARGS` in a subprocess, with the app secret in its environment."""
    env = {**os.environ, "APP_SECRET": APP_SECRET, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "collector", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)
