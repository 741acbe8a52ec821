"""The shipped units under a real systemd: deploy/install.sh builds an installation (once per test
session), a container boots the host's systemd with that installation, the unchanged units from
deploy/systemd, a test configuration, a credential store and a short-watchdog drop-in bound in, and
tests/systemd_checks.py drives the service inside as an operator would (systemctl start, status,
reload, restart, kill -STOP, stop; journalctl). The tests here read what it recorded.

The collector polls its embedded platform simulator (signed with the app secret it got through
LoadCredential=) and writes to a file sink in its state directory and to an InfluxDB (1.x, Debian's
influxd) that starts inside the container only after the restart, so the points spooled before it
must arrive after it.

Two boots: the single unit (iot-collector.service) and two shards of iot-collector@.service side by
side. Needs root and systemd-nspawn (skipped otherwise, with the reason), and PyPI (or pip's cache)
for install.sh to install the collector's dependencies.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.inventory import shard_of
from tests.lineproto import parse_line
from tests.nspawn import boot, unavailable
from tests.servers import free_port, influxdb_config
from tests.test_deploy_install import build_wheel

REPO = Path(__file__).resolve().parent.parent
CHECKER = Path(__file__).resolve().parent / "systemd_checks.py"
UNITS = ("iot-collector.service", "iot-collector@.service")
HIDDEN = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")  # ProtectHome=yes, PrivateTmp=yes
DEVICES = 8
SEED = 7
DEVICE_INTERVAL = 10  # seconds: short, so a few cycles fit in a boot
STATUS_SECONDS = 24  # the first cycle (DEVICE_INTERVAL) ends, and the line shows it, well within
WATCHDOG_SEC = 6
BOOT_TIMEOUT = 600.0



@pytest.fixture(scope="session", autouse=True)
def can_boot() -> None:
    """Skip (with the reason) where no container can be booted: not root, no systemd-nspawn. Under CI,
    as root, a missing systemd-nspawn is a failure: `scripts/setup.sh --test` installs it."""
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI") and os.geteuid() == 0:
        pytest.fail(reason)
    pytest.skip(reason)


def fleet() -> list[str]:
    """The embedded simulator's device numbers for DEVICES and SEED."""
    proc = subprocess.run([sys.executable, "-m", "collector", "simulate", "--devices", str(DEVICES),
                           "--seed", str(SEED), "--print-inventory"], capture_output=True, text=True, check=True,
                          cwd=REPO, timeout=60)
    return [str(d) for d in yaml.safe_load(proc.stdout)["devices"]]


# --- the installation --------------------------------------------------------------------------------------

@dataclass
class Installation:
    root: Path
    output: str
    default_python: str  # what `python3` on PATH really is


@pytest.fixture(scope="session")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Installation:
    """install.sh --root into a staging tree, as an operator runs it: no --python, so it starts from
    `python3` on PATH (on these machines a pyenv one under /root, which the service cannot see), and
    the dependencies come from the package index (or pip's cache). The package is a wheel of this
    checkout (built from a copy: pip would leave build/ in the work tree)."""
    root = tmp_path_factory.mktemp("installed")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV", "PYTHONPATH")}
    # The test environment's own venv is not the python3 an operator has on PATH.
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
    proc = subprocess.run(["bash", str(REPO / "deploy/install.sh"), "--root", str(root), "--source", str(wheel)],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"install.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    python = subprocess.run(["python3", "-c", "import os, sys; print(os.path.realpath(sys.executable))"],
                            capture_output=True, text=True, env=env).stdout.strip()
    return Installation(root, proc.stdout + proc.stderr, python)


# --- a boot ----------------------------------------------------------------------------------------------

@dataclass
class Booted:
    out: Path
    results: dict[str, Any]
    console: str
    plan: dict[str, Any]

    def result(self, key: str) -> Any:
        errors = self.results.get("errors", {})
        assert key not in errors, f"the step {key!r} failed inside the container:\n{errors[key]}"
        assert key in self.results, (f"no record of {key!r}: the checks did not get there; "
                                     f"errors: {json.dumps(errors, indent=1)}\nconsole tail:\n{self.console[-3000:]}")
        return self.results[key]

    def journal(self) -> list[dict[str, Any]]:
        return [json.loads(line) if isinstance(line, str) else line
                for line in json.loads((self.out / "journal.json").read_text())]


def collector_config(http_port: str, influx_port: int, *, shards: int = 1) -> dict[str, Any]:
    return {
        "platform": {"app_id": "boot-test", "app_secret_credential": "iot-collector.app_secret", "rate_limit": 20},
        "inventory": {"file": "/etc/iot-collector/devices.csv", "watch": False},
        "jobs": {"device_status": {"interval": f"{DEVICE_INTERVAL}s"}, "device_flow": {"interval": "30s"},
                 "card_status": {"interval": "30s"}, "card_usage": {"interval": "60s"},
                 "card_info": {"interval": "1h"}, "account_assets": {"interval": "1h"}},
        "sharding": {"index": "${IOT_COLLECTOR_SHARD_INDEX:-0}", "total": shards},
        "sinks": {"file": {"enabled": True, "path": "${STATE_DIRECTORY}/points.lp"},
                  "influxdb_v1": {"enabled": shards == 1, "url": f"http://127.0.0.1:{influx_port}", "database": "iot"},
                  "retry_max_backoff": "2s"},
        "alerts": {"enabled": True, "evaluation_interval": "2s", "default_rules": False, "rules": [
            {"name": "DevicePolled", "kind": "device", "condition": "polled == True", "for": "0s",
             "severity": "info"},
            {"name": "DevicePolledForAnHour", "kind": "device", "condition": "polled == True", "for": "1h",
             "severity": "info"},
        ]},
        "simulator": {"embedded": True, "devices": DEVICES, "seed": SEED, "speed": 60},
        "http": {"port": http_port},
        "logging": {"level": "info", "format": "json"},
        "state_dir": "${STATE_DIRECTORY}",
    }


def run_boot(tmp: Path, installation: Installation, scenario: str, *, opt: Path | None = None,
             extra_ro_binds: dict[str, Path] | None = None) -> Booted:
    out, checks, etc, credstore, units = (tmp / d for d in ("out", "checks", "etc", "credstore", "units"))
    for d in (out, checks, etc, credstore, units):
        d.mkdir()
    devices = fleet()
    plan: dict[str, Any] = {"scenario": scenario, "device_interval": DEVICE_INTERVAL,
                            "status_seconds": STATUS_SECONDS, "devices": devices}
    influx_port = free_port()
    if scenario == "main":
        plan |= {"http_port": free_port(), "influx_port": influx_port, "added_device": devices[-1]}
        config = collector_config(str(plan["http_port"]), influx_port)
        inventory = devices[:-1]
    else:
        plan["shard_ports"] = [free_port(), free_port()]
        config = collector_config(f"${{IOT_COLLECTOR_HTTP_PORT:-{plan['shard_ports'][0]}}}", influx_port, shards=2)
        inventory = devices
    (etc / "collector.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (etc / "devices.csv").write_text("device_no,group\n" + "".join(f"{d},fleet\n" for d in inventory))
    (checks / "plan.json").write_text(json.dumps(plan))
    (checks / "influxdb.conf").write_text(influxdb_config(Path("/var/lib/boot-influxd"), influx_port, free_port()))
    shutil.copy(CHECKER, checks / "systemd_checks.py")

    credstore.chmod(0o700)
    secret = credstore / "iot-collector.app_secret"
    secret.write_text("boot-" + secrets.token_hex(16))
    secret.chmod(0o600)

    (units / "boot-checks.service").write_text(
        "[Unit]\nDescription=Checks of the iot-collector units\nAfter=multi-user.target\n\n"
        "[Service]\nType=oneshot\nTimeoutStartSec=15min\nExecStart=/usr/bin/python3 /checks/systemd_checks.py\n")
    # Test drop-ins only: a watchdog that fires within seconds; the second shard's /metrics port.
    (units / "main.d").mkdir()
    (units / "main.d/watchdog.conf").write_text(f"[Service]\nWatchdogSec={WATCHDOG_SEC}s\n")
    (units / "shard1.d").mkdir()
    if scenario == "shards":
        (units / "shard1.d/port.conf").write_text(
            f"[Service]\nEnvironment=IOT_COLLECTOR_HTTP_PORT={plan['shard_ports'][1]}\n")
    # The collector starts when the checks say so, not at boot through the preset of a first boot.
    (units / "boot.preset").write_text("disable iot-collector.service\ndisable iot-collector@.service\n")

    system = installation.root / "etc/systemd/system"
    ro_binds = {f"/etc/systemd/system/{u}": system / u for u in UNITS}
    ro_binds |= {
        "/opt/iot-collector": opt or installation.root / "opt/iot-collector",
        "/etc/systemd/system/boot-checks.service": units / "boot-checks.service",
        "/etc/systemd/system/iot-collector.service.d": units / "main.d",
        "/etc/systemd/system/iot-collector@1.service.d": units / "shard1.d",
        "/etc/systemd/system-preset/00-boot.preset": units / "boot.preset",
        "/etc/credstore": credstore,
        "/checks": checks,
        **(extra_ro_binds or {}),
    }
    binds = {"/out": out, "/etc/iot-collector": etc}
    booted = boot(wants="boot-checks.service", binds=binds, ro_binds=ro_binds, console_log=tmp / "console.log",
                  timeout=BOOT_TIMEOUT)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if not results:
        pytest.fail(f"the container recorded nothing (nspawn exited {booted.returncode} after "
                    f"{booted.seconds:.0f} s):\n{booted.console[-4000:]}")
    assert results.get("finished"), f"the checks did not finish:\n{booted.console[-4000:]}"
    assert not booted.timed_out, f"the container did not power off within {BOOT_TIMEOUT} s"
    return Booted(out, results, booted.console, plan)


@pytest.fixture(scope="module")
def main_boot(tmp_path_factory: pytest.TempPathFactory, installation: Installation) -> Iterator[Booted]:
    yield run_boot(tmp_path_factory.mktemp("boot-main"), installation, "main")


@pytest.fixture(scope="module")
def shards_boot(tmp_path_factory: pytest.TempPathFactory, installation: Installation) -> Iterator[Booted]:
    yield run_boot(tmp_path_factory.mktemp("boot-shards"), installation, "shards")


@pytest.fixture(scope="module")
def home_boot(tmp_path_factory: pytest.TempPathFactory, installation: Installation) -> Iterator[Booted]:
    """The installation an install.sh that did not look at its interpreter made from a pyenv or conda
    Python: a venv whose python links into a home directory (here the system interpreter's binary
    copied there, which finds its standard library in /usr). The home directory is bound into the
    container at the same path, so only the unit's sandbox stands between the service and it."""
    tmp = tmp_path_factory.mktemp("boot-home")
    home = Path.home()
    base = home if str(home).startswith(("/root", "/home/")) and os.access(home, os.W_OK) else tmp
    where = Path(tempfile.mkdtemp(prefix="iotc-python-", dir=base))
    try:
        (where / "bin").mkdir()
        python = where / "bin/python3"
        shutil.copy(os.path.realpath("/usr/bin/python3"), python)
        opt = tmp / "opt"
        subprocess.run([str(python), "-m", "venv", "--without-pip", str(opt / "venv")], check=True, timeout=120)
        script = opt / "venv/bin/iot-collector"
        script.write_text("#!/opt/iot-collector/venv/bin/python\nimport sys\nsys.exit(0)\n")
        script.chmod(0o755)
        # The venv was made at its staging path; its python link is absolute and points into the home.
        yield run_boot(tmp, installation, "home", opt=opt, extra_ro_binds={str(where): where})
    finally:
        shutil.rmtree(where)


# --- install.sh ---------------------------------------------------------------------------------------------

def test_install_gives_the_service_an_interpreter_it_can_see(installation: Installation) -> None:
    cfg = dict(line.split(" = ", 1) for line in
               (installation.root / "opt/iot-collector/venv/pyvenv.cfg").read_text().splitlines() if " = " in line)
    linked = os.path.realpath(installation.root / "opt/iot-collector/venv/bin/python")
    assert not (cfg["home"] + "/").startswith(HIDDEN), cfg
    assert not linked.startswith(HIDDEN), linked
    if installation.default_python.startswith(HIDDEN):
        # This machine's python3 is a per-user one: install.sh said it chose another, and why.
        assert "which the service cannot see" in installation.output, installation.output
        assert "using /usr" in installation.output, installation.output


# --- the single unit ----------------------------------------------------------------------------------------

def test_service_is_active_only_after_it_said_ready(main_boot: Booted) -> None:
    a = main_boot.result("activation")
    assert a["Type"] == "notify"
    states = [tuple(s[:2]) for s in a["states"]]
    assert states[0] == ("activating", "start"), states
    assert states[-1] == ("active", "running"), states
    # READY=1 comes after the HTTP server listens, so at the moment systemd says active it answers.
    assert a["healthz_at_active"][0] == 200, a["healthz_at_active"]
    # READY=1 carries the first status line: the first cycle has not polled every device yet.
    assert a["status_at_active"].startswith("starting, first cycle: device_status"), a["status_at_active"]
    assert int(a["ActiveEnterTimestampMonotonic"]) > int(a["ExecMainStartTimestampMonotonic"]) > 0


def test_systemctl_status_line_follows_what_the_collector_does(main_boot: Booted) -> None:
    """Sampled once a second from activation on, while the first cycles run, the InfluxDB sink is
    down (its server starts only later) and the test rule fires for every polled device."""
    lines = [text for _, text in main_boot.result("status_samples")]
    distinct = list(dict.fromkeys(lines))
    assert len(distinct) >= 3, f"STATUS= hardly changed over {STATUS_SECONDS} s: {distinct}"
    assert lines[0].startswith("starting, first cycle: device_status"), lines[0]
    assert lines[-1].startswith("device_status "), f"the end of the first cycle does not show: {distinct}"
    inventory = DEVICES - 1
    progress = [int(m.group(1)) for line in lines if (m := re.search(rf"device_status (\d+)/{inventory}\b", line))]
    assert len(set(progress)) >= 2, f"the cycle's progress never moved: {distinct}"
    assert any("; sink influxdb_v1 down; spool " in line for line in lines), distinct
    assert any(re.search(r"; \d+ alerts? firing$", line) for line in lines), distinct


def test_app_secret_arrives_through_load_credential_and_is_stored_nowhere_else(main_boot: Booted) -> None:
    cred = main_boot.result("credential")
    assert cred["delivered_equals_store"]
    assert "CREDENTIALS_DIRECTORY" in cred["environment_names"]
    assert not cred["secret_in_environment"] and not cred["secret_in_command_line"]
    # The platform (the embedded simulator) accepted requests signed with it.
    assert cred["polled_devices"], "nothing was polled"
    # A crash leaves no core dump, which would hold the secret read into memory.
    assert cred["core_file_limit"] == ["0", "0"]
    search = main_boot.result("secret_search")  # after every step, the service stopped
    assert search["files_scanned"] > 50
    # The search finds the one place it must, and nothing else: not the state directory, the spool,
    # the alert state, the journal, a core dump or a temporary file.
    assert search["files_with_secret"] == ["/etc/credstore/iot-collector.app_secret"]
    assert search["marker_in_journal"], "the journal search would not find a logged secret"
    assert not search["secret_in_journal"]


def test_state_directory_belongs_to_the_dynamic_user_with_mode_0700(main_boot: Booted) -> None:
    state = main_boot.result("state_directory")
    assert state["mode"] == "0o700"
    assert state["uid"] != 0
    assert state["public_name_resolves_here"]
    assert "points.lp" in state["files"] and any(f.startswith("spool") for f in state["files"])
    assert any(f.startswith("alerts") for f in state["files"])


def test_systemctl_reload_applies_an_inventory_change(main_boot: Booted) -> None:
    r = main_boot.result("reload")
    assert r["returncode"] == 0, r["stderr"]
    assert not r["added_polled_before"], "the device was polled before it was in the inventory"
    assert r["added_polled_after"], f"the added device was not polled within {3 * DEVICE_INTERVAL + 10} s"
    assert r["MainPID"] == r["pid_before"] and r["NRestarts"] == "0" and r["ActiveState"] == "active"
    assert r["devices_after"]["online"] + r["devices_after"]["offline"] + r["devices_after"]["unknown"] == DEVICES


def _alert_states(alerts: dict[str, Any]) -> dict[tuple[str, str], tuple[str, Any, Any]]:
    return {(a["rule"], a["entity"]): (a["state"], a["active_since"], a["fired_at"]) for a in alerts["alerts"]}


def test_restart_keeps_the_alert_state(main_boot: Booted) -> None:
    r = main_boot.result("restart")
    assert r["returncode"] == 0 and r["ActiveState"] == "active" and r["MainPID"] != r["pid_before"]
    before, after = _alert_states(r["alerts_before"]), _alert_states(r["alerts_after"])
    assert any(state == "firing" for state, _, _ in before.values()), before
    assert any(state == "pending" for state, _, _ in before.values()), before
    # Every alert active before the restart is there after it, with its own start and firing times
    # (not evaluated anew from scratch, which would restart the pending one's hour).
    assert {k: v for k, v in after.items() if k in before} == before


def test_points_spooled_before_a_restart_reach_the_sink_after_it(main_boot: Booted) -> None:
    r = main_boot.result("restart")
    influx_before = r["sinks_before"]["sinks"]["influxdb_v1"]
    assert influx_before["up"] is not True and influx_before["pending_bytes"] > 0, influx_before
    assert r["influxd_up"], "influxd did not start inside the container"
    influx_after = r["sinks_after"]["sinks"]["influxdb_v1"]
    assert influx_after["up"] is True and influx_after["pending_bytes"] == 0, influx_after

    lines = [parse_line(line) for line in (main_boot.out / "points-before-restart.lp").read_text().splitlines()
             if line.strip()]
    assert len(lines) > 20
    stored = set()
    for measurement, series_list in json.loads((main_boot.out / "influx.json").read_text()).items():
        for series in series_list:
            columns = series["columns"]
            for values in series["values"]:
                row = dict(zip(columns, values, strict=True))
                stored.add((measurement, row.get("device_no"), row["time"]))
    missing = [line for line in lines
               if (line.measurement, line.tags.get("device_no"), line.timestamp) not in stored]
    assert not missing, f"{len(missing)} of {len(lines)} points polled before the restart never reached InfluxDB"


def test_watchdog_restarts_a_hung_daemon(main_boot: Booted) -> None:
    w = main_boot.result("watchdog")
    assert w["WatchdogUSec"] in (f"{WATCHDOG_SEC}s", str(WATCHDOG_SEC * 1_000_000)), w["WatchdogUSec"]
    assert w["replaced"], f"the SIGSTOPped daemon was not replaced: {w['systemd_messages']}"
    assert int(w["NRestarts"]) == w["restarts_before"] + 1
    assert any("Watchdog timeout" in m for m in w["systemd_messages"]), w["systemd_messages"]


def test_stop_ends_within_timeout_without_sigkill(main_boot: Booted) -> None:
    s = main_boot.result("stop")
    assert s["returncode"] == 0 and s["ActiveState"] == "inactive"
    assert s["Result"] == "success", s
    assert s["seconds"] < 10.0, s  # the daemon's own budget, well inside TimeoutStopSec=30s
    journal = main_boot.journal()
    last_stop = max(i for i, e in enumerate(journal) if e.get("_PID") == "1" and e["MESSAGE"].startswith("Stopping"))
    after = [(e.get("_PID"), e["MESSAGE"]) for e in journal[last_stop:]]
    systemd_says = [m for pid, m in after if pid == "1"]
    assert "iot-collector.service: Deactivated successfully." in systemd_says, systemd_says
    assert not [m for m in systemd_says if "SIGKILL" in m or "code=killed" in m], systemd_says
    # The daemon finished its own shutdown (in-flight polls, a last flush, state saved).
    assert any(pid != "1" and json.loads(m).get("event") == "stopped" for pid, m in after), after
    # No stop during the whole boot (the restart's included) needed a SIGKILL.
    assert not [e["MESSAGE"] for e in journal if e.get("_PID") == "1" and "SIGKILL" in e["MESSAGE"]]


def test_journald_receives_structured_json_records(main_boot: Booted) -> None:
    records = [e for e in main_boot.journal() if e.get("SYSLOG_IDENTIFIER") == "iot-collector" and e.get("_PID") != "1"]
    assert len(records) > 10
    parsed = []
    for entry in records:
        message = entry["MESSAGE"]
        assert isinstance(message, str), entry
        record = json.loads(message)
        assert {"event", "level", "timestamp"} <= record.keys(), record
        parsed.append((entry, record))
    started = [r for _, r in parsed if r["event"] == "collector started"]
    assert started and started[0]["devices"] == DEVICES - 1 and started[0]["version"]
    reload = [r for _, r in parsed if r["event"] == "configuration reloaded"]
    assert reload, "the reload left no record"
    # journald's priority follows the record's level, so `journalctl -p warning` finds the warnings.
    priorities = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}
    for entry, record in parsed:
        assert entry.get("PRIORITY") == priorities[record["level"]], (entry.get("PRIORITY"), record)
    assert any(record["level"] == "warning" for _, record in parsed), "no warning to see the priority of"


# --- two shards of the template -------------------------------------------------------------------------

def test_two_shards_run_side_by_side_on_their_own_devices_and_state(shards_boot: Booted) -> None:
    start = shards_boot.result("shards_start")
    assert start["returncode"] == 0, start
    shards = shards_boot.result("shards")
    devices = shards_boot.plan["devices"]
    assert [s["ActiveState"] for s in shards] == ["active", "active"], shards
    assert [s["NRestarts"] for s in shards] == ["0", "0"]
    for index, shard in enumerate(shards):
        mine = sorted(d for d in devices if shard_of(d, 2) == index)
        assert shard["polled"] == mine, (shard["unit"], shard["polled"], mine)
        counts = shard["devices"]
        assert counts["online"] + counts["offline"] + counts["unknown"] == len(mine)
        assert re.match(rf"device_status \d+/{len(mine)}\b", shard["StatusText"]), shard["StatusText"]
        assert shard["state_directory"]["path"] == f"/var/lib/private/iot-collector/shard-{index}"
        assert shard["state_directory"]["mode"] == "0o700" and shard["state_directory"]["public_name_resolves_here"]
        assert shard["state_directory"]["uid"] != 0  # the dynamic user (both shards share "iot-collector")
    assert shards[0]["port"] != shards[1]["port"]
    stop = shards_boot.result("shards_stop")
    assert stop["returncode"] == 0 and all(u["Result"] == "success" for u in stop["units"].values()), stop


# --- what install.sh guards against ------------------------------------------------------------------------

def test_a_venv_made_from_a_home_directory_python_cannot_start_under_the_unit(home_boot: Booted) -> None:
    """Why install.sh refuses such an interpreter: the same venv runs for root in the container, but
    the unit's ProtectHome=yes hides its interpreter, and the start fails at exec (203/EXEC)."""
    direct = home_boot.result("home_direct")
    assert direct["returncode"] == 0, direct
    start = home_boot.result("home_start")
    assert start["returncode"] != 0
    assert start["ExecMainStatus"] == "203", start
    assert any("Failed at step EXEC" in m and "Permission denied" in m for m in start["messages"]), start["messages"]
