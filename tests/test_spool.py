# ruff: noqa: ASYNC230, ASYNC240 - tests damage spool files on purpose, synchronously
"""The durable spool: framing, torn-tail recovery, cursors, the size bound, per-sink independence, and a
full or read-only disk (a real tmpfs)."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from collector.metrics import POINTS_DROPPED
from collector.sinks import spool as spool_module
from collector.sinks.config import SpoolConfig
from collector.sinks.spool import MAGIC, Spool, SpoolError, Throttle
from tests.tmpfs import fill, mounted


def lines(start: int, count: int) -> list[str]:
    return [f"m,k=v n={i}i {i}" for i in range(start, start + count)]


def make(directory: Path, sinks: tuple[str, ...] = ("a",), **config: object) -> Spool:
    spool = Spool(directory, SpoolConfig(**config), sinks, frame_lines=10)  # type: ignore[arg-type]
    spool.open()
    return spool


def drain(spool: Spool, sink: str, max_lines: int = 7, commit: bool = True) -> list[str]:
    out: list[str] = []
    while (batch := spool.read(sink, max_lines)) is not None:
        out.extend(line.decode() for line in batch.lines())
        if not commit:
            break
        spool.commit(sink, batch.end)
    return out


def dropped(reason: str) -> float:
    return POINTS_DROPPED.labels(reason=reason)._value.get()


async def test_lines_come_out_in_order_across_frames_and_segments(tmp_path: Path) -> None:
    spool = make(tmp_path, max_bytes=64 * 1024 * 4, segment_bytes=1)  # one frame per segment
    for start in range(0, 100, 25):
        assert await spool.append(lines(start, 25)) == 25
    assert spool.segment_count() > 5
    assert drain(spool, "a") == lines(0, 100)
    assert spool.segment_count() == 1  # consumed segments are deleted, the open one stays


async def test_batches_hold_whole_frames_up_to_max_lines(tmp_path: Path) -> None:
    spool = make(tmp_path)
    await spool.append(lines(0, 25))  # frames of 10, 10, 5
    sizes = []
    while (batch := spool.read("a", 20)) is not None:
        sizes.append(batch.count)
        spool.commit("a", batch.end)
    assert sizes == [20, 5]


@pytest.mark.parametrize("fsync", ["always", "batch", "never"])
async def test_cursor_survives_reopen(tmp_path: Path, fsync: str) -> None:
    spool = make(tmp_path, fsync=fsync)
    await spool.append(lines(0, 30))
    batch = spool.read("a", 10)
    assert batch is not None
    spool.commit("a", batch.end)
    spool.read("a", 10)  # read but not committed: must come again
    spool.close()
    again = make(tmp_path, fsync=fsync)
    assert drain(again, "a") == lines(10, 20)


async def test_torn_tail_is_cut_and_never_replayed(tmp_path: Path) -> None:
    spool = make(tmp_path)
    await spool.append(lines(0, 10))
    await spool.append(lines(10, 10))
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    size = segment.stat().st_size
    with open(segment, "r+b") as fh:  # SIGKILL in the middle of the second frame
        fh.truncate(size - 7)
    reopened = make(tmp_path)
    assert segment.stat().st_size < size - 7
    await reopened.append(lines(20, 5))
    assert drain(reopened, "a") == lines(0, 10) + lines(20, 5)


async def test_garbage_after_the_last_frame_is_cut(tmp_path: Path) -> None:
    spool = make(tmp_path)
    await spool.append(lines(0, 10))
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    with open(segment, "ab") as fh:
        fh.write(os.urandom(100))
    reopened = make(tmp_path)
    assert drain(reopened, "a") == lines(0, 10)


async def test_flipped_bit_in_the_last_frame_fails_its_crc(tmp_path: Path) -> None:
    spool = make(tmp_path)
    await spool.append(lines(0, 10))
    await spool.append(lines(10, 10))
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0x40
    segment.write_bytes(bytes(data))
    assert drain(make(tmp_path), "a") == lines(0, 10)


async def test_empty_or_headerless_segment_is_repaired(tmp_path: Path) -> None:
    make(tmp_path).close()
    (segment,) = tmp_path.glob("*.seg")
    segment.write_bytes(b"")
    spool = make(tmp_path)
    assert segment.read_bytes() == MAGIC
    await spool.append(lines(0, 3))
    assert drain(spool, "a") == lines(0, 3)


async def test_bound_drops_oldest_segments_and_counts_unsent_points(tmp_path: Path) -> None:
    before = dropped("spool_full")
    spool = make(tmp_path, ("slow", "fast"), max_bytes=256 * 1024, segment_bytes=64 * 1024, fsync="never")
    total = 0
    for _ in range(600):
        await spool.append(lines(total, 50))
        total += 50
        drain(spool, "fast")
        assert spool.bytes_used() <= 256 * 1024 + spool.segment_bytes
    assert spool.dropped_lines > 0
    assert dropped("spool_full") - before == spool.dropped_lines
    remaining = drain(spool, "slow", max_lines=1000)
    # what is left is the newest points, contiguous, and nothing the bound did not need to drop
    assert remaining == lines(total - len(remaining), len(remaining))
    assert len(remaining) + spool.dropped_lines == total
    assert drain(spool, "fast") == []


async def test_one_sink_behind_keeps_segments_for_it_only(tmp_path: Path) -> None:
    spool = make(tmp_path, ("a", "b"), max_bytes=64 * 1024 * 4, segment_bytes=1)
    for start in range(0, 50, 10):
        await spool.append(lines(start, 10))
    assert drain(spool, "a") == lines(0, 50)
    assert spool.segment_count() >= 5  # b has not read them
    assert spool.pending_bytes("a") == 0 and spool.pending_bytes("b") > 0
    assert spool.oldest_unsent_at("a") is None and spool.oldest_unsent_at("b") is not None
    assert drain(spool, "b") == lines(0, 50)
    assert spool.segment_count() == 1
    assert spool.oldest_unsent_at() is None


async def test_a_new_sink_starts_at_the_end(tmp_path: Path) -> None:
    spool = make(tmp_path, ("a",))
    await spool.append(lines(0, 10))
    spool.close()
    both = make(tmp_path, ("a", "new"))
    await both.append(lines(10, 5))
    assert drain(both, "new") == lines(10, 5)
    assert drain(both, "a") == lines(0, 15)


async def test_an_unreadable_cursor_replays_from_the_oldest_point(tmp_path: Path) -> None:
    spool = make(tmp_path)
    await spool.append(lines(0, 10))
    drain(spool, "a")
    spool.close()
    (tmp_path / "cursors" / "a.cursor").write_bytes(b"\x00" * 7)
    assert drain(make(tmp_path), "a") == lines(0, 10)


async def test_a_line_with_a_newline_is_refused_whole(tmp_path: Path) -> None:
    spool = make(tmp_path)
    with pytest.raises(ValueError):
        await spool.append(["m x=1i 1", "m x=2i\nm x=3i 2"])
    assert spool.read("a", 10) is None


async def test_concurrent_appends_share_fsyncs_in_batch_mode(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = spool_module._fsync_and_close

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(spool_module, "_fsync_and_close", counting)
    spool = make(tmp_path, fsync="batch")
    await asyncio.gather(*(spool.append(lines(i * 10, 10)) for i in range(50)))
    assert 1 <= len(calls) < 50
    assert sorted(drain(spool, "a", 1000), key=lambda s: int(s.split()[-1])) == lines(0, 500)


async def test_write_error_is_reported_and_nothing_half_written(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spool = make(tmp_path)
    await spool.append(lines(0, 5))

    def broken(fd: int, data: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module.os, "write", broken)
    with pytest.raises(SpoolError):
        await spool.append(lines(5, 5))
    assert spool.last_error is not None
    monkeypatch.undo()
    await spool.append(lines(10, 5))
    assert spool.last_error is None
    assert drain(spool, "a") == lines(0, 5) + lines(10, 5)


# --- a full disk: a real 1 MiB tmpfs --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB filesystem (tmpfs), the spool's directory inside it."""
    with mounted(tmp_path / "disk", "1m") as disk:
        yield disk


def spool_on(disk: Path, sinks: tuple[str, ...] = ("a",), **config: object) -> Spool:
    spool = Spool(disk / "spool", SpoolConfig(**config), sinks, frame_lines=50)  # type: ignore[arg-type]
    spool.open()
    return spool


def numbered(start: int, count: int) -> list[str]:
    """Lines of about 100 bytes, numbered."""
    text = "x" * 40
    return [f"m,host=h{i % 7},site=north-east-{i % 3} n={i}i,text=\"{text}\" {i}" for i in range(start, start + count)]


async def test_a_full_disk_frees_what_every_sink_sent_including_the_segment_being_written(small_disk: Path) -> None:
    spool = spool_on(small_disk)  # the defaults: 1 GiB, 8 MiB segments
    fill(small_disk, leave=64 * 1024)  # less than one segment left: the segment being written fills it
    sent: list[str] = []
    for start in range(0, 5000, 50):  # ~500 KB through 64 KB of free space
        await spool.append(numbered(start, 50))
        sent.extend(drain(spool, "a", max_lines=500))
    assert sent == numbered(0, 5000)
    assert spool.dropped_lines == 0 and spool.last_error is None


async def test_a_full_disk_drops_the_oldest_segments_counted_and_keeps_storing(small_disk: Path) -> None:
    before = dropped("disk_full")
    spool = spool_on(small_disk, ("down", "up"))
    assert spool.segment_bytes == 128 * 1024  # 8 MiB configured, an eighth of this disk used
    total = 0
    with capture_logs() as logs:
        while total < 30_000:  # ~3 MB into 1 MiB, "down" never sends
            assert await spool.append(numbered(total, 50)) == 50
            total += 50
            drain(spool, "up", max_lines=500)
    assert spool.last_error is None
    assert spool.dropped_lines > 0 and dropped("disk_full") - before == spool.dropped_lines
    remaining = drain(spool, "down", max_lines=1000)
    assert remaining == numbered(total - len(remaining), len(remaining))  # the newest, contiguous
    assert len(remaining) + spool.dropped_lines == total
    assert len(remaining) > 30_000 * 0.15  # only whole segments of an eighth of the disk went at a time
    drops = [e for e in logs if e["event"].startswith("disk full")]
    assert len(drops) == 1  # once a minute, not once per segment
    assert drops[0]["points"] <= spool.dropped_lines


async def test_the_spool_opens_on_a_full_disk_and_stores_once_space_returns(small_disk: Path) -> None:
    (small_disk / "spool").mkdir()
    filler = fill(small_disk)
    spool = spool_on(small_disk)
    with pytest.raises(SpoolError) as refused:
        await spool.append(numbered(0, 50))
    assert refused.value.unstored == 50
    assert spool.last_error is not None and "No space left" in spool.last_error
    filler.unlink()
    assert await spool.append(numbered(50, 50)) == 50
    assert spool.last_error is None
    assert drain(spool, "a") == numbered(50, 50)
    spool.close()
    assert drain(spool_on(small_disk), "a") == []  # the cursor made it to disk once it could


async def test_a_spool_that_filled_the_disk_reopens_and_keeps_the_newest(small_disk: Path) -> None:
    spool = spool_on(small_disk, ("down",))
    total = 0
    while spool.dropped_lines == 0:  # the database is down until the disk is full
        await spool.append(numbered(total, 50))
        total += 50
    spool.close()  # a restart on the full disk
    fill(small_disk)
    again = spool_on(small_disk, ("down",))
    await again.append(numbered(total, 50))
    remaining = drain(again, "down", max_lines=1000)
    assert remaining[-50:] == numbered(total, 50)
    assert remaining == numbered(total + 50 - len(remaining), len(remaining))


def test_throttle_gives_one_line_a_minute_with_the_sums_in_between() -> None:
    now = [0.0]
    throttle = Throttle(60.0, clock=lambda: now[0])
    assert throttle.due(points=5) == {"points": 5, "occurrences": 1}
    for _ in range(10):
        now[0] += 5
        assert throttle.due(points=2) is None
    now[0] += 15
    assert throttle.due(points=1) == {"points": 21, "occurrences": 11}
    assert throttle.due(points=1) is None
    now[0] += 60
    assert throttle.due(points=3) == {"points": 4, "occurrences": 2}
