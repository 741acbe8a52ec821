"""Runs the real daemon (`python -m collector run`) as a subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent


class DaemonProcess:
    def __init__(self, tmp: Path, config: dict[str, Any], env: dict[str, str] | None = None,
                 name: str = "collector") -> None:
        self.dir = tmp
        self.config_path = tmp / f"{name}.yaml"
        self.config = config
        self.env = env or {}
        self.log_path = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> DaemonProcess:
        self.write_config()
        state = Path(self.config.get("state_dir", self.dir / "state"))
        runtime = state / "collector.json"
        runtime.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "collector", "run", "-c", str(self.config_path)],
                                     cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            if runtime.exists():
                try:
                    self.url = json.loads(runtime.read_text())["url"]
                    break
                except (ValueError, KeyError):
                    pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"daemon did not start:\n{self.logs()[-3000:]}")
        if wait_ready:
            self.wait_ready(deadline - time.monotonic())
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"daemon not ready:\n{self.logs()[-3000:]}")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("daemon did not stop on SIGTERM in time") from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def demo_config(tmp: Path, **overrides: Any) -> dict[str, Any]:
    """A fast configuration on the embedded simulator, writing a file sink in tmp."""
    config: dict[str, Any] = {
        "simulator": {"embedded": True, "devices": 20, "seed": 7, "speed": 60},
        "platform": {"rate_limit": 200, "max_concurrency": 16},
        "jobs": {"device_status": {"interval": "3s"}, "device_flow": {"interval": "4s"},
                 "card_status": {"interval": "4s"}, "card_usage": {"interval": "5s"},
                 "card_info": {"interval": "6s"}, "account_assets": {"interval": "5s"},
                 "card_month_usage": {"enabled": True, "interval": "6s"},
                 "card_actions": {"enabled": True, "interval": "6s"}},
        "sinks": {"file": {"enabled": True, "path": str(tmp / "points.lp")}, "flush_interval": "200ms"},
        "http": {"port": 0},
        "logging": {"level": "info", "format": "json"},
        "state_dir": str(tmp / "state"),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
