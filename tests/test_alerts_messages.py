"""What notifications say and link to: the grouped message in the reader's language (`alerts.language`)
with times on the clock of `alerts.timezone`, the default rules' Chinese text, a user rule's own text,
SIM alerts naming their device, and links built from `alerts.external_url`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from collector.alerts.config import AlertsConfig
from collector.alerts.engine import AlertEngine
from collector.alerts.notifiers.alertmanager import AlertmanagerReceiver
from collector.alerts.rules import compile_rules
from collector.config import ConfigError, parse_config
from collector.state import FieldRecord
from tests.test_alerts_engine import (
    OFFLINE,
    T0,
    Clock,
    Make,
    alerts_config,
    device,
    make_engine,  # noqa: F401 - registers the `make` fixture here
    settle,
)

# T0 is 2025-06-15 15:06:40 UTC: 23:06 in Beijing.
OFFLINE_ZH = {**OFFLINE, "translations": {"zh": {"title": "设备离线", "summary": "设备 {{ device_no }} 离线"}}}
LOW_DATA = {"name": "SimDataLow", "kind": "sim", "condition": "remaining_ratio < 0.1",
            "annotations": {"summary": "SIM {{ iccid }} in {{ device_no }}"}}


def sim(iccid: str, device_no: str, **fields: Any) -> FieldRecord:
    return FieldRecord("sim", {"iccid": iccid, "device_no": device_no, "remaining_ratio": 0.05,
                               "labels": {"customer": "acme"}, **fields})


async def fire_then_resolve(make: Make, config: AlertsConfig) -> list[dict[str, Any]]:
    clock = Clock()
    engine, rec = await make(config, clock)
    for no in ("d1", "d2"):
        engine.evaluate("device", no, device(no, online=False), clock.t)
    clock.t += 11
    await settle(engine, clock)
    for no in ("d1", "d2"):
        engine.evaluate("device", no, device(no), clock.t + 60)
    clock.t += 61
    await settle(engine, clock)
    return rec.sent


async def test_a_grouped_message_in_chinese_reads_in_beijing_time(make: Make) -> None:
    firing, resolved = await fire_then_resolve(make, alerts_config(OFFLINE_ZH))  # zh and Asia/Shanghai: defaults
    assert firing["title"] == "[告警:2] 设备离线 (customer=acme)"
    assert firing["text"].splitlines() == ["告警中（2）：", "- 设备 d1 离线（6月15日 23:06 起）",
                                           "- 设备 d2 离线（6月15日 23:06 起）"]
    assert resolved["title"] == "[告警恢复:2] 设备离线 (customer=acme)"
    assert resolved["text"].splitlines() == ["已恢复（2）：", "- 设备 d1 离线（6月15日 23:07 恢复）",
                                             "- 设备 d2 离线（6月15日 23:07 恢复）"]
    assert firing["alerts"][0]["annotations"]["title"] == "设备离线"  # Alertmanager gets the same text


async def test_a_grouped_message_in_english_reads_in_the_configured_zone(make: Make) -> None:
    firing, resolved = await fire_then_resolve(make, alerts_config(OFFLINE_ZH, language="en", timezone="UTC"))
    assert firing["title"] == "[FIRING:2] DeviceOffline (customer=acme)"
    assert firing["text"].splitlines()[:2] == ["Firing (2):", "- d1 offline (since 2025-06-15 15:06 UTC)"]
    assert resolved["text"].splitlines()[1] == "- d1 offline (resolved 2025-06-15 15:07 UTC)"


async def test_every_chinese_title_holds_one_keyword_for_a_dingtalk_robot(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(OFFLINE_ZH), clock)
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    clock.t += 11
    await settle(engine, clock)
    engine.evaluate("device", "d1", device("d1"), clock.t)  # resolves
    engine.evaluate("device", "d2", device("d2", online=False), clock.t)  # and another fires
    clock.t += 61
    await settle(engine, clock)
    titles = [m["title"] for m in rec.sent]
    assert titles == ["[告警:1] 设备离线 (customer=acme)", "[告警:1, 告警恢复:1] 设备离线 (customer=acme)"]
    assert all("告警" in t for t in titles)


def render(language: str, rule: str, kind: str, **fields: Any) -> dict[str, str]:
    [compiled] = [r for r in compile_rules(AlertsConfig(language=language)) if r.name == rule]  # type: ignore[arg-type]
    return compiled.render(FieldRecord(kind, fields), T0)


def test_the_default_rules_speak_chinese_with_chinese_durations_and_binary_units() -> None:
    stale = render("zh", "DataStale", "device", device_no="d1", staleness_seconds=93784, poll_interval_seconds=300,
                   refresh_period_seconds=300)
    assert stale == {"title": "平台数据未更新", "summary": "设备 d1 的平台数据已过时",
                     "description": "轮询时，平台已有 1天2小时 未刷新设备 d1（超过 3 个轮询周期，每个周期 5分钟0秒；"
                                    "也超过平台的 2 个刷新周期，每个周期 5分钟0秒）。"}
    low = render("zh", "SimDataLow", "sim", iccid="8986A", device_no="d1", remaining_ratio=0.05,
                 remaining_bytes=512 * 2**20, total_bytes=10 * 2**30)
    assert low["summary"] == "SIM 8986A（设备 d1）剩余流量 512 MiB（5%）"
    assert low["description"] == "剩余 512 MiB，套餐共 10 GiB（设备 d1）。"
    assert render("zh", "SimSuspended", "sim", iccid="8986A", device_no="")["description"] == \
        "SIM 8986A（设备 无）的卡状态为 未知，上网状态为 未知。"
    assert render("en", "DataStale", "device", device_no="d1", staleness_seconds=93784,
                  poll_interval_seconds=300)["description"].startswith("The platform last refreshed device d1 1d 2h")


def test_every_default_rule_has_chinese_text() -> None:
    for rule in compile_rules(AlertsConfig(language="zh")):
        assert {"title", "summary", "description"} <= set(rule.annotations), rule.name
        for name, template in rule.annotations.items():
            assert any("\u4e00" <= ch <= "\u9fff" for ch in template.text), (rule.name, name)


def test_a_user_rule_keeps_its_own_text_in_any_language() -> None:
    mine = {"name": "Mine", "kind": "device", "condition": "online == False",
            "annotations": {"summary": "{{ device_no }} down for {{ human_duration(staleness_seconds) }}"}}
    for language, text in (("zh", "d1 down for 1天2小时"), ("en", "d1 down for 1d 2h")):
        [rule] = compile_rules(AlertsConfig(language=language, default_rules=False, rules=[mine]))  # type: ignore[arg-type]
        assert rule.render(FieldRecord("device", {"device_no": "d1", "staleness_seconds": 93784}), T0) == \
            {"summary": text}


def test_a_bad_translation_is_reported_by_its_path_whatever_the_language() -> None:
    rule = {**OFFLINE, "translations": {"zh": {"summary": "{{ rsi_dbm }}"}}}
    for language in ("zh", "en"):
        with pytest.raises(ConfigError) as caught:
            compile_rules(AlertsConfig.model_validate({"language": language, "default_rules": False,
                                                       "rules": [rule]}))
        assert caught.value.problems == [
            "alerts.rules[0] (DeviceOffline).translations.zh.summary: unknown field 'rsi_dbm' for kind device"]


def test_language_and_timezone_are_checked_at_load() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"simulator": {"embedded": True}, "alerts": {"language": "fr", "timezone": "Mars/Base"}})
    assert caught.value.problems == ["alerts.language: must be 'en' or 'zh', got 'fr'",
                                     "alerts.timezone: unknown time zone 'Mars/Base'"]


def test_alerting_is_on_by_default_in_chinese_on_beijing_time() -> None:
    config = parse_config({"simulator": {"embedded": True}}).alerts
    assert (config.enabled, config.language, config.timezone, config.external_url) == \
        (True, "zh", "Asia/Shanghai", "")


# --- SIM alerts carry their device --------------------------------------------------------------------------


async def test_a_sim_alert_names_the_device_it_sits_in(make: Make) -> None:
    clock = Clock()
    lines: list[str] = []
    engine, rec = await make(alerts_config(LOW_DATA), clock, lines)
    engine.evaluate("sim", "8986A", sim("8986A", "865214078636124"), clock.t)
    engine.evaluate("sim", "8986B", sim("8986B", ""), clock.t)  # a card on its own
    clock.t += 11
    await settle(engine, clock)
    await engine.stop()
    labels = {a["entity"]: a["labels"] for a in rec.sent[0]["alerts"]}
    assert labels["8986A"]["device_no"] == "865214078636124" and labels["8986A"]["iccid"] == "8986A"
    assert "device_no" not in labels["8986B"]
    assert "SIM 8986A in 865214078636124" in rec.sent[0]["text"]
    [point] = [line for line in lines if "entity=8986A" in line]
    assert "device_no=865214078636124" in point  # a tag of the `alerts` point too


# --- links ----------------------------------------------------------------------------------------------------


def engine_with(tmp_path: Path, external_url: str) -> AlertEngine:
    return AlertEngine(alerts_config(OFFLINE, external_url=external_url), tmp_path)


def test_an_external_url_template_links_each_alert_to_its_device(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, "https://grafana.example/d/iot-device?orgId=1&var-device={device_no}")
    assert engine.link({"device_no": "0865 21"}, "DeviceOffline/0865 21") == \
        "https://grafana.example/d/iot-device?orgId=1&var-device=0865%2021"
    assert engine.link({"alertname": "AccountBalanceLow"}, "AccountBalanceLow/account") is None  # no device
    assert engine.external_url == "https://grafana.example"


def test_a_base_external_url_links_to_the_alert_behind_a_proxy(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, "https://collector.example/iot/")
    assert engine.link({}, "DeviceOffline/d1") == "https://collector.example/iot/api/alerts?id=DeviceOffline/d1"
    assert engine.external_url == "https://collector.example/iot"


def test_without_an_external_url_nothing_links_to_an_unreachable_host(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, "")
    assert engine.link({"device_no": "d1"}, "DeviceOffline/d1") is None and engine.external_url == ""
    receiver = AlertmanagerReceiver(engine.config.notifiers[0].model_copy(
        update={"type": "alertmanager", "resend_interval": 60.0, "url": "http://127.0.0.1:9093",
                "username": "", "password": None}), engine)
    from collector.alerts.alert import Alert

    alert = Alert(rule="DeviceOffline", kind="device", key="d1", state="firing", active_since=T0,
                  labels={"device_no": "d1"}, annotations={})
    assert "generatorURL" not in receiver._payload(alert, T0 + 60)


async def test_a_message_carries_each_alerts_link_and_ends_with_it(make: Make) -> None:
    clock = Clock()
    engine, rec = await make(alerts_config(OFFLINE, language="en", external_url="https://g.example/d/x?var-device="
                                                                                  "{device_no}"), clock)
    engine.evaluate("device", "d1", device("d1", online=False), clock.t)
    clock.t += 11
    await settle(engine, clock)
    [message] = rec.sent
    assert message["alerts"][0]["generatorURL"] == "https://g.example/d/x?var-device=d1"
    assert message["text"].endswith("\n\nAlerts: https://g.example/d/x?var-device=d1")
    assert message["externalURL"] == "https://g.example"


@pytest.mark.parametrize(("url", "problem"), [
    ("grafana.example/d/x", "must be an http:// or https:// URL"),
    ("https://g.example/d/x?var-device={device}}", "not a valid link template"),
    ("https://g.example/d/x?var-device={device_no!r}", "{device_no}: placeholders take no format spec"),
])
def test_a_bad_external_url_is_refused_at_load(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"simulator": {"embedded": True}, "alerts": {"external_url": url}})
    [line] = caught.value.problems
    assert line.startswith("alerts.external_url: ") and problem in line
