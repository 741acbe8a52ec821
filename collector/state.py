"""The fleet state: the latest typed observation per device, SIM and account, when the platform
refreshed it and when we polled it. Every consumer (points, alert rules, /metrics, `status`) reads
from here or from the same observation.

It owns the containers (DeviceState, SimState, AccountState, FleetState, Change) and what several
endpoints share: observing a device with its SIMs (device_flow, device_info), observing one SIM
(also card_info) and a SIM's usage history. How one endpoint's observation updates the state is in
that endpoint's module (`collector.endpoints`).

It keeps which entities the platform says it does not know (`NotFound`: their polls back off until
a given time) and which SIMs were tracked for the first time (for their first polls).

The state is also where derived values live, so they are computed once: staleness (poll time minus
platform refresh time), remaining data, usage rate over a recent window, projected exhaustion and
the end of the billing cycle. `FIELDS` lists, per entity kind, the names an alert rule may use.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import functools
import json
import operator
import os
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import structlog

from collector.platform.models import DAY, AccountAssets, DeviceEvent, DeviceObservation, SimObservation

# How far back the usage rate looks, and how many samples it keeps per SIM (memory bound). The
# samples are kept at least USAGE_SPACING_SECONDS apart (the newest excepted), so they span the whole
# window: a rate over a day, not over the last few platform refreshes (an evening's burst).
USAGE_WINDOW_SECONDS = 24 * 3600.0
USAGE_SAMPLES = 16
USAGE_SPACING_SECONDS = USAGE_WINDOW_SECONDS / (USAGE_SAMPLES - 1)
log = structlog.get_logger(__name__)

# The SIMs' usage histories, kept in the state directory across a restart (written at stop): the
# forecast needs hours of them, and the platform's flow numbers change only every 10 minutes.
USAGE_FILE = "usage.json"

# A SIM's usage numbers, all as of one platform refresh (`flow_at`). Answers refreshed at different
# paces (queryDeviceInfo hourly, queryDeviceFlow and the card usage every 10 minutes) alternate: an
# answer whose numbers are older than those held keeps the held ones.
USAGE_NUMBERS = ("total_bytes", "used_bytes", "real_used_bytes", "carrier_used_bytes", "cycle_start", "flow_at")

# The fields an alert rule may read, per entity kind, and where each lives on the record the engine is
# handed (the DeviceState / SimState / AccountState itself, no copy): an attribute path, whose last
# part is always the field's name. A path through `obs` or `assets` reads the observation and reads
# None until the first poll. Derived fields describe the entity as of its last poll: most are
# computed once per observation (`DeviceState` / `SimState.derive`), a few rarely read ones are
# properties. Only TIME_FIELDS depend on the clock: they are methods taking `now`, and rules reading
# them are swept on a timer.
FIELDS: dict[str, dict[str, str]] = {
    "device": {
        "device_no": "device_no", "labels": "labels", "polled": "polled",
        "online": "online", "online_status": "obs.online_status", "rssi_dbm": "obs.rssi_dbm",
        "battery_percent": "obs.battery_percent", "effective_sim": "obs.effective_sim",
        "device_status": "obs.device_status", "wifi_clients": "obs.wifi_clients",
        "staleness_seconds": "staleness_seconds", "status_age_seconds": "status_age_seconds",
        "poll_age_seconds": "poll_age_seconds", "poll_interval_seconds": "poll_interval_seconds",
        "refresh_period_seconds": "refresh_period_seconds", "consecutive_failures": "consecutive_failures",
    },
    "sim": {
        "iccid": "iccid", "device_no": "device_no", "effective": "effective", "labels": "labels",
        "polled": "polled", "sim_no": "obs.sim_no", "slot": "obs.slot", "total_bytes": "obs.total_bytes",
        "used_bytes": "obs.used_bytes", "remaining_bytes": "obs.remaining_bytes",
        "remaining_ratio": "remaining_ratio", "sim_status": "obs.sim_status",
        "internet_status": "obs.internet_status", "online_status": "obs.online_status",
        "activate_status": "obs.activate_status",
        "usage_rate_bytes_per_second": "usage_rate_bytes_per_second",
        "seconds_to_exhaustion": "seconds_to_exhaustion", "seconds_to_cycle_end": "seconds_to_cycle_end",
        "exhausts_before_cycle_end": "exhausts_before_cycle_end", "days_to_expiry": "days_to_expiry",
        "staleness_seconds": "staleness_seconds", "status_age_seconds": "status_age_seconds",
    },
    "account": {
        "balance": "assets.balance", "arrears_balance": "assets.arrears_balance",
        "frozen_balance": "assets.frozen_balance", "poll_age_seconds": "poll_age_seconds", "polled": "polled",
        "labels": "labels",
    },
    "collector": {name: name for name in (
        "upstream_requests", "upstream_errors", "upstream_error_ratio", "rate_limit_ratio", "spool_bytes",
        "spool_oldest_age_seconds", "labels")},
}
TIME_FIELDS = frozenset({"status_age_seconds", "poll_age_seconds"})
# The fields that are not numbers (every other field is a bool, an int, a float or None).
TEXT_FIELDS = frozenset({"device_no", "iccid", "sim_no", "labels"})


def field_reader(name: str, path: str) -> Callable[[Any, float], Any]:
    """`read(record, now)` for the field `name` at attribute `path`: the generic way to read it (the
    rule compiler inlines the common cases). A missing attribute on the path reads as None."""
    if name in TIME_FIELDS:
        def read_time(record: Any, now: float) -> Any:
            method = getattr(record, name, None)
            return None if method is None else method(now)
        return read_time
    get = operator.attrgetter(path)

    def read(record: Any, _now: float) -> Any:
        try:
            return get(record)
        except AttributeError:
            return None
    return read


def field_values(kind: str, record: Any, now: float) -> dict[str, Any]:
    """Every field of one record as a dict (for display and tests; rules read the record itself)."""
    return {name: field_reader(name, path)(record, now) for name, path in FIELDS[kind].items()}


class FieldRecord:
    """A record built from field values (an observation file, the collector's own health, tests):
    every path of FIELDS reads the given value, a field not given reads None."""

    def __init__(self, kind: str, values: Mapping[str, Any]) -> None:
        paths = FIELDS[kind]
        for name, value in values.items():
            path = paths.get(name)
            if path is None:
                continue
            *parents, attr = path.split(".")
            for parent in parents:
                setattr(self, parent, self)
            setattr(self, attr, (lambda _now, v=value: v) if name in TIME_FIELDS else value)
        if not hasattr(self, "labels"):
            self.labels: Mapping[str, str] = {}


def _status_age(obs: DeviceObservation | SimObservation | None, at: float) -> float | None:
    """How long before `at` the platform last refreshed the entity (None when unknown): the staleness
    at poll time, the status age at evaluation time."""
    return None if obs is None or obs.status_at is None else at - obs.status_at


@functools.lru_cache(maxsize=4096)  # a fleet has few distinct cycle starts; datetime math is slow
def add_month(ts: float) -> float:
    """The same day and time one calendar month later (clamped to the month's last day), in UTC."""
    t = dt.datetime.fromtimestamp(ts, dt.UTC)
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    day = min(t.day, calendar.monthrange(year, month)[1])
    return t.replace(year=year, month=month, day=day).timestamp()


@dataclass(slots=True)
class DeviceState:
    device_no: str
    labels: dict[str, str]
    obs: DeviceObservation | None = None
    polled_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0
    last_event_at: float = 0.0
    poll_interval_seconds: float | None = None  # the device job's interval, for the staleness rule
    # How often the platform itself refreshes a device's status (`platform.refresh_period`): polling
    # faster than that cannot make the data fresher, so the staleness rule measures against it too.
    refresh_period_seconds: float | None = None
    # Derived from each observation once, when it arrives: rules read them as plain attributes.
    online: bool | None = None
    staleness_seconds: float | None = None  # poll time minus the platform's last refresh of the device

    # --- fields of alert rules (FIELDS["device"]) ---------------------------------------------------

    @property
    def polled(self) -> bool:
        return self.obs is not None

    def status_age_seconds(self, now: float) -> float | None:
        return _status_age(self.obs, now)

    def poll_age_seconds(self, now: float) -> float | None:
        return None if self.polled_at is None else now - self.polled_at


class UsageHistory:
    """A SIM's usage readings, (platform flow time, used bytes), oldest first, all in the current
    billing cycle: at most USAGE_SAMPLES, none older than USAGE_WINDOW_SECONDS before the newest (the
    two newest always kept), and the older ones about USAGE_SPACING_SECONDS apart: a reading that
    comes sooner than that after the one before the newest replaces the newest. One block of
    2 * USAGE_SAMPLES doubles, allocated at the first reading, so a SIM's memory does not grow as its
    history fills: 200,000 full histories take 70 MB this way, 420 MB as lists of tuples. Byte counts
    are exact as doubles up to 9 PB."""

    __slots__ = ("_data", "_n")

    def __init__(self, readings: Iterable[tuple[float, int]] = ()) -> None:
        self._data: array[float] | None = None
        self._n = 0
        for at, used in readings:
            self.record(at, used)

    def __len__(self) -> int:
        return self._n

    def record(self, at: float, used: int) -> None:
        """One reading. One not newer than the last is ignored; one that is newer but lower starts the
        history again (a new billing cycle, or a correction: the old rate means nothing now)."""
        data, n = self._data, self._n
        if data is None:
            data = self._data = array("d", bytes(16 * USAGE_SAMPLES))
        elif n:
            if at <= data[2 * n - 2]:
                return
            if used < data[2 * n - 1]:
                n = 0
            elif n >= 2 and at - data[2 * n - 4] < USAGE_SPACING_SECONDS:
                n -= 1
        drop = 0
        while n - drop >= 2 and (n - drop >= USAGE_SAMPLES or at - data[2 * drop] > USAGE_WINDOW_SECONDS):
            drop += 1
        if drop:
            data[:2 * (n - drop)] = data[2 * drop:2 * n]
            n -= drop
        data[2 * n], data[2 * n + 1] = at, used
        self._n = n + 1

    def rate(self) -> float | None:
        """Bytes per second from the oldest reading to the newest, None until two readings at least
        60 s apart."""
        data, n = self._data, self._n
        if data is None or n < 2:
            return None
        t0, u0, t1, u1 = data[0], data[1], data[2 * n - 2], data[2 * n - 1]
        return None if t1 - t0 < 60 else (u1 - u0) / (t1 - t0)

    def readings(self) -> list[tuple[float, int]]:
        data = self._data
        return [] if data is None else [(data[2 * i], int(data[2 * i + 1])) for i in range(self._n)]


@dataclass(slots=True)
class SimState:
    iccid: str
    labels: dict[str, str]
    device_no: str = ""
    obs: SimObservation | None = None
    polled_at: float | None = None
    effective: bool | None = None
    usage: UsageHistory = field(default_factory=UsageHistory)
    # When the platform refreshed the usage numbers held in `obs` (its flow time, else the poll time).
    usage_at: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    # Derived from each observation once, when it arrives (`derive`): the rules and the points read them.
    remaining_ratio: float | None = None
    usage_rate_bytes_per_second: float | None = None
    exhausts_before_cycle_end: bool | None = None
    days_to_expiry: float | None = None
    # The end of the billing cycle that starts at `_cycle_start`: datetime math, so kept until it changes.
    _cycle_start: float | None = None
    _cycle_end: float | None = None

    def newer_usage(self, obs: SimObservation) -> bool:
        """Whether `obs` carries usage numbers at least as recent as those held (by the platform's
        flow time, or the poll time when the answer has none); if so they become the held ones."""
        at = obs.flow_at if obs.flow_at is not None else obs.polled_at
        if self.usage_at is not None and at < self.usage_at:
            return False
        self.usage_at = at
        return True

    def record_usage(self, at: float, used: int | None) -> None:
        """One usage reading as of platform time `at` (see `UsageHistory.record`)."""
        if used is not None:
            self.usage.record(at, used)

    def cycle_end(self) -> float | None:
        o = self.obs
        start = None if o is None else o.cycle_start
        if start is None:
            return None
        if start != self._cycle_start:
            self._cycle_start, self._cycle_end = start, add_month(start)
        return self._cycle_end

    def derive(self) -> None:
        """Compute the derived fields of the current observation, as of its poll time: remaining
        ratio, usage rate over the recent window, whether the remaining data runs out before the
        billing cycle ends at that rate, days to the package's expiry. Called once per observation
        (after `record_usage`), so a rule reading one costs a slot read (the points reuse the rate)."""
        o = self.obs
        if o is None:
            return
        remaining = o.remaining_bytes
        self.remaining_ratio = o.remaining_ratio
        rate = self.usage_rate_bytes_per_second = self.usage.rate()
        exhausts = None
        if remaining is not None and rate is not None and rate > 0:
            end = self.cycle_end()
            if end is not None:
                exhausts = o.polled_at + remaining / rate < end
        self.exhausts_before_cycle_end = exhausts
        self.days_to_expiry = None if o.expires_at is None else (o.expires_at - o.polled_at) / DAY

    # --- fields of alert rules (FIELDS["sim"]) computed on read, as of the last poll --------------------

    @property
    def polled(self) -> bool:
        return self.obs is not None

    @property
    def seconds_to_exhaustion(self) -> float | None:
        """Remaining data over the usage rate: None while the rate is unknown or not positive."""
        o, rate = self.obs, self.usage_rate_bytes_per_second
        if o is None or o.remaining_bytes is None or rate is None or rate <= 0:
            return None
        return o.remaining_bytes / rate

    @property
    def seconds_to_cycle_end(self) -> float | None:
        end = self.cycle_end()
        return None if end is None or self.obs is None else end - self.obs.polled_at

    @property
    def staleness_seconds(self) -> float | None:
        o = self.obs
        return None if o is None else _status_age(o, o.polled_at)

    def status_age_seconds(self, now: float) -> float | None:
        return _status_age(self.obs, now)


@dataclass(slots=True)
class AccountState:
    labels: dict[str, str] = field(default_factory=dict)
    assets: AccountAssets | None = None
    polled_at: float | None = None

    @property
    def polled(self) -> bool:
        return self.assets is not None

    def poll_age_seconds(self, now: float) -> float | None:
        return None if self.polled_at is None else now - self.polled_at


_LABEL_SETS: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}


def _shared_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """One dict per distinct label set, shared by every entity that has it (treat as read-only):
    a fleet has a few dozen label sets, not one per entity."""
    key = tuple(sorted(labels.items()))
    shared = _LABEL_SETS.get(key)
    if shared is None:
        shared = _LABEL_SETS[key] = dict(labels)
    return shared


@dataclass(slots=True)
class NotFound:
    """An entity the platform says it does not know (`kind` "device" or "sim"): how many answers in a
    row said so, since when, the last error, and until when it is not polled."""

    kind: str
    id: str
    since: float
    until: float
    error: str
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "since": self.since, "until": self.until,
                "not_found": self.count, "error": self.error}


@dataclass(frozen=True, slots=True)
class Change:
    """What one observation changed: entity keys to re-evaluate, with their records (the state's
    objects, in the same order), and device events seen for the first time."""

    devices: tuple[str, ...] = ()
    sims: tuple[str, ...] = ()
    account: bool = False
    new_events: tuple[DeviceEvent, ...] = ()
    device_records: tuple[DeviceState, ...] = ()
    sim_records: tuple[SimState, ...] = ()


def sims_changed(sims: list[SimState]) -> Change:
    """The Change of observing `sims`."""
    return Change(sims=tuple(s.iccid for s in sims), sim_records=tuple(sims))


class Recorder(Protocol):
    """What keeps a history the fleet state does not (the report's month ledger): told of every
    device poll and SIM observation."""

    def device(self, device_no: str, online: bool | None, at: float) -> None: ...

    def sim(self, iccid: str, obs: SimObservation, device_no: str) -> None: ...

    def month_figure(self, iccid: str, month: str, used: int | None) -> None: ...


class FleetState:
    """Latest observation per entity. Single-threaded (the daemon's event loop) by design."""

    def __init__(self, device_interval: float | None = None, refresh_period: float | None = None) -> None:
        self.devices: dict[str, DeviceState] = {}
        # The device job's interval, handed to every device as `poll_interval_seconds` (the daemon
        # updates it on reload; devices pick it up at their next poll).
        self.device_interval = device_interval
        # The platform's refresh period of device status, handed to every device likewise.
        self.refresh_period = refresh_period
        self.sims: dict[str, SimState] = {}
        self.account = AccountState()
        self._card_labels: Mapping[str, Mapping[str, str]] = {}  # the inventory's own labels of cards
        self.recorder: Recorder | None = None
        # Entities the platform does not know, by (kind, id): not polled until their `until`.
        self.not_found: dict[tuple[str, str], NotFound] = {}
        # ICCIDs tracked for the first time since the last `take_new_sims` (None: nobody asks).
        self._new_sims: list[str] | None = None
        # Usage histories read from the state directory, handed to each SIM when it is tracked again.
        self._saved_usage: dict[str, tuple[float | None, UsageHistory]] = {}

    # --- inventory ---------------------------------------------------------------------------------

    def sync_inventory(self, devices: Mapping[str, Mapping[str, str]],
                       cards: Mapping[str, Mapping[str, str]]) -> tuple[list[str], list[str]]:
        """Make the tracked devices and standalone cards match the inventory; returns removed
        (device numbers, ICCIDs). SIMs discovered inside a removed device go with it."""
        self._card_labels = cards
        removed_devices = [d for d in self.devices if d not in devices]
        for device_no in removed_devices:
            del self.devices[device_no]
        for device_no, labels in devices.items():
            state = self.devices.get(device_no)
            shared = _shared_labels(labels)
            if state is None:
                self.devices[device_no] = DeviceState(device_no, shared)
            else:
                state.labels = shared
        removed_sims = [i for i, s in self.sims.items()
                        if i not in cards and (not s.device_no or s.device_no not in self.devices)]
        for iccid in removed_sims:
            del self.sims[iccid]
        for iccid, labels in cards.items():
            sim = self.sims.get(iccid)
            if sim is None:
                self.sims[iccid] = self._restored(SimState(iccid, _shared_labels(labels)))
                if self._new_sims is not None:
                    self._new_sims.append(iccid)
            elif not sim.device_no:
                sim.labels = _shared_labels(labels)
        for sim in self.sims.values():
            if sim.device_no in self.devices:
                own = cards.get(sim.iccid)
                device_labels = self.devices[sim.device_no].labels
                sim.labels = _shared_labels({**device_labels, **own}) if own else device_labels
        for key in [k for k in self.not_found if k[1] not in (self.devices if k[0] == "device" else self.sims)]:
            del self.not_found[key]
        return removed_devices, removed_sims

    def iccids(self) -> list[str]:
        """Every known card: standalone ones and those discovered inside devices."""
        return list(self.sims)

    def watch_new_sims(self) -> None:
        """From now on, remember the SIMs tracked for the first time (for `take_new_sims`)."""
        self._new_sims = []

    def take_new_sims(self) -> list[str]:
        """The ICCIDs tracked for the first time since the last call (discovered inside a device or
        added by the inventory), oldest first."""
        new = self._new_sims or []
        if self._new_sims is not None:
            self._new_sims = []
        return [i for i in new if i in self.sims]

    def planned_sims(self, per_device: int) -> tuple[int, int]:
        """(SIMs known, SIMs assumed): the cards the request budget counts. A device not observed yet
        has not shown its SIMs: `per_device` are assumed for it, unless the platform does not know it."""
        unseen = sum(1 for d in self.devices.values()
                     if d.obs is None and ("device", d.device_no) not in self.not_found)
        return len(self.sims), unseen * per_device

    # --- entities the platform does not know ------------------------------------------------------

    def due(self, kind: str, now: float) -> list[str]:
        """The ids of `kind` ("device" or "sim") to poll now: all but those backing off until later."""
        ids = list(self.devices if kind == "device" else self.sims)
        if not self.not_found:
            return ids
        resting = {key[1] for key, entry in self.not_found.items() if key[0] == kind and entry.until > now}
        return [i for i in ids if i not in resting] if resting else ids

    def mark_not_found(self, kind: str, ids: Iterable[str], at: float, error: str,
                       pause: Callable[[int], float]) -> list[NotFound]:
        """The platform said it does not know these entities: each rests for `pause(n)` seconds, n
        the number of not-found answers in a row. Returns the entries that start backing off now."""
        started = []
        table = self.devices if kind == "device" else self.sims
        for key in ((kind, i) for i in ids if i in table):
            entry = self.not_found.get(key)
            if entry is None:
                entry = self.not_found[key] = NotFound(kind, key[1], since=at, until=at, error=error, count=0)
                started.append(entry)
            entry.count += 1
            entry.error = error
            entry.until = at + pause(entry.count)
        return started

    def mark_found(self, kind: str, ids: Iterable[str]) -> list[NotFound]:
        """These entities answered: polled at full rate again. Returns those that were backing off."""
        if not self.not_found:
            return []
        return [entry for entry in (self.not_found.pop((kind, i), None) for i in ids) if entry is not None]

    # --- observations --------------------------------------------------------------------------------

    def observe_device(self, obs: DeviceObservation) -> Change:
        """A device poll (device_flow, device_info): the device, its SIMs and its new events."""
        state = self.devices.get(obs.device_no)
        if state is None:  # removed from the inventory while the poll was in flight
            return Change()
        # The state keeps SIMs in SimState and events only until written: drop them from the kept
        # observation so a device's memory does not grow with its event log or stale SIM copies.
        kept: dict[str, Any] = {"events": (), "sims": ()} if obs.events or obs.sims else {}
        held = state.obs
        if held is not None and obs.location is not None and held.location == obs.location:
            # A device seldom moves: the held location is kept rather than one more object per poll.
            kept["location"] = held.location
        state.obs = replace(obs, **kept) if kept else obs
        state.polled_at = obs.polled_at
        state.online = obs.online
        state.staleness_seconds = _status_age(obs, obs.polled_at)
        state.poll_interval_seconds = self.device_interval
        state.refresh_period_seconds = self.refresh_period
        state.consecutive_failures = 0
        state.last_error = None
        if self.recorder is not None:
            self.recorder.device(obs.device_no, obs.online, obs.polled_at)
        new_events = tuple(e for e in obs.events if e.at > state.last_event_at)
        if new_events:
            state.last_event_at = max(e.at for e in new_events)
        sims = tuple(self.observe_sim(sim, obs.device_no, state.labels,
                                      effective=None if obs.effective_sim is None else sim.slot == obs.effective_sim)
                     for sim in obs.sims)
        return Change(devices=(obs.device_no,), sims=tuple(s.iccid for s in sims), new_events=new_events,
                      device_records=(state,), sim_records=sims)

    def observe_sim(self, sim: SimObservation, device_no: str, labels: Mapping[str, str],
                    effective: bool | None) -> SimState:
        """One SIM seen inside device `device_no` (or on its own, with `device_no` ""): tracked from
        now on, with `labels`; `effective` None keeps what the device said last."""
        state = self.sims.get(sim.iccid)
        if state is None:
            state = self.sims[sim.iccid] = self._restored(SimState(sim.iccid, _shared_labels(labels)))
            if self._new_sims is not None:
                self._new_sims.append(sim.iccid)
        state.device_no = device_no or state.device_no
        if device_no:
            # The device's labels, then the card entry's own (as `sync_inventory` merges them).
            own = self._card_labels.get(sim.iccid)
            state.labels = (_shared_labels({**labels, **own}) if own
                            else labels if isinstance(labels, dict) else _shared_labels(labels))
        held = state.obs
        if state.newer_usage(sim) or held is None:
            state.obs = sim
            state.record_usage(state.usage_at or sim.polled_at, sim.used_bytes)
        else:  # older numbers than those held (a less promptly refreshed answer): keep the held ones
            state.obs = sim = replace(sim, **{name: getattr(held, name) for name in USAGE_NUMBERS})
        state.polled_at = sim.polled_at
        state.effective = effective if effective is not None else state.effective
        state.consecutive_failures = 0
        state.derive()
        if self.recorder is not None:
            self.recorder.sim(sim.iccid, sim, state.device_no)
        return state

    def update_sims(self, cards: Iterable[Any], fields: tuple[str, ...], kept: tuple[str, ...] = (),
                    usage: bool = False) -> Change:
        """Card observations of a batch endpoint merged into the SIMs they are about: `fields` (named
        alike on both) copied, those in `kept` only when the card reports them, and the usage history
        extended when `usage`. Cards not tracked are ignored."""
        changed = []
        for card in cards:
            sim = self.sims.get(card.iccid)
            if sim is None:
                continue
            base = sim.obs or SimObservation(iccid=card.iccid, sim_no=card.sim_no)
            newer = usage and sim.newer_usage(card)
            values = {name: getattr(card, name) for name in fields
                      if newer or not usage or name not in USAGE_NUMBERS}
            values.update({name: getattr(base, name) for name in kept if name in values and values[name] is None})
            sim.obs = replace(base, **values, polled_at=card.polled_at)
            sim.polled_at = card.polled_at
            if newer:
                sim.record_usage(sim.usage_at or card.polled_at, card.used_bytes)
            if usage and self.recorder is not None:
                # The report's ledger sees the card's own numbers, as the card_usage points do.
                seen = sim.obs if newer else replace(sim.obs, **{name: getattr(card, name) for name in fields
                                                                 if name in USAGE_NUMBERS})
                self.recorder.sim(sim.iccid, seen, sim.device_no)
            sim.derive()
            changed.append(sim)
        return sims_changed(changed)

    def observe_account(self, assets: AccountAssets) -> Change:
        """An account assets poll."""
        self.account.assets = assets
        self.account.polled_at = assets.polled_at
        return Change(account=True)

    def record_device_failure(self, device_no: str, error: str, at: float) -> None:
        state = self.devices.get(device_no)
        if state is not None:
            state.consecutive_failures += 1
            state.poll_interval_seconds = self.device_interval
            state.refresh_period_seconds = self.refresh_period
            state.last_error = error
            state.last_error_at = at

    def record(self, kind: str, key: str) -> DeviceState | SimState | AccountState | None:
        """What alert rules of `kind` read for one entity (None when it is not tracked)."""
        if kind == "device":
            return self.devices.get(key)
        if kind == "sim":
            return self.sims.get(key)
        if kind == "account":
            return self.account
        return None

    # --- usage histories across restarts ---------------------------------------------------------------

    def _restored(self, sim: SimState) -> SimState:
        saved = self._saved_usage.pop(sim.iccid, None) if self._saved_usage else None
        if saved is not None:
            sim.usage_at, sim.usage = saved
        return sim

    def save_usage(self, state_dir: str | os.PathLike[str]) -> bool:
        """Writes every SIM's usage history (atomically); False, logged, when the disk refuses."""
        sims = {i: {"at": s.usage_at, "usage": s.usage.readings()} for i, s in self.sims.items() if s.usage}
        if not sims:  # nothing learnt (or a start that failed): leave whatever is there alone
            return True
        path = Path(state_dir) / USAGE_FILE
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"version": 1, "sims": sims}, separators=(",", ":")))
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.warning("usage histories not saved", path=str(path), error=exc.strerror or str(exc))
            return False
        return True

    def load_usage(self, state_dir: str | os.PathLike[str]) -> None:
        """Reads saved usage histories (each SIM gets its own when tracked); a missing file is none, an
        unreadable one is logged and ignored (the forecast then waits for new readings)."""
        path = Path(state_dir) / USAGE_FILE
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("version") != 1:
                raise ValueError("not a usage file of this version")
            saved = {str(i): (None if s["at"] is None else float(s["at"]),
                              UsageHistory((float(t), int(u)) for t, u in s["usage"]))
                     for i, s in data["sims"].items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("usage histories not read", path=str(path), error=str(exc))
            return
        for iccid, entry in saved.items():
            sim = self.sims.get(iccid)
            if sim is None:
                self._saved_usage[iccid] = entry
            elif not sim.usage:
                sim.usage_at, sim.usage = entry

    # --- summaries ----------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Entities by kind and state, for /metrics and `status` (see `count_states`)."""
        return count_states(self.devices.values(), self.sims.values(), self.not_found)


def count_states(devices: Iterable[DeviceState], sims: Iterable[SimState],
                 not_found: Mapping[tuple[str, str], Any]) -> dict[str, dict[str, int]]:
    """Entities by kind and state. Each entity is in exactly one state, so the states of a kind add
    up to the number of its entities. Devices: `not_found` (the platform does not know it), else
    `failing` (its last poll failed), else `online` / `offline` as last observed, else `unknown`.
    SIMs: `not_found`, else `polled` or `unpolled`."""
    by_device = {"online": 0, "offline": 0, "unknown": 0, "failing": 0, "not_found": 0}
    for d in devices:
        if not_found and ("device", d.device_no) in not_found:
            by_device["not_found"] += 1
        elif d.consecutive_failures:
            by_device["failing"] += 1
        else:
            online = d.obs.online if d.obs else None
            by_device["unknown" if online is None else "online" if online else "offline"] += 1
    by_sim = {"polled": 0, "unpolled": 0, "not_found": 0}
    for s in sims:
        by_sim["not_found" if not_found and ("sim", s.iccid) in not_found
               else "polled" if s.obs is not None else "unpolled"] += 1
    return {"device": by_device, "sim": by_sim}


def merge(changes: Sequence[Change]) -> Change:
    """One Change for several observations of one poll."""
    if len(changes) == 1:
        return changes[0]
    return Change(devices=tuple(k for c in changes for k in c.devices), sims=tuple(k for c in changes for k in c.sims),
                  account=any(c.account for c in changes), new_events=tuple(e for c in changes for e in c.new_events),
                  device_records=tuple(r for c in changes for r in c.device_records),
                  sim_records=tuple(r for c in changes for r in c.sim_records))
