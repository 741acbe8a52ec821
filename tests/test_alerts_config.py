"""The `alerts:` section: validated as data, rules compiled by `compile_rules` with errors naming the
rule's path and name (what check-config and `run` print), rule files, default rules and their
parameters, notifiers, silences."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from collector.alerts.config import AlertsConfig
from collector.alerts.rules import Rule, compile_rules, default_params, default_rule_configs
from collector.alerts.silences import SilenceBook, SilenceError
from collector.config import ConfigError, load_config, parse_config
from collector.state import FieldRecord

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:apprise.*")


def config_of(alerts: dict[str, Any]) -> Any:
    return parse_config({"simulator": {"embedded": True}, "alerts": alerts}, env={})


def rules_of(alerts: dict[str, Any]) -> list[Rule]:
    return compile_rules(config_of(alerts).alerts)


def problems_of(alerts: dict[str, Any]) -> list[str]:
    """What check-config reports for this `alerts:` section: a bad shape at load, a bad rule when the
    rules are compiled."""
    with pytest.raises(ConfigError) as info:
        rules_of(alerts)
    return info.value.problems


def rule(name: str, condition: str, kind: str = "device", **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "condition": condition, **extra}


def test_an_unknown_field_names_the_rule_and_its_path() -> None:
    problems = problems_of({"rules": [rule("A", "online == False"), rule("B", "battery_percent < 5"),
                                      rule("WeakSignal", "rsi_dbm < -105")]})
    assert problems == ["alerts.rules[2] (WeakSignal).condition: unknown field 'rsi_dbm' for kind device"]


def test_every_bad_rule_is_reported_at_once() -> None:
    problems = problems_of({"rules": [
        rule("A", "rssi_dbm <"),
        rule("B", "online == False", clear="remaining_ratio > 0.2"),
        rule("C", "online == False", annotations={"summary": "{{ device_no }} {{ bogus }}"}),
        rule("A", "online == False"),
    ]})
    assert "alerts.rules[0] (A).condition: syntax error at column 11: invalid syntax" in problems
    assert "alerts.rules[1] (B).clear: unknown field 'remaining_ratio' for kind device" in problems
    assert "alerts.rules[2] (C).annotations.summary: unknown field 'bogus' for kind device" in problems
    assert "alerts.rules[3] (A).name: rule 'A' is already defined in alerts.rules[0]" in problems
    problems = problems_of({"rules": [rule("A", "online"), {"name": "D", "kind": "gizmo", "condition": "x"}]})
    assert problems == ["alerts.rules[1].kind: must be 'device', 'sim', 'account' or 'collector', got 'gizmo'"]


def test_default_rules_compile_and_cover_every_kind() -> None:
    names = {r.name: r for r in rules_of({"enabled": True})}
    assert set(names) == {"DeviceOffline", "WeakSignal", "LowBattery", "DataStale", "SimDataLow",
                          "SimDataExhaustionForecast", "SimPackageExpiring", "SimSuspended",
                          "AccountBalanceLow", "UpstreamErrorRateHigh"}
    assert {r.kind for r in names.values()} == {"device", "sim", "account", "collector"}
    assert names["WeakSignal"].clear is not None


def test_default_thresholds_are_overridable_and_rules_replaceable_by_name() -> None:
    rules = {r.name: r for r in rules_of({"params": {"weak_signal_dbm": -110},
                                          "rules": [rule("LowBattery", "battery_percent < 5", severity="critical")],
                                          "disabled_rules": ["DataStale"]})}
    assert "DataStale" not in rules
    assert rules["LowBattery"].severity == "critical" and rules["LowBattery"].source == "alerts.rules[0]"
    weak = rules["WeakSignal"].condition.fn
    assert weak(FieldRecord("device", {"online": True, "rssi_dbm": -108}), 0.0) is False
    assert weak(FieldRecord("device", {"online": True, "rssi_dbm": -111}), 0.0) is True


def test_unknown_parameters_and_disabled_rules_are_errors() -> None:
    problems = problems_of({"params": {"weak_signal_dmb": -110}, "disabled_rules": ["Nope"]})
    assert problems[0] == "alerts.disabled_rules[0]: no rule named 'Nope'"
    assert problems[1].startswith("alerts.params.weak_signal_dmb: not used by any rule")


def test_rule_files_are_read_relative_to_the_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "extra.yaml").write_text(
        "rules:\n  - name: Hot\n    kind: device\n    condition: wifi_clients > 8\n    for: 5m\n")
    (tmp_path / "collector.yaml").write_text(
        "simulator: {embedded: true}\nalerts: {rule_files: [rules/extra.yaml], default_rules: false}\n")
    monkeypatch.chdir(REPO)  # not the configuration's directory
    config = load_config(tmp_path / "collector.yaml")
    assert config.alerts.rule_files == [str(tmp_path / "rules" / "extra.yaml")]
    [hot] = compile_rules(config.alerts)
    assert hot.name == "Hot" and hot.for_ == 300 and hot.source == str(tmp_path / "rules" / "extra.yaml")


def test_a_bad_rule_file_names_the_file_and_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "extra.yaml"
    path.write_text("- name: Hot\n  kind: device\n  condition: wifi_client > 8\n"
                    "- name: Cold\n  kind: device\n  condition: wifi_clients < 0\n  fro: 5m\n")
    problems = problems_of({"rule_files": [str(path), str(tmp_path / "missing.yaml")]})
    assert problems == [
        f"alerts.rule_files[0]: {path}: rules[1] (Cold).fro: unknown key",
        f"alerts.rule_files[1]: cannot read {tmp_path / 'missing.yaml'}: No such file or directory",
        f"alerts.rule_files[0]: {path}: rules[0] (Hot).condition: unknown field 'wifi_client' for kind device",
    ]


def test_check_config_fails_on_a_bad_rule_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text("simulator: {embedded: true}\nalerts:\n  enabled: true\n  rules:\n"
                    "    - {name: WeakSignal, kind: device, condition: 'rsi_dbm < -105'}\n")
    result = subprocess.run([sys.executable, "-m", "collector", "check-config", "-c", str(path)],
                            capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert "alerts.rules[0] (WeakSignal).condition: unknown field 'rsi_dbm' for kind device" in result.stderr
    assert "Traceback" not in result.stderr


def test_notifier_configuration() -> None:
    config = config_of({"notifiers": [
        {"type": "alertmanager", "url": "http://127.0.0.1:9093"},
        {"type": "webhook", "name": "hook", "url": "http://127.0.0.1:9/x", "secret": "s3cr3t",
         "match": ["severity=~critical|warning"]},
        {"type": "apprise", "urls": ["json://127.0.0.1:9/x", "mailto://localhost:2525?from=a@example.com&to=b@example.com"]},
    ]})
    names = [n.name for n in config.alerts.notifiers]
    assert names == ["alertmanager", "hook", "apprise"]
    assert "s3cr3t" not in str(config.alerts.model_dump(mode="json"))
    assert problems_of({"notifiers": [{"type": "log"}, {"type": "log"}]}) == [
        "alerts.notifiers: two notifiers are named 'log': give each a distinct name"]
    problems = problems_of({"notifiers": [{"type": "apprise", "name": "x", "urls": ["nonsense://"]},
                                          {"type": "log", "name": "y", "match": ["severity=~("]}]})
    assert any(p.startswith("alerts.notifiers[0].apprise.urls: urls[0]: Apprise does not understand") for p in problems)
    assert any(p.startswith("alerts.notifiers[1].log.match: 'severity=~(': bad regular expression") for p in problems)


def test_webhook_secret_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "hook.secret").write_text("from-file\n")
    config = config_of({"notifiers": [{"type": "webhook", "url": "http://127.0.0.1:9/x",
                                       "secret_file": str(tmp_path / "hook.secret")}]})
    assert config.alerts.notifiers[0].secret.get_secret_value() == "from-file"


def test_apprise_urls_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "urls").write_text("# chats\njson://127.0.0.1:9/a\n\njson://127.0.0.1:9/b\n")
    config = config_of({"notifiers": [{"type": "apprise", "urls_file": str(tmp_path / "urls")}]})
    assert [u.get_secret_value() for u in config.alerts.notifiers[0].urls] == ["json://127.0.0.1:9/a",
                                                                               "json://127.0.0.1:9/b"]


def test_silences_and_maintenance_windows_from_the_configuration() -> None:
    config = config_of({
        "silences": [{"matchers": ["customer=acme"], "starts_at": "2025-01-01T00:00:00Z",
                      "ends_at": "2025-01-02T00:00:00Z", "comment": "move"}],
        "maintenance_windows": [{"name": "nightly", "matchers": ["alertname=DataStale"],
                                 "weekdays": ["sat", "sun"], "start": "23:00", "end": "02:00",
                                 "timezone": "Asia/Shanghai"}]})
    book = SilenceBook(config.alerts.silences, config.alerts.maintenance_windows)
    jan1 = dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC).timestamp()
    assert book.silenced_by({"customer": "acme"}, jan1) is not None
    assert book.silenced_by({"customer": "globex"}, jan1) is None
    assert book.silenced_by({"customer": "acme"}, jan1 + 86400) is None
    shanghai = dt.timezone(dt.timedelta(hours=8))
    stale = {"alertname": "DataStale"}
    saturday_night = dt.datetime(2025, 1, 4, 23, 30, tzinfo=shanghai).timestamp()
    sunday_early = dt.datetime(2025, 1, 5, 1, 30, tzinfo=shanghai).timestamp()
    monday_early = dt.datetime(2025, 1, 6, 1, 30, tzinfo=shanghai).timestamp()  # Sunday's window
    friday_night = dt.datetime(2025, 1, 3, 23, 30, tzinfo=shanghai).timestamp()
    saturday_early = dt.datetime(2025, 1, 4, 1, 30, tzinfo=shanghai).timestamp()  # Friday had none
    assert book.silenced_by(stale, saturday_night) and book.silenced_by(stale, sunday_early)
    assert book.silenced_by(stale, monday_early)
    assert not book.silenced_by(stale, friday_night) and not book.silenced_by(stale, saturday_early)
    with pytest.raises(SilenceError, match="defined in the configuration"):
        book.remove(book.configured[0].id)
    problems = problems_of({"silences": [{"matchers": ["a=b"], "starts_at": "2025-01-02T00:00:00Z",
                                          "ends_at": "2025-01-01T00:00:00Z"}],
                            "maintenance_windows": [{"matchers": ["a=b"], "start": "01:00", "end": "01:00",
                                                     "timezone": "Mars/Olympus"}]})
    assert any("ends_at must be after starts_at" in p for p in problems)
    assert any("unknown time zone 'Mars/Olympus'" in p for p in problems)


def test_api_silences_validate_their_input() -> None:
    book = SilenceBook()
    with pytest.raises(SilenceError, match="not a label matcher"):
        book.add(["customer"], 0, 10, "", "", now=0)
    with pytest.raises(SilenceError, match="already be over"):
        book.add(["customer=acme"], 0, 10, "", "", now=20)
    sid = book.add(["customer=acme"], 0, 100, "", "", now=20)
    assert book.silenced_by({"customer": "acme"}, 50) == sid
    book.remove(sid)
    with pytest.raises(KeyError):
        book.remove(sid)


def test_the_defaults_file_documents_every_parameter() -> None:
    text = (REPO / "docs" / "alerts.md").read_text(encoding="utf-8")
    for name in default_params():
        assert f"`{name}`" in text, name
    for cfg in default_rule_configs():
        assert f"`{cfg['name']}`" in text
        assert cfg["condition"] in text, cfg["name"]


def test_alerts_config_alone_validates() -> None:
    config = AlertsConfig.model_validate({"enabled": True})
    assert config.notifiers[0].type == "log" and len(compile_rules(config)) == 10


def test_loading_a_configuration_does_not_compile_rules() -> None:
    """Configuration is data: a bad expression loads (its shape is right) and fails when compiled."""
    config = config_of({"rules": [rule("WeakSignal", "rsi_dbm < -105")]})
    assert config.alerts.rules[0].condition == "rsi_dbm < -105"
    with pytest.raises(ConfigError, match=r"alerts.rules\[0\] \(WeakSignal\).condition: unknown field"):
        compile_rules(config.alerts, "collector.yaml")


def test_the_configuration_modules_do_not_import_the_rule_compiler() -> None:
    code = ("import sys, collector.config, collector.alerts.config; "
            "print(sorted(m for m in sys.modules if m.startswith(('collector.alerts.', 'numpy', 'simpleeval'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['collector.alerts.config', 'collector.alerts.matchers']"


def test_a_rule_may_name_its_value() -> None:
    problems = problems_of({"rules": [rule("BadValue", "online == False", value="bogus")]})
    assert problems == ["alerts.rules[0] (BadValue).value: unknown field 'bogus' for kind device"]
    rules = {r.name: r for r in rules_of({"default_rules": False, "rules": [
        rule("Quiet", "wifi_clients == 0 and rssi_dbm < -100", value="rssi_dbm + 0.5"),
        rule("Ordered", "online == True and battery_percent < 20"),
        rule("StateOnly", "online == False")]})}
    record = FieldRecord("device", {"online": False, "wifi_clients": 0, "rssi_dbm": -101, "battery_percent": 10})
    assert rules["Quiet"].current_value(record, 0.0) == -100.5
    assert rules["Ordered"].current_value(record, 0.0) == 10.0  # fallback: the field ordered first
    assert rules["StateOnly"].current_value(record, 0.0) is None  # a state, no quantity


def test_every_default_rule_reports_the_quantity_it_is_about() -> None:
    rules = {r.name: r for r in rules_of({})}
    device = FieldRecord("device", {"online": False, "rssi_dbm": -111, "battery_percent": 9,
                                    "staleness_seconds": 5000.0, "status_age_seconds": 720.0})
    sim = FieldRecord("sim", {"remaining_ratio": 0.05, "seconds_to_exhaustion": 86400.0, "days_to_expiry": 3.5,
                              "sim_status": 4, "internet_status": 2})
    suspended = FieldRecord("sim", {"sim_status": 5, "internet_status": 1})
    account = FieldRecord("account", {"balance": 12.5})
    collector = FieldRecord("collector", {"upstream_requests": 2846, "upstream_errors": 1431,
                                          "upstream_error_ratio": 0.503})
    values = {name: rule.current_value({"device": device, "sim": sim, "account": account,
                                        "collector": collector}[rule.kind], 0.0) for name, rule in rules.items()}
    assert values == {"DeviceOffline": 720.0, "WeakSignal": -111.0, "LowBattery": 9.0, "DataStale": 5000.0,
                      "SimDataLow": 0.05, "SimDataExhaustionForecast": 86400.0, "SimPackageExpiring": 3.5,
                      "SimSuspended": 2.0, "AccountBalanceLow": 12.5, "UpstreamErrorRateHigh": 0.503}
    assert rules["SimSuspended"].current_value(suspended, 0.0) == 5.0
