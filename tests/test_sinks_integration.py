"""The sinks against real servers: InfluxDB 1.x (v1 write API, queried back with InfluxQL) and
VictoriaMetrics (v2 write API, read back with its export API); a database outage mid-stream; and
SIGKILL of a writer process mid-run."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from collector.endpoints import SCHEMA
from collector.sinks.config import SinksConfig
from collector.sinks.pipeline import SinkPipeline
from tests import spool_writer
from tests.lineproto import parse_line
from tests.servers import InfluxServer, VictoriaMetricsServer
from tests.test_points import every_kind_lines

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
INFLUX_TYPES = {"integer": "int", "float": "float", "string": "string", "boolean": "bool"}
ODD_LABEL = "north east, 广东=深圳"


def v1_config(url: str, db: str, **overrides: Any) -> SinksConfig:
    data: dict[str, Any] = {"influxdb_v1": {"enabled": True, "url": url, "database": db},
                            "batch_size": 100, "flush_interval": 0.05, "retry_max_backoff": 0.3}
    data.update(overrides)
    return SinksConfig.model_validate(data)


async def test_every_kind_reaches_influxdb_v1_with_the_documented_schema(influxd: InfluxServer,
                                                                       state_dir: Path) -> None:
    db = f"t_{uuid.uuid4().hex[:10]}"  # created by the sink (create_database: true)
    lines = every_kind_lines({"site": ODD_LABEL})
    pipeline = SinkPipeline(v1_config(influxd.url, db), str(state_dir))
    await pipeline.start()
    await pipeline.submit(list(lines.values()))
    assert await pipeline.flush(timeout=15)
    await pipeline.stop(1)

    for measurement, line in lines.items():
        expected = parse_line(line)
        field_types = {row["fieldKey"]: INFLUX_TYPES[row["fieldType"]]
                       for row in influxd.rows(f'SHOW FIELD KEYS FROM "{measurement}"', db)}
        schema = SCHEMA[measurement]
        for name, (_kind, _value) in expected.fields.items():
            documented = schema.fields[name].type if name in schema.fields else schema.open_fields
            assert field_types[name] == documented, f"{measurement}.{name}"
        tag_keys = {row["tagKey"] for row in influxd.rows(f'SHOW TAG KEYS FROM "{measurement}"', db)}
        assert tag_keys == set(expected.tags)
        (row,) = influxd.rows(f'SELECT * FROM "{measurement}"', db)
        assert row["time"] == expected.timestamp
        assert row["site"] == ODD_LABEL
        for name, (_kind, value) in expected.fields.items():
            assert row[name] == value, f"{measurement}.{name}"


async def test_every_kind_reaches_victoria_metrics_through_the_v2_api(victoria_metrics: VictoriaMetricsServer,
                                                                     state_dir: Path) -> None:
    run = uuid.uuid4().hex[:10]
    lines = every_kind_lines({"run": run, "site": ODD_LABEL})
    config = SinksConfig.model_validate({
        "influxdb_v2": {"enabled": True, "url": victoria_metrics.url, "org": "acme", "bucket": "iot",
                        "token": "unused-by-vm"},
        "batch_size": 100, "flush_interval": 0.05})
    pipeline = SinkPipeline(config, str(state_dir))
    await pipeline.start()
    await pipeline.submit(list(lines.values()))
    assert await pipeline.flush(timeout=15)
    await pipeline.stop(1)

    expected: dict[str, tuple[dict[str, str], float, int]] = {}
    for line in lines.values():
        parsed = parse_line(line)
        for name, (kind, value) in parsed.fields.items():
            if kind in ("int", "float"):
                assert parsed.timestamp is not None
                expected[f"{parsed.measurement}_{name}"] = (parsed.tags, float(value), parsed.timestamp // 10**6)
    series = await asyncio.to_thread(victoria_metrics.export, f'{{run="{run}"}}',
                                     until=lambda s: len({x["metric"]["__name__"] for x in s}) >= len(expected))
    found = {s["metric"]["__name__"]: s for s in series}
    for metric, (tags, value, ts_ms) in expected.items():
        assert metric in found, f"{metric} missing from VictoriaMetrics"
        labels = {k: v for k, v in found[metric]["metric"].items() if k not in ("__name__", "db")}
        assert labels == tags
        assert found[metric]["values"] == [pytest.approx(value, rel=1e-11)]  # VM keeps ~12 digits
        assert found[metric]["timestamps"] == [ts_ms]


async def test_points_influxdb_refuses_are_dead_lettered_with_its_reason(influxd: InfluxServer, influx_db: str,
                                                                         state_dir: Path) -> None:
    pipeline = SinkPipeline(v1_config(influxd.url, influx_db), str(state_dir))
    await pipeline.start()
    await pipeline.submit(["conflict,k=a x=1i 1000000000"])
    assert await pipeline.flush(timeout=10)
    good = [f"ok,k=b n={i}i {2_000_000_000 + i}" for i in range(20)]
    bad = "conflict,k=a x=1.5 3000000000"  # x was an integer: InfluxDB refuses the float
    await pipeline.submit([*good[:10], bad, *good[10:]])
    assert await pipeline.flush(timeout=10)
    await pipeline.stop(1)
    text = (state_dir / "dead-letter" / "influxdb_v1.lp").read_text()
    assert bad in text.splitlines()
    assert "field type conflict" in text
    assert len(influxd.rows('SELECT n FROM "ok"', influx_db)) == 20


async def test_database_outage_mid_stream_loses_and_duplicates_nothing(influxd: InfluxServer, influx_db: str,
                                                                       state_dir: Path) -> None:
    pipeline = SinkPipeline(v1_config(influxd.url, influx_db, batch_size=50), str(state_dir))
    await pipeline.start()
    sent = 0
    try:
        for round_ in range(30):
            if round_ == 8:
                await asyncio.to_thread(influxd.stop)
            if round_ == 22:
                assert pipeline.status()["sinks"]["influxdb_v1"]["up"] is False
                assert pipeline.spool_bytes() > 0
                await asyncio.to_thread(influxd.start)
            await pipeline.submit([f"outage,src=t n={n}i {1_600_000_000_000_000_000 + n * 10**6}"
                                   for n in range(sent, sent + 25)])
            sent += 25
            await asyncio.sleep(0.05)
        assert await pipeline.flush(timeout=30)
    finally:
        if not influxd.running:
            influxd.start()
        await pipeline.stop(1)
    rows = influxd.rows('SELECT n FROM "outage"', influx_db)
    assert sorted(row["n"] for row in rows) == list(range(sent))
    assert pipeline.status()["sinks"]["influxdb_v1"]["up"] is True


def run_writer(state: Path, url: str, db: str, total: int, acks: Path, out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.spool_writer", "--state-dir", str(state), "--url", url, "--db", db,
         "--total", str(total), "--acks", str(acks), "--file", str(out)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_mid_run_loses_no_spooled_point_and_duplicates_none(influxd: InfluxServer, influx_db: str,
                                                                    tmp_path: Path) -> None:
    total = 3000
    state, acks, out = tmp_path / "state", tmp_path / "acks", tmp_path / "points.lp"
    rng = random.Random(os.environ.get("SIGKILL_SEED", str(time.time_ns())))
    kill_after = rng.randint(200, 2000)  # points acknowledged as spooled before the kill
    first = run_writer(state, influxd.url, influx_db, total, acks, out)
    deadline = time.monotonic() + 60
    while spool_writer.last_acked(acks) < kill_after:
        assert first.poll() is None, first.communicate()[0].decode()
        assert time.monotonic() < deadline, "the writer made no progress"
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    first.wait()
    acked_before_kill = spool_writer.last_acked(acks)
    assert acked_before_kill < total - 1, "killed too late to test anything"

    second = run_writer(state, influxd.url, influx_db, total, acks, out)
    output = second.communicate(timeout=90)[0].decode()
    assert second.returncode == 0, output

    rows = influxd.rows('SELECT n FROM "sigkill"', influx_db)
    numbers = [row["n"] for row in rows]
    assert sorted(numbers) == list(range(total)), (
        f"killed after {acked_before_kill} acks: missing {sorted(set(range(total)) - set(numbers))[:10]}")
    for row in rows:  # each point at its own timestamp: nothing landed on another point's key
        assert row["time"] == spool_writer.BASE_NS + row["n"] * 1_000_000
    # The file sink drains the same spool: a replay may repeat a line, never change it.
    by_key: dict[Any, set[str]] = defaultdict(set)
    for line in out.read_text().splitlines():
        by_key[parse_line(line).key].add(line)
    assert all(len(variants) == 1 for variants in by_key.values())
    assert len(by_key) == total
    assert {next(iter(v)) for v in by_key.values()} == {spool_writer.point(n) for n in range(total)}
    assert not (state / "dead-letter").exists()
