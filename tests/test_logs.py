"""Records of other libraries, logged with the standard `logging` module, come out like the
collector's own: JSON lines with the same keys and the logger's name, secrets redacted, the journal
priority in front on journald's stream; text stays readable (Chinese as is), and a line that
cannot be encoded is escaped rather than lost."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from collector.logs import configure_logging, register_secret


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[TextIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with (tmp_path / "stdout").open("w+", encoding="utf-8") as f:
        yield f
    structlog.reset_defaults()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def lines(stream: TextIO) -> list[str]:
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


def test_library_records_are_json_lines_like_the_collectors_own(stream: TextIO) -> None:
    register_secret("Lib-Secret-123")
    configure_logging("info", "json", stream)
    structlog.get_logger("collector.test").warning("platform said", error="code 40404: 设备不存在")
    logging.getLogger("apscheduler.scheduler").warning("Execution of job %s skipped", "device_status")
    logging.getLogger("apprise").warning("Failed to send to json://user:Lib-Secret-123@host/")
    logging.getLogger("httpx").info("HTTP Request: POST /openapi/iot/queryDeviceFlow")  # below warning: quiet
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    own, scheduler, apprise, aiohttp = (json.loads(line) for line in lines(stream))
    assert own["error"] == "code 40404: 设备不存在"
    assert scheduler == {"event": "Execution of job device_status skipped", "logger": "apscheduler.scheduler",
                         "level": "warning", "timestamp": scheduler["timestamp"]}
    assert apprise["event"] == "Failed to send to json://user:<redacted>@host/"
    assert aiohttp["level"] == "error" and "ValueError: boom" in aiohttp["exception"]
    assert "设备不存在" in lines(stream)[0]  # as written, not \u8bbe\u5907


def test_library_records_on_the_journal_stream_carry_their_priority(stream: TextIO,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    configure_logging("info", "json", stream)
    logging.getLogger("apscheduler.scheduler").warning("skipped")
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    warning, error = lines(stream)
    assert warning.startswith("<4>{") and json.loads(warning[3:])["logger"] == "apscheduler.scheduler"
    assert error.startswith("<3>{") and json.loads(error[3:])["level"] == "error"


def test_text_that_cannot_be_encoded_is_escaped_not_lost(stream: TextIO) -> None:
    configure_logging("info", "json", stream)
    structlog.get_logger("collector.test").warning("odd name", name="bad \ud800 surrogate", other="设备")
    (line,) = lines(stream)
    record = json.loads(line)
    assert record["name"] == "bad \ud800 surrogate" and record["other"] == "设备"
