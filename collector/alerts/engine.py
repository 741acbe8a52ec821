"""The alert engine: evaluates compiled rules against entity fields, runs each (rule, entity) pair
through inactive -> pending -> firing -> resolved, persists that state, and hands firing and resolved
alerts to the notifiers.

- `evaluate(kind, key, record, now)` is the hot path, called for every entity an observation
  changed, with the entity's state object as the record (no dict of fields is built: rules read
  the fields they use through `collector.state.FIELDS`): one closure call per rule of that kind, plus
  a dict lookup; nothing else unless the alert changes state.
- `sweep(now, lookup)` runs on a timer: pending alerts whose `for` has elapsed fire, firing alerts
  kept by `keep_firing_for` resolve, and rules over clock-dependent fields (`TIME_FIELDS`) are
  re-evaluated for every known entity.
- Hysteresis: with a `clear` condition, an active alert (pending or firing) stays active until
  `clear` holds; without one, until `condition` stops holding.
- Every transition is counted (ALERT_TRANSITIONS), written as an `alerts` point (best effort, never
  blocking) and makes the state dirty; the state file `<state_dir>/alerts/state.json` is rewritten
  atomically shortly after, and at stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import structlog

from collector import metrics
from collector.alerts.alert import FIRING, INACTIVE, PENDING, RESOLVED, Alert, alert_id
from collector.alerts.config import AlertsConfig
from collector.alerts.expr import any_test
from collector.alerts.notifiers import Receiver, build_receiver
from collector.alerts.rules import Rule
from collector.alerts.silences import SilenceBook
from collector.logs import redact_text, register_secret
from collector.sinks.points import alert_point

log = structlog.get_logger("collector.alerts")

STATE_VERSION = 1
TICK_SECONDS = 0.25  # how often due groups are flushed and points handed to the sinks
SAVE_MIN_INTERVAL = 1.0  # at most one state write per this many seconds while things change
MAX_BUFFERED_POINTS = 100_000
# Alert labels already carried by the point's own tags (rule, kind, severity, entity).
_NONE: Mapping[str, Alert] = {}
_POINT_TAGS_SKIPPED = frozenset({"alertname", "kind", "severity", "device_no", "iccid"})
WritePoints = Callable[[list[str]], Awaitable[None]]
Lookup = Callable[[str, str], Any]  # (kind, key) -> the entity's record, or None


class _Slot:
    """A rule at run time: its compiled closures and the alerts it has, by entity key."""

    __slots__ = ("clear", "cond", "rule", "states")

    def __init__(self, rule: Rule, states: dict[str, Alert] | None = None) -> None:
        self.rule = rule
        self.cond = rule.condition.fn
        self.clear = rule.clear.fn if rule.clear is not None else None
        self.states: dict[str, Alert] = states if states is not None else {}


class _Plan:
    """The rules of one entity kind, and the active alerts of each entity of that kind, by rule name:
    the hot path only evaluates conditions for entities without any, which are nearly all of them.

    For those, the conditions made of `field <op> constant` tests are screened first: one closure
    over all their (getter, test) pairs, of which one at least passes whenever such a condition
    holds (`Compiled.screen`), without a call per rule; the other conditions are called. Only an
    entity that passes goes on to the exact evaluation of every rule."""

    __slots__ = ("active", "exact", "known", "screen", "slots")

    def __init__(self, slots: list[_Slot], known: set[str] | None) -> None:
        self.slots = slots
        tests = tuple(p for s in slots if s.rule.condition.screen for p in s.rule.condition.screen)
        self.screen = any_test(tests) if tests else None
        self.exact = tuple(s.cond for s in slots if not s.rule.condition.screen)
        self.active: dict[str, dict[str, Alert]] = {}
        self.known = known  # entity keys, kept only when a rule of this kind is clock-dependent


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader (or a crash) sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _external_url(config: AlertsConfig) -> str:
    return (config.external_url or f"http://{socket.gethostname()}:9108").rstrip("/")


class AlertEngine:
    """Rules, alert state, silences and notifiers of one collector."""

    def __init__(self, config: AlertsConfig, state_dir: str | Path, *, write_points: WritePoints | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.path = Path(state_dir) / "alerts" / "state.json"
        self.write_points = write_points if config.write_points else None
        self.clock = clock
        self.external_url = _external_url(config)
        self.silences = SilenceBook(config.silences, config.maintenance_windows)
        self._slots: dict[str, _Slot] = {}
        self._plans: dict[str, _Plan] = {}
        self._time_slots: dict[str, list[_Slot]] = {}
        self._known: dict[str, set[str]] = {}
        self._pending: dict[str, Alert] = {}
        self._clearing: dict[str, Alert] = {}
        self._firing: dict[str, Alert] = {}
        self.receivers: dict[str, Receiver] = {}
        self._points: list[tuple[Any, ...]] = []
        self._counters: dict[tuple[str, str], Any] = {}
        self._dirty = False
        self._last_save = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._write_tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self.eval_errors = 0
        self._install_rules(config.compiled_rules(), {})
        self._build_receivers(config, {})

    # --- set-up -------------------------------------------------------------------------------------------

    def _install_rules(self, rules: list[Rule], states: Mapping[str, dict[str, Alert]]) -> None:
        self._slots = {r.name: _Slot(r, states.get(r.name)) for r in rules}
        by_kind: dict[str, list[_Slot]] = {}
        self._time_slots = {}
        for slot in self._slots.values():
            by_kind.setdefault(slot.rule.kind, []).append(slot)
            if slot.rule.time_based:
                self._time_slots.setdefault(slot.rule.kind, []).append(slot)
        for kind in self._time_slots:
            self._known.setdefault(kind, set())
        self._plans = {kind: _Plan(slots, self._known.get(kind) if kind in self._time_slots else None)
                       for kind, slots in by_kind.items()}
        self._reindex()

    def _reindex(self) -> None:
        """Rebuild the per-kind index of entities with active alerts from the rules' states."""
        for plan in self._plans.values():
            plan.active = {}
            for slot in plan.slots:
                for key, alert in slot.states.items():
                    plan.active.setdefault(key, {})[slot.rule.name] = alert

    def _build_receivers(self, config: AlertsConfig, keep: Mapping[str, Receiver]) -> None:
        receivers: dict[str, Receiver] = {}
        for cfg in config.notifiers:
            old = keep.get(cfg.name)
            if old is not None and old.config == cfg:
                receivers[cfg.name] = old
                continue
            receivers[cfg.name] = build_receiver(cfg, self)
            if old is not None:  # reconfigured: carry over what it still had to say
                with contextlib.suppress(Exception):
                    if old.type == cfg.type:
                        receivers[cfg.name].restore(old.snapshot())
        for cfg in config.notifiers:
            for secret in (getattr(cfg, "secret", None), getattr(cfg, "password", None), *getattr(cfg, "urls", ())):
                if secret is not None:
                    register_secret(secret.get_secret_value())
        self.receivers = receivers

    # --- context for notifiers ----------------------------------------------------------------------------

    def get_alert(self, alert_id_: str) -> Alert | None:
        rule, _, key = alert_id_.partition("/")
        slot = self._slots.get(rule)
        return None if slot is None else slot.states.get(key)

    def silenced_by(self, labels: Mapping[str, str], now: float) -> str | None:
        return self.silences.silenced_by(labels, now) if self.silences else None

    # --- evaluation (hot path) ------------------------------------------------------------------------------

    def evaluate(self, kind: str, key: str, record: Any, now: float) -> None:
        """Evaluate every rule of `kind` for one entity whose fields just changed."""
        plan = self._plans.get(kind)
        if plan is None:
            return
        if plan.known is not None:
            plan.known.add(key)
        mine: Mapping[str, Alert] | None = plan.active.get(key)
        if mine is None:
            # Fast path, nearly every entity: no active alert, so nothing to do unless a condition
            # may hold (or fails to evaluate): then the careful path below runs.
            try:
                if plan.screen is None or not plan.screen(record, now):
                    for cond in plan.exact:
                        if cond(record, now):
                            break
                    else:
                        return
            except Exception:
                pass
            mine = _NONE
        self._evaluate_slots(plan.slots, key, record, now, mine)

    def _evaluate_slots(self, slots: Iterable[_Slot], key: str, record: Any, now: float,
                        mine: Mapping[str, Alert]) -> None:
        """The careful path: every rule, with the entity's active alerts (`mine`, by rule name)."""
        for slot in slots:
            try:
                holds = slot.cond(record, now)
            except Exception:
                holds = False
                self.eval_errors += 1
            alert = mine.get(slot.rule.name)
            if alert is None:
                if holds:
                    self._activate(slot, key, record, now)
            elif holds and alert.state == FIRING and alert.cleared_since is None:
                alert.last_held = now  # still firing: the common case for an active entity
            else:
                self._update(slot, alert, holds, record, now)

    def _update(self, slot: _Slot, alert: Alert, holds: Any, record: Any, now: float) -> None:
        if not holds and slot.clear is not None:
            try:
                holds = not slot.clear(record, now)  # between condition and clear: still active
            except Exception:
                holds = True
                self.eval_errors += 1
        rule = slot.rule
        if holds:
            alert.last_held = now
            if alert.cleared_since is not None:
                alert.cleared_since = None
                self._clearing.pop(alert.id, None)
            if alert.state == PENDING and now - alert.active_since >= rule.for_:
                self._fire(slot, alert, record, now)
            return
        if alert.state == PENDING:
            self._deactivate(slot, alert, now)
        elif rule.keep_firing_for > 0 and now - alert.last_held < rule.keep_firing_for:
            if alert.cleared_since is None:
                alert.cleared_since = now
                self._clearing[alert.id] = alert
                self._dirty = True
        else:
            self._resolve(slot, alert, now)

    # --- transitions ------------------------------------------------------------------------------------------

    def _activate(self, slot: _Slot, key: str, record: Any, now: float) -> None:
        rule = slot.rule
        alert = Alert(rule=rule.name, kind=rule.kind, key=key, state=PENDING, active_since=now,
                      labels=rule.alert_labels(key, record), annotations=rule.render(record, now), last_held=now,
                      value=rule.current_value(record, now))
        slot.states[key] = alert
        self._index(alert, True)
        if rule.for_ <= 0:
            self._fire(slot, alert, None, now)  # annotations and value are those just computed
            return
        self._pending[alert.id] = alert
        self._transition(alert, PENDING, now)

    def _fire(self, slot: _Slot, alert: Alert, record: Any, now: float) -> None:
        self._pending.pop(alert.id, None)
        alert.state = FIRING
        alert.fired_at = now
        if record is not None:
            alert.annotations = slot.rule.render(record, now)
            alert.value = slot.rule.current_value(record, now)
        self._firing[alert.id] = alert
        self._transition(alert, FIRING, now)
        for receiver in self.receivers.values():
            if receiver.accepts(alert.labels):
                receiver.firing(alert, now)

    def _index(self, alert: Alert, active: bool) -> None:
        """Keep the per-entity index of active alerts (`_Plan.active`) in step with the rules' states."""
        plan = self._plans.get(alert.kind)
        if plan is None:
            return
        if active:
            plan.active.setdefault(alert.key, {})[alert.rule] = alert
            return
        mine = plan.active.get(alert.key)
        if mine is not None:
            mine.pop(alert.rule, None)
            if not mine:
                del plan.active[alert.key]

    def _resolve(self, slot: _Slot, alert: Alert, now: float) -> None:
        if slot.states.pop(alert.key, None) is not None:
            self._index(alert, False)
        self._clearing.pop(alert.id, None)
        self._firing.pop(alert.id, None)
        alert.resolved_at = now
        self._transition(alert, RESOLVED, now)
        for receiver in self.receivers.values():
            if receiver.accepts(alert.labels):
                receiver.resolved(alert, now)

    def _deactivate(self, slot: _Slot, alert: Alert, now: float) -> None:
        if slot.states.pop(alert.key, None) is not None:
            self._index(alert, False)
        self._pending.pop(alert.id, None)
        self._transition(alert, INACTIVE, now)

    def _transition(self, alert: Alert, to: str, now: float) -> None:
        counter = self._counters.get((alert.rule, to))
        if counter is None:
            counter = self._counters[(alert.rule, to)] = metrics.ALERT_TRANSITIONS.labels(alert.rule, to)
        counter.inc()
        self._dirty = True
        if self.write_points is not None and len(self._points) < MAX_BUFFERED_POINTS:
            # The line is built later, off the hot path (labels and annotations are never mutated).
            self._points.append((alert.rule, to, now, alert.kind, alert.key, alert.labels, alert.value,
                                 alert.annotations.get("summary", "")))

    @staticmethod
    def _lines(records: list[tuple[Any, ...]]) -> list[str]:
        lines = []
        for rule, to, at, kind, key, labels, value, summary in records:
            lines.append(alert_point(
                rule=rule, state=to, at=at, severity=labels.get("severity", ""), kind=kind, entity=key,
                labels={k: v for k, v in labels.items() if k not in _POINT_TAGS_SKIPPED}, value=value,
                summary=summary))
        return lines

    # --- timers ---------------------------------------------------------------------------------------------

    def sweep(self, now: float, lookup: Lookup) -> None:
        """Time-based transitions: `for` elapsed, `keep_firing_for` over, clock-dependent rules."""
        started = time.perf_counter()
        for kind, slots in self._time_slots.items():
            active = self._plans[kind].active
            for key in list(self._known.get(kind, ())):
                record = lookup(kind, key)
                if record is not None:
                    self._evaluate_slots(slots, key, record, now, active.get(key, _NONE))
        for alert in list(self._pending.values()):
            pslot = self._slots.get(alert.rule)
            if pslot is None or now - alert.active_since < pslot.rule.for_:
                continue
            record = lookup(alert.kind, alert.key)
            if record is None:  # nothing fresher: the last evaluation still stands
                self._fire(pslot, alert, None, now)
                continue
            try:
                holds = pslot.cond(record, now)
            except Exception:
                holds = False
            self._update(pslot, alert, holds, record, now)
        for alert in list(self._clearing.values()):
            cslot = self._slots.get(alert.rule)
            if cslot is not None and now - alert.last_held >= cslot.rule.keep_firing_for:
                self._resolve(cslot, alert, now)
        if self.silences.expire(now):
            self._dirty = True
        metrics.ALERT_EVAL_DURATION.observe(time.perf_counter() - started)

    def forget(self, kind: str, key: str, now: float) -> None:
        """The entity left the inventory: its firing alerts resolve, its pending ones are dropped."""
        known = self._known.get(kind)
        if known is not None:
            known.discard(key)
        plan = self._plans.get(kind)
        for slot in plan.slots if plan is not None else ():
            alert = slot.states.get(key)
            if alert is None:
                continue
            if alert.state == FIRING:
                self._resolve(slot, alert, now)
            else:
                self._deactivate(slot, alert, now)

    def tick(self, now: float | None = None) -> None:
        """Flush notification groups that are due (the background loop calls this every 0.25 s)."""
        now = self.clock() if now is None else now
        for receiver in self.receivers.values():
            receiver.tick(now)

    # --- views ------------------------------------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        return [a for slot in self._slots.values() for a in slot.states.values()]

    def active(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, JSON-able, firing first then by severity and age."""
        now = self.clock()
        order = {"critical": 0, "warning": 1, "info": 2}
        alerts = sorted(self.alerts(), key=lambda a: (a.state != FIRING, order.get(a.labels.get("severity", ""), 3),
                                                      a.active_since, a.id))
        return [a.public(self.silenced_by(a.labels, now)) for a in alerts]

    def rules(self) -> list[Rule]:
        return [s.rule for s in self._slots.values()]

    # --- silences ---------------------------------------------------------------------------------------------

    def add_silence(self, matchers: Iterable[str], starts_at: float | None, ends_at: float, comment: str,
                    created_by: str) -> str:
        now = self.clock()
        sid = self.silences.add(matchers, now if starts_at is None else starts_at, ends_at, comment, created_by, now)
        self._dirty = True
        log.info("silence added", id=sid, matchers=list(matchers), ends_at=ends_at, created_by=created_by)
        return sid

    def remove_silence(self, silence_id: str) -> None:
        """Raises KeyError when unknown, SilenceError when defined in the configuration."""
        self.silences.remove(silence_id)
        self._dirty = True
        log.info("silence removed", id=silence_id)

    def list_silences(self) -> list[dict[str, Any]]:
        return self.silences.describe(self.clock())

    # --- reload -----------------------------------------------------------------------------------------------

    def reload(self, config: AlertsConfig) -> None:
        """New rules, notifiers and silences. Alerts of a rule whose name, kind, severity and labels are
        unchanged keep their state; the others resolve (firing) or are dropped (pending)."""
        now = self.clock()
        new_rules = {r.name: r for r in config.compiled_rules()}
        kept: dict[str, dict[str, Alert]] = {}
        for name, slot in list(self._slots.items()):
            new = new_rules.get(name)
            if new is not None and new.identity == slot.rule.identity:
                kept[name] = slot.states
                continue
            for alert in list(slot.states.values()):
                if alert.state == FIRING:
                    self._resolve(slot, alert, now)
                else:
                    self._deactivate(slot, alert, now)
        self._install_rules(list(new_rules.values()), kept)
        self._pending = {a.id: a for a in self.alerts() if a.state == PENDING}
        self._clearing = {a.id: a for a in self.alerts() if a.cleared_since is not None}
        self._firing = {a.id: a for a in self.alerts() if a.state == FIRING}
        old_receivers = self.receivers
        self.config = config
        self.write_points = self.write_points if config.write_points else None
        self.external_url = _external_url(config)
        self.silences.configure(config.silences, config.maintenance_windows)
        self._build_receivers(config, old_receivers)
        for name, receiver in old_receivers.items():
            if self.receivers.get(name) is not receiver and self._started:
                task = asyncio.get_running_loop().create_task(receiver.stop(5.0))
                self._write_tasks.add(task)
                task.add_done_callback(self._write_tasks.discard)
        self._announce(now)
        if self._started:
            for receiver in self.receivers.values():
                receiver.start()
        self._dirty = True
        log.info("alert rules reloaded", rules=len(self._slots), notifiers=list(self.receivers))

    def _announce(self, now: float) -> None:
        """Make sure each notifier knows every firing alert routed to it (new notifier, restart)."""
        for alert in self._firing.values():
            for receiver in self.receivers.values():
                if receiver.accepts(alert.labels):
                    receiver.firing(alert, now)

    # --- persistence ------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "saved_at": self.clock(),
            "rules": {name: slot.rule.identity for name, slot in self._slots.items()},
            "alerts": [a.to_json() for a in self.alerts()],
            "silences": self.silences.snapshot(),
            "notifiers": {name: r.snapshot() for name, r in self.receivers.items()},
        }

    def save(self) -> None:
        """Write the state file now (atomically)."""
        data = orjson.dumps(self.snapshot())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, data)
        self._dirty = False
        for receiver in self.receivers.values():
            receiver.dirty = False
        self._last_save = time.monotonic()

    def _needs_save(self) -> bool:
        return self._dirty or any(r.dirty for r in self.receivers.values())

    def load(self) -> None:
        """Restore alerts, silences and notifier queues from the state file, if any."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            data = orjson.loads(raw)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state version {data.get('version')!r}")
        except (ValueError, AttributeError) as exc:
            broken = self.path.with_name(f"state.json.broken-{int(time.time())}")
            os.replace(self.path, broken)
            log.error("alert state unreadable, starting afresh", path=str(self.path), moved_to=str(broken),
                      error=str(exc))
            return
        now = self.clock()
        self.silences.restore(data.get("silences") or ())
        for name, snap in (data.get("notifiers") or {}).items():
            receiver = self.receivers.get(name)
            if receiver is not None and isinstance(snap, dict) and snap.get("type") == receiver.type:
                receiver.restore(snap)
        orphans: list[Alert] = []
        identities = data.get("rules") or {}
        for item in data.get("alerts") or ():
            try:
                alert = Alert.from_json(item)
            except (KeyError, TypeError, ValueError):
                continue
            slot = self._slots.get(alert.rule)
            if slot is None or identities.get(alert.rule, slot.rule.identity) != slot.rule.identity:
                orphans.append(alert)  # rule gone, or relabelled while we were down (as reload does)
                continue
            slot.states[alert.key] = alert
            if alert.state == PENDING:
                self._pending[alert.id] = alert
            elif alert.state == FIRING:
                self._firing[alert.id] = alert
                if alert.cleared_since is not None:
                    self._clearing[alert.id] = alert
            known = self._known.get(alert.kind)
            if known is not None:
                known.add(alert.key)
        self._reindex()
        self._announce(now)
        for alert in orphans:  # their rule is gone: announce the end of the firing ones
            if alert.state == FIRING:
                alert.resolved_at = now
                self._transition(alert, RESOLVED, now)
                for receiver in self.receivers.values():
                    if receiver.accepts(alert.labels):
                        receiver.resolved(alert, now)
        log.info("alert state restored", alerts=len(self.alerts()), pending=len(self._pending),
                 firing=len(self._firing), silences=len(self.silences.api))

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the persisted state and start the notifier workers and the timer loop."""
        self.load()
        self._started = True
        for receiver in self.receivers.values():
            receiver.start()
        self._tasks.append(asyncio.create_task(self._loop(), name="alerts-loop"))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.tick(self.clock())
                self._flush_points()
                if self._needs_save() and time.monotonic() - self._last_save >= SAVE_MIN_INTERVAL:
                    data = orjson.dumps(self.snapshot())
                    self._dirty = False
                    for receiver in self.receivers.values():
                        receiver.dirty = False
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    await asyncio.to_thread(write_atomic, self.path, data)
                    self._last_save = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop must outlive any single failure
                log.error("alert loop failed", error=redact_text(f"{type(exc).__name__}: {exc}"))

    def _flush_points(self) -> None:
        if not self._points or self.write_points is None:
            self._points.clear()
            return
        batch, self._points = self._points, []
        write = self.write_points

        async def deliver() -> None:
            try:
                # A burst (an outage) may be 100k lines: built in a thread so the loop keeps polling.
                lines = self._lines(batch) if len(batch) < 200 else await asyncio.to_thread(self._lines, batch)
                await write(lines)
            except Exception as exc:
                log.warning("alert points not written", points=len(batch), error=f"{type(exc).__name__}: {exc}")

        task = asyncio.get_running_loop().create_task(deliver())
        self._write_tasks.add(task)
        task.add_done_callback(self._write_tasks.discard)

    async def drain(self, within: float = 5.0) -> bool:
        """Wait until every notifier's queue is empty (tests, shutdown); False after `within` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            if all(r.idle() for r in self.receivers.values()):
                return True
            await asyncio.sleep(0.02)
        return False

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop the timers, give deliveries up to `flush_timeout` seconds, persist everything."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            self._flush_points()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_timeout
        for receiver in self.receivers.values():
            await receiver.stop(max(deadline - loop.time(), 0.0))
        if self._write_tasks:
            await asyncio.wait(list(self._write_tasks), timeout=max(deadline - loop.time(), 0.1))
        self._started = False
        try:
            self.save()
        except OSError as exc:
            log.error("alert state not saved", path=str(self.path), error=str(exc))


__all__ = ["AlertEngine", "alert_id"]
