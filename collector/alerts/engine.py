"""The alert engine: evaluates compiled rules against entity records, runs each (rule, entity) pair
through inactive -> pending -> firing -> resolved, persists that state, and hands firing and resolved
alerts to the notifiers.

- `submit_change(change)` (the pipeline's hand-over of what one poll changed) and `submit(kind, keys,
  records)` queue the changed entities with their records (the fleet state's own objects); `flush`,
  once a second on the engine's loop, evaluates what was queued, rule by rule over the batch: where
  does the condition hold, and, for the batch's active alerts, does each stay active (with a `clear`
  condition, until `clear` holds); then the transitions. `evaluate(kind, key, record, now)` is
  submit + flush. A record never polled since start (`record.polled` False) is not evaluated: no
  data says nothing.
- The engine's loop sweeps every `alerts.evaluation_interval` (given a `lookup` of records): pending
  alerts whose `for` has elapsed fire once their entity has data, `keep_firing_for` runs out, and
  rules over clock-dependent fields (`TIME_FIELDS`) are re-evaluated for every known entity.
- Every transition is counted (ALERT_TRANSITIONS), written as an `alerts` point (best effort, never
  blocking) and makes the state dirty; the state file `<state_dir>/alerts/state.json` is rewritten
  atomically shortly after, and at stop. A condition that raises counts in
  ALERT_EVALUATION_ERRORS{rule} and reads as false (a clear condition that raises: not cleared).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog

from collector import metrics
from collector.alerts.alert import FIRING, INACTIVE, PENDING, RESOLVED, Alert, alert_id, alert_link, external_base
from collector.alerts.config import AlertsConfig
from collector.alerts.i18n import Locale
from collector.alerts.notifiers import Receiver, build_receiver
from collector.alerts.rules import Rule, compile_rules
from collector.alerts.silences import SilenceBook
from collector.logs import redact_text, register_secret
from collector.sinks.points import alert_point
from collector.state import Change

log = structlog.get_logger("collector.alerts")

STATE_VERSION = 1
TICK_SECONDS = 0.25  # how often due groups are flushed and points handed to the sinks
# How often what was handed over is evaluated: an alert may start this much after its observation
# (Prometheus evaluates every 15 s to 1 min), and the rules run over batches, not one entity at a time.
FLUSH_SECONDS = 1.0
SAVE_MIN_INTERVAL = 1.0  # at most one state write per this many seconds while things change
MAX_BUFFERED_POINTS = 100_000
# Alert labels already carried by the point's own tags (rule, kind, severity, entity): the entity's
# own id label (a SIM alert's `device_no`, the device it sits in, stays a tag).
_POINT_TAGS_SKIPPED = {kind: frozenset({"alertname", "kind", "severity", *({label} if label else ())})
                       for kind, label in (("device", "device_no"), ("sim", "iccid"), ("account", ""),
                                           ("collector", ""))}
WritePoints = Callable[[list[str]], Awaitable[None]]
Lookup = Callable[[str, str], Any]  # (kind, key) -> the entity's record, or None


class _RuleAlerts:
    """A rule at run time and its active (pending or firing) alerts, by entity key."""

    __slots__ = ("alerts", "condition", "rule")

    def __init__(self, rule: Rule, alerts: dict[str, Alert] | None = None) -> None:
        self.rule = rule
        self.condition = rule.condition.fn
        self.alerts: dict[str, Alert] = alerts if alerts is not None else {}

    def due(self, alert: Alert, now: float) -> bool:
        """A pending alert whose `for` has elapsed by `now` (it fires if its condition still holds)."""
        return alert.state == PENDING and now - alert.active_since >= self.rule.for_


def _has_data(record: Any) -> bool:
    """False for a record never polled since start (records without the notion, like the collector's
    own, always have data)."""
    return getattr(record, "polled", True) is not False


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


class AlertEngine:
    """Rules, alert state, silences and notifiers of one collector. Raises ConfigError for bad rules."""

    def __init__(self, config: AlertsConfig, state_dir: str | Path, *, write_points: WritePoints | None = None,
                 lookup: Lookup | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.path = Path(state_dir) / "alerts" / "state.json"
        self.write_points = write_points if config.write_points else None
        self.lookup = lookup
        self.clock = clock
        self.external_url = external_base(config.external_url)
        self.locale = Locale(config.language, config.timezone)
        self.silences = SilenceBook(config.silences, config.maintenance_windows)
        self._rules: dict[str, _RuleAlerts] = {}
        self._by_kind: dict[str, list[_RuleAlerts]] = {}
        self._timed: dict[str, list[_RuleAlerts]] = {}  # rules over clock-dependent fields, by kind
        self._known: dict[str, set[str]] = {}  # entity keys of the kinds that have such rules
        self.receivers: dict[str, Receiver] = {}
        self._points: list[tuple[Any, ...]] = []
        self._changes: list[Change] = []  # handed over since the last flush
        self._submitted: list[tuple[str, Sequence[str], Sequence[Any]]] = []
        self._dirty = False
        self._last_save = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._write_tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self.eval_errors = 0
        self._failing_rules: set[str] = set()  # rules whose failure has been logged
        self._install_rules(compile_rules(config), {})
        self._build_receivers(config, {})

    # --- set-up -------------------------------------------------------------------------------------------

    def _install_rules(self, rules: list[Rule], kept: Mapping[str, dict[str, Alert]]) -> None:
        self._rules = {r.name: _RuleAlerts(r, kept.get(r.name)) for r in rules}
        self._by_kind, self._timed = {}, {}
        for slot in self._rules.values():
            self._by_kind.setdefault(slot.rule.kind, []).append(slot)
            if slot.rule.time_based:
                self._timed.setdefault(slot.rule.kind, []).append(slot)
            metrics.ALERT_EVALUATION_ERRORS.labels(slot.rule.name)  # exported at 0 from the start
        for kind in self._timed:
            self._known.setdefault(kind, set())

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
        slot = self._rules.get(rule)
        return None if slot is None else slot.alerts.get(key)

    def silenced_by(self, labels: Mapping[str, str], now: float) -> str | None:
        return self.silences.silenced_by(labels, now)

    def link(self, labels: Mapping[str, str], alert_id_: str) -> str | None:
        """The alert's generatorURL under `alerts.external_url` (None: no link)."""
        return alert_link(self.config.external_url, labels, alert_id_)

    # --- evaluation ------------------------------------------------------------------------------------------

    def submit_change(self, change: Change) -> None:
        """What one poll changed (its devices and SIMs, with their records, the fleet state's own
        objects): evaluated at the next flush."""
        self._changes.append(change)

    def submit(self, kind: str, keys: Sequence[str], records: Sequence[Any]) -> None:
        """Entities that changed and their records (in the same order): evaluated at the next flush."""
        self._submitted.append((kind, keys, records))

    def evaluate(self, kind: str, key: str, record: Any, now: float) -> None:
        """Evaluate every rule of `kind` for one entity now (after what was queued before it)."""
        self.submit(kind, (key,), (record,))
        self.flush(now)

    def flush(self, now: float | None = None) -> int:
        """Evaluate everything handed over since the last flush, from the records as they are now.
        Returns how many entities (an entity handed over twice counts twice)."""
        if not self._changes and not self._submitted:
            return 0
        now = self.clock() if now is None else now
        changes, submitted = self._changes, self._submitted
        self._changes, self._submitted = [], []
        chain = itertools.chain.from_iterable
        batches: dict[str, tuple[list[str], list[Any]]] = {
            "device": (list(chain(map(operator.attrgetter("devices"), changes))),
                       list(chain(map(operator.attrgetter("device_records"), changes)))),
            "sim": (list(chain(map(operator.attrgetter("sims"), changes))),
                    list(chain(map(operator.attrgetter("sim_records"), changes)))),
        }
        for kind, keys, records in submitted:
            batch = batches.setdefault(kind, ([], []))
            batch[0].extend(keys)
            batch[1].extend(records)
        count = 0
        for kind, (keys, records) in batches.items():
            known = self._known.get(kind)
            if known is not None:
                known.update(keys)
            self._evaluate(self._by_kind.get(kind, ()), keys, records, now)
            count += len(keys)
        return count

    def _evaluate(self, slots: Sequence[_RuleAlerts], keys: Sequence[str], records: Sequence[Any],
                  now: float) -> None:
        """The rules `slots` over a batch of entities (`records[i]` is the record of `keys[i]`), one
        rule at a time: its condition for every record, then the transitions of the batch's active
        alerts, then the new alerts. Records without data since start are left out."""
        has_data = [getattr(r, "polled", True) is not False for r in records]  # as _has_data
        if not all(has_data):
            keys, records = list(itertools.compress(keys, has_data)), list(itertools.compress(records, has_data))
        if not keys:
            return
        position = dict(zip(keys, range(len(keys)), strict=True))  # an entity handed over twice: its last
        for slot in slots:
            holds = self._holds(slot, records, now)
            alerts, for_ = slot.alerts, slot.rule.for_
            new = [i for i in itertools.compress(range(len(keys)), holds) if keys[i] not in alerts]
            # The batch's active alerts with something to decide: condition gone, kept firing by
            # keep_firing_for, or pending with its `for` elapsed (the others hold and go on as they are).
            look = [key for key in alerts.keys() & position.keys()
                    if not holds[position[key]] or alerts[key].cleared_since is not None
                    or (alerts[key].state == PENDING and now - alerts[key].active_since >= for_)]
            for key in look:
                i = position[key]
                self._update(slot, alerts[key], bool(holds[i]) or self._stays(slot, records[i], now), records[i], now)
            for i in new:
                if keys[i] not in alerts:  # an entity handed over twice: activated once
                    self._activate(slot, keys[i], records[i], now)

    def _holds(self, slot: _RuleAlerts, records: Sequence[Any], now: float) -> list[Any]:
        """The rule's condition for each record; one that fails to evaluate counts as an error and
        does not hold."""
        condition = slot.condition
        try:
            return [condition(r, now) for r in records]
        except Exception:  # rare: again one record at a time, to find which
            pass
        holds = []
        for r in records:
            try:
                holds.append(condition(r, now))
            except Exception as exc:
                holds.append(False)
                self._error(slot.rule, exc)
        return holds

    def _stays(self, slot: _RuleAlerts, record: Any, now: float) -> bool:
        """Hysteresis: an active alert whose condition no longer holds stays active until its `clear`
        condition holds (a clear condition that fails to evaluate has not cleared)."""
        clear = slot.rule.clear
        if clear is None:
            return False
        try:
            return not clear.fn(record, now)
        except Exception as exc:
            self._error(slot.rule, exc)
            return True

    def _error(self, rule: Rule, exc: Exception) -> None:
        self.eval_errors += 1
        metrics.ALERT_EVALUATION_ERRORS.labels(rule.name).inc()
        if rule.name not in self._failing_rules:  # once per rule: a bad rule fails for every entity
            self._failing_rules.add(rule.name)
            log.warning("alert rule failed to evaluate: read as false, counted from now on", rule=rule.name,
                        error=f"{type(exc).__name__}: {exc}")

    def _update(self, slot: _RuleAlerts, alert: Alert, active: bool, record: Any, now: float) -> None:
        """An alert whose entity was evaluated; `active`: its condition holds, or it has not cleared."""
        keep_firing_for = slot.rule.keep_firing_for
        if active:
            if alert.cleared_since is not None:
                alert.cleared_since = None
                self._dirty = True
            if slot.due(alert, now):
                self._fire(slot, alert, record, now)
        elif alert.state == PENDING:
            self._deactivate(slot, alert, now)
        elif keep_firing_for > 0 and (alert.cleared_since is None or now - alert.cleared_since < keep_firing_for):
            if alert.cleared_since is None:  # keeps firing for keep_firing_for from now, as Prometheus
                alert.cleared_since = now
                self._dirty = True
        else:
            self._resolve(slot, alert, now)

    # --- transitions ------------------------------------------------------------------------------------------

    def _activate(self, slot: _RuleAlerts, key: str, record: Any, now: float) -> None:
        rule = slot.rule
        alert = Alert(rule=rule.name, kind=rule.kind, key=key, state=PENDING, active_since=now,
                      labels=rule.alert_labels(key, record), annotations=rule.render(record, now),
                      value=rule.current_value(record, now))
        slot.alerts[key] = alert
        if rule.for_ <= 0:
            self._fire(slot, alert, None, now)  # annotations and value are those just computed
        else:
            self._transition(alert, PENDING, now)

    def _fire(self, slot: _RuleAlerts, alert: Alert, record: Any, now: float) -> None:
        """`record` None: keep the annotations and value rendered last."""
        alert.state = FIRING
        alert.fired_at = now
        if record is not None:
            alert.annotations = slot.rule.render(record, now)
            alert.value = slot.rule.current_value(record, now)
        self._transition(alert, FIRING, now)
        for receiver in self.receivers.values():
            if receiver.accepts(alert.labels):
                receiver.firing(alert, now)

    def _resolve(self, slot: _RuleAlerts, alert: Alert, now: float) -> None:
        slot.alerts.pop(alert.key, None)
        alert.resolved_at = now
        self._transition(alert, RESOLVED, now)
        for receiver in self.receivers.values():
            if receiver.accepts(alert.labels):
                receiver.resolved(alert, now)

    def _deactivate(self, slot: _RuleAlerts, alert: Alert, now: float) -> None:
        slot.alerts.pop(alert.key, None)
        self._transition(alert, INACTIVE, now)

    def _end(self, slot: _RuleAlerts, alert: Alert, now: float) -> None:
        """The alert's rule or entity is gone: a firing alert resolves, a pending one is dropped."""
        if alert.state == FIRING:
            self._resolve(slot, alert, now)
        else:
            self._deactivate(slot, alert, now)

    def _transition(self, alert: Alert, to: str, now: float) -> None:
        metrics.ALERT_TRANSITIONS.labels(alert.rule, to).inc()
        self._dirty = True
        if self.write_points is not None and len(self._points) < MAX_BUFFERED_POINTS:
            # The line is built later, off the evaluation path (labels and annotations are never mutated).
            self._points.append((alert.rule, to, now, alert.kind, alert.key, alert.labels, alert.value,
                                 alert.annotations.get("summary", "")))

    @staticmethod
    def _lines(records: list[tuple[Any, ...]]) -> list[str]:
        skipped = _POINT_TAGS_SKIPPED
        return [alert_point(rule=rule, state=to, at=at, severity=labels.get("severity", ""), kind=kind, entity=key,
                            labels={k: v for k, v in labels.items() if k not in skipped[kind]},
                            value=value, summary=summary)
                for rule, to, at, kind, key, labels, value, summary in records]

    # --- timers ---------------------------------------------------------------------------------------------

    def sweep(self, now: float, lookup: Lookup | None = None) -> None:
        """Time-based transitions: `for` elapsed, `keep_firing_for` over, clock-dependent rules.
        `lookup` (default: the engine's) gives each entity's current record."""
        lookup = lookup or self.lookup or (lambda _kind, _key: None)
        self.flush(now)
        started = time.perf_counter()
        for kind, slots in self._timed.items():
            found = [(key, lookup(kind, key)) for key in self._known.get(kind, ())]
            keys, records = [k for k, r in found if r is not None], [r for _k, r in found if r is not None]
            self._evaluate(slots, keys, records, now)
        for slot in self._rules.values():
            for alert in list(slot.alerts.values()):
                if slot.due(alert, now):
                    record = lookup(alert.kind, alert.key)
                    if record is None:  # no record to read: the last evaluation still stands
                        self._fire(slot, alert, None, now)
                    else:  # a record without data yet: it fires at its entity's first poll
                        self._evaluate((slot,), (alert.key,), (record,), now)
                elif alert.cleared_since is not None and now - alert.cleared_since >= slot.rule.keep_firing_for:
                    self._resolve(slot, alert, now)
        if self.silences.expire(now):
            self._dirty = True
        metrics.ALERT_EVAL_DURATION.observe(time.perf_counter() - started)

    def forget(self, kind: str, key: str, now: float) -> None:
        """The entity left the inventory: its firing alerts resolve, its pending ones are dropped."""
        self.flush(now)  # what was handed over before it left counts
        known = self._known.get(kind)
        if known is not None:
            known.discard(key)
        for slot in self._by_kind.get(kind, ()):
            alert = slot.alerts.get(key)
            if alert is not None:
                self._end(slot, alert, now)

    def tick(self, now: float | None = None) -> None:
        """Flush notification groups that are due (the background loop calls this every 0.25 s)."""
        now = self.clock() if now is None else now
        for receiver in self.receivers.values():
            receiver.tick(now)

    # --- views ------------------------------------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        return [a for slot in self._rules.values() for a in slot.alerts.values()]

    def active(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, JSON-able, firing first then by severity and age."""
        now = self.clock()
        order = {"critical": 0, "warning": 1, "info": 2}
        alerts = sorted(self.alerts(), key=lambda a: (a.state != FIRING, order.get(a.labels.get("severity", ""), 3),
                                                      a.active_since, a.id))
        return [a.public(self.silenced_by(a.labels, now)) for a in alerts]

    def rules(self) -> list[Rule]:
        return [s.rule for s in self._rules.values()]

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
        unchanged keep their state; the others resolve (firing) or are dropped (pending). A bad rule
        raises ConfigError and changes nothing."""
        new_rules = {r.name: r for r in compile_rules(config)}
        now = self.clock()
        kept: dict[str, dict[str, Alert]] = {}
        for name, slot in self._rules.items():
            new = new_rules.get(name)
            if new is not None and new.identity == slot.rule.identity:
                kept[name] = slot.alerts
                continue
            for alert in list(slot.alerts.values()):
                self._end(slot, alert, now)
        self._install_rules(list(new_rules.values()), kept)
        old_receivers = self.receivers
        self.config = config
        self.write_points = self.write_points if config.write_points else None
        self.external_url = external_base(config.external_url)
        self.locale = Locale(config.language, config.timezone)
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
        log.info("alert rules reloaded", rules=len(self._rules), notifiers=list(self.receivers))

    def _announce(self, now: float) -> None:
        """Make sure each notifier knows every firing alert routed to it (new notifier, restart)."""
        for alert in self.alerts():
            if alert.state == FIRING:
                for receiver in self.receivers.values():
                    if receiver.accepts(alert.labels):
                        receiver.firing(alert, now)

    # --- persistence ------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "saved_at": self.clock(),
            "rules": {name: slot.rule.identity for name, slot in self._rules.items()},
            "alerts": [a.to_json() for a in self.alerts()],
            "silences": self.silences.snapshot(),
            "notifiers": {name: r.snapshot() for name, r in self.receivers.items()},
        }

    def save(self) -> None:
        """Write the state file now (atomically)."""
        data = orjson.dumps(self.snapshot())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, data)
        self._saved()

    def _saved(self) -> None:
        self._dirty = False
        for receiver in self.receivers.values():
            receiver.dirty = False
        self._last_save = time.monotonic()

    def _needs_save(self) -> bool:
        return self._dirty or any(r.dirty for r in self.receivers.values())

    def load(self) -> None:
        """Restore alerts (with their timers), silences and notifier queues from the state file."""
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
            slot = self._rules.get(alert.rule)
            if slot is None or identities.get(alert.rule, slot.rule.identity) != slot.rule.identity:
                orphans.append(alert)  # rule gone, or relabelled while we were down (as reload does)
                continue
            slot.alerts[alert.key] = alert
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
        alerts = self.alerts()
        log.info("alert state restored", alerts=len(alerts), pending=sum(a.state == PENDING for a in alerts),
                 firing=sum(a.state == FIRING for a in alerts), silences=len(self.silences.api))

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the persisted state and start the notifier workers and the timer loop."""
        self.load()
        self._started = True
        for receiver in self.receivers.values():
            receiver.start()
        self._tasks.append(asyncio.create_task(self._loop(), name="alerts-loop"))

    async def _loop(self) -> None:
        last_sweep = last_flush = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                if time.monotonic() - last_flush >= FLUSH_SECONDS:
                    last_flush = time.monotonic()
                    self.flush()
                if self.lookup is not None and time.monotonic() - last_sweep >= self.config.evaluation_interval:
                    last_sweep = time.monotonic()
                    self.sweep(self.clock())
                self.tick(self.clock())
                self._flush_points()
                if self._needs_save() and time.monotonic() - self._last_save >= SAVE_MIN_INTERVAL:
                    data = orjson.dumps(self.snapshot())
                    self._saved()
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    await asyncio.to_thread(write_atomic, self.path, data)
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
