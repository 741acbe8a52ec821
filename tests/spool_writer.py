"""A tiny collector stand-in for the SIGKILL test: submits numbered points through SinkPipeline
(InfluxDB v1 + the file sink) and appends the last number acknowledged as spooled to an ack file.
Started again on the same state dir, it resumes after the last acknowledged number.

    python -m tests.spool_writer --state-dir D --url U --db DB --total N --acks F --file P
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from influxdb_client import Point

from collector.sinks.config import SinksConfig
from collector.sinks.pipeline import SinkPipeline

BASE_NS = 1_700_000_000_000_000_000
STEP = 10


def point(n: int) -> str:
    """The one line of number n: the same bytes every time it is built."""
    return str(Point("sigkill").tag("writer", "w1").field("n", n).time(BASE_NS + n * 1_000_000).to_line_protocol())


def last_acked(path: Path) -> int:
    try:
        numbers = [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return -1
    return max(numbers, default=-1)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--acks", required=True)
    parser.add_argument("--file", required=True)
    args = parser.parse_args()
    config = SinksConfig.model_validate({
        "influxdb_v1": {"enabled": True, "url": args.url, "database": args.db},
        "file": {"enabled": True, "path": args.file, "max_bytes": 1 << 30},
        "batch_size": 200, "flush_interval": 0.05, "retry_max_backoff": 0.5,
        "spool": {"fsync": "batch", "segment_bytes": 16 * 1024},
    })
    pipeline = SinkPipeline(config, args.state_dir)
    await pipeline.start()
    acks = Path(args.acks)
    with open(acks, "a") as out:  # noqa: ASYNC230 - the ack log must be written in order, synchronously
        for start in range(last_acked(acks) + 1, args.total, STEP):
            numbers = range(start, min(start + STEP, args.total))
            await pipeline.submit([point(n) for n in numbers])
            out.write(f"{numbers[-1]}\n")
            out.flush()  # in the page cache: survives SIGKILL of this process
            await asyncio.sleep(0.002)
    drained = await pipeline.flush(timeout=60)
    await pipeline.stop(timeout=5)
    print("drained" if drained else "not drained", flush=True)
    raise SystemExit(0 if drained else 1)


if __name__ == "__main__":
    asyncio.run(main())
