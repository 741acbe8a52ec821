"""What runs inside the container booted by tests/test_systemd_boot.py, as the unit
`boot-checks.service`: it drives the installed collector's units with systemctl, the way an operator
would, records what it observes in /out/results.json (and a few files beside it), and powers the
container off. It judges nothing: the test module reads the records and asserts.

It runs with the container's /usr/bin/python3 and the standard library only (the collector's own
environment is the thing under test). /checks/plan.json says which scenario to run and with which
ports, devices and timings. Each step is recorded as it ends, and a step that raises is recorded with
its traceback, so one failure does not hide what the other steps would have shown.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT = Path("/out")
PLAN: dict[str, Any] = json.loads(Path("/checks/plan.json").read_text())
RESULTS: dict[str, Any] = {"errors": {}}
UNIT = "iot-collector.service"
STATE = Path("/var/lib/private/iot-collector")
INVENTORY = Path("/etc/iot-collector/devices.csv")
CREDENTIAL = Path("/etc/credstore/iot-collector.app_secret")
# Where a secret may legitimately be: the credential store it is read from, and the copy systemd
# hands the running service. Anything else holding it is a leak.
SEARCH_SKIP = ("/proc", "/sys", "/dev", "/usr", "/out", "/checks")


def save(key: str, value: Any) -> None:
    RESULTS[key] = value
    tmp = OUT / "results.json.tmp"
    tmp.write_text(json.dumps(RESULTS, indent=1, default=str))
    tmp.replace(OUT / "results.json")


def log(message: str) -> None:
    with (OUT / "checks.log").open("a") as f:
        f.write(f"{time.monotonic():10.3f} {message}\n")


def step(name: str, fn: Callable[[], Any]) -> Any:
    log(f"step {name}")
    try:
        return fn()
    except Exception:
        RESULTS["errors"][name] = traceback.format_exc()
        save("errors", RESULTS["errors"])
        log(f"step {name} failed:\n{traceback.format_exc()}")
        return None


def run(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def show(unit: str, *props: str) -> dict[str, str]:
    out = run("systemctl", "show", unit, "-p", ",".join(props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def http(port: int, path: str, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", data=data, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def api(port: int, path: str) -> Any:
    code, body = http(port, path)
    return json.loads(body) if code == 200 else None


def unit_journal(unit: str) -> list[dict[str, Any]]:
    out = run("journalctl", "-u", unit, "-o", "json", "--no-pager").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def state_dir_facts(path: Path) -> dict[str, Any]:
    """Mode and owner of a state directory under /var/lib/private, and where its public name points."""
    st = path.stat()
    public = Path("/var/lib") / path.relative_to("/var/lib/private")
    return {"path": str(path), "mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid,
            "public_name_resolves_here": os.path.realpath(public) == str(path)}


def points_devices(path: Path) -> set[str]:
    """device_no tag values in a line-protocol file (ids are digits: no escaping to undo)."""
    found = set()
    if path.exists():
        for line in path.read_text().splitlines():
            for part in line.split(" ", 1)[0].split(",")[1:]:
                key, _, value = part.partition("=")
                if key == "device_no":
                    found.add(value)
    return found


# --- the single unit ------------------------------------------------------------------------------------

def start_and_watch_activation() -> None:
    """Start without waiting, and watch the unit's state as systemd sees it until it is active."""
    port = PLAN["http_port"]
    seen: list[list[Any]] = []
    t0 = time.monotonic()
    run("systemctl", "start", "--no-block", UNIT)
    healthz: tuple[int, str] | None = None
    status_at_active = ""
    while time.monotonic() - t0 < 90:
        s = show(UNIT, "ActiveState", "SubState", "StatusText")
        state = [s.get("ActiveState"), s.get("SubState")]
        if not seen or seen[-1][0:2] != state:
            seen.append([*state, round(time.monotonic() - t0, 3)])
        if state[0] == "active":
            # The daemon sends READY=1 only once its HTTP server listens: it must answer right now.
            healthz = http(port, "/healthz", timeout=2.0)
            status_at_active = s.get("StatusText", "")
            break
        if state[0] == "failed":
            break
        time.sleep(0.02)
    times = show(UNIT, "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic", "MainPID", "Type")
    save("activation", {"states": seen, "healthz_at_active": healthz, "status_at_active": status_at_active,
                        **times})


def sample_status() -> None:
    samples = []
    for _ in range(int(PLAN["status_seconds"])):
        samples.append([round(time.time(), 1), show(UNIT, "StatusText")["StatusText"]])
        time.sleep(1.0)
    save("status_samples", samples)
    save("api_status_after_samples", api(PLAN["http_port"], "/api/status"))


def credential_and_environment() -> None:
    secret = CREDENTIAL.read_bytes()
    pid = int(show(UNIT, "MainPID")["MainPID"])
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    delivered = Path(f"/run/credentials/{UNIT}/iot-collector.app_secret")
    save("credential", {
        "delivered_equals_store": delivered.read_bytes() == secret,
        "environment_names": sorted(e.split(b"=", 1)[0].decode() for e in environ if e),
        "secret_in_environment": any(secret in e for e in environ),
        "secret_in_command_line": secret in Path(f"/proc/{pid}/cmdline").read_bytes(),
        "polled_devices": sorted(points_devices(STATE / "points.lp")),
        "core_file_limit": next((line.split()[4:6] for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                                 if line.startswith("Max core file size")), None),
    })


def reload_inventory() -> None:
    port = PLAN["http_port"]
    added = PLAN["added_device"]
    # A full device cycle has passed without it: it is not polled before the reload.
    wait(lambda: (api(port, "/readyz") is not None), 60)
    time.sleep(PLAN["device_interval"] + 2)
    before = points_devices(STATE / "points.lp")
    pid_before = show(UNIT, "MainPID")["MainPID"]
    with INVENTORY.open("a") as f:
        f.write(f"{added},late\n")
    t0 = time.monotonic()
    proc = run("systemctl", "reload", UNIT)
    polled = wait(lambda: added in points_devices(STATE / "points.lp"), 3 * PLAN["device_interval"] + 10, 0.5)
    status = api(port, "/api/status") or {}
    save("reload", {
        "returncode": proc.returncode, "stderr": proc.stderr, "added_polled_before": added in before,
        "added_polled_after": bool(polled), "seconds_to_first_poll": round(time.monotonic() - t0, 1),
        "pid_before": pid_before, **show(UNIT, "MainPID", "ActiveState", "NRestarts"),
        "devices_after": (status.get("entities") or {}).get("device"),
    })


def restart_keeps_state() -> None:
    port = PLAN["http_port"]

    def firing() -> list[dict[str, Any]]:
        alerts = api(port, "/api/alerts") or []
        alerts = alerts.get("alerts", alerts) if isinstance(alerts, dict) else alerts
        return [a for a in alerts if a.get("state") == "firing"]

    wait(firing, 60)
    before = api(port, "/api/alerts")
    status_before = api(port, "/api/status")
    # Points polled so far: the file sink has them; the InfluxDB sink, down until after the restart,
    # has them only in the spool.
    (OUT / "points-before-restart.lp").write_bytes((STATE / "points.lp").read_bytes())
    pid_before = show(UNIT, "MainPID")["MainPID"]
    t0 = time.monotonic()
    proc = run("systemctl", "restart", UNIT)
    restart_seconds = round(time.monotonic() - t0, 2)
    wait(lambda: api(port, "/api/alerts") is not None, 30)
    after = api(port, "/api/alerts")
    # The InfluxDB sink comes up only now.
    started = run("systemd-run", "--unit=boot-influxd", "--property=Type=exec",
                  "/usr/bin/influxd", "-config", "/checks/influxdb.conf")
    influx_up = wait(lambda: http(PLAN["influx_port"], "/ping")[0] == 204, 60)

    def drained() -> bool:
        sink = ((api(port, "/api/status") or {}).get("sinks") or {}).get("sinks", {}).get("influxdb_v1", {})
        return bool(sink.get("up")) and sink.get("pending_bytes") == 0

    wait(drained, 90, 0.5)
    status_after = api(port, "/api/status")
    save("restart", {"returncode": proc.returncode, "seconds": restart_seconds, "pid_before": pid_before,
                     **show(UNIT, "MainPID", "ActiveState", "NRestarts", "Result"),
                     "alerts_before": before, "alerts_after": after,
                     "sinks_before": (status_before or {}).get("sinks"),
                     "sinks_after": (status_after or {}).get("sinks"),
                     "influxd_started": started.returncode == 0, "influxd_up": bool(influx_up)})
    dump_influx()


def dump_influx() -> None:
    port = PLAN["influx_port"]

    def query(q: str) -> list[dict[str, Any]]:
        data = urllib.parse.urlencode({"q": q, "db": "iot", "epoch": "ns"}).encode()
        code, body = http(port, "/query", data=data, timeout=30)
        result = json.loads(body)["results"][0] if code == 200 else {"error": body}
        if "error" in result:
            raise RuntimeError(result["error"])
        return list(result.get("series", []))

    measurements = [v[0] for s in query("SHOW MEASUREMENTS") for v in s.get("values", [])]
    dump = {m: query(f'SELECT * FROM "{m}"') for m in measurements}
    (OUT / "influx.json").write_text(json.dumps(dump))


def watchdog_restarts_a_hung_daemon() -> None:
    pid = show(UNIT, "MainPID")["MainPID"]
    restarts = int(show(UNIT, "NRestarts")["NRestarts"])
    t0 = time.monotonic()
    run("kill", "-STOP", pid)

    def replaced() -> bool:
        s = show(UNIT, "MainPID", "ActiveState", "SubState")
        return s["MainPID"] not in ("0", pid) and s["ActiveState"] == "active" and s["SubState"] == "running"

    ok = wait(replaced, 90, 0.2)
    messages = [e.get("MESSAGE", "") for e in unit_journal(UNIT) if e.get("_PID") == "1" or e.get("_COMM") == "systemd"]
    save("watchdog", {"hung_pid": pid, "replaced": bool(ok), "seconds": round(time.monotonic() - t0, 1),
                      "restarts_before": restarts, **show(UNIT, "MainPID", "NRestarts", "WatchdogUSec"),
                      "systemd_messages": messages[-30:]})


def stop_in_time() -> None:
    t0 = time.monotonic()
    proc = run("systemctl", "stop", UNIT)
    seconds = round(time.monotonic() - t0, 2)
    facts = show(UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus", "TimeoutStopUSec")
    save("stop", {"returncode": proc.returncode, "seconds": seconds, **facts})


def state_directory() -> None:
    save("state_directory", {**state_dir_facts(STATE),
                             "files": sorted(str(p.relative_to(STATE)) for p in STATE.rglob("*"))})


def secret_search() -> None:
    """Every regular file in the container's own filesystem (not the host's /usr, not the test's
    binds) that holds the app secret's value."""
    secret = CREDENTIAL.read_bytes().strip()
    found = []
    scanned = 0
    for top in sorted(os.listdir("/")):
        # /bin, /lib... are links into the host's /usr.
        if f"/{top}" in SEARCH_SKIP or os.path.islink(f"/{top}"):
            continue
        for dirpath, dirnames, filenames in os.walk(f"/{top}", followlinks=False):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in SEARCH_SKIP]
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    if not stat.S_ISREG(os.lstat(path).st_mode):
                        continue
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                scanned += 1
                if secret in data:
                    found.append(path)
    # journald compresses long fields in its files: look at every entry's fields as journalctl reads
    # them. A long line with a marker, logged now, shows the search finds what is in the journal.
    marker = f"boot-checks-marker-{os.getpid()}-{time.time_ns()}".encode()
    subprocess.run(["systemd-cat", "-t", "boot-checks"], input=b"x" * 2000 + marker + b"\n", timeout=30)
    time.sleep(1.0)
    exported = subprocess.run(["journalctl", "-o", "export", "--no-pager"], capture_output=True, timeout=120).stdout
    save("secret_search", {"files_with_secret": found, "files_scanned": scanned,
                           "secret_in_journal": secret in exported, "marker_in_journal": marker in exported,
                           "journal_bytes": len(exported)})


def journal() -> None:
    (OUT / "journal.json").write_text(json.dumps(unit_journal(UNIT)))


def main_scenario() -> None:
    step("activation", start_and_watch_activation)
    step("status", sample_status)
    step("credential", credential_and_environment)
    step("state_directory_running", state_directory)
    step("reload", reload_inventory)
    step("restart", restart_keeps_state)
    step("watchdog", watchdog_restarts_a_hung_daemon)
    step("stop", stop_in_time)
    step("state_directory", state_directory)
    step("journal", journal)
    step("secret_search", secret_search)


# --- shards of the template ----------------------------------------------------------------------------

def shards_scenario() -> None:
    units = [f"iot-collector@{i}.service" for i in range(len(PLAN["shard_ports"]))]

    def start() -> None:
        proc = run("systemctl", "start", *units)
        save("shards_start", {"returncode": proc.returncode, "stderr": proc.stderr,
                              "units": {u: show(u, "ActiveState", "SubState", "MainPID", "StatusText")
                                        for u in units}})

    def observe() -> None:
        ports = PLAN["shard_ports"]
        for port in ports:
            wait(lambda p=port: http(p, "/readyz")[0] == 200, 90)
        time.sleep(PLAN["device_interval"] + 2)
        shards = []
        for i, (unit, port) in enumerate(zip(units, ports, strict=True)):
            directory = STATE / f"shard-{i}"
            status = api(port, "/api/status") or {}
            shards.append({"unit": unit, **show(unit, "ActiveState", "MainPID", "StatusText", "NRestarts"),
                           "port": port, "devices": (status.get("entities") or {}).get("device"),
                           "polled": sorted(points_devices(directory / "points.lp")),
                           "state_directory": state_dir_facts(directory)})
        save("shards", shards)

    def stop() -> None:
        t0 = time.monotonic()
        proc = run("systemctl", "stop", *units)
        save("shards_stop", {"returncode": proc.returncode, "seconds": round(time.monotonic() - t0, 2),
                             "units": {u: show(u, "ActiveState", "Result") for u in units}})
        (OUT / "journal.json").write_text(json.dumps([e for u in units for e in unit_journal(u)]))

    step("shards_start", start)
    step("shards", observe)
    step("shards_stop", stop)


# --- an installation made from an interpreter under a home directory ----------------------------------

def home_scenario() -> None:
    def direct() -> None:
        proc = run("/opt/iot-collector/venv/bin/python", "-c", "import sys; print(sys.executable)")
        save("home_direct", {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr})

    def start() -> None:
        proc = run("systemctl", "start", UNIT)
        wait(lambda: show(UNIT, "ExecMainStatus")["ExecMainStatus"] != "0", 30)
        messages = [e.get("MESSAGE", "") for e in unit_journal(UNIT)]
        save("home_start", {"returncode": proc.returncode, "messages": messages,
                            **show(UNIT, "ActiveState", "SubState", "Result", "ExecMainStatus")})

    step("home_direct", direct)
    step("home_start", start)


def main() -> None:
    log(f"scenario {PLAN['scenario']}")
    try:
        {"main": main_scenario, "shards": shards_scenario, "home": home_scenario}[PLAN["scenario"]]()
    finally:
        save("finished", True)
        log("powering off")
        run("systemctl", "poweroff", "--no-block")


if __name__ == "__main__":
    main()
