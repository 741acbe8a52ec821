"""The failure-mode table of docs/operations.md says what the code does: every reason the sinks count
dropped points under, and every log line it names, exist in the code."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "operations.md"


def failure_table() -> list[list[str]]:
    text = DOC.read_text()
    section = text.split("## Failure modes", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| **")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def code() -> str:
    return "\n".join(p.read_text() for p in (REPO / "collector").rglob("*.py"))


def test_every_failure_row_says_what_happens_what_shows_and_how_it_recovers() -> None:
    rows = failure_table()
    assert len(rows) >= 6
    assert all(len(row) == 4 and all(row) for row in rows)


def test_every_drop_reason_of_the_sinks_is_in_the_table() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "collector" / "sinks").glob("*.py"))
    reasons = set(re.findall(r'POINTS_DROPPED\.labels\(reason="(\w+)"\)', source))
    reasons |= set(re.findall(r'_count_dropped\("(\w+)"', source)) | set(re.findall(r'_drop_oldest\("(\w+)"', source))
    table = "\n".join(" ".join(row) for row in failure_table())
    documented = set(re.findall(r'reason="(\w+)"', table))
    assert reasons - {"no_sink"} <= documented, reasons - documented


def test_every_log_line_the_table_names_is_logged_by_the_code() -> None:
    table = "\n".join(" ".join(row) for row in failure_table())
    named = re.findall(r'"([^"`]+)"', re.sub(r"`[^`]*`", "", table))  # log events are quoted, code is in backticks
    assert len(named) >= 10
    source = code()
    missing = [event for event in named if event not in source]
    assert not missing, missing
