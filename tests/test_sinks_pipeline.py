"""SinkPipeline.submit as the pollers use it: concurrent submits share fsyncs, and a spool that
cannot store points (a real full tmpfs) drops them counted and logged once, without failing the
caller, until space returns."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from collector.metrics import POINTS_COLLECTED, POINTS_DROPPED
from collector.sinks import spool as spool_module
from collector.sinks.config import SinksConfig
from collector.sinks.pipeline import SinkPipeline
from tests.tmpfs import fill, mounted


def numbered(start: int, count: int) -> list[str]:
    return [f"m,k=v n={i}i {1_700_000_000_000_000_000 + i}" for i in range(start, start + count)]


def file_config(path: Path, fsync: str = "batch") -> SinksConfig:
    return SinksConfig.model_validate({"file": {"enabled": True, "path": str(path)}, "batch_size": 1000,
                                       "flush_interval": 0.05, "spool": {"fsync": fsync}})


async def test_concurrent_submits_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = spool_module._fsync_and_close

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(spool_module, "_fsync_and_close", counting)
    out = tmp_path / "points.lp"
    pipeline = SinkPipeline(file_config(out), str(tmp_path / "state"))
    await pipeline.start()
    await asyncio.gather(*(pipeline.submit(numbered(i * 10, 10)) for i in range(100)))
    assert 1 <= len(calls) < 50  # the file sink's own fsyncs run through RotatingFile, not counted here
    assert await pipeline.flush(timeout=10)
    await pipeline.stop(1)
    assert sorted(out.read_text().splitlines(), key=lambda s: int(s.split()[-1])) == numbered(0, 1000)


async def test_a_submit_a_full_disk_refuses_is_dropped_counted_and_logged_once(tmp_path: Path) -> None:
    out = tmp_path / "points.lp"  # the file sink writes outside the full disk
    with mounted(tmp_path / "state", "1m") as state:
        pipeline = SinkPipeline(file_config(out), str(state))
        await pipeline.start()
        try:
            await pipeline.submit(numbered(0, 10))
            assert await pipeline.flush(timeout=5)
            filler = fill(state)  # the spool holds nothing unsent: nothing it may drop to make room
            dropped_before = POINTS_DROPPED.labels(reason="spool_error")._value.get()
            collected_before = POINTS_COLLECTED._value.get()
            with capture_logs() as logs:
                for start in range(10, 20_010, 200):  # 8 KB each: more than the page the spool frees
                    await pipeline.submit(numbered(start, 200))  # does not raise: the poll did its part
            assert POINTS_DROPPED.labels(reason="spool_error")._value.get() - dropped_before == 20_000
            assert POINTS_COLLECTED._value.get() == collected_before
            refused = [e for e in logs if e["log_level"] == "error"]
            assert [e["event"] for e in refused] == ["spool cannot store points: dropped"]
            assert "No space left" in refused[0]["error"]
            assert not pipeline.writable()
            assert "No space left" in pipeline.status()["spool"]["last_error"]
            assert pipeline.status()["spool"]["refused_points"] == 20_000

            filler.unlink()
            await pipeline.submit(numbered(30_000, 10))
            assert pipeline.writable() and pipeline.status()["spool"]["last_error"] is None
            assert await pipeline.flush(timeout=5)
        finally:
            await pipeline.stop(1)
    assert out.read_text().splitlines() == numbered(0, 10) + numbered(30_000, 10)
