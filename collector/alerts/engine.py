"""The alert engine: evaluates compiled rules against entity records, runs each (rule, entity) pair
through inactive -> pending -> firing -> resolved, persists that state, and hands firing and resolved
alerts to the notifiers.

- `submit_change(change)` is the hot path: the pipeline hands over what each poll changed (keys and
  records, the fleet state's own objects), and it is only queued; `submit(kind, keys, records)` does
  the same for anything else.
- `flush(now)`, once a second on the engine's loop (or once 5,000 entities wait), evaluates the queued
  entities in one batch per kind: the numeric fields the rules read are taken from every record in
  one C-level pass into float64 columns, each rule whose expression has an array form
  (`alerts/vector.py`) is a few numpy operations over the batch, the others are evaluated one record
  at a time with their closures. Python then looks only at the entities where something happens: a
  condition that starts holding, and the active alerts that stop, are pending, or are kept by
  `keep_firing_for`. `evaluate(kind, key, record, now)` is submit + flush (the collector's own
  entity, tests).
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
import gc
import heapq
import itertools
import math
import operator
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import structlog

from collector import metrics
from collector.alerts.alert import FIRING, INACTIVE, PENDING, RESOLVED, Alert, alert_id
from collector.alerts.config import AlertsConfig
from collector.alerts.notifiers import Receiver, build_receiver
from collector.alerts.rules import Rule
from collector.alerts.silences import SilenceBook
from collector.logs import redact_text, register_secret
from collector.sinks.points import alert_point
from collector.state import FIELDS, Change, field_reader

log = structlog.get_logger("collector.alerts")

STATE_VERSION = 1
TICK_SECONDS = 0.25  # how often due groups are flushed and points handed to the sinks
# How often the entities changed since the last time are evaluated, in one batch: an alert may start
# this much later than its observation (Prometheus evaluates every 15 s to 1 min); once
# `FLUSH_ENTITIES` entities (or polls) wait, they are evaluated at the next tick already.
FLUSH_SECONDS = 1.0
FLUSH_ENTITIES = 5000
SAVE_MIN_INTERVAL = 1.0  # at most one state write per this many seconds while things change
MAX_BUFFERED_POINTS = 100_000
# Alert labels already carried by the point's own tags (rule, kind, severity, entity).
_POINT_TAGS_SKIPPED = frozenset({"alertname", "kind", "severity", "device_no", "iccid"})
WritePoints = Callable[[list[str]], Awaitable[None]]
Lookup = Callable[[str, str], Any]  # (kind, key) -> the entity's record, or None


class _Slot:
    """A rule at run time: its compiled forms and the alerts it has, by entity key. `vector` when
    its condition (and clear condition) evaluate over columns; otherwise one record at a time.
    `has` and `look` are its two bits in its plan's entity flags (`_Plan.flags`); `timers` holds
    (when its `for` elapses, entity) for its pending alerts, earliest first (stale entries included:
    an alert that ended, or started again since, is checked when its entry comes up)."""

    __slots__ = ("clear", "cond", "has", "look", "rule", "states", "timers", "vclear", "vcond", "vector")

    def __init__(self, rule: Rule, states: dict[str, Alert] | None = None) -> None:
        self.rule = rule
        self.cond = rule.condition.fn
        self.clear = rule.clear.fn if rule.clear is not None else None
        self.vcond = rule.condition.vector
        self.vclear = rule.clear.vector if rule.clear is not None else None
        self.vector = self.vcond is not None and (rule.clear is None or self.vclear is not None)
        self.states: dict[str, Alert] = states if states is not None else {}
        self.has = self.look = 0
        self.timers: list[tuple[float, str]] = []
        for key, alert in self.states.items():
            self.start_timer(key, alert)

    def due(self, alert: Alert, now: float) -> bool:
        """A pending alert whose `for` has elapsed by `now` (it fires if its condition still holds)."""
        return alert.state == PENDING and now - alert.active_since >= self.rule.for_

    def start_timer(self, key: str, alert: Alert) -> None:
        if alert.state != PENDING:
            return
        heapq.heappush(self.timers, (alert.active_since + self.rule.for_, key))
        if len(self.timers) > 2 * len(self.states) + 64:  # mostly stale (flapping under a long `for`)
            self.timers = [(a.active_since + self.rule.for_, k) for k, a in self.states.items() if a.state == PENDING]
            heapq.heapify(self.timers)


class _Plan:
    """The rules of one entity kind; the entities changed since the last flush, as submitted (batches
    of keys and of their records, the fleet state's own objects); and, for each entity of the kind that
    has an active alert, its flags (`flags`): two bits per rule, `has` (the rule has an alert for the
    entity) and `look` (the alert needs a look at every evaluation even while its condition holds: it
    is pending with its `for` elapsed, or kept firing by keep_firing_for). A batch reads the flags of
    all its entities with one C-level lookup each; most entities have none."""

    __slots__ = ("fields", "flag_dtype", "flags", "forgotten", "keys", "known", "queued", "read", "readers",
                 "records", "slots")

    def __init__(self, kind: str, slots: list[_Slot], known: set[str] | None) -> None:
        self.slots = slots
        for i, slot in enumerate(slots):
            slot.has, slot.look = 1 << (2 * i), 1 << (2 * i + 1)
        # Flags fit 64 bits up to 32 rules of a kind; beyond that they are Python ints in an object array.
        self.flag_dtype: Any = np.uint64 if len(slots) <= 32 else object
        used: set[str] = set()
        for slot in slots:
            if slot.vector:
                used |= slot.rule.condition.vector_fields
                if slot.rule.clear is not None:
                    used |= slot.rule.clear.vector_fields
        self.fields = tuple(sorted(used))
        paths = [FIELDS[kind][name] for name in self.fields]
        # One C call per record reads every field the vectorised rules use (a tuple when there are
        # several, the value itself when there is one).
        self.read: Callable[[Any], Any] | None = operator.attrgetter(*paths) if paths else None
        self.readers = [field_reader(name, path) for name, path in zip(self.fields, paths, strict=True)]
        self.keys: list[Sequence[str]] = []
        self.records: list[Sequence[Any]] = []
        self.queued = 0
        # Entities that left the inventory since they were submitted: key -> how many entities were
        # queued when it left (its submissions before that position are dropped, later ones kept).
        self.forgotten: dict[str, int] = {}
        self.flags: dict[str, int] = {}
        for slot in slots:
            for key, alert in slot.states.items():
                self.mark(slot, key, alert, 0.0)
        self.known = known  # entity keys, kept only when a rule of this kind is clock-dependent

    def take(self) -> tuple[Sequence[str], Sequence[Any]]:
        """The entities submitted since the last call: (keys, records), in submission order. An entity
        submitted twice is there twice (it reads the same record: evaluating it twice changes nothing).
        An entity's submissions from before it left the inventory are left out; if it came back, the
        submissions since are kept."""
        if len(self.keys) == 1:  # one submission (a flush's hand-over of polls is one): as it came
            keys, records = self.keys[0], self.records[0]
        else:
            chain = itertools.chain.from_iterable
            keys, records = list(chain(self.keys)), list(chain(self.records))
        self.keys, self.records, self.queued = [], [], 0
        if self.forgotten:
            cut = self.forgotten.get
            kept = [i for i, k in enumerate(keys) if i >= cut(k, 0)]
            keys, records = [keys[i] for i in kept], [records[i] for i in kept]
            self.forgotten = {}
        return keys, records

    def mark(self, slot: _Slot, key: str, alert: Alert | None, now: float) -> None:
        """Set the entity's flags for the rule of `slot` from its alert at `now` (None: no alert)."""
        flags = self.flags.get(key, 0) & ~(slot.has | slot.look)
        if alert is not None:
            flags |= slot.has
            if alert.cleared_since is not None or slot.due(alert, now):
                flags |= slot.look
        if flags:
            self.flags[key] = flags
        else:
            self.flags.pop(key, None)

    def ripen(self, now: float) -> None:
        """Pending alerts whose `for` has elapsed by `now` need a look at their next evaluation."""
        for slot in self.slots:
            timers = slot.timers
            while timers and timers[0][0] <= now:
                _, key = heapq.heappop(timers)
                alert = slot.states.get(key)
                if alert is not None and alert.state == PENDING:
                    self.mark(slot, key, alert, now)

    def columns(self, records: Sequence[Any]) -> tuple[dict[str, Any], int]:
        """The fields of a batch of records as float64 columns (NaN where missing), read and
        converted in C; and how many values were not numbers (read as missing)."""
        assert self.read is not None
        n, k = len(records), len(self.fields)
        bad = 0
        try:
            # One flat pass: field after field, record after record (a tuple per record, unpacked
            # in C), then a (records x fields) view of it.
            values = map(self.read, records) if k == 1 else itertools.chain.from_iterable(map(self.read, records))
            table = np.fromiter(values, dtype=np.float64, count=n * k)
        except (AttributeError, TypeError, ValueError, OverflowError):
            # A record never polled (no `obs`), or a value that is not a number (a FieldRecord's):
            # the rows are read record by record, in Python, and checked if they still do not convert.
            rows = list(itertools.chain.from_iterable(self.row(r) for r in records))
            try:
                table = np.fromiter(rows, dtype=np.float64, count=n * k)
            except (TypeError, ValueError, OverflowError):
                table, bad = self.checked(rows)
        table = table.reshape(n, k)
        return {name: table[:, i] for i, name in enumerate(self.fields)}, bad

    def row(self, record: Any) -> tuple[Any, ...]:
        """The fields of one record, as a tuple, when the C-level read cannot take it."""
        try:
            values = self.read(record) if self.read is not None else ()
        except AttributeError:  # a path through a missing object reads None
            return tuple(read(record, 0.0) for read in self.readers)
        return (values,) if len(self.fields) == 1 else values

    @staticmethod
    def checked(values: list[Any]) -> tuple[Any, int]:
        """Values that are not numbers: those read as missing, and are counted."""
        numbers = [_as_float(v) for v in values]
        bad = sum(1 for v, x in zip(values, numbers, strict=True)
                  if math.isnan(x) and v is not None and not isinstance(v, float))
        return np.array(numbers, dtype=np.float64), bad


def _as_float(value: Any) -> float:
    if isinstance(value, bool | int | float):
        with contextlib.suppress(OverflowError):
            return float(value)
    return math.nan


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
        self._last_flush = time.monotonic()
        self._changes: list[Change] = []  # handed over by the pipeline since the last flush
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
        old = self._plans
        self._plans = {kind: _Plan(kind, slots, self._known.get(kind) if kind in self._time_slots else None)
                       for kind, slots in by_kind.items()}
        for kind, plan in old.items():  # entities submitted before a reload are still evaluated
            new = self._plans.get(kind)
            if new is not None:
                new.keys, new.records, new.queued, new.forgotten = plan.keys, plan.records, plan.queued, plan.forgotten

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

    # --- evaluation ------------------------------------------------------------------------------------------

    def submit(self, kind: str, keys: Sequence[str], records: Sequence[Any]) -> None:
        """Entities that changed and their records (in the same order): evaluated together at the next
        `flush`, from the records as they are then."""
        plan = self._plans.get(kind)
        if plan is None:
            return
        plan.keys.append(keys)
        plan.records.append(records)
        plan.queued += len(keys)
        if plan.known is not None:
            plan.known.update(keys)

    def submit_change(self, change: Change) -> None:
        """What one poll changed (its devices and SIMs, with their records, the fleet state's own
        objects): the pipeline's hot path, one append; the entities are queued at the next flush."""
        self._changes.append(change)

    def _take_changes(self) -> None:
        changes, self._changes = self._changes, []
        chain = itertools.chain.from_iterable
        for kind, keys, records in (("device", "devices", "device_records"), ("sim", "sims", "sim_records")):
            batch = list(chain(map(operator.attrgetter(keys), changes)))
            if batch:
                self.submit(kind, batch, list(chain(map(operator.attrgetter(records), changes))))

    def queued(self) -> int:
        """Roughly what waits for the next flush: entities submitted, plus polls handed over."""
        return sum(p.queued for p in self._plans.values()) + len(self._changes)

    def evaluate(self, kind: str, key: str, record: Any, now: float) -> None:
        """Evaluate every rule of `kind` for one entity now (the collector's own entity, tests)."""
        self.submit(kind, (key,), (record,))
        self.flush(now)

    def flush(self, now: float | None = None) -> int:
        """Evaluate the rules of every entity submitted since the last flush, each rule over the whole
        batch of its kind at once. Returns how many entities were evaluated."""
        # The cyclic garbage collector is held off first thing (reference counting still frees): the
        # batch's lists (keys, records: one entry per entity) are young and die with the flush, and a
        # collection triggered meanwhile would walk every entity they reference, for nothing.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._flush(now)
        finally:
            if collecting:
                gc.enable()

    def _flush(self, now: float | None) -> int:
        now = self.clock() if now is None else now
        started = time.perf_counter()
        self._last_flush = time.monotonic()
        if self._changes:
            self._take_changes()
        count = 0
        for plan in self._plans.values():
            if plan.queued:
                keys, records = plan.take()
                count += self._evaluate_batch(plan, plan.slots, keys, records, now)
        if count:
            metrics.ALERT_EVAL_DURATION.observe(time.perf_counter() - started)
        return count

    def _evaluate_batch(self, plan: _Plan, slots: list[_Slot], keys: Sequence[str], records: Sequence[Any],
                        now: float) -> int:
        """Evaluate `slots` (rules of the plan's kind) for a batch of entities, `records[i]` being the
        record of `keys[i]`: each vectorised rule as array operations over the batch's columns, the
        others one record at a time; then the alerts change state. Returns the batch's size."""
        n = len(keys)
        if not n:
            return 0
        # Each entity's flags: which rules have an alert for it, and which of those need a look.
        plan.ripen(now)
        flags = np.fromiter(map(plan.flags.get, keys, itertools.repeat(0)), dtype=plan.flag_dtype, count=n)
        columns: dict[str, Any] | None = None
        if plan.read is not None and any(slot.vector for slot in slots):
            columns, bad = plan.columns(records)
            self.eval_errors += bad
        results: list[tuple[_Slot, Any, Any, Any]] = []
        for slot in slots:
            holds: Any = None
            if slot.vector and columns is not None:
                try:
                    assert slot.vcond is not None
                    holds = slot.vcond(columns, n)
                    active = holds if slot.vclear is None else holds | ~slot.vclear(columns, n)
                except Exception as exc:  # never expected: the record-by-record path still answers
                    holds = None
                    self.eval_errors += 1
                    log.error("vectorised rule failed", rule=slot.rule.name, error=f"{type(exc).__name__}: {exc}")
            if holds is None:
                holds, active = self._one_by_one(slot, records, now)
            # Where the condition holds; where an active alert stays active (hysteresis: the
            # condition, or not yet the clear condition); where the rule has an alert already.
            results.append((slot, holds, active, (flags & slot.has) != 0))
        for slot, _holds, still, has in results:  # the batch's active alerts that need a look
            # An alert that stays active needs nothing, unless it is pending with its `for` elapsed
            # or kept by keep_firing_for; one that stops does.
            states = slot.states
            for i in np.flatnonzero(has & (~still | ((flags & slot.look) != 0))).tolist():
                alert = states.get(keys[i])
                if alert is not None:  # None: an entity submitted twice, its alert ended at its first
                    self._update(slot, alert, bool(still[i]), records[i], now)
        for slot, holds, _still, has in results:  # new alerts
            states = slot.states
            for i in np.flatnonzero(holds & ~has).tolist():
                if keys[i] not in states:
                    self._activate(slot, keys[i], records[i], now)
        return n

    def _one_by_one(self, slot: _Slot, records: Sequence[Any], now: float) -> tuple[Any, Any]:
        """(condition holds, alert stays active) per record, as arrays, with the rule's closures: an
        error reads as "does not hold" for the condition and as "not cleared" for the clear condition."""
        holds = np.fromiter((self._holds(slot.cond, r, now) for r in records), dtype=np.bool_, count=len(records))
        clear = slot.clear
        if clear is None:
            return holds, holds
        still = holds.copy()
        for i in np.flatnonzero(~holds).tolist():
            still[i] = not self._holds(clear, records[i], now)
        return holds, still

    def _holds(self, fn: Callable[[Any, float], Any], record: Any, now: float) -> bool:
        try:
            return bool(fn(record, now))
        except Exception:
            self.eval_errors += 1
            return False

    def _update(self, slot: _Slot, alert: Alert, active: bool, record: Any, now: float) -> None:
        """An alert whose entity was evaluated: `active` when its condition holds, or with a clear
        condition (hysteresis) as long as that one does not."""
        rule = slot.rule
        if active:
            if alert.cleared_since is not None:
                alert.cleared_since = None
                self._clearing.pop(alert.id, None)
                self._dirty = True
                self._mark(slot, alert, now)
            if slot.due(alert, now):
                self._fire(slot, alert, record, now)
            return
        if alert.state == PENDING:
            self._deactivate(slot, alert, now)
        elif rule.keep_firing_for > 0 and (alert.cleared_since is None
                                           or now - alert.cleared_since < rule.keep_firing_for):
            if alert.cleared_since is None:  # keep firing for `keep_firing_for` from now (as Prometheus)
                alert.cleared_since = now
                self._clearing[alert.id] = alert
                self._dirty = True
                self._mark(slot, alert, now)
        else:
            self._resolve(slot, alert, now)

    # --- transitions ------------------------------------------------------------------------------------------

    def _activate(self, slot: _Slot, key: str, record: Any, now: float) -> None:
        rule = slot.rule
        alert = Alert(rule=rule.name, kind=rule.kind, key=key, state=PENDING, active_since=now,
                      labels=rule.alert_labels(key, record), annotations=rule.render(record, now),
                      value=rule.current_value(record, now))
        slot.states[key] = alert
        self._mark(slot, alert, now)
        if rule.for_ <= 0:
            self._fire(slot, alert, None, now)  # annotations and value are those just computed
            return
        self._pending[alert.id] = alert
        slot.start_timer(key, alert)
        self._transition(alert, PENDING, now)

    def _fire(self, slot: _Slot, alert: Alert, record: Any, now: float) -> None:
        self._pending.pop(alert.id, None)
        alert.state = FIRING
        alert.fired_at = now
        self._mark(slot, alert, now)
        if record is not None:
            alert.annotations = slot.rule.render(record, now)
            alert.value = slot.rule.current_value(record, now)
        self._firing[alert.id] = alert
        self._transition(alert, FIRING, now)
        for receiver in self.receivers.values():
            if receiver.accepts(alert.labels):
                receiver.firing(alert, now)

    def _resolve(self, slot: _Slot, alert: Alert, now: float) -> None:
        self._forget_alert(slot, alert)
        self._clearing.pop(alert.id, None)
        self._firing.pop(alert.id, None)
        alert.resolved_at = now
        self._transition(alert, RESOLVED, now)
        for receiver in self.receivers.values():
            if receiver.accepts(alert.labels):
                receiver.resolved(alert, now)

    def _deactivate(self, slot: _Slot, alert: Alert, now: float) -> None:
        self._forget_alert(slot, alert)
        self._pending.pop(alert.id, None)
        self._transition(alert, INACTIVE, now)

    def _forget_alert(self, slot: _Slot, alert: Alert) -> None:
        if slot.states.pop(alert.key, None) is not None:
            self._mark(slot, alert, 0.0)

    def _mark(self, slot: _Slot, alert: Alert, now: float) -> None:
        """Keep the entity's flags in step with the rule's alert for it (present or gone)."""
        plan = self._plans.get(alert.kind)
        if plan is not None:
            plan.mark(slot, alert.key, slot.states.get(alert.key), now)

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
        self.flush(now)
        started = time.perf_counter()
        for kind, slots in self._time_slots.items():
            records = {}
            for key in list(self._known.get(kind, ())):
                record = lookup(kind, key)
                if record is not None:
                    records[key] = record
            self._evaluate_batch(self._plans[kind], slots, list(records), list(records.values()), now)
        for alert in list(self._pending.values()):
            pslot = self._slots.get(alert.rule)
            if pslot is None or not pslot.due(alert, now):
                continue
            record = lookup(alert.kind, alert.key)
            if record is None:  # nothing fresher: the last evaluation still stands
                self._fire(pslot, alert, None, now)
                continue
            _, still = self._one_by_one(pslot, [record], now)
            self._update(pslot, alert, bool(still[0]), record, now)
        for alert in list(self._clearing.values()):
            cslot = self._slots.get(alert.rule)
            if (cslot is not None and alert.cleared_since is not None
                    and now - alert.cleared_since >= cslot.rule.keep_firing_for):
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
        if plan is not None and (plan.queued or self._changes):  # not evaluated, even if submitted before
            if self._changes:  # queue the polls handed over so far: they come before this point
                self._take_changes()
            plan.forgotten[key] = plan.queued
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
            slot.start_timer(alert.key, alert)
            self._mark(slot, alert, now)
            if alert.state == PENDING:
                self._pending[alert.id] = alert
            elif alert.state == FIRING:
                self._firing[alert.id] = alert
                if alert.cleared_since is not None:
                    self._clearing[alert.id] = alert
            known = self._known.get(alert.kind)
            if known is not None:
                known.add(alert.key)
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
                if time.monotonic() - self._last_flush >= FLUSH_SECONDS or self.queued() >= FLUSH_ENTITIES:
                    self.flush()
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
        try:
            self.flush()  # what the last polls changed still counts
        except Exception as exc:
            log.error("alert evaluation at stop failed", error=redact_text(f"{type(exc).__name__}: {exc}"))
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
