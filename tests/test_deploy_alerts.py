"""The alerting of the production template (deploy/collector.yaml): on as shipped, and every commented
example (chat robots, email, Alertmanager, the dashboard link) valid once uncommented the way the
template says, with the credentials it names provided as files, as `check-config` sees it; the
robots' example stays within their rate limits; its link opens the device dashboard we ship."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import yaml

from collector.alerts.notifiers.apprise import check_url
from collector.alerts.rules import default_rule_configs
from collector.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:apprise.*")

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "deploy" / "collector.yaml"
DASHBOARD = REPO / "grafana" / "dashboards" / "device-detail.json"
# What each robot takes (their documentation): messages a minute, and a second (Feishu).
PER_MINUTE = {"DingTalk": 20, "WeCom": 20, "Feishu": 100}
FEISHU_PER_SECOND = 5

CREDENTIALS = {
    "iot-collector.app_secret": "not-a-real-secret",
    "iot-collector.chat_urls": "# DingTalk 加签, WeCom, Feishu\n"
                               f"dingtalk://SEC{'a1' * 32}@{'b2' * 32}/\n"
                               "wecombot://693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa\n"
                               "feishu://b1a2c3d4-0000-4e5f-8a9b-0c1d2e3f4a5b\n",
    "iot-collector.email_urls": "mailtos://alerts%40example.com:pw@smtp.exmail.qq.com:465?mode=ssl"
                                "&from=alerts@example.com&to=noc@example.com\n",
}


def uncommented(text: str) -> str:
    """The template with every example of its alerts section in use: in that section `#` lines are
    examples whose `#` goes (and only it), `##` lines stay comments."""
    out, inside = [], False
    for line in text.splitlines():
        if re.match(r"^\S", line):
            inside = line.startswith("alerts:")
        example = re.match(r"^(\s*)#(?!#)(.*)$", line)
        out.append(example.group(1) + example.group(2) if inside and example else line)
    return "\n".join(out) + "\n"


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name, value in CREDENTIALS.items():
        (directory / name).write_text(value)
    return directory


def test_the_template_as_shipped_alerts_in_chinese_to_the_journal(credentials: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    alerts = load_config(TEMPLATE, env={"CREDENTIALS_DIRECTORY": str(credentials)}).alerts
    assert alerts.enabled and alerts.default_rules
    assert (alerts.language, alerts.timezone) == ("zh", "Asia/Shanghai")
    assert [n.type for n in alerts.notifiers] == ["log"]


def test_every_example_of_the_template_passes_check_config_with_its_credentials(tmp_path: Path,
                                                                               credentials: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text(uncommented(TEMPLATE.read_text()))
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials), "STATE_DIRECTORY": str(tmp_path / "state")}
    result = subprocess.run([sys.executable, "-m", "collector", "check-config", "-c", str(path), "--json"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["alerts"] is True
    document = yaml.safe_load(path.read_text())["alerts"]
    assert [n["type"] for n in document["notifiers"]] == ["log", "apprise", "apprise", "alertmanager"]
    assert document["params"] and document["external_url"]
    # Without the credential file the example names, the error says which file.
    (credentials / "iot-collector.chat_urls").unlink()
    missing = subprocess.run([sys.executable, "-m", "collector", "check-config", "-c", str(path)],
                             capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert missing.returncode == 2 and "alerts.notifiers[1]" in missing.stderr
    assert "iot-collector.chat_urls" in missing.stderr and "Traceback" not in missing.stderr


def test_the_credentials_the_template_names_are_apprise_urls_of_each_robot() -> None:
    for line in CREDENTIALS["iot-collector.chat_urls"].splitlines()[1:]:
        assert check_url(line) is None, line
    named = re.findall(r"(dingtalk|wecombot|feishu)://", TEMPLATE.read_text())
    assert set(named) == {"dingtalk", "wecombot", "feishu"}


def test_the_chat_example_stays_within_every_robots_rate_limit() -> None:
    [chat] = [n for n in yaml.safe_load(uncommented(TEMPLATE.read_text()))["alerts"]["notifiers"]
              if n.get("name") == "chat"]
    from collector.configtypes import parse_duration

    min_interval = parse_duration(chat["min_interval"])
    for robot, limit in PER_MINUTE.items():
        assert 60 / min_interval <= limit, robot  # each URL, whatever happens
    assert 1 / min_interval <= FEISHU_PER_SECOND
    # A storm of every default rule at once: one group per rule, each sending at most once per
    # group_interval after its first message: the steady rate is far below the limit too.
    assert chat["group_by"] == ["alertname"]
    rules = len(default_rule_configs())
    assert rules * 60 / parse_duration(chat["group_interval"]) <= min(PER_MINUTE.values())


def test_the_template_link_opens_the_device_dashboard_we_ship() -> None:
    url = yaml.safe_load(uncommented(TEMPLATE.read_text()))["alerts"]["external_url"]
    parts = urllib.parse.urlsplit(url)
    dashboard = json.loads(DASHBOARD.read_text())
    assert parts.path.split("/")[2] == dashboard["uid"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    [name] = [k for k, v in urllib.parse.parse_qsl(parts.query) if v == "{device_no}"]
    assert name.removeprefix("var-") in variables
