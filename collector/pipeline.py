"""What one poll does: ask the platform, update the fleet state, turn the observation into points for
the spool, and hand the changed entities to the alert engine. Also builds the poll jobs from the
configuration. Errors of one poll are logged and counted here; they never stop the daemon."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from collector import metrics
from collector.config import Config
from collector.platform.endpoints import Endpoint
from collector.platform.errors import ApiError, PlatformError
from collector.schedule import PollJob
from collector.sinks import points
from collector.state import Change, FleetState

if TYPE_CHECKING:
    from collector.alerts.engine import AlertEngine
    from collector.platform.client import PlatformClient

log = structlog.get_logger("collector.pipeline")

Submit = Callable[[Sequence[str]], Awaitable[None]]


# Every poll job: the endpoint it calls and the kind of entity it walks (devices, cards, or the one
# account). The one table both the scheduler's jobs and check-config's request budget come from.
JOB_ENDPOINTS: dict[str, tuple[Endpoint, str]] = {
    "device_status": (Endpoint.DEVICE_INFO, "device"),
    "device_flow": (Endpoint.DEVICE_FLOW, "device"),
    "card_status": (Endpoint.CARD_STATUS, "card"),
    "card_usage": (Endpoint.CARD_USAGE, "card"),
    "card_info": (Endpoint.CARD_INFO, "card"),
    "card_month_usage": (Endpoint.CARD_MONTH_USAGE, "card"),
    "card_actions": (Endpoint.CARD_ACTIONS, "card"),
    "account_assets": (Endpoint.ACCOUNT_ASSETS, "account"),
}


class GroupSubmit:
    """Group commit in front of the spool: lines of polls that finish within `max_delay` of each other
    are appended (and fsynced) as one batch. Each caller still returns only once its own lines are
    durable, so a poll counts as collected exactly as before; the spool just sees one append per
    group instead of one per poll."""

    def __init__(self, submit: Submit, *, max_lines: int = 2000, max_delay: float = 0.01) -> None:
        self._submit = submit
        self._max_lines = max_lines
        self._max_delay = max_delay
        self._lines: list[str] = []
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, lines: Sequence[str]) -> None:
        loop = asyncio.get_running_loop()
        if self._done is None:
            self._done = loop.create_future()
            self._timer = loop.call_later(self._max_delay, self._flush)
        done = self._done
        self._lines.extend(lines)
        if len(self._lines) >= self._max_lines:
            self._flush()
        await asyncio.shield(done)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, done = self._lines, self._done
        self._lines, self._done = [], None
        if done is None:
            return
        task = asyncio.get_running_loop().create_task(self._write(lines, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, lines: list[str], done: asyncio.Future[None]) -> None:
        try:
            await self._submit(lines)
        except BaseException as exc:  # every waiter of the group learns of the failure
            if not done.done():
                done.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if not done.done():
                done.set_result(None)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"code {exc.code}: {exc.platform_message}"
    return str(exc) or type(exc).__name__


class Pipeline:
    """Polls, then fans the observation out to the state, the spool and the alert engine."""

    def __init__(self, config: Config, client: PlatformClient, state: FleetState, submit: Submit,
                 alerts: AlertEngine | None = None, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.client = client
        self.state = state
        self.submit = GroupSubmit(submit)
        self.alerts = alerts
        self.clock = clock or time.time

    # --- fan-out -----------------------------------------------------------------------------------------

    def _evaluate(self, change: Change) -> None:
        """Hand the changed entities to the alert engine (evaluated at its next flush, in one batch)."""
        if self.alerts is None:
            return
        if change.devices or change.sims:
            self.alerts.submit_change(change)
        if change.account:
            self.alerts.submit("account", ("account",), (self.state.account,))

    def _device_lines(self, change: Change) -> list[str | None]:
        lines: list[str | None] = []
        for device_no in change.devices:
            device = self.state.devices[device_no]
            if device.obs is not None:
                lines.append(points.device_point(device.obs, device.labels))
        for iccid in change.sims:
            sim = self.state.sims[iccid]
            if sim.obs is not None:
                lines.append(points.sim_point(sim.obs, sim.labels, usage_rate_bps=sim.usage_rate_bytes_per_second,
                                              effective=sim.effective))
        for event in change.new_events:
            labels = self.state.devices[event.device_no].labels if event.device_no in self.state.devices else {}
            lines.append(points.device_event_point(event, labels))
        return lines

    async def _deliver(self, change: Change, lines: list[str | None], kind: str, count: int) -> bool:
        # A line is None when an observation had no field worth writing.
        ready = [line for line in lines if line is not None]
        if ready:
            await self.submit(ready)
        self._evaluate(change)
        metrics.POLLS.labels(kind, "ok").inc(count)
        return True

    def _failed(self, kind: str, ids: Sequence[str], exc: BaseException) -> bool:
        metrics.POLLS.labels(kind, "error").inc(max(len(ids), 1))
        if isinstance(exc, PlatformError):
            log.warning("poll failed", kind=kind, ids=list(ids)[:10], count=len(ids), error=describe_error(exc),
                        error_type=type(exc).__name__, trace_id=exc.trace_id)
        else:
            log.error("poll crashed", kind=kind, ids=list(ids)[:10], error=f"{type(exc).__name__}: {exc}")
        return False

    # --- polls ----------------------------------------------------------------------------------------------

    async def poll_device(self, endpoint: Endpoint, ids: Sequence[str]) -> bool:
        device_no = ids[0]
        try:
            call = self.client.device_flow if endpoint is Endpoint.DEVICE_FLOW else self.client.device_info
            obs = await call(device_no)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state.record_device_failure(device_no, describe_error(exc), self.clock())
            device = self.state.devices.get(device_no)
            if device is not None:
                self._evaluate(Change(devices=(device_no,), device_records=(device,)))
            return self._failed("device", ids, exc)
        change = self.state.observe_device(obs)
        return await self._deliver(change, self._device_lines(change), "device", 1)

    async def poll_card_status(self, ids: Sequence[str]) -> bool:
        try:
            statuses = await self.client.card_status(list(ids))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed("card", ids, exc)
        change = self.state.observe_card_status(statuses)
        lines: list[str | None] = [points.card_status_point(s, self.state.sims[s.iccid].labels)
                 for s in statuses if s.iccid in self.state.sims]
        return await self._deliver(change, lines, "card", len(statuses))

    async def poll_card_usage(self, ids: Sequence[str]) -> bool:
        try:
            usages = await self.client.card_usage(list(ids))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed("card", ids, exc)
        change = self.state.observe_card_usage(usages)
        lines: list[str | None] = []
        for u in usages:
            sim = self.state.sims.get(u.iccid)
            if sim is not None:
                lines.append(points.card_usage_point(u, sim.labels, usage_rate_bps=sim.usage_rate_bytes_per_second))
        return await self._deliver(change, lines, "card", len(usages))

    async def poll_card_info(self, ids: Sequence[str]) -> bool:
        try:
            sims = await self.client.card_info(list(ids))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed("card", ids, exc)
        change = self.state.observe_card_info(sims)
        lines: list[str | None] = []
        for iccid in change.sims:
            sim = self.state.sims[iccid]
            if sim.obs is not None:
                lines.append(points.sim_point(sim.obs, sim.labels, usage_rate_bps=sim.usage_rate_bytes_per_second,
                                              effective=sim.effective))
        return await self._deliver(change, lines, "card", len(sims))

    async def poll_card_month_usage(self, ids: Sequence[str]) -> bool:
        month = dt.datetime.now(dt.UTC).strftime("%Y%m")
        try:
            usages = await self.client.card_month_usage(list(ids), month)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed("card", ids, exc)
        lines: list[str | None] = [points.card_month_usage_point(u, self.state.sims[u.iccid].labels)
                 for u in usages if u.iccid in self.state.sims]
        return await self._deliver(Change(), lines, "card", len(usages))

    async def poll_card_actions(self, ids: Sequence[str]) -> bool:
        try:
            actions = await self.client.card_actions(list(ids))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed("card", ids, exc)
        lines: list[str | None] = [points.card_action_point(a, self.state.sims[a.iccid].labels)
                 for a in actions if a.iccid in self.state.sims and a.created_at is not None]
        return await self._deliver(Change(), lines, "card", len(actions))

    async def poll_account(self, _ids: Sequence[str]) -> bool:
        try:
            assets = await self.client.account_assets()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed("account", ["account"], exc)
        change = self.state.observe_account(assets)
        return await self._deliver(change, [points.account_point(assets, self.state.account.labels)],
                                   "account", 1)

    # --- jobs -------------------------------------------------------------------------------------------------

    def jobs(self) -> list[PollJob]:
        """The enabled poll jobs of the configuration, with the endpoints' batch limits."""
        cfg, specs = self.config.jobs, self.config.platform.endpoint_specs()

        entities: dict[str, Callable[[], Sequence[str]]] = {
            "device": lambda: list(self.state.devices), "card": self.state.iccids, "account": lambda: []}
        polls: dict[str, Callable[[Sequence[str]], Coroutine[Any, Any, bool]]] = {
            "device_status": lambda ids: self.poll_device(Endpoint.DEVICE_INFO, ids),
            "device_flow": lambda ids: self.poll_device(Endpoint.DEVICE_FLOW, ids),
            "card_status": self.poll_card_status, "card_usage": self.poll_card_usage,
            "card_info": self.poll_card_info, "card_month_usage": self.poll_card_month_usage,
            "card_actions": self.poll_card_actions, "account_assets": self.poll_account,
        }
        jobs = []
        for name, (endpoint, kind) in JOB_ENDPOINTS.items():
            job = getattr(cfg, name)
            if job.enabled:
                jobs.append(PollJob(name=name, interval=job.interval, batch_limit=specs[endpoint].batch_limit,
                                    entities=entities[kind], poll=polls[name]))
        return jobs
