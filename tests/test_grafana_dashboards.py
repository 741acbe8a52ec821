"""The Grafana provisioning and dashboards in grafana/, checked without Grafana, in both shapes: as
Grafana's import page takes them (`__inputs` for the data source and the currency unit, a data source
variable every panel follows) and as file provisioning reads them (grafana/provision-dashboards.sh:
the provisioned data sources' uids in place of the inputs). Every PromQL expression parses with
promtool and only uses metrics the collector exports, status codes read as words, and each dashboard
has the panels an operator looks for. (The InfluxQL of every panel runs against a real InfluxDB in
tests/test_grafana_influxql.py.)
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector import metrics
from collector.config import HttpConfig
from collector.state import FleetState
from collector.telemetry import FleetMetrics
from tests.servers import require

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "iot-collector.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "iot-collector.yaml"
PROVISION = GRAFANA / "provision-dashboards.sh"
INPUT = re.compile(r"\$\{((?:DS|VAR)_[A-Z_]+)\}")

# What Grafana puts in place of its macros and of the health dashboard's variables, for promtool.
PROMQL_SUBSTITUTIONS = {"$__rate_interval": "2m", "$__interval": "1m", "$__range": "6h", "$job": "iot-collector",
                        "$instance": ".+"}


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside collapsed rows


def datasource_refs(dashboard: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(where, datasource) for every panel, target, variable and annotation that names one."""
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        yield f"panel {panel['title']!r}", panel.get("datasource")
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} target {target['refId']}"
            yield where, target.get("datasource", panel.get("datasource"))
    for var in dashboard["templating"]["list"]:
        if var["type"] in ("query", "adhoc"):
            yield f"variable {var['name']}", var.get("datasource")
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            yield f"annotation {annotation['name']}", annotation.get("datasource")


def provisioned() -> dict[str, str]:
    """uid -> type of the provisioned datasources."""
    document = yaml.safe_load(DATASOURCES.read_text())
    return {ds["uid"]: ds["type"] for ds in document["datasources"]}


def promql_expressions() -> list[tuple[str, str]]:
    """(where, expression) for every Prometheus target and variable, Grafana's variables substituted."""
    out: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        dashboard = load(path)
        for panel in all_panels(dashboard):
            for target in panel.get("targets", []):
                ds = target.get("datasource") or panel.get("datasource") or {}
                if ds.get("type") == "prometheus":
                    out.append((f"{path.name}: {panel['title']} {target['refId']}", target["expr"]))
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query" and (var.get("datasource") or {}).get("type") == "prometheus":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
                assert match, f"{path.name}: variable {var['name']}: not label_values(selector, label): {query}"
                out.append((f"{path.name}: variable {var['name']}", match.group(1)))
    return [(where, substitute(expr)) for where, expr in out]


def substitute(expr: str) -> str:
    for name in sorted(PROMQL_SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(name, PROMQL_SUBSTITUTIONS[name])
    assert "$" not in expr, f"an unknown Grafana variable is left in {expr}"
    return expr


def exported_metric_names() -> set[str]:
    """Every sample name the collector's /metrics can carry."""
    names = {"up"}
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
                "histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("", "_sum", "_count", "_created")}
    for family in metrics.REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    fleet = asyncio.run(FleetMetrics(lambda: FleetState(), lambda: (0, None), lambda: HttpConfig()).render())
    names.update(re.findall(r"^# TYPE (\S+) gauge$", fleet, re.M))
    return names


# --- provisioning ----------------------------------------------------------------------------------


def test_provisioning_declares_an_influxql_and_a_prometheus_datasource() -> None:
    document = yaml.safe_load(DATASOURCES.read_text())
    assert document["apiVersion"] == 1
    by_uid = {ds["uid"]: ds for ds in document["datasources"]}
    influx = by_uid["iot-influxdb"]
    assert influx["type"] == "influxdb" and influx["jsonData"]["version"] == "InfluxQL"
    assert influx["jsonData"]["dbName"] and influx["url"]
    # The secret comes from Grafana's environment, never from this file.
    assert influx["secureJsonData"]["password"] == "${IOT_INFLUXDB_PASSWORD}"
    assert by_uid["iot-prometheus"]["type"] == "prometheus"


def test_dashboard_provider_points_at_a_folder_of_json_files() -> None:
    document = yaml.safe_load(PROVIDERS.read_text())
    (provider,) = document["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert provider["folder"]


# --- dashboards ---------------------------------------------------------------------------------------


def test_there_are_the_four_dashboards_with_distinct_uids() -> None:
    uids = {load(p)["uid"]: p.name for p in DASHBOARDS}
    assert set(uids) == {"iot-fleet-overview", "iot-device-detail", "iot-sims-quotas", "iot-collector-health",
                         "iot-reseller"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["title"] and dashboard["schemaVersion"] >= 36 and "iot-collector" in dashboard["tags"]
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], f"panel {panel['title']!r} has no query"
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert len(names) == len(set(names))


def datasource_variable(dashboard: dict[str, Any]) -> dict[str, Any]:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    return variable


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_import_shape_asks_for_the_data_source_and_every_panel_follows_the_variable(path: Path) -> None:
    dashboard = load(path)
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    (ds_input,) = [i for i in inputs.values() if i["type"] == "datasource"]
    plugin = ds_input["pluginId"]
    assert plugin in ("influxdb", "prometheus") and ds_input["label"] and ds_input["pluginName"]
    variable = datasource_variable(dashboard)
    assert variable["name"] == "datasource" and variable["query"] == plugin
    # The import page puts the chosen data source's uid in place of ${DS_...}: the variable starts on it.
    assert variable["current"]["value"] == "${" + ds_input["name"] + "}"
    assert dashboard["templating"]["list"][0]["name"] == "datasource"  # resolved before the variables using it
    for where, ds in datasource_refs(dashboard):
        if isinstance(ds, dict) and ds.get("type") == "grafana":
            continue
        assert ds == {"type": plugin, "uid": "${datasource}"}, f"{path.name}: {where} uses {ds!r}"
    # Every ${DS_*} / ${VAR_*} is an input of the dashboard, and every input is used.
    text = path.read_text()
    used = set(INPUT.findall(text))
    assert used == set(inputs), f"{path.name}: inputs {sorted(inputs)}, used {sorted(used)}"
    for constant in (i for i in inputs.values() if i["type"] == "constant"):
        assert constant["value"] and constant["label"]
    requires = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    assert ("grafana", "grafana") in requires and ("datasource", plugin) in requires
    assert {("panel", p["type"]) for p in all_panels(dashboard) if p["type"] != "row"} <= requires


def provisioned_copy(tmp: Path, *args: str) -> dict[str, dict[str, Any]]:
    dest = tmp / "provisioned"
    subprocess.run(["bash", str(PROVISION), str(dest), *args], check=True, capture_output=True, timeout=30)
    return {p.name: json.loads(p.read_text()) for p in sorted(dest.glob("*.json"))}


def test_provisioned_shape_uses_the_provisioned_data_sources(tmp_path: Path) -> None:
    known = provisioned()
    copies = provisioned_copy(tmp_path)
    assert set(copies) == {p.name for p in DASHBOARDS}
    for name, dashboard in copies.items():
        assert not INPUT.search(json.dumps(dashboard)), f"{name}: an import input is left for provisioning"
        variable = datasource_variable(dashboard)
        uid = variable["current"]["value"]
        assert known.get(uid) == variable["query"], f"{name}: the data source variable starts on {uid!r}"
        balance_units = {p["fieldConfig"]["defaults"].get("unit") for p in all_panels(dashboard)
                         if "balance" in json.dumps(p.get("targets", []))}
        assert balance_units <= {"currencyCNY"}, f"{name}: {balance_units}"
    assert "currencyCNY" in json.dumps(copies["fleet-overview.json"])


def test_provisioning_takes_another_currency_unit_and_refuses_one_that_would_break_the_json(tmp_path: Path) -> None:
    copies = provisioned_copy(tmp_path, "suffix:元")
    (balance,) = [p for p in all_panels(copies["fleet-overview.json"]) if p["title"] == "Account balance"]
    assert balance["fieldConfig"]["defaults"]["unit"] == "suffix:元"
    proc = subprocess.run(["bash", str(PROVISION), str(tmp_path / "bad"), 'x"y'], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "currency unit" in proc.stderr


def test_money_is_shown_in_the_currency_unit_chosen_at_import() -> None:
    for path in DASHBOARDS:
        dashboard = load(path)
        for panel in all_panels(dashboard):
            if '"balance"' not in json.dumps(panel.get("targets", [])):
                continue
            assert panel["fieldConfig"]["defaults"]["unit"] == "${VAR_CURRENCY}", f"{path.name}: {panel['title']}"
            assert "does not document its currency" in panel["description"]
            currency = next(i for i in dashboard["__inputs"] if i["name"] == "VAR_CURRENCY")
            assert currency["value"] == "currencyCNY"


def mappings_of(panel: dict[str, Any], field: str) -> dict[str, str]:
    """value -> text of the value mappings of a field (by its name) in a panel."""
    for override in panel["fieldConfig"]["overrides"]:
        if override["matcher"] == {"id": "byName", "options": field}:
            for prop in override["properties"]:
                if prop["id"] == "mappings":
                    return {k: v["text"] for m in prop["value"] for k, v in m["options"].items()}
    return {}


def test_status_codes_read_as_words_marked_inferred() -> None:
    sims = {p["title"]: p for p in all_panels(load(GRAFANA / "dashboards" / "sims-and-quotas.json"))}
    cut_off = sims["Suspended or cut-off cards"]
    assert mappings_of(cut_off, "sim_status") == {"4": "active (inferred)", "5": "suspended (inferred)"}
    assert mappings_of(cut_off, "internet_status") == {"1": "data on (inferred)", "2": "data off (inferred)"}
    assert mappings_of(cut_off, "online_status")["3"] == "in use (inferred)"
    device = {p["title"]: p for p in all_panels(load(GRAFANA / "dashboards" / "device-detail.json"))}
    assert mappings_of(device["SIMs in this device"], "status")["5"] == "suspended (inferred)"
    assert mappings_of(device["Events"], "event_type") == {"251": "SIM switch (inferred)"}
    online = device["Online"]["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert online["1"]["text"] == "online" and online["0"]["text"] == "offline"
    reseller = {p["title"]: p for p in all_panels(load(GRAFANA / "dashboards" / "reseller.json"))}
    assert mappings_of(reseller["Suspended cards"], "sim_status")["5"] == "suspended (inferred)"


def test_card_tables_show_the_device_the_card_sits_in_with_a_link_to_it() -> None:
    for name, title in (("sims-and-quotas.json", "Remaining data"),
                        ("sims-and-quotas.json", "Suspended or cut-off cards"),
                        ("fleet-overview.json", "Top SIMs by usage"), ("reseller.json", "Top SIMs over the range")):
        (panel,) = [p for p in all_panels(load(GRAFANA / "dashboards" / name)) if p["title"] == title]
        assert '"device_no"' in panel["targets"][0]["query"], f"{name}: {title}"
        links = [prop["value"] for o in panel["fieldConfig"]["overrides"]
                 if o["matcher"] == {"id": "byName", "options": "device_no"} for prop in o["properties"]
                 if prop["id"] == "links"]
        assert links and "/d/iot-device-detail/" in links[0][0]["url"], f"{name}: {title}"


def titles(name: str) -> list[str]:
    return [p["title"] for p in all_panels(load(GRAFANA / "dashboards" / name))]


def test_fleet_overview_has_what_the_issue_lists() -> None:
    have = titles("fleet-overview.json")
    for title in ("Online and offline devices", "RSSI distribution", "Battery distribution", "Devices by state",
                  "Top SIMs by usage", "Active alerts"):
        assert title in have
    variables = {v["name"]: v for v in load(GRAFANA / "dashboards" / "fleet-overview.json")["templating"]["list"]}
    assert variables["label"]["query"].startswith("SHOW TAG KEYS") and variables["label_value"]["includeAll"]


def test_device_detail_has_what_the_issue_lists() -> None:
    dashboard = load(GRAFANA / "dashboards" / "device-detail.json")
    have = titles("device-detail.json")
    for title in ("Signal strength", "Battery", "Online", "Wi-Fi clients", "Data used by SIM against its allowance",
                  "Effective SIM", "Events"):
        assert title in have
    assert "deviceNo" in {v["name"] for v in dashboard["templating"]["list"]}
    annotations = {a["name"]: a for a in dashboard["annotations"]["list"] if not a.get("builtIn")}
    assert 'FROM "alerts"' in annotations["Alerts"]["query"]
    assert 'FROM "device_event"' in annotations["Events"]["query"]


def test_sims_and_quotas_has_what_the_issue_lists() -> None:
    have = titles("sims-and-quotas.json")
    for title in ("Remaining data", "Projected exhaustion", "Packages expiring within $expiry_days days",
                  "Suspended or cut-off cards"):
        assert title in have


def test_reseller_has_what_the_issue_lists() -> None:
    dashboard = load(GRAFANA / "dashboards" / "reseller.json")
    have = titles("reseller.json")
    for title in ("Billed against real usage by $by", "Usage by $by", "Top SIMs over the range",
                  "Top devices over the range", "Packages ending in the range (this month by default)"):
        assert title in have
    assert dashboard["time"] == {"from": "now/M", "to": "now/M"}  # this month
    queries = [t["query"] for p in all_panels(dashboard) for t in p.get("targets", [])]
    # Top consumers over the range are the growth of the counters within it, not cycle-to-date values.
    tops = [q for q in queries if "non_negative_difference(last(\"used_bytes\"))" in q]
    assert len(tops) >= 5 and not any('last("used_bytes") AS' in q for q in queries)


def test_collector_health_has_what_the_issue_lists() -> None:
    have = titles("collector-health.json")
    for title in ("Requests by endpoint", "Errors by endpoint and outcome", "Latency by endpoint (p50, p95)",
                  "Rate limit", "Job lag", "Spool", "Notifications"):
        assert title in have


# --- PromQL -----------------------------------------------------------------------------------------


def test_every_promql_expression_parses_with_promtool(tmp_path: Path) -> None:
    promtool = require("promtool", "prometheus")
    expressions = promql_expressions()
    assert len(expressions) > 20
    rules = {"groups": [{"name": "grafana", "rules": [
        {"record": f"grafana:expression_{i}", "expr": expr} for i, (_, expr) in enumerate(expressions)]}]}
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        numbered = "\n".join(f"  expression_{i}: {where}: {expr}" for i, (where, expr) in enumerate(expressions))
        pytest.fail(f"promtool rejects a dashboard expression:\n{proc.stdout}{proc.stderr}\n{numbered}")


def test_promtool_check_is_not_vacuous(tmp_path: Path) -> None:
    promtool = require("promtool", "prometheus")
    path = tmp_path / "bad.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "x:y", "expr": "sum by (endpoint (rate(iot_collector_upstream_requests_total[5m]))"}]}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


def test_dashboards_use_only_metrics_the_collector_exports() -> None:
    exported = exported_metric_names()
    for where, expr in promql_expressions():
        used = set(re.findall(r"\biot_collector_[a-z0-9_]+|\bup(?=\{)", expr))
        assert used, f"{where}: no metric in {expr}"
        assert used <= exported, f"{where}: {sorted(used - exported)} are not exported by the collector"
