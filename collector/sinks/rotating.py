"""A size-rotated append-only file: the storage of the file sink and of the dead-letter files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


class RotatingFile:
    """Append-only file rotated by size: `path` -> `path.1` -> ... -> `path.<backups>` (oldest deleted).

    A single write larger than `max_bytes` still goes into one (fresh) file."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backups: int, *, fsync: bool) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync

    def _rotate(self) -> None:
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        self.path.with_name(f"{self.path.name}.{self.backups}").unlink(missing_ok=True)
        for index in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{index}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def write_sync(self, data: bytes) -> None:
        """Append `data` as is (rotating first if it would not fit), fsync'd when configured."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes:
            self._rotate()
        with open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    async def write(self, text: bytes) -> None:
        """Append `text` and a newline, in a worker thread."""
        await asyncio.to_thread(self.write_sync, text + b"\n")
