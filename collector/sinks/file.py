"""The file sink: line protocol appended to a size-rotated file, importable later with
`influx write --format lp --precision ns -f points.lp` (v2 CLI) or, for InfluxDB 1.x, with
`influx -import` after adding its DML header.

It is fed through the spool like every other sink: a line reaches the file only after it is durable
in the spool, and the file sink's spool cursor moves past it only after the file write (and its fsync,
unless `spool.fsync` is `never`). A crash between the two can write the same lines twice; importing
them is harmless (same series and timestamp).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from collector.sinks.base import RetryableError, Sink, WriteOutcome
from collector.sinks.rotating import RotatingFile
from collector.sinks.spool import Batch


class FileSink(Sink):
    """The `file` sink (the Quick start's default)."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backups: int, *, fsync: bool,
                 name: str = "file") -> None:
        self.name = name
        self.file = RotatingFile(path, max_bytes, backups, fsync=fsync)

    async def write(self, batch: Batch) -> WriteOutcome:
        try:
            await self.file.write(batch.body())
        except OSError as exc:
            raise RetryableError("io_error", str(exc)) from exc
        return WriteOutcome(written=batch.count)

    def describe(self) -> Mapping[str, Any]:
        return {"path": str(self.file.path)}
