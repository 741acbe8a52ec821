"""The periodic summary line (`logging.summary_interval`, 5 minutes by default): what the collector
did since the previous one, at info, so a terminal or the journal shows progress without scraping
/metrics. Read from the collector's own counters, so it says what /metrics says."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from prometheus_client import Counter

from collector import metrics
from collector.formats import human_bytes, short_duration

log = structlog.get_logger("collector.summary")


def _totals(counter: Counter, label: str) -> dict[str, float]:
    """A counter's value summed by one of its labels."""
    out: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _delta(now: Mapping[str, float], before: Mapping[str, float]) -> dict[str, int]:
    return {key: round(value - before.get(key, 0.0)) for key, value in now.items()}


class Summary:
    """Counts since the previous summary. `line(facts)` returns the fields of the next line; `facts`
    adds what the counters do not hold (alerts firing, the spool's backlog)."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> dict[str, dict[str, float]]:
        return {
            "polls": _totals(metrics.POLLS, "outcome"),
            "requests": _totals(metrics.UPSTREAM_REQUESTS, "outcome"),
            "collected": _totals(metrics.POINTS_COLLECTED, ""),
            "written": _totals(metrics.POINTS_WRITTEN, "sink"),
            "dropped": _totals(metrics.POINTS_DROPPED, "reason"),
        }

    def line(self, period: float, facts: Mapping[str, Any]) -> dict[str, Any]:
        now = self._read()
        d = {key: _delta(now[key], self._last.get(key, {})) for key in now}
        self._last = now
        polls, requests = d["polls"], d["requests"]
        fields: dict[str, Any] = {
            "period": short_duration(period),
            "polls_ok": polls.get("ok", 0), "polls_failed": polls.get("error", 0),
            "polls_not_found": polls.get("not_found", 0),
            "requests_per_second": round(sum(requests.values()) / period, 2) if period > 0 else 0.0,
            "points_collected": sum(d["collected"].values()),
            "points_written": d["written"],
        }
        dropped = sum(d["dropped"].values())
        if dropped:
            fields["points_dropped"] = dropped
        spool = facts.get("spool_bytes")
        fields["alerts_firing"] = facts.get("alerts_firing", 0)
        fields["spool_backlog"] = human_bytes(spool) if spool else "0 B"
        oldest = facts.get("spool_oldest_age_seconds")
        if spool and oldest:
            fields["spool_oldest"] = short_duration(oldest)
        return fields


async def log_summaries(interval: float, facts: Callable[[], Mapping[str, Any]]) -> None:
    """Log a summary every `interval` seconds until cancelled."""
    summary = Summary()
    while True:
        await asyncio.sleep(interval)
        try:
            log.info("summary", **summary.line(interval, facts()))
        except Exception as exc:  # a summary must never take the daemon down
            log.warning("summary failed", error=f"{type(exc).__name__}: {exc}")
