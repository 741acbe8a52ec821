"""What an operator sees when the collector cannot start, or starts from a configuration with a
mistake in it: the real `iot-collector run` / `check-config` as a subprocess; exit code 2, one line
naming the setting, no traceback (systemd's journal shows that line)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.daemon_run import REPO, DaemonProcess, demo_config, wait_for
from tests.servers import free_port
from tests.tmpfs import mounted


def collector(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def run_with(tmp_path: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(config))
    return collector("run", "-c", str(path))


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_port_in_use_names_http_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(run_with(tmp_path, demo_config(tmp_path, http={"port": port})))
    assert line.startswith(f"error: http.port: 127.0.0.1:{port} is in use")


def test_an_unresolvable_listen_address_names_http_listen(tmp_path: Path) -> None:
    line = one_line_error(run_with(tmp_path, demo_config(tmp_path, http={"port": 0,
                                                                        "listen": "no-such-host.invalid"})))
    assert line.startswith("error: http.listen: cannot resolve 'no-such-host.invalid'")


def test_a_listen_address_of_another_host_names_http_listen(tmp_path: Path) -> None:
    line = one_line_error(run_with(tmp_path, demo_config(tmp_path, http={"port": 0, "listen": "192.0.2.1"})))
    assert line == "error: http.listen: 192.0.2.1 is not an address of this host"


def test_a_state_directory_under_a_file_names_state_dir(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    line = one_line_error(run_with(tmp_path, demo_config(tmp_path, state_dir=str(tmp_path / "afile" / "state"))))
    assert line == f"error: state_dir: {tmp_path / 'afile'} is a file, not a directory " \
                   f"(state_dir is {tmp_path / 'afile' / 'state'})"
    line = one_line_error(run_with(tmp_path, demo_config(tmp_path, state_dir=str(tmp_path / "afile"))))
    assert line == f"error: state_dir: {tmp_path / 'afile'} is a file, not a directory"


def test_a_read_only_state_directory_names_state_dir(tmp_path: Path) -> None:
    with mounted(tmp_path / "state", "1m", "ro") as state:
        line = one_line_error(run_with(tmp_path, demo_config(tmp_path, state_dir=str(state))))
    assert line == f"error: state_dir: cannot keep the spool in {state}: Read-only file system"


def test_an_empty_configuration_file_is_said_to_be_empty(tmp_path: Path) -> None:
    for text in ("", "\n# nothing set yet\n"):
        path = tmp_path / "collector.yaml"
        path.write_text(text)
        for command in ("run", "check-config"):
            line = one_line_error(collector(command, "-c", str(path)))
            assert line.startswith(f"error: {path}: the configuration file is empty")
            assert "app_id" not in line


def test_a_disabled_job_needs_no_interval(tmp_path: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump({"simulator": {"embedded": True, "devices": 3}, "state_dir": str(tmp_path),
                                    "jobs": {"card_info": {"enabled": False}, "card_actions": {"enabled": True}}}))
    done = collector("check-config", "-c", str(path), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert "card_info" in summary["disabled_jobs"]
    # Enabled without an interval: the endpoint's default one (card_actions: 1h).
    assert {j["job"]: j["interval"] for j in summary["jobs"]}["card_actions"] == 3600


def test_duplicate_device_ids_are_named_by_check_config_and_at_start(tmp_path: Path) -> None:
    inventory = tmp_path / "devices.csv"
    inventory.write_text("device_no,customer\n1001,acme\n1002,globex\n1001,initech\n")
    config = demo_config(tmp_path, simulator={"embedded": True, "devices": 3, "seed": 7, "speed": 60},
                         inventory={"file": str(inventory), "devices": ["2001", {"device_no": "2001"}]})
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(config))
    done = collector("check-config", "-c", str(path))
    assert done.returncode == 0, done.stderr
    assert f"warning: {inventory}: device id listed more than once, the last entry of each is used: " \
           "1001 (line 2, line 4)" in done.stderr
    assert "warning: inventory.devices: device id listed more than once, the last entry of each is used: " \
           "2001 ([0], [1])" in done.stderr
    assert "devices: 3 " in done.stdout  # 1001, 1002, 2001
    assert json.loads(collector("check-config", "-c", str(path), "--json").stdout)["warnings"]

    daemon = DaemonProcess(tmp_path, config)
    daemon.start(wait_ready=False)
    try:
        found = wait_for(lambda: [e for e in daemon.log_events() if e.get("event") == "duplicate ids in the inventory"],
                         30, "the duplicate warning")
    finally:
        assert daemon.stop() == 0
    assert {e["level"] for e in found} == {"warning"}
    problems = " ".join(e["problem"] for e in found)
    assert "1001 (line 2, line 4)" in problems and "2001 ([0], [1])" in problems


def test_an_inventory_row_with_too_many_fields_is_named(tmp_path: Path) -> None:
    inventory = tmp_path / "devices.csv"
    inventory.write_text("device_no,customer\n1001,acme\n1003,acme,extra\n")
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(demo_config(tmp_path, inventory={"file": str(inventory)})))
    done = collector("check-config", "-c", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "line 3: more fields than the header has" in done.stderr


def test_a_simulator_port_in_use_names_simulator_port(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        line = one_line_error(run_with(tmp_path, demo_config(
            tmp_path, simulator={"embedded": True, "devices": 3, "port": port})))
    assert line.startswith(f"error: simulator.port: 127.0.0.1:{port} is in use")
