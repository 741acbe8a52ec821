"""Configuration of the sinks and of the durable spool."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, HttpUrl, ValidationInfo, field_validator

from collector.configtypes import ByteSize, Duration, Secret, SecretSection, Section
from collector.formats import human_bytes


class FileSinkConfig(Section):
    """Line protocol appended to a file, rotated by size: importable later with `influx write`."""

    enabled: bool = False
    path: str = "points.lp"
    max_bytes: ByteSize = Field(default=64 * 1024**2, gt=0)
    backups: int = Field(default=5, ge=0)


class InfluxV2Config(SecretSection):
    """InfluxDB v2 write API (/api/v2/write): InfluxDB 2.x, 3.x, Cloud, 1.8+, VictoriaMetrics."""

    secret_fields = ("token",)

    enabled: bool = False
    url: HttpUrl = HttpUrl("http://127.0.0.1:8086")
    org: str = ""
    bucket: str = "iot"
    token: Secret | None = None
    timeout: Duration = Field(default=10.0, gt=0)


class InfluxV1Config(SecretSection):
    """InfluxDB v1 write API (/write?db=&rp=): InfluxDB 1.x before 1.8 (what Debian ships)."""

    secret_fields = ("password",)

    enabled: bool = False
    url: HttpUrl = HttpUrl("http://127.0.0.1:8086")
    database: str = "iot"
    retention_policy: str = ""
    username: str = ""
    password: Secret | None = None
    create_database: bool = True
    timeout: Duration = Field(default=10.0, gt=0)


class SpoolConfig(Section):
    """The on-disk queue in front of every sink: nothing counts as collected until it is here.

    `max_bytes`: past this, whole segments are dropped oldest first (counted and logged); at least
    two segments. `segment_bytes`: size of one segment file (at most a quarter of `max_bytes` and an
    eighth of the filesystem are used). `fsync`: `always` fsyncs every submit on its own; `batch`
    lets concurrent submits share one fsync (each still returns only once on disk); `never` leaves
    it to the OS (a daemon crash loses nothing, a power cut may lose the last seconds). See
    collector/sinks/spool.py."""

    segment_bytes: ByteSize = Field(default=8 * 1024**2, gt=0)
    max_bytes: ByteSize = Field(default=1024**3, gt=0)
    fsync: Literal["always", "batch", "never"] = "batch"

    @field_validator("max_bytes")
    @classmethod
    def _holds_two_segments(cls, value: int, info: ValidationInfo) -> int:
        # A spool of one segment could only make room by deleting the segment being written.
        segment = info.data.get("segment_bytes")
        if isinstance(segment, int) and value < 2 * segment:
            raise ValueError(f"must hold at least two segments (2 x segment_bytes = {human_bytes(2 * segment)}), "
                             f"got {human_bytes(value)}; lower segment_bytes or raise max_bytes")
        return value


class SinksConfig(Section):
    """Every sink; several may be enabled at once."""

    file: FileSinkConfig = FileSinkConfig()
    influxdb_v2: InfluxV2Config = InfluxV2Config()
    influxdb_v1: InfluxV1Config = InfluxV1Config()
    batch_size: int = Field(default=5000, gt=0)
    flush_interval: Duration = Field(default=1.0, gt=0)
    gzip: bool = True
    retry_max_backoff: Duration = Field(default=60.0, gt=0)
    spool: SpoolConfig = SpoolConfig()
