"""The durable spool: an append-only queue on disk in front of every sink.

Points count as collected once they are in the spool. Each sink drains it through its own persisted
read cursor, so a sink that is down only makes its own backlog grow.

On-disk layout, under `<state_dir>/spool/`:

- `<id:016d>.seg`: segment files. Each starts with the 8-byte magic `IOTSPL01`, followed by frames
  (a segment started on a full disk stays empty until its first frame, written with the magic).
  A frame is a 20-byte header `<payload length u32, line count u32, appended-at f64, crc32 u32>`
  (little endian; the CRC covers the first 16 header bytes and the payload) and a payload of UTF-8
  line-protocol lines joined by `\\n`. One `append()` writes one or more frames of at most
  `frame_lines` lines.
- `cursors/<sink>.cursor`: `<segment id u64, byte offset of the next unsent frame u64, crc32 u32>`,
  overwritten in place after each batch a sink accepts.

Recovery: on open, the last segment is scanned and cut at the first frame that is short or fails its
CRC (a write torn by SIGKILL or a power cut), so garbage is never replayed. A cursor that is missing
for a sink starts at the end (a new sink gets new points only); an unreadable cursor starts at the
oldest segment (a replay, harmless because lines are byte-identical: same series, same timestamp).

Durability (`SpoolConfig.fsync`): `always` fsyncs each append on its own before it returns;
`batch` lets appends that arrive together share one fsync (group commit) and still returns only
once the append is on disk; `never` leaves flushing to the OS: a crash of the daemon, SIGKILL
included, loses nothing, a power cut may lose the last seconds. fsync runs in a worker thread on a
duplicate of the file descriptor; everything else is plain blocking I/O on the event loop thread
(writes and reads of a few MiB at most, served by the page cache).

Bound: when the segments exceed `max_bytes`, whole segments are dropped oldest first (never the one
being written); the points some sink had not sent yet are counted in POINTS_DROPPED{reason=
"spool_full"}. Segments are at most a quarter of `max_bytes` so that the bound holds within a
quarter, and at most an eighth of the filesystem that holds them, so that a full disk costs an eighth
of the backlog, not all of it.

A full disk (ENOSPC, EDQUOT) is a bound too: an append that does not fit first frees what every sink
has sent (the segment being written included: a new one is started), then drops sealed segments
oldest first (POINTS_DROPPED{reason="disk_full"}), and is stored. When only the segment being
written is left, with points a sink has not sent yet, the append fails (SpoolError; `last_error` is
set until an append succeeds again, and the next commit that leaves that segment fully sent frees
it). Nothing here needs a restart: once the sinks drain or space returns, appends succeed. Drops are
logged at most once a minute (`Throttle`), with the points counted since the last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from collector.metrics import POINTS_DROPPED
from collector.sinks.config import SpoolConfig

log = structlog.get_logger(__name__)

MAGIC = b"IOTSPL01"
HEADER = struct.Struct("<IIdI")
CURSOR = struct.Struct("<QQI")
SEGMENT_SUFFIX = ".seg"
_MAX_FRAME_BYTES = 1 << 30
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
MIN_SEGMENT_BYTES = 64 * 1024
LOG_INTERVAL = 60.0  # seconds between two log lines about the same repeating failure


class SpoolError(Exception):
    """The spool could not store points (disk full, I/O error): they were not collected.

    `unstored` is how many of the append's lines are not in the spool (an append of several frames
    may have stored the first ones)."""

    def __init__(self, message: str, unstored: int = 0) -> None:
        super().__init__(message)
        self.unstored = unstored


class Throttle:
    """At most one log line per `interval` seconds for a failure that repeats (every poll on a full
    disk): `due()` adds up the counts it is given and returns their sums since the last line when a
    line is due, else None."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._sums: dict[str, int] = {}

    def due(self, **counts: int) -> dict[str, int] | None:
        for key, value in counts.items():
            self._sums[key] = self._sums.get(key, 0) + value
        self._sums["occurrences"] = self._sums.get("occurrences", 0) + 1
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return None
        self._last = now
        sums, self._sums = self._sums, {}
        return sums


@dataclass(frozen=True, order=True, slots=True)
class Cursor:
    """Where a sink's next unsent frame starts."""

    segment: int
    offset: int


@dataclass(slots=True)
class Batch:
    """Whole frames read for one sink: `chunks` are frame payloads (lines joined by `\\n`)."""

    chunks: list[bytes]
    count: int
    end: Cursor
    first_appended_at: float

    def body(self) -> bytes:
        return b"\n".join(self.chunks)

    def lines(self) -> list[bytes]:
        return self.body().split(b"\n")


@dataclass(slots=True)
class _Segment:
    id: int
    path: Path
    size: int


@dataclass(slots=True)
class _Frame:
    offset: int
    end: int
    count: int
    appended_at: float
    payload: bytes | None = field(default=None, repr=False)


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _retrieve(task: asyncio.Future[None]) -> None:
    # Every waiter may have been cancelled (shutdown): the outcome is still taken, never left to
    # "exception was never retrieved".
    if not task.cancelled():
        task.exception()


def _frame_bytes(payload: bytes, count: int, appended_at: float) -> bytes:
    head = struct.pack("<IId", len(payload), count, appended_at)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack("<I", crc) + payload


def _read_frame(fd: int, offset: int, limit: int, *, payload: bool) -> _Frame | None:
    """The valid frame at `offset` (None if short or corrupt). `limit` is the segment's size."""
    if offset + HEADER.size > limit:
        return None
    head = os.pread(fd, HEADER.size, offset)
    if len(head) < HEADER.size:
        return None
    length, count, appended_at, crc = HEADER.unpack(head)
    end = offset + HEADER.size + length
    if length > _MAX_FRAME_BYTES or end > limit:
        return None
    if not payload:
        return _Frame(offset, end, count, appended_at)
    data = os.pread(fd, length, offset + HEADER.size)
    if len(data) < length or zlib.crc32(data, zlib.crc32(head[:16])) != crc:
        return None
    return _Frame(offset, end, count, appended_at, data)


def filesystem_bytes(path: Path) -> int | None:
    """Size of the filesystem holding `path` (None when it cannot be told)."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_blocks * stat.f_frsize or None


class Spool:
    """An append-only, crash-safe queue of line-protocol lines with one read cursor per sink."""

    def __init__(self, directory: str | os.PathLike[str], config: SpoolConfig, sinks: Sequence[str], *,
                 frame_lines: int = 5000, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.config = config
        self.sinks = tuple(sinks)
        self.frame_lines = max(1, frame_lines)
        self.segment_bytes = max(1, min(config.segment_bytes, config.max_bytes // 4))
        self._clock = clock
        self._segments: dict[int, _Segment] = {}
        self._cursors: dict[str, Cursor] = {}
        self._fd: int | None = None
        self._current: _Segment | None = None
        self._read_fds: dict[int, int] = {}
        self._cursor_fds: dict[str, int] = {}
        self._written_seq = 0
        self._synced_seq = 0
        self._sync_task: asyncio.Future[None] | None = None
        self.appended_lines = 0  # since open: lets a drainer wait for "enough new lines"
        self.dropped_lines = 0
        self.last_error: str | None = None
        self._drop_logs = {reason: Throttle() for reason in ("spool_full", "disk_full")}
        self._cursor_log = Throttle()
        self._recovery_log = Throttle()

    # --- open / close --------------------------------------------------------------------------------

    @property
    def _cursor_dir(self) -> Path:
        return self.directory / "cursors"

    def open(self) -> None:
        """Load segments and cursors, cut a torn tail, and open the last segment for appending.

        Works on a full disk: a segment or cursor that cannot be written yet is written by the first
        append or commit that can."""
        self._cursor_dir.mkdir(parents=True, exist_ok=True)
        disk = filesystem_bytes(self.directory)
        if disk is not None:
            self.segment_bytes = max(min(self.segment_bytes, disk // 8), min(self.segment_bytes, MIN_SEGMENT_BYTES))
        for path in self.directory.glob(f"*{SEGMENT_SUFFIX}"):
            try:
                seg_id = int(path.stem)
            except ValueError:
                continue
            self._segments[seg_id] = _Segment(seg_id, path, path.stat().st_size)
        stored: dict[str, Cursor | None] = {name: self._load_cursor(name) for name in self.sinks}
        if self._segments:
            last = self._segments[max(self._segments)]
            self._repair_tail(last)
            self._open_for_append(last)
        else:
            known = [c.segment for c in stored.values() if c is not None]
            self._create_segment(max(known, default=0) + 1)
        assert self._current is not None
        for name, cursor in stored.items():
            if cursor is None:
                self._cursors[name] = Cursor(self._current.id, max(self._current.size, len(MAGIC)))
                self._save_cursor(name)
            else:
                self._cursors[name] = self._normalize(cursor)
                if self._cursors[name] != cursor:
                    self._save_cursor(name)
        self._delete_consumed()

    def close(self) -> None:
        """Persist cursors and close every file (pending fsyncs have their own descriptors)."""
        for name in self._cursors:
            self._save_cursor(name)
        if self._fd is not None:
            if self.config.fsync != "never":
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        for fd in [*self._read_fds.values(), *self._cursor_fds.values()]:
            if self.config.fsync != "never" and fd in self._cursor_fds.values():
                with contextlib.suppress(OSError):
                    os.fsync(fd)
            os.close(fd)
        self._read_fds.clear()
        self._cursor_fds.clear()

    def _cursor_path(self, name: str) -> Path:
        return self._cursor_dir / f"{name}.cursor"

    def _load_cursor(self, name: str) -> Cursor | None:
        path = self._cursor_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) == CURSOR.size:
            segment, offset, crc = CURSOR.unpack(data)
            if zlib.crc32(data[:16]) == crc:
                return Cursor(segment, offset)
        log.warning("spool cursor unreadable, replaying from the oldest segment", sink=name, path=str(path))
        return Cursor(0, 0)

    def _save_cursor(self, name: str) -> None:
        # Overwritten in place (one 20-byte pwrite, no rename: a rename costs ~1 ms on ext4); a torn
        # record fails its CRC at the next open and the sink replays from the oldest segment. A cursor
        # that cannot be written (a full disk refuses the first block of a new cursor file) stays
        # right in memory and is written by the next commit: a crash meanwhile means a replay.
        cursor = self._cursors[name]
        head = struct.pack("<QQ", cursor.segment, cursor.offset)
        try:
            fd = self._cursor_fds.get(name)
            if fd is None:
                fd = self._cursor_fds[name] = os.open(self._cursor_path(name), os.O_RDWR | os.O_CREAT, 0o640)
            os.pwrite(fd, head + struct.pack("<I", zlib.crc32(head)), 0)
            if self.config.fsync == "always":
                os.fsync(fd)
        except OSError as exc:
            if (summary := self._cursor_log.due()) is not None:
                log.warning("spool cursor not saved, kept in memory", sink=name, error=str(exc),
                            failures=summary["occurrences"])

    def _normalize(self, cursor: Cursor) -> Cursor:
        """Clamp a cursor to data that exists: before the oldest segment -> its start; past the end ->
        the end; the end of a sealed segment -> the start of the next one."""
        assert self._current is not None
        first = min(self._segments)
        if cursor.segment < first:
            return Cursor(first, len(MAGIC))
        if cursor.segment > self._current.id:
            return Cursor(self._current.id, max(self._current.size, len(MAGIC)))
        seg = self._segments.get(cursor.segment)
        if seg is None:  # a gap left by a segment that could not be created
            return self._normalize(Cursor(cursor.segment + 1, len(MAGIC)))
        offset = max(min(cursor.offset, seg.size), len(MAGIC))
        if offset >= seg.size and seg.id != self._current.id:
            return self._normalize(Cursor(seg.id + 1, len(MAGIC)))
        return Cursor(seg.id, offset)

    def _repair_tail(self, seg: _Segment) -> None:
        fd = os.open(seg.path, os.O_RDWR)
        try:
            if seg.size < len(MAGIC) or os.pread(fd, len(MAGIC), 0) != MAGIC:
                good = 0
            else:
                good = len(MAGIC)
                while True:
                    frame = _read_frame(fd, good, seg.size, payload=True)
                    if frame is None:
                        break
                    good = frame.end
            if good == 0:
                os.ftruncate(fd, 0)
                with contextlib.suppress(OSError):  # a full disk: the first frame brings the magic
                    os.pwrite(fd, MAGIC, 0)
                    good = len(MAGIC)
            if good < seg.size:
                log.warning("spool tail was torn, cut at the last whole frame", segment=seg.path.name,
                            kept_bytes=good, cut_bytes=seg.size - good)
                os.ftruncate(fd, good)
                os.fsync(fd)
            seg.size = good
        finally:
            os.close(fd)

    def _open_for_append(self, seg: _Segment) -> None:
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        self._current = seg

    def _create_segment(self, seg_id: int) -> None:
        """Start segment `seg_id` as the one being written. Only creating the file can fail: on a full
        disk the magic waits for the first frame."""
        path = self.directory / f"{seg_id:016d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o640)
        size = 0
        try:
            _write_all(fd, MAGIC)
            size = len(MAGIC)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        if self.config.fsync != "never":
            with contextlib.suppress(OSError):
                os.fsync(fd)
                _fsync_dir(self.directory)
        seg = _Segment(seg_id, path, size)
        self._segments[seg_id] = seg
        self._fd = fd
        self._current = seg

    def _close_current(self, *, sync: bool) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if sync and self.config.fsync != "never":
                os.fsync(fd)  # appends still waiting for a group fsync were written here
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        assert self._current is not None
        self._close_current(sync=True)
        self._create_segment(self._current.id + 1)

    # --- appending -----------------------------------------------------------------------------------

    async def append(self, lines: Sequence[str]) -> int:
        """Store `lines` and return their count once they are durable (per `fsync`)."""
        seq = self.write(lines)
        if seq == 0:
            return 0
        try:
            await self._sync(seq)
        except OSError as exc:
            self.last_error = f"fsync: {exc}"
            raise SpoolError(self.last_error, len(lines)) from exc
        return len(lines)

    def write(self, lines: Sequence[str]) -> int:
        """Write the frames to the OS (no fsync); returns a sequence number for `_sync` (0: nothing).

        On a full disk, makes room (`_make_room`) and tries again; raises SpoolError when nothing is
        left to free."""
        lines = [line for line in lines if line]
        if not lines:
            return 0
        now = self._clock()
        frames: list[tuple[bytes, int]] = []
        for start in range(0, len(lines), self.frame_lines):
            chunk = lines[start:start + self.frame_lines]
            payload = "\n".join(chunk).encode("utf-8")
            if payload.count(b"\n") != len(chunk) - 1:
                raise ValueError("a line-protocol line must not contain a newline")
            frames.append((_frame_bytes(payload, len(chunk), now), len(chunk)))
        stored = 0
        index = 0
        while index < len(frames):
            frame, count = frames[index]
            try:
                self._write_frame(frame)
            except OSError as exc:
                if exc.errno in _NO_SPACE and self._try_make_room():
                    continue
                self.appended_lines += stored
                self.last_error = f"write: {exc}"
                raise SpoolError(self.last_error, len(lines) - stored) from exc
            stored += count
            index += 1
        if self.last_error is not None:
            if (summary := self._recovery_log.due()) is not None:  # a disk that flaps: once a minute
                log.info("spool writable again", after=self.last_error, recoveries=summary["occurrences"])
            self.last_error = None
        self.appended_lines += len(lines)
        self._written_seq += 1
        self._enforce_bound()
        return self._written_seq

    def _write_frame(self, frame: bytes) -> None:
        assert self._current is not None
        if self._fd is None or self._current.size >= self.segment_bytes:
            self._rotate()
        assert self._fd is not None and self._current is not None
        start = self._current.size
        data = frame if start else MAGIC + frame
        try:
            _write_all(self._fd, data)
        except OSError:
            # A short write would leave half a frame in the middle of the segment: cut it off.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise
        self._current.size += len(data)

    async def _sync(self, seq: int) -> None:
        if self.config.fsync == "never":
            self._synced_seq = max(self._synced_seq, seq)
            return
        if self.config.fsync == "always":
            # No descriptor: the segment was sealed (fsynced) or dropped since the write.
            if self._fd is not None:
                await asyncio.to_thread(_fsync_and_close, os.dup(self._fd))
            self._synced_seq = max(self._synced_seq, seq)
            return
        while self._synced_seq < seq:
            if self._sync_task is None:
                self._sync_task = asyncio.ensure_future(self._group_sync())
                self._sync_task.add_done_callback(_retrieve)
            await asyncio.shield(self._sync_task)

    async def _group_sync(self) -> None:
        try:
            seq = self._written_seq
            if self._fd is not None:
                await asyncio.to_thread(_fsync_and_close, os.dup(self._fd))
            self._synced_seq = max(self._synced_seq, seq)
        finally:
            self._sync_task = None

    # --- the bounds ----------------------------------------------------------------------------------

    def _enforce_bound(self) -> None:
        while self.bytes_used() > self.config.max_bytes and len(self._segments) > 1:
            self._drop_oldest("spool_full")

    def _try_make_room(self) -> bool:
        try:
            return self._make_room()
        except OSError as exc:  # e.g. no inode left for a new segment
            log.debug("spool could not make room", error=str(exc))
            return False

    def _make_room(self) -> bool:
        """Free space on a full disk: what every sink has sent first (no loss), else the oldest sealed
        segment (its unsent points are dropped). Never the unsent points of the segment being written:
        a sink is about to send them, and dropping them would only trade them for the new ones.
        False: nothing to free."""
        if self._retire_current_if_sent():
            return True
        if len(self._segments) > 1:
            self._drop_oldest("disk_full")
            return True
        return False

    def _unsent_in(self, seg: _Segment) -> int:
        """The most points any sink has not sent from `seg` (the oldest segment)."""
        offsets = [c.offset for c in self._cursors.values() if c.segment == seg.id]
        return self._count_lines(seg, min(offsets)) if offsets else 0

    def _count_dropped(self, reason: str, unsent: int, segment: str) -> None:
        if not unsent:
            return
        self.dropped_lines += unsent
        POINTS_DROPPED.labels(reason=reason).inc(unsent)
        if (summary := self._drop_logs[reason].due(points=unsent)) is not None:
            event = ("spool full: dropped the oldest unsent points" if reason == "spool_full"
                     else "disk full: dropped the oldest unsent points")
            log.error(event, reason=reason, points=summary["points"],
                      segments=summary["occurrences"], last_segment=segment, max_bytes=self.config.max_bytes,
                      directory=str(self.directory))

    def _drop_oldest(self, reason: str) -> None:
        oldest = self._segments[min(self._segments)]
        assert oldest is not self._current
        unsent = self._unsent_in(oldest)
        for name, cursor in self._cursors.items():
            if cursor.segment <= oldest.id:
                self._cursors[name] = self._normalize(Cursor(oldest.id + 1, len(MAGIC)))
                self._save_cursor(name)
        self._remove_segment(oldest)
        self._count_dropped(reason, unsent, oldest.path.name)

    def _retire_current_if_sent(self) -> bool:
        """Every sink has sent the whole segment being written: delete it and start a new one."""
        cur = self._current
        assert cur is not None
        if cur.size <= len(MAGIC):
            return False
        end = Cursor(cur.id, cur.size)
        if any(self._normalize(c) != end for c in self._cursors.values()):
            return False
        self._close_current(sync=False)
        self._create_segment(cur.id + 1)  # before the unlink: a crash in between replays, loses nothing
        new = Cursor(cur.id + 1, len(MAGIC))
        for name in self._cursors:
            self._cursors[name] = new
            self._save_cursor(name)
        self._remove_segment(cur)
        return True

    def _count_lines(self, seg: _Segment, offset: int) -> int:
        total = 0
        fd = os.open(seg.path, os.O_RDONLY)
        try:
            while (frame := _read_frame(fd, offset, seg.size, payload=False)) is not None:
                total += frame.count
                offset = frame.end
        finally:
            os.close(fd)
        return total

    def _remove_segment(self, seg: _Segment) -> None:
        del self._segments[seg.id]
        fd = self._read_fds.pop(seg.id, None)
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()

    def _delete_consumed(self) -> None:
        assert self._current is not None
        floor = min((c.segment for c in self._cursors.values()), default=self._current.id)
        for seg_id in sorted(self._segments):
            if seg_id >= floor or seg_id == self._current.id:
                break
            self._remove_segment(self._segments[seg_id])

    # --- reading -------------------------------------------------------------------------------------

    def _reader(self, seg: _Segment) -> int:
        fd = self._read_fds.get(seg.id)
        if fd is None:
            fd = self._read_fds[seg.id] = os.open(seg.path, os.O_RDONLY)
        return fd

    def read(self, sink: str, max_lines: int) -> Batch | None:
        """Whole frames from `sink`'s cursor, up to `max_lines` lines (at least one frame), or None."""
        assert self._current is not None
        cursor = self._normalize(self._cursors[sink])
        chunks: list[bytes] = []
        count = 0
        first_at = 0.0
        while True:
            seg = self._segments[cursor.segment]
            fd = self._reader(seg)
            frame = _read_frame(fd, cursor.offset, seg.size, payload=True)
            if frame is None:
                if cursor.offset < seg.size:
                    self._skip_corrupt(sink, seg, cursor.offset)
                if seg.id == self._current.id:
                    break
                cursor = self._normalize(Cursor(seg.id + 1, len(MAGIC)))
                continue
            if chunks and count + frame.count > max_lines:
                break
            assert frame.payload is not None
            if not chunks:
                first_at = frame.appended_at
            chunks.append(frame.payload)
            count += frame.count
            cursor = Cursor(seg.id, frame.end)
            if count >= max_lines:
                break
        if not chunks:
            return None
        return Batch(chunks, count, cursor, first_at)

    def _skip_corrupt(self, sink: str, seg: _Segment, offset: int) -> None:
        # Only possible through outside damage (the tail is repaired at open): skip the rest.
        lost = seg.size - offset
        log.error("spool segment damaged, skipping the rest of it", sink=sink, segment=seg.path.name,
                  offset=offset, bytes=lost)
        if seg.id == self._current_id():
            # Never append after garbage: start a fresh segment (or, if the disk refuses one now,
            # at the next append: the damaged one is no longer open for appending).
            with contextlib.suppress(OSError):
                self._rotate()

    def _current_id(self) -> int:
        assert self._current is not None
        return self._current.id

    def commit(self, sink: str, cursor: Cursor) -> None:
        """`sink` has what precedes `cursor`: persist it and delete segments every sink is done with
        (after a failed append, the segment being written too, to make room at once)."""
        current = self._cursors[sink]
        if cursor <= current:
            return
        self._cursors[sink] = max(self._normalize(cursor), current)
        self._save_cursor(sink)
        self._delete_consumed()
        if self.last_error is not None:
            with contextlib.suppress(OSError):
                self._retire_current_if_sent()

    # --- status --------------------------------------------------------------------------------------

    def bytes_used(self) -> int:
        """Bytes of every segment on disk."""
        return sum(seg.size for seg in self._segments.values())

    def pending_bytes(self, sink: str) -> int:
        """Bytes `sink` has not sent yet."""
        cursor = self._cursors[sink]
        total = 0
        for seg in self._segments.values():
            if seg.id > cursor.segment:
                total += max(seg.size - len(MAGIC), 0)
            elif seg.id == cursor.segment:
                total += max(seg.size - cursor.offset, 0)
        return total

    def oldest_unsent_at(self, sink: str | None = None) -> float | None:
        """When the oldest point some sink (or `sink`) has not sent yet was appended; None if none."""
        oldest: float | None = None
        for name in [sink] if sink else self._cursors:
            cursor = self._normalize(self._cursors[name])
            seg = self._segments[cursor.segment]
            frame = _read_frame(self._reader(seg), cursor.offset, seg.size, payload=False)
            if frame is None and seg.id != self._current_id():
                nxt = self._segments.get(seg.id + 1)
                if nxt is not None:
                    frame = _read_frame(self._reader(nxt), len(MAGIC), nxt.size, payload=False)
            if frame is not None and (oldest is None or frame.appended_at < oldest):
                oldest = frame.appended_at
        return oldest

    def cursor(self, sink: str) -> Cursor:
        return self._cursors[sink]

    def segment_count(self) -> int:
        return len(self._segments)
