"""Log lines on journald's stream carry their syslog priority (`<4>{...json...}`), which journald
strips and records as PRIORITY; on any other stream (a redirect to a file, a pipe) the JSON lines
stay bare. The stream is told apart by $JOURNAL_STREAM, as systemd sets it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from collector.logs import configure_logging


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[TextIO]:
    with (tmp_path / "stdout").open("w+") as f:
        yield f
    structlog.reset_defaults()


def log_lines(stream: TextIO) -> list[str]:
    log = structlog.get_logger("test")
    log.info("polled", devices=3)
    log.warning("sink down", sink="influxdb_v1")
    log.error("spool not writable")
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


def test_lines_on_the_journal_stream_start_with_their_priority(stream: TextIO,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    configure_logging("info", "json", stream)
    lines = log_lines(stream)
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>"]
    records = [json.loads(line[3:]) for line in lines]
    assert [(r["event"], r["level"]) for r in records] == [("polled", "info"), ("sink down", "warning"),
                                                           ("spool not writable", "error")]


def test_lines_elsewhere_are_bare_json(stream: TextIO, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # systemd's stream is another file: stdout was redirected (`iot-collector run > file` in a unit).
    other = os.stat(tmp_path)
    monkeypatch.setenv("JOURNAL_STREAM", f"{other.st_dev}:{other.st_ino}")
    configure_logging("info", "json", stream)
    assert [json.loads(line)["level"] for line in log_lines(stream)] == ["info", "warning", "error"]
    monkeypatch.delenv("JOURNAL_STREAM")
    configure_logging("info", "json", stream)
    assert all(line.startswith("{") for line in log_lines(stream))
