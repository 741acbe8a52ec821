"""The systemd units in deploy/systemd: hardened to an exposure of 2.0 or lower by
`systemd-analyze security`, every setting the deployment relies on present, secrets only through
LoadCredential=, the shard template the same as the main unit but for the shard, and the example
configuration valid under the environment the units give it. (`systemd-analyze verify` needs the
installed program: tests/test_deploy_install.py runs it on the tree install.sh produces.)
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from collector.config import ConfigError, load_config
from tests.servers import require

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "deploy" / "systemd"
MAIN = SYSTEMD / "iot-collector.service"
TEMPLATE = SYSTEMD / "iot-collector@.service"
EXAMPLE = REPO / "deploy" / "collector.yaml"
MAX_EXPOSURE = 2.0


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values in order (systemd keys repeat; an empty assignment resets the list,
    which is kept here as an empty string so `CapabilityBoundingSet=` stays visible)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exposure(unit: Path) -> tuple[float, str]:
    analyze = require("systemd-analyze", "systemd")
    proc = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, f"no exposure level in the output of systemd-analyze security:\n{output}"
    return float(match.group(1)), output


@pytest.mark.parametrize("unit", [MAIN, TEMPLATE], ids=lambda p: p.name)
def test_exposure_is_at_most_2(unit: Path) -> None:
    score, output = exposure(unit)
    failing = "\n".join(line for line in output.splitlines() if line.startswith("✗"))
    assert score <= MAX_EXPOSURE, f"{unit.name}: exposure {score} > {MAX_EXPOSURE}; open items:\n{failing}"
    # systemd's own threshold (on its 0-100 scale) agrees.
    analyze = require("systemd-analyze", "systemd")
    proc = subprocess.run([analyze, "security", "--offline=true", "--no-pager",
                           f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_exposure_check_is_not_vacuous(tmp_path: Path) -> None:
    """The same unit without its hardening scores far above the limit."""
    stripped = tmp_path / "iot-collector.service"
    text = MAIN.read_text().split("# Hardening.", 1)[0] + "\n[Install]\nWantedBy=multi-user.target\n"
    text = text.replace("DynamicUser=yes\n", "")
    stripped.write_text(text)
    score, _ = exposure(stripped)
    assert score > 5.0


@pytest.mark.parametrize("unit", [MAIN, TEMPLATE], ids=lambda p: p.name)
def test_unit_has_the_settings_the_deployment_relies_on(unit: Path) -> None:
    s = parse_unit(unit)["Service"]
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] and one["Restart"] == "on-failure"
    assert one["ExecStart"] == ("/opt/iot-collector/venv/bin/iot-collector run "
                                "-c /etc/iot-collector/collector.yaml")
    assert one["ExecReload"] == "kill -HUP $MAINPID"  # the daemon reloads config and inventory on SIGHUP
    assert one["StateDirectory"].startswith("iot-collector")
    assert one["ConfigurationDirectory"] == "iot-collector"
    assert one["StandardOutput"] == "journal" and one["StandardError"] == "journal"
    expected = {
        "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes", "RestrictNamespaces": "yes", "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native", "UMask": "0077",
    }
    assert {k: one.get(k) for k in expected} == expected
    assert s["CapabilityBoundingSet"] == [""]  # empty, and nothing added back later
    assert s["SystemCallFilter"][0] == "@system-service"
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


@pytest.mark.parametrize("unit", [MAIN, TEMPLATE], ids=lambda p: p.name)
def test_secrets_come_only_through_load_credential(unit: Path) -> None:
    s = parse_unit(unit)["Service"]
    assert "EnvironmentFile" not in s and "SetCredential" not in s
    for assignment in " ".join(s.get("Environment", [])).split():
        name = assignment.split("=", 1)[0].lower()
        assert not any(w in name for w in ("secret", "token", "password", "key")), assignment
    creds = s["LoadCredential"]
    # A bare name: looked up in the credential stores (/etc/credstore...), skipped when absent.
    assert all(re.fullmatch(r"iot-collector\.[a-z_]+", c) for c in creds), creds
    assert "iot-collector.app_secret" in creds


def test_every_credential_the_example_config_names_is_loaded_by_the_units() -> None:
    # Every `<key>_credential: NAME`, the commented-out examples too.
    named = set(re.findall(r"_credential: (iot-collector\.[a-z_]+)", EXAMPLE.read_text()))
    assert "iot-collector.app_secret" in named
    for unit in (MAIN, TEMPLATE):
        loaded = {c.split(":", 1)[0] for c in parse_unit(unit)["Service"]["LoadCredential"]}
        assert named <= loaded, f"{unit.name} does not load {sorted(named - loaded)}"


def test_template_differs_from_the_main_unit_only_by_the_shard() -> None:
    main, template = parse_unit(MAIN), parse_unit(TEMPLATE)
    assert main.keys() == template.keys()
    for section in main:
        differing = {k for k in main[section].keys() | template[section].keys()
                     if main[section].get(k) != template[section].get(k)}
        allowed = {"Description", "StateDirectory", "WorkingDirectory", "Environment", "SyslogIdentifier"}
        assert differing <= allowed, f"[{section}] differs in {sorted(differing - allowed)}"
    service = template["Service"]
    assert "IOT_COLLECTOR_SHARD_INDEX=%i" in service["Environment"]
    assert service["StateDirectory"] == ["iot-collector/shard-%i"]
    assert set(service["Environment"]) - {"IOT_COLLECTOR_SHARD_INDEX=%i"} == set(main["Service"]["Environment"])


def unit_environment(unit: Path, instance: str, credentials: Path,
                     monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The variables the unit gives the service, as systemd would expand them for `instance`.
    (Secrets are read through os.environ's CREDENTIALS_DIRECTORY, the rest through `env`.)"""
    env: dict[str, str] = {}
    service = parse_unit(unit)["Service"]
    for line in service.get("Environment", []):
        for assignment in line.split():
            key, _, value = assignment.partition("=")
            env[key] = value.replace("%i", instance)
    state = service["StateDirectory"][-1].replace("%i", instance)
    env["STATE_DIRECTORY"] = f"/var/lib/{state}"
    env["CREDENTIALS_DIRECTORY"] = str(credentials)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    return env


@pytest.mark.parametrize("instance", ["0", "2"])
def test_example_config_is_valid_for_each_shard_of_the_template(instance: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "iot-collector.app_secret").write_text("not-a-real-secret\n")
    document = yaml.safe_load(EXAMPLE.read_text())
    document["sharding"]["total"] = 3
    config_path = tmp_path / "collector.yaml"
    # Keep the ${...} references: they are what the test is about.
    config_path.write_text(EXAMPLE.read_text().replace("total: 1 ", "total: 3 "))
    assert yaml.safe_load(config_path.read_text())["sharding"] == document["sharding"]

    config = load_config(config_path, env=unit_environment(TEMPLATE, instance, credentials, monkeypatch))
    assert config.sharding.index == int(instance) and config.sharding.total == 3
    assert config.state_dir == f"/var/lib/iot-collector/shard-{instance}"
    assert config.platform.app_secret is not None
    assert config.platform.app_secret.get_secret_value() == "not-a-real-secret"
    assert config.http.port == 9108


def test_example_config_is_valid_for_the_main_unit_and_needs_the_secret(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    env = unit_environment(MAIN, "", credentials, monkeypatch)
    with pytest.raises(ConfigError, match="app_secret"):
        load_config(EXAMPLE, env=env)  # no credential file: a clear error, not a silent empty secret
    (credentials / "iot-collector.app_secret").write_text("x\n")
    config = load_config(EXAMPLE, env={**env, "IOT_COLLECTOR_HTTP_PORT": "9110"})
    assert config.sharding.index == 0 and config.state_dir == "/var/lib/iot-collector"
    assert config.http.port == 9110 and config.http.listen == "127.0.0.1"
