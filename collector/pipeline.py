"""What one poll does, for every endpoint alike: ask the platform, hand the observations to the
endpoint (fleet state, then points), submit the points to the spool, and hand what changed to the
alert engine. Also builds the poll jobs from the configuration and the endpoint registry. Errors of a
poll are logged and counted here, once per failed poll; they never stop the daemon."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from collector import metrics
from collector.config import Config
from collector.endpoints import ENDPOINTS
from collector.endpoints.base import ReadEndpoint
from collector.platform.errors import ApiError
from collector.schedule import PollJob
from collector.state import Change, FleetState

if TYPE_CHECKING:
    from collector.alerts.engine import AlertEngine
    from collector.platform.client import PlatformClient

log = structlog.get_logger("collector.pipeline")

Submit = Callable[[Sequence[str]], Awaitable[None]]
"""Appends lines to the durable spool and returns once they are durable (`SinkPipeline.submit`)."""


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"code {exc.code}: {exc.platform_message}"
    return str(exc) or type(exc).__name__


class Pipeline:
    """Polls, then fans the observations out to the state, the spool and the alert engine."""

    def __init__(self, config: Config, client: PlatformClient, state: FleetState, submit: Submit,
                 alerts: AlertEngine | None = None, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.client = client
        self.state = state
        self.submit = submit
        self.alerts = alerts
        self.clock = clock or time.time

    async def poll(self, endpoint: ReadEndpoint[Any], ids: Sequence[str]) -> bool:
        """One poll of `endpoint` for `ids` (one device, a batch of cards, or none for the account).
        True when every request of it succeeded."""
        try:
            result = await self.client.fetch(endpoint, ids)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not a platform error: the poll fails, the daemon goes on
            log.error("poll crashed", endpoint=endpoint.name, ids=list(ids)[:10], error=f"{type(exc).__name__}: {exc}")
            metrics.POLLS.labels(endpoint.entity, "error").inc(max(len(ids), 1))
            return False
        if result.items or not result.failed:
            change = endpoint.observe(self.state, result.items)
            lines = endpoint.points(self.state, result.items, change)
            if lines:
                await self.submit(lines)
            self._hand_over(change)
            metrics.POLLS.labels(endpoint.entity, "ok").inc(len(result.items))
        for chunk, error in result.failed:
            self._hand_over(endpoint.failed(self.state, chunk, describe_error(error), self.clock()))
            metrics.POLLS.labels(endpoint.entity, "error").inc(max(len(chunk), 1))
            log.warning("poll failed", endpoint=endpoint.name, kind=endpoint.entity, ids=list(chunk)[:10],
                        count=len(chunk), error=describe_error(error), error_type=type(error).__name__,
                        attempts=error.attempts, trace_id=error.trace_id)
        return not result.failed

    def _hand_over(self, change: Change) -> None:
        """The changed entities to the alert engine (evaluated at its next flush, in one batch)."""
        if self.alerts is None:
            return
        if change.devices or change.sims:
            self.alerts.submit_change(change)
        if change.account:
            self.alerts.submit("account", ("account",), (self.state.account,))

    def jobs(self) -> list[PollJob]:
        """The enabled poll jobs of the configuration, one per endpoint, with its batch limit."""
        entities: dict[str, Callable[[], Sequence[str]]] = {
            "device": lambda: list(self.state.devices), "card": self.state.iccids, "account": lambda: []}
        return [PollJob(name=endpoint.job, interval=interval, batch_limit=batch_limit,
                        entities=entities[endpoint.entity], poll=functools.partial(self.poll, endpoint))
                for endpoint, interval, batch_limit in job_plan(self.config)]


def job_plan(config: Config) -> list[tuple[ReadEndpoint[Any], float, int]]:
    """(endpoint, interval, ids per request) of every enabled job: what the scheduler runs and what
    `check-config` budgets. The account takes no id, whatever its batch limit says."""
    specs = config.platform.endpoint_specs()
    return [(endpoint, config.jobs.job(endpoint.job).interval,
             0 if endpoint.entity == "account" else specs[endpoint.name].batch_limit)
            for endpoint in ENDPOINTS.values() if config.jobs.job(endpoint.job).enabled]
