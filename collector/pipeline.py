"""What one poll does, for every endpoint alike: ask the platform, hand the observations to the
endpoint (fleet state, then points), submit the points to the spool, and hand what changed to the
alert engine. Also builds the poll jobs from the configuration and the endpoint registry. Errors of a
poll are logged and counted here, once per failed poll; they never stop the daemon. An entity the
platform says it does not know (its not-found code, or a card left out of a batch answer) backs off:
it is left out of its jobs for `scheduler.not_found_backoff`, twice as long after each further
not-found answer (up to `scheduler.not_found_backoff_max`), until it answers again."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from collector import metrics
from collector.config import Config
from collector.endpoints import ENDPOINTS
from collector.endpoints.base import ReadEndpoint
from collector.formats import short_duration
from collector.platform.errors import ApiError, PlatformError
from collector.retry import Backoff
from collector.schedule import ASSUMED_SIMS_PER_DEVICE, PollJob, PollOutcome
from collector.state import Change, FleetState

if TYPE_CHECKING:
    from collector.alerts.engine import AlertEngine
    from collector.platform.client import PlatformClient

log = structlog.get_logger("collector.pipeline")

# The fleet state's name of what an endpoint's job walks (the account never backs off).
STATE_KIND = {"device": "device", "card": "sim"}

Submit = Callable[[Sequence[str]], Awaitable[None]]
"""Appends lines to the durable spool and returns once they are durable (`SinkPipeline.submit`)."""


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"code {exc.code}: {exc.platform_message}"
    return str(exc) or type(exc).__name__


class Pipeline:
    """Polls, then fans the observations out to the state, the spool and the alert engine.

    `discovered(kind, ids)`, when set, hears of entities tracked for the first time (SIMs found
    inside a device): the scheduler gives them their first polls."""

    def __init__(self, config: Config, client: PlatformClient, state: FleetState, submit: Submit,
                 alerts: AlertEngine | None = None, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.client = client
        self.state = state
        self.submit = submit
        self.alerts = alerts
        self.clock = clock or time.time
        self.discovered: Callable[[str, Sequence[str]], None] | None = None
        self._rng = random.Random()

    async def poll(self, endpoint: ReadEndpoint[Any], ids: Sequence[str]) -> PollOutcome:
        """One poll of `endpoint` for `ids` (one device, a batch of cards, or none for the account).
        The outcome counts entities: true when every one of them answered."""
        asked = max(len(ids), 1)
        try:
            result = await self.client.fetch(endpoint, ids)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not a platform error: the poll fails, the daemon goes on
            log.error("poll crashed", endpoint=endpoint.name, ids=list(ids)[:10], error=f"{type(exc).__name__}: {exc}")
            metrics.POLLS.labels(endpoint.entity, "error").inc(asked)
            return PollOutcome(asked, failed=asked)
        kind = STATE_KIND.get(endpoint.entity)
        if result.items or not result.failed:
            change = endpoint.observe(self.state, result.items)
            lines = endpoint.points(self.state, result.items, change)
            if lines:
                await self.submit(lines)
            self._hand_over(change)
            metrics.POLLS.labels(endpoint.entity, "ok").inc(len(result.items))
            if self.discovered is not None and kind == "device":
                new = self.state.take_new_sims()
                if new:
                    self.discovered("card", new)
        now = self.clock()
        failed = 0
        not_found: dict[str, str] = {}  # id -> what the platform said
        trace_id = ""
        for chunk, error in result.failed:
            self._hand_over(endpoint.failed(self.state, chunk, describe_error(error), now))
            if kind is not None and self._is_not_found(error) and (kind == "device" or len(chunk) == 1):
                not_found.update(dict.fromkeys(chunk, describe_error(error)))
                trace_id = trace_id or error.trace_id
                continue
            failed += max(len(chunk), 1)
            metrics.POLLS.labels(endpoint.entity, "error").inc(max(len(chunk), 1))
            log.warning("poll failed", endpoint=endpoint.name, kind=endpoint.entity, ids=list(chunk)[:10],
                        count=len(chunk), error=describe_error(error), error_type=type(error).__name__,
                        attempts=error.attempts, trace_id=error.trace_id)
        if kind == "sim" and result.missing and not result.skipped and endpoint.absent_means_unknown:
            # A card left out of a batch answer is one the platform does not know (a record skipped
            # as unreadable would look the same: then nothing is concluded).
            not_found.update(dict.fromkeys(result.missing, "absent from the answer"))
        if kind is not None:
            self._not_found(endpoint, kind, result.items, not_found, now, trace_id)
        return PollOutcome(asked, failed=failed, not_found=len(not_found))

    def _is_not_found(self, error: PlatformError) -> bool:
        return isinstance(error, ApiError) and error.code in self.config.platform.error_codes.not_found

    def _not_found(self, endpoint: ReadEndpoint[Any], kind: str, items: Sequence[Any], not_found: dict[str, str],
                   now: float, trace_id: str) -> None:
        """The back-off of entities the platform does not know: started (or lengthened) for those it
        said so about, ended for those it answered for."""
        answered = [ids[0] for ids in map(endpoint.answers_for, items) if ids]
        for entry in self.state.mark_found(kind, answered):
            log.info("the platform knows this entity again: polled at full rate", kind=kind, id=entry.id,
                     endpoint=endpoint.name, backed_off_for=short_duration(now - entry.since))
        if not not_found:
            return
        metrics.POLLS.labels(endpoint.entity, "not_found").inc(len(not_found))
        settings = self.config.scheduler
        backoff = Backoff(settings.not_found_backoff, settings.not_found_backoff_max)
        error = next(iter(not_found.values()))

        def pause(count: int) -> float:
            return backoff.delay(count, rng=self._rng) or settings.not_found_backoff_max

        started = self.state.mark_not_found(kind, not_found, now, error, pause)
        if started:
            log.warning("the platform does not know these entities: backing off", endpoint=endpoint.name,
                        kind=kind, ids=[e.id for e in started][:10], count=len(started), error=error,
                        next_poll_in=short_duration(min(e.until for e in started) - now), trace_id=trace_id)
        again = len(not_found) - len(started)
        if again:
            log.debug("still unknown to the platform: backing off longer", endpoint=endpoint.name, kind=kind,
                      ids=[i for i in not_found][:10], count=again)

    def _hand_over(self, change: Change) -> None:
        """The changed entities to the alert engine (evaluated at its next flush, in one batch)."""
        if self.alerts is None:
            return
        if change.devices or change.sims:
            self.alerts.submit_change(change)
        if change.account:
            self.alerts.submit("account", ("account",), (self.state.account,))

    def jobs(self) -> list[PollJob]:
        """The enabled poll jobs of the configuration, one per endpoint, with its batch limit. Their
        entities leave out those backing off; the cards' budget counts SIMs not discovered yet."""
        state = self.state

        def planned_cards() -> int:
            known, assumed = state.planned_sims(ASSUMED_SIMS_PER_DEVICE)
            return known + assumed

        entities: dict[str, Callable[[], Sequence[str]]] = {
            "device": lambda: state.due("device", self.clock()),
            "card": lambda: state.due("sim", self.clock()),
            "account": lambda: [],
        }
        planned: dict[str, Callable[[], int] | None] = {"device": None, "card": planned_cards, "account": None}
        return [PollJob(name=endpoint.job, interval=interval, batch_limit=batch_limit,
                        entities=entities[endpoint.entity], poll=functools.partial(self.poll, endpoint),
                        kind=endpoint.entity, planned=planned[endpoint.entity])
                for endpoint, interval, batch_limit in job_plan(self.config)]


def job_plan(config: Config) -> list[tuple[ReadEndpoint[Any], float, int]]:
    """(endpoint, interval, ids per request) of every enabled job: what the scheduler runs and what
    `check-config` budgets. The account takes no id, whatever its batch limit says."""
    specs = config.platform.endpoint_specs()
    return [(endpoint, config.jobs.job(endpoint.job).interval,
             0 if endpoint.entity == "account" else specs[endpoint.name].batch_limit)
            for endpoint in ENDPOINTS.values() if config.jobs.job(endpoint.job).enabled]
