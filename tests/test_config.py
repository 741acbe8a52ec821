"""Configuration: one schema, the path of every bad key, exit code 2, secrets from files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import ConfigError, load_config, parse_config
from collector.configtypes import parse_duration, parse_size

REPO = Path(__file__).resolve().parent.parent


def problems_of(data: dict, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env or {})
    return info.value.problems


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=60)


def test_default_configuration_is_valid_and_needs_no_secret() -> None:
    config = load_config(REPO / "collector.yaml")
    assert config.simulator.embedded
    assert config.platform.app_secret is None
    assert config.sinks.file.enabled


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400),
                                               ("250ms", 0.25), ("2d", 172800), (45, 45), ("12", 12)])
def test_durations_accept_units(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5x", "", "m5", True, None, "1h-3m"])
def test_bad_durations_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_sizes() -> None:
    assert parse_size("512MiB") == 512 * 1024**2
    assert parse_size("2GB") == 2 * 1000**3
    assert parse_size(100) == 100


def test_bad_keys_are_named_by_their_path() -> None:
    problems = problems_of({
        "simulator": {"embedded": True},
        "platform": {"rate_limit": -1, "timeot": "5s"},
        "jobs": {"device_flow": {"interval": "soon"}},
        "inventory": {"devices": [{"device_no": "1", "labels": {"bad-label": "x"}}]},
    })
    assert "platform.rate_limit: must be > 0, got -1" in problems
    assert "platform.timeot: unknown key" in problems
    assert any(p.startswith("jobs.device_flow.interval: must be a duration") for p in problems)
    assert any(p.startswith("inventory.devices[0].labels: label name 'bad-label'") for p in problems)


def test_real_platform_needs_credentials() -> None:
    problems = problems_of({"platform": {"base_url": "https://api.example.invalid"}})
    assert any("app_id and platform.app_secret are required" in p for p in problems)


def test_env_substitution_with_default_and_missing_variable() -> None:
    config = parse_config({"platform": {"app_id": "${APP}", "app_secret": "${SECRET:-fallback}",
                                        "base_url": "http://${HOST}:2000"}},
                          env={"APP": "a1", "HOST": "10.1.2.3"})
    assert config.platform.app_id == "a1"
    assert config.platform.app_secret is not None
    assert config.platform.app_secret.get_secret_value() == "fallback"
    assert str(config.platform.base_url) == "http://10.1.2.3:2000/"
    problems = problems_of({"platform": {"app_id": "${NOPE}"}})
    assert problems == ["platform.app_id: environment variable NOPE is not set"]


def test_secret_from_file_and_from_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret.txt").write_text("s3cret-from-file\n")
    config = parse_config({"platform": {"app_id": "a", "app_secret_file": str(tmp_path / "secret.txt")}}, env={})
    assert config.platform.app_secret is not None
    assert config.platform.app_secret.get_secret_value() == "s3cret-from-file"

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "platform-secret").write_text("s3cret-from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = parse_config({"platform": {"app_id": "a", "app_secret_credential": "platform-secret"}}, env={})
    assert config.platform.app_secret is not None
    assert config.platform.app_secret.get_secret_value() == "s3cret-from-credential"
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.model_dump(mode="json"))


def test_secret_from_two_places_is_an_error(tmp_path: Path) -> None:
    problems = problems_of({"platform": {"app_id": "a", "app_secret": "x", "app_secret_file": "/nonexistent"}})
    assert any("set only one of app_secret, app_secret_file" in p for p in problems)


def test_secret_values_never_appear_in_errors() -> None:
    problems = problems_of({"simulator": {"embedded": True},
                            "sinks": {"influxdb_v2": {"token": {"nested": "tok-XYZ-123"}}}})
    assert problems and all("tok-XYZ-123" not in p for p in problems)


def test_device_numbers_keep_leading_zeros_even_unquoted(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("simulator: {embedded: true}\ninventory:\n  devices: [0012345, 865214078636124, "
                    "{device_no: 007, labels: {customer: acme}}]\n")
    config = load_config(path)
    assert [d.device_no for d in config.inventory.devices] == ["0012345", "865214078636124", "007"]


def test_sign_template_with_unknown_field_is_rejected() -> None:
    problems = problems_of({"simulator": {"embedded": True}, "platform": {"sign": {"template": "{appId}{secret}"}}})
    assert problems[0].startswith("platform.sign.template: unknown field(s) ['appId']")


def test_check_config_good_file_prints_summary_and_exits_0() -> None:
    result = run_cli("check-config", "-c", "collector.yaml")
    assert result.returncode == 0, result.stderr
    assert "devices: 50" in result.stdout
    assert "request budget:" in result.stdout
    assert "device_status" in result.stdout


def test_check_config_bad_file_exits_2_with_path_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulator: {embedded: true}\nplatform:\n  rate_limit: -1\n")
    result = run_cli("check-config", "-c", str(bad))
    assert result.returncode == 2
    assert "platform.rate_limit: must be > 0, got -1" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(("text", "expected"), [
    ("platform: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_check_config_malformed_yaml(tmp_path: Path, text: str, expected: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = run_cli("check-config", "-c", str(bad))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_a_user_error(tmp_path: Path) -> None:
    result = run_cli("check-config", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_budget_too_small_is_reported_with_exit_code_3(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("simulator: {embedded: true, devices: 5000}\nplatform: {rate_limit: 5}\n")
    result = run_cli("check-config", "-c", str(cfg))
    assert result.returncode == 3, result.stderr
    assert "TOO SMALL" in result.stdout
    assert "stretched to" in result.stdout


def test_field_overrides_name_an_endpoint_and_a_field_of_it(tmp_path: Path) -> None:
    config = parse_config({"simulator": {"embedded": True}, "platform": {"fields": {
        "device_flow": {"rssi_dbm": "signal", "sim.online_status": "netState", "sims": "simList"},
        "card_status": {"records": "list"}}}}, env={})
    assert config.platform.fields["device_flow"]["sims"] == "simList"
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulator: {embedded: true}\n"
                   "platform:\n"
                   "  fields:\n"
                   "    device_flow: {rssi: signal, online_status: netState, sim.online_status: netState}\n"
                   "    card_stat: {sim_status: status}\n"
                   "  endpoints: {querySimStatus: {path: /x}}\n")
    result = run_cli("check-config", "-c", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "platform.fields.device_flow.rssi: unknown field; the fields are " in result.stderr
    assert ("platform.fields.device_flow.online_status: names a field of several records: write "
            "device.online_status or sim.online_status") in result.stderr
    assert "platform.fields.device_flow.sim.online_status" not in result.stderr  # qualified: fine
    assert "platform.fields.card_stat: unknown endpoint; one of: device_info, device_flow" in result.stderr
    assert "platform.endpoints.querySimStatus: unknown endpoint" in result.stderr


def test_jobs_are_the_endpoints_jobs_with_their_default_intervals() -> None:
    from collector.endpoints import ENDPOINTS

    config = parse_config({"simulator": {"embedded": True}, "jobs": {"card_actions": {"enabled": True,
                                                                                      "interval": "2h"}}}, env={})
    assert config.jobs.job("card_actions").interval == 7200 and config.jobs.card_actions.enabled
    for endpoint in ENDPOINTS.values():
        if endpoint.job != "card_actions":
            assert config.jobs.job(endpoint.job).interval == endpoint.interval
            assert config.jobs.job(endpoint.job).enabled == endpoint.enabled
    assert problems_of({"simulator": {"embedded": True}, "jobs": {"device_statu": {"interval": 5}}}) == [
        "jobs.device_statu: unknown key"]
