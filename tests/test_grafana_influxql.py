"""Every InfluxQL query of the Grafana dashboards (panels, template variables, annotations) runs against
a real InfluxDB 1.x filled by the real collector (`python -m collector run`) polling its embedded
simulator, and returns data.

Grafana is not installed here, so this module does what Grafana does to a query before sending it:
`$timeFilter` becomes `time >= <from>ms and time <= <to>ms`, `$__interval` the grouping interval,
`${__from}` / `${__to}` the range in ms, and template variables their value: a query variable the value
its own query returned (the saved current value if present, else the first), a multi-value variable
set to All its `allValue`, regex-escaped as Grafana's InfluxDB datasource does.

Each dashboard's queries run over its default time range. "This month" (`now/M`) is the calendar month
(UTC) and, when it ends within 30 days of now, runs 30 days past now: the simulated packages end 1 to
10 days after the fleet starts, so near the end of a month only a longer range holds one.

The fleet gets a few faults through the simulator's admin API (a device offline, one with a weak
signal, a card suspended, one exhausted), as a real fleet has, so that the panels that list problems
have something to list. The wait ends as soon as every query returns data.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_run import DaemonProcess, demo_config
from tests.servers import InfluxServer, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
INTERVAL = "2s"  # the test collector's poll interval, as 5m is a production one
WAIT_SECONDS = 90.0  # an upper bound: the wait ends as soon as every query has data

# A rule that fires for every polled device, so the device dashboard's alert annotations have data.
DEVICE_SEEN_RULE = {"name": "DeviceSeen", "kind": "device", "condition": "polled == True", "for": "0s",
                    "severity": "info", "annotations": {"summary": "Device {{ device_no }} was polled"}}


@dataclass
class Query:
    dashboard: str
    where: str
    text: str  # as written in the dashboard


@dataclass
class Outcome:
    query: Query
    sent: str = ""
    error: str = ""
    rows: int = 0


@dataclass
class Dashboards:
    queries: list[Query] = field(default_factory=list)
    variables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # dashboard -> name -> var
    ranges: dict[str, tuple[str, str]] = field(default_factory=dict)  # dashboard -> its default (from, to)

    def range_ms(self, dashboard: str, now_ms: int) -> tuple[int, int]:
        return time_range(*self.ranges[dashboard], now_ms)


MONTH_TAIL_MS = 30 * 86_400_000


def time_range(time_from: str, time_to: str, now_ms: int) -> tuple[int, int]:
    """A dashboard's default time range as (from, to) in ms: `now-24h`..`now`, or `now/M`..`now/M`."""
    if (time_from, time_to) == ("now/M", "now/M"):
        today = datetime.fromtimestamp(now_ms / 1000, UTC)
        start = today.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return int(start.timestamp() * 1000), max(int(end.timestamp() * 1000) - 1, now_ms + MONTH_TAIL_MS)
    match = re.fullmatch(r"now-(\d+)([mhdw])", time_from)
    assert match and time_to == "now", f"unsupported default time range {time_from!r}..{time_to!r}"
    seconds = int(match.group(1)) * {"m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return now_ms - seconds * 1000, now_ms


def load_dashboards() -> Dashboards:
    out = Dashboards()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        name = path.name
        out.variables[name] = {v["name"]: v for v in dashboard["templating"]["list"]}
        out.ranges[name] = (dashboard["time"]["from"], dashboard["time"]["to"])
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query" and var["datasource"]["type"] == "influxdb":
                out.queries.append(Query(name, f"variable {var['name']}", var["query"]))
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                ds = target.get("datasource") or panel.get("datasource")
                if ds["type"] == "influxdb":
                    out.queries.append(Query(name, f"panel {panel['title']!r} {target['refId']}", target["query"]))
        for annotation in dashboard["annotations"]["list"]:
            if (annotation.get("datasource") or {}).get("type") == "influxdb":
                out.queries.append(Query(name, f"annotation {annotation['name']}", annotation["query"]))
    return out


# --- Grafana's interpolation -------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)\]\]|\$(\w+)")
_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]/])")


def format_value(var: dict[str, Any], value: str | list[str]) -> str:
    """As Grafana's InfluxDB datasource: multi-value and All-able variables are regex-escaped."""
    if value in (["$__all"], "$__all"):
        return str(var.get("allValue") or ".*")
    values = value if isinstance(value, list) else [value]
    if var.get("multi") or var.get("includeAll"):
        escaped = [_REGEX_SPECIAL.sub(r"\\\1", v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    return values[0]


def interpolate(text: str, variables: dict[str, dict[str, Any]], values: dict[str, str | list[str]],
                now_ms: int, range_ms: tuple[int, int] | None = None) -> str:
    from_ms, to_ms = range_ms or (now_ms - 3_600_000, now_ms)
    macros = {"timeFilter": f"time >= {from_ms}ms and time <= {to_ms}ms",
              "__timeFilter": f"time >= {from_ms}ms and time <= {to_ms}ms",
              "__interval": INTERVAL, "interval": INTERVAL, "__from": str(from_ms), "__to": str(to_ms)}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3) or match.group(4)
        if name in macros:
            return macros[name]
        assert name in variables, f"{name} is neither a Grafana macro nor a variable of the dashboard: {text}"
        assert name in values, f"variable {name} used before it has a value: {text}"
        return format_value(variables[name], values[name])

    out = _VARIABLE.sub(replace, text)
    assert not re.search(r"\$[\w{]", out), f"left unsubstituted in {out}"
    return out


# --- the collector filling InfluxDB -------------------------------------------------------------------


class InfluxQL:
    """InfluxQL on one kept-alive connection: the same answers as `InfluxServer.query`, which opens a
    new client per call (too slow for the few hundred queries of the wait loop)."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=30.0)

    def query(self, q: str, db: str) -> list[dict[str, Any]]:
        response = self.client.post("/query", params={"db": db, "epoch": "ns"}, data={"q": q})
        response.raise_for_status()
        result = response.json()["results"][0]
        if "error" in result:
            raise RuntimeError(f"InfluxQL error for {q!r}: {result['error']}")
        return list(result.get("series", []))

    def close(self) -> None:
        self.client.close()


def series_values(influxd: InfluxQL, db: str, query: str) -> list[list[Any]]:
    return [row for series in influxd.query(query, db) for row in series.get("values", [])]


def has_data(series: list[dict[str, Any]]) -> int:
    """Rows with at least one non-null value besides the time."""
    rows = 0
    for s in series:
        skip = 1 if s.get("columns", [""])[0] == "time" else 0
        for row in s.get("values", []):
            if any(v is not None for v in row[skip:]):
                rows += 1
    return rows


class Filler:
    """The real collector polling its embedded simulator into `db`, with a few faults injected."""

    def __init__(self, tmp: Path, influxd: InfluxServer, db: str) -> None:
        self.sim_port = free_port()
        config = demo_config(
            tmp,
            simulator={"embedded": True, "devices": 20, "seed": 7, "speed": 600, "port": self.sim_port},
            sinks={"file": {"enabled": False},
                   "influxdb_v1": {"enabled": True, "url": influxd.url, "database": db},
                   "flush_interval": "200ms"},
            alerts={"enabled": True, "rules": [DEVICE_SEEN_RULE]},
            # Short intervals: the usage panels need a card polled twice, the sooner the better.
            jobs={"device_status": {"interval": "2s"}, "device_flow": {"interval": "2s"},
                  "card_status": {"interval": "2s"}, "card_usage": {"interval": "2s"},
                  "card_info": {"interval": "3s"}, "account_assets": {"interval": "3s"},
                  "card_month_usage": {"enabled": False, "interval": "1h"},
                  "card_actions": {"enabled": False, "interval": "1h"}},
        )
        self.daemon = DaemonProcess(tmp, config)

    def start(self) -> None:
        self.daemon.start(wait_ready=False)
        self.inject()

    def inject(self) -> None:
        """The faults the panels show. Again while waiting: at speed 600 a simulated day passes in
        2.4 minutes, and a SIM's billing cycle that starts meanwhile gives it its data back."""
        sim = f"http://127.0.0.1:{self.sim_port}/_sim"
        devices = httpx.get(f"{sim}/inventory", timeout=10).json()["devices"]
        with_sims = [d for d in devices if d["iccids"]]
        faults = [
            (f"{sim}/devices/{devices[1]['deviceNo']}/offline", {}),
            (f"{sim}/devices/{devices[2]['deviceNo']}/rssi", {"dbm": -112}),
            (f"{sim}/sims/{with_sims[0]['iccids'][0]}/suspend", {}),
            (f"{sim}/sims/{with_sims[3]['iccids'][0]}/exhaust", {"remaining_ratio": 0.01}),
        ]
        for url, body in faults:
            response = httpx.post(url, json=body, timeout=10)
            assert response.status_code == 200, f"{url}: {response.status_code} {response.text}"

    def stop(self) -> None:
        self.daemon.stop()


@dataclass
class Results:
    db: str
    influx: InfluxQL
    outcomes: list[Outcome]
    values: dict[str, dict[str, str | list[str]]]
    log_tail: str


def resolve_variables(influxd: InfluxQL, db: str, dashboards: Dashboards, now_ms: int,
                      devices_with_events: list[str]) -> dict[str, dict[str, str | list[str]]]:
    """Each dashboard's variable values, in the order Grafana resolves them (the order of the list)."""
    out: dict[str, dict[str, str | list[str]]] = {}
    for name, variables in dashboards.variables.items():
        values: dict[str, str | list[str]] = {}
        for var_name, var in variables.items():
            if var["type"] == "constant":
                values[var_name] = var["query"]
            elif var["type"] == "custom":
                values[var_name] = var["current"]["value"]
            elif var["type"] == "query" and var["datasource"]["type"] == "influxdb":
                text = interpolate(var["query"], variables, values, now_ms, dashboards.range_ms(name, now_ms))
                found = sorted(str(row[-1]) for row in series_values(influxd, db, text))
                current = (var.get("current") or {}).get("value")
                if var_name == "deviceNo":
                    # The device the test looks at: one with events in the range (not every device has them).
                    listed = [d for d in devices_with_events if d in found]
                    values[var_name] = listed[0] if listed else (found[0] if found else "")
                elif current == ["$__all"] or current == "$__all":
                    values[var_name] = ["$__all"]
                elif current in found:
                    values[var_name] = current
                else:
                    values[var_name] = found[0] if found else ""
        out[name] = values
    return out


def run_all(influxd: InfluxQL, db: str, dashboards: Dashboards) -> tuple[list[Outcome], dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    lookback = now_ms - dashboards.range_ms("device-detail.json", now_ms)[0]
    with_events = sorted(s["tags"]["device_no"] for s in influxd.query(
        f'SELECT count("value1") FROM "device_event" WHERE time >= {now_ms - lookback}ms and time <= {now_ms}ms '
        'GROUP BY "device_no"', db))
    values = resolve_variables(influxd, db, dashboards, now_ms, with_events)
    outcomes = []
    for query in dashboards.queries:
        outcome = Outcome(query)
        try:
            outcome.sent = interpolate(query.text, dashboards.variables[query.dashboard],
                                       values[query.dashboard], now_ms, dashboards.range_ms(query.dashboard, now_ms))
            outcome.rows = has_data(influxd.query(outcome.sent, db))
        except (RuntimeError, httpx.HTTPError, AssertionError) as exc:
            outcome.error = str(exc)
        outcomes.append(outcome)
    return outcomes, values


@pytest.fixture(scope="module")
def results(influxd_server: InfluxServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    if not influxd_server.running:
        influxd_server.start()
    db = f"grafana_{uuid.uuid4().hex[:10]}"
    dashboards = load_dashboards()
    influx = InfluxQL(influxd_server.url)
    filler = Filler(tmp_path_factory.mktemp("grafana-fill"), influxd_server, db)
    filler.start()
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            outcomes, values = run_all(influx, db, dashboards)
            done = all(o.rows or o.error for o in outcomes)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.5)
            filler.inject()
    finally:
        filler.stop()
    yield Results(db, influx, outcomes, values, filler.daemon.logs()[-3000:])
    influx.close()


def test_the_dashboards_have_influxql_queries() -> None:
    queries = load_dashboards().queries
    assert len(queries) > 30
    assert {q.dashboard for q in queries} == {"fleet-overview.json", "device-detail.json", "sims-and-quotas.json",
                                              "reseller.json"}


@pytest.mark.parametrize("dashboard", ["fleet-overview.json", "device-detail.json", "sims-and-quotas.json",
                                       "reseller.json"])
def test_every_influxql_query_runs_and_returns_data(results: Results, dashboard: str) -> None:
    mine = [o for o in results.outcomes if o.query.dashboard == dashboard]
    assert mine
    errors = [f"{o.query.where}: {o.error}\n    {o.sent}" for o in mine if o.error]
    assert not errors, "queries InfluxDB refused:\n" + "\n".join(errors)
    empty = [f"{o.query.where}:\n    {o.sent}" for o in mine if not o.rows]
    assert not empty, (f"queries that returned no data (variables {results.values[dashboard]}):\n"
                       + "\n".join(empty) + f"\n--- collector log ---\n{results.log_tail}")


def test_the_label_filter_narrows_the_devices(results: Results) -> None:
    """`label`/`label_value` filter: one customer's devices are some, not all, of the fleet."""
    dashboards = load_dashboards()
    variables = dashboards.variables["device-detail.json"]
    values = dict(results.values["device-detail.json"])
    assert values["label"] == "customer" and values["label_value"] == ["$__all"]
    query = variables["deviceNo"]["query"]
    now_ms = int(time.time() * 1000)
    every = series_values(results.influx, results.db, interpolate(query, variables, values, now_ms))
    customers = sorted(str(r[-1]) for r in series_values(results.influx, results.db, interpolate(
        variables["label_value"]["query"], variables, values, now_ms)))
    assert len(customers) > 1
    one = series_values(results.influx, results.db,
                        interpolate(query, variables, {**values, "label_value": [customers[0]]}, now_ms))
    assert 0 < len(one) < len(every)


def test_interpolation_matches_grafana_for_multi_values() -> None:
    var = {"name": "label_value", "multi": True, "includeAll": True, "allValue": ".*"}
    variables = {"label_value": var, "label": {"name": "label"}}
    assert interpolate('"$label" =~ /^$label_value$/', variables, {"label": "customer", "label_value": ["$__all"]},
                       0) == '"customer" =~ /^.*$/'
    assert interpolate("/^$label_value$/", variables, {"label_value": ["a.b", "c"]}, 0) == r"/^(a\.b|c)$/"
    assert interpolate("[[label]] ${label}", variables, {"label": "x"}, 0) == "x x"
    with pytest.raises(AssertionError):
        interpolate("$nope", variables, {}, 0)
