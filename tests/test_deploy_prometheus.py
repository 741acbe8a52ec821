"""deploy/prometheus and deploy/alertmanager: the scrape config and the collector's alerting rules
pass promtool's checks and its unit tests (deploy/prometheus/iot-collector.rules.test.yml), the rules
only use metrics the collector exports, and the example Alertmanager configuration passes amtool and
routes the collector's alerts by customer and severity to the receivers it says.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.servers import require
from tests.test_grafana_dashboards import exported_metric_names

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "iot-collector.rules.yml"
RULE_TESTS = PROMETHEUS / "iot-collector.rules.test.yml"
ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"

# What an operator must hear about: down, upstream error rate high, rate limited, spool growing, writes failing,
# notifications failing.
REQUIRED_ALERTS = {"IotCollectorDown", "IotCollectorUpstreamErrorRateHigh", "IotCollectorRateLimited",
                   "IotCollectorSpoolGrowing", "IotCollectorSinkWritesFailing", "IotCollectorNotificationsFailing"}


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=60)


def rules() -> list[dict[str, object]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules() -> None:
    proc = run(require("promtool", "prometheus"), "check", "rules", RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    proc = run(require("promtool", "prometheus"), "test", "rules", RULE_TESTS.name, cwd=PROMETHEUS)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_rule_unit_tests_would_catch_a_broken_rule(tmp_path: Path) -> None:
    promtool = require("promtool", "prometheus")
    shutil.copy(RULE_TESTS, tmp_path)
    broken = RULES.read_text().replace("iot_collector_spool_oldest_age_seconds > 900",
                                       "iot_collector_spool_oldest_age_seconds > 90000")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    proc = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0 and "IotCollectorSpoolGrowing" in proc.stdout + proc.stderr


def test_the_issues_alerts_exist_and_each_is_unit_tested() -> None:
    names = {str(r["alert"]) for r in rules()}
    assert names >= REQUIRED_ALERTS
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert names <= tested, f"alerts without a unit test: {sorted(names - tested)}"
    for rule in rules():
        labels = rule["labels"]
        assert isinstance(labels, dict) and labels["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert isinstance(annotations, dict) and annotations["summary"] and annotations["description"]


def test_rules_only_use_metrics_the_collector_exports() -> None:
    exported = exported_metric_names()
    for rule in rules():
        used = set(re.findall(r"\biot_collector_[a-z0-9_]+|\bup(?=\{)", str(rule["expr"])))
        assert used and used <= exported, f"{rule['alert']}: {sorted(used - exported)} not exported"


def test_promtool_check_config_of_the_scrape_config(tmp_path: Path) -> None:
    promtool = require("promtool", "prometheus")
    # check config resolves rule_files relative to the config: check the files as they are shipped.
    for path in (PROMETHEUS / "prometheus.yml", RULES):
        shutil.copy(path, tmp_path)
    proc = run(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "iot-collector"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9108"]  # the collector's http.port default


def test_amtool_check_config() -> None:
    proc = run(require("amtool", "prometheus-alertmanager"), "check-config", ALERTMANAGER)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("labels", "receivers"), [
    # a customer with its own contacts gets its alerts, operations still gets them by severity
    (["customer=acme", "severity=critical", "alertname=SimSuspended"], "acme-webhook,ops-wecom"),
    (["customer=globex", "severity=warning", "alertname=SimDataLow"], "globex-email,ops-email"),
    # no customer: by severity
    (["severity=critical", "alertname=IotCollectorSinkWritesFailing"], "ops-wecom"),
    (["severity=critical", "alertname=IotCollectorDown"], "ops-wecom-and-email"),
    (["severity=warning", "alertname=IotCollectorSpoolGrowing"], "ops-email"),
    (["severity=info", "alertname=DeviceSeen"], "blackhole"),
])
def test_alertmanager_routes_by_customer_and_severity(labels: list[str], receivers: str) -> None:
    amtool = require("amtool", "prometheus-alertmanager")
    proc = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}",
               f"--verify.receivers={receivers}", *labels)
    assert proc.returncode == 0, f"{labels} went to {proc.stdout.strip()}, expected {receivers}\n{proc.stderr}"
