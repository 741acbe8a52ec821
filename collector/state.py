"""The fleet state: the latest typed observation per device, SIM and account, when the platform
refreshed it and when we polled it. Every consumer (points, alert rules, /metrics, `status`) reads
from here or from the same observation.

The state is also where derived values live, so they are computed once: staleness (poll time minus
platform refresh time), remaining data, usage rate over a recent window, projected exhaustion and
the end of the billing cycle. `FIELDS` lists, per entity kind, the names an alert rule may use.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from collector.platform.models import (
    AccountAssets,
    CardStatus,
    CardUsage,
    DeviceEvent,
    DeviceObservation,
    SimObservation,
)

# How far back the usage rate looks, and how many samples it keeps per SIM (memory bound).
USAGE_WINDOW_SECONDS = 24 * 3600.0
USAGE_SAMPLES = 16

FIELDS: dict[str, frozenset[str]] = {
    "device": frozenset({
        "device_no", "online", "online_status", "rssi_dbm", "battery_percent", "effective_sim",
        "device_status", "wifi_clients", "staleness_seconds", "status_age_seconds", "poll_age_seconds",
        "poll_interval_seconds", "consecutive_failures", "polled", "labels",
    }),
    "sim": frozenset({
        "iccid", "sim_no", "device_no", "slot", "effective", "total_bytes", "used_bytes", "remaining_bytes",
        "remaining_ratio", "usage_rate_bytes_per_second", "seconds_to_exhaustion", "seconds_to_cycle_end",
        "exhausts_before_cycle_end", "days_to_expiry", "sim_status", "internet_status", "online_status",
        "activate_status", "staleness_seconds", "status_age_seconds", "polled", "labels",
    }),
    "account": frozenset({"balance", "arrears_balance", "frozen_balance", "poll_age_seconds", "polled", "labels"}),
    "collector": frozenset({
        "upstream_requests", "upstream_errors", "upstream_error_ratio", "rate_limit_ratio", "spool_bytes",
        "spool_oldest_age_seconds", "labels",
    }),
}


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

    def staleness(self) -> float | None:
        if self.obs is None or self.obs.status_at is None:
            return None
        return self.obs.polled_at - self.obs.status_at

    def fields(self, now: float, poll_interval: float) -> dict[str, Any]:
        o = self.obs
        status_at = o.status_at if o else None
        return {
            "device_no": self.device_no,
            "online": o.online if o else None,
            "online_status": o.online_status if o else None,
            "rssi_dbm": o.rssi_dbm if o else None,
            "battery_percent": o.battery_percent if o else None,
            "effective_sim": o.effective_sim if o else None,
            "device_status": o.device_status if o else None,
            "wifi_clients": o.wifi_clients if o else None,
            "staleness_seconds": self.staleness(),
            "status_age_seconds": None if status_at is None else now - status_at,
            "poll_age_seconds": None if self.polled_at is None else now - self.polled_at,
            "poll_interval_seconds": poll_interval,
            "consecutive_failures": self.consecutive_failures,
            "polled": o is not None,
            "labels": self.labels,
        }


@dataclass(slots=True)
class SimState:
    iccid: str
    labels: dict[str, str]
    device_no: str = ""
    obs: SimObservation | None = None
    polled_at: float | None = None
    effective: bool | None = None
    # (poll time, used bytes) within the current cycle, oldest first; a small list, not a deque: at
    # 200k SIMs an empty deque's 600-byte block would be a third of the state's memory.
    usage: list[tuple[float, int]] = field(default_factory=list)
    last_error: str | None = None
    consecutive_failures: int = 0

    def record_usage(self, at: float, used: int | None) -> None:
        if used is None:
            return
        if self.usage and used < self.usage[-1][1]:
            self.usage.clear()  # a new billing cycle (or a correction): the old rate means nothing now
        if self.usage and at <= self.usage[-1][0]:
            return
        self.usage.append((at, used))
        drop = 0
        while len(self.usage) - drop > 2 and (at - self.usage[drop][0] > USAGE_WINDOW_SECONDS
                                             or len(self.usage) - drop > USAGE_SAMPLES):
            drop += 1
        if drop:
            del self.usage[:drop]

    def usage_rate(self) -> float | None:
        """Bytes per second over the recent window, None until two samples at least 60 s apart."""
        if len(self.usage) < 2:
            return None
        (t0, u0), (t1, u1) = self.usage[0], self.usage[-1]
        return None if t1 - t0 < 60 else (u1 - u0) / (t1 - t0)

    def cycle_end(self) -> float | None:
        if self.obs is None or self.obs.cycle_start is None:
            return None
        return add_month(self.obs.cycle_start)

    def fields(self, now: float) -> dict[str, Any]:
        o = self.obs
        rate = self.usage_rate()
        remaining = o.remaining_bytes if o else None
        to_exhaustion = None if remaining is None or not rate or rate <= 0 else remaining / rate
        cycle_end = self.cycle_end()
        to_cycle_end = None if cycle_end is None else cycle_end - now
        return {
            "iccid": self.iccid,
            "sim_no": o.sim_no if o else "",
            "device_no": self.device_no,
            "slot": o.slot if o else None,
            "effective": self.effective,
            "total_bytes": o.total_bytes if o else None,
            "used_bytes": o.used_bytes if o else None,
            "remaining_bytes": remaining,
            "remaining_ratio": o.remaining_ratio if o else None,
            "usage_rate_bytes_per_second": rate,
            "seconds_to_exhaustion": to_exhaustion,
            "seconds_to_cycle_end": to_cycle_end,
            "exhausts_before_cycle_end": (None if to_exhaustion is None or to_cycle_end is None
                                          else to_exhaustion < to_cycle_end),
            "days_to_expiry": o.days_to_expiry(now) if o else None,
            "sim_status": o.sim_status if o else None,
            "internet_status": o.internet_status if o else None,
            "online_status": o.online_status if o else None,
            "activate_status": o.activate_status if o else None,
            "staleness_seconds": (None if o is None or o.status_at is None else o.polled_at - o.status_at),
            "status_age_seconds": None if o is None or o.status_at is None else now - o.status_at,
            "polled": o is not None,
            "labels": self.labels,
        }


@dataclass(slots=True)
class AccountState:
    labels: dict[str, str] = field(default_factory=dict)
    assets: AccountAssets | None = None
    polled_at: float | None = None

    def fields(self, now: float) -> dict[str, Any]:
        a = self.assets
        return {
            "balance": a.balance if a else None,
            "arrears_balance": a.arrears_balance if a else None,
            "frozen_balance": a.frozen_balance if a else None,
            "poll_age_seconds": None if self.polled_at is None else now - self.polled_at,
            "polled": a is not None,
            "labels": self.labels,
        }


_LABEL_SETS: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}


def _shared_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """One dict per distinct label set, shared by every entity that has it (treat as read-only):
    a fleet has a few dozen label sets, not one per entity."""
    key = tuple(sorted(labels.items()))
    shared = _LABEL_SETS.get(key)
    if shared is None:
        shared = _LABEL_SETS[key] = dict(labels)
    return shared


@dataclass(frozen=True, slots=True)
class Change:
    """What one observation changed: entity keys to re-evaluate and device events seen for the first time."""

    devices: tuple[str, ...] = ()
    sims: tuple[str, ...] = ()
    account: bool = False
    new_events: tuple[DeviceEvent, ...] = ()


class FleetState:
    """Latest observation per entity. Single-threaded (the daemon's event loop) by design."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceState] = {}
        self.sims: dict[str, SimState] = {}
        self.account = AccountState()
        self.first_cycle_done = False

    # --- inventory ---------------------------------------------------------------------------------

    def sync_inventory(self, devices: Mapping[str, Mapping[str, str]],
                       cards: Mapping[str, Mapping[str, str]]) -> tuple[list[str], list[str]]:
        """Make the tracked devices and standalone cards match the inventory; returns removed
        (device numbers, ICCIDs). SIMs discovered inside a removed device go with it."""
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
                self.sims[iccid] = SimState(iccid, _shared_labels(labels))
            elif not sim.device_no:
                sim.labels = _shared_labels(labels)
        for sim in self.sims.values():
            if sim.device_no in self.devices:
                own = cards.get(sim.iccid)
                device_labels = self.devices[sim.device_no].labels
                sim.labels = _shared_labels({**device_labels, **own}) if own else device_labels
        return removed_devices, removed_sims

    def iccids(self) -> list[str]:
        """Every known card: standalone ones and those discovered inside devices."""
        return list(self.sims)

    # --- observations --------------------------------------------------------------------------------

    def observe_device(self, obs: DeviceObservation) -> Change:
        state = self.devices.get(obs.device_no)
        if state is None:  # removed from the inventory while the poll was in flight
            return Change()
        # The state keeps SIMs in SimState and events only until written: drop them from the kept
        # observation so a device's memory does not grow with its event log or stale SIM copies.
        state.obs = replace(obs, events=(), sims=()) if obs.events or obs.sims else obs
        state.polled_at = obs.polled_at
        state.consecutive_failures = 0
        state.last_error = None
        new_events = tuple(e for e in obs.events if e.at > state.last_event_at)
        if new_events:
            state.last_event_at = max(e.at for e in new_events)
        sims = []
        for sim in obs.sims:
            sims.append(self._observe_sim(sim, obs.device_no, state.labels,
                                          effective=None if obs.effective_sim is None
                                          else sim.slot == obs.effective_sim))
        return Change(devices=(obs.device_no,), sims=tuple(sims), new_events=new_events)

    def _observe_sim(self, sim: SimObservation, device_no: str, labels: Mapping[str, str],
                     effective: bool | None) -> str:
        state = self.sims.get(sim.iccid)
        if state is None:
            state = self.sims[sim.iccid] = SimState(sim.iccid, _shared_labels(labels))
        state.device_no = device_no or state.device_no
        if device_no:
            state.labels = labels if isinstance(labels, dict) else _shared_labels(labels)
        state.obs = sim
        state.polled_at = sim.polled_at
        state.effective = effective if effective is not None else state.effective
        state.consecutive_failures = 0
        state.record_usage(sim.polled_at, sim.used_bytes)
        return sim.iccid

    def observe_card_info(self, sims: Iterable[SimObservation]) -> Change:
        keys = []
        for sim in sims:
            known = self.sims.get(sim.iccid)
            if known is None:
                continue
            keys.append(self._observe_sim(sim, sim.device_no or known.device_no,
                                          known.labels, effective=None))
        return Change(sims=tuple(keys))

    def observe_card_status(self, statuses: Iterable[CardStatus]) -> Change:
        keys = []
        for st in statuses:
            state = self.sims.get(st.iccid)
            if state is None:
                continue
            base = state.obs or SimObservation(iccid=st.iccid, sim_no=st.sim_no)
            state.obs = replace(base, sim_status=st.sim_status, online_status=st.online_status,
                                internet_status=st.internet_status,
                                status_at=st.status_at if st.status_at is not None else base.status_at,
                                polled_at=st.polled_at)
            state.polled_at = st.polled_at
            keys.append(st.iccid)
        return Change(sims=tuple(keys))

    def observe_card_usage(self, usages: Iterable[CardUsage]) -> Change:
        keys = []
        for u in usages:
            state = self.sims.get(u.iccid)
            if state is None:
                continue
            base = state.obs or SimObservation(iccid=u.iccid, sim_no=u.sim_no)
            state.obs = replace(
                base, total_bytes=u.total_bytes, used_bytes=u.used_bytes, real_used_bytes=u.real_used_bytes,
                carrier_used_bytes=u.carrier_used_bytes,
                cycle_start=u.cycle_start if u.cycle_start is not None else base.cycle_start,
                expires_at=u.expires_at if u.expires_at is not None else base.expires_at,
                polled_at=u.polled_at)
            state.polled_at = u.polled_at
            state.record_usage(u.polled_at, u.used_bytes)
            keys.append(u.iccid)
        return Change(sims=tuple(keys))

    def observe_account(self, assets: AccountAssets) -> Change:
        self.account.assets = assets
        self.account.polled_at = assets.polled_at
        return Change(account=True)

    def record_device_failure(self, device_no: str, error: str, at: float) -> None:
        state = self.devices.get(device_no)
        if state is not None:
            state.consecutive_failures += 1
            state.last_error = error
            state.last_error_at = at

    def fields(self, kind: str, key: str, now: float, device_interval: float) -> dict[str, Any] | None:
        """The fields alert rules see for one entity (None when it is not tracked); `device_interval`
        is the device poll interval the staleness rule compares against."""
        if kind == "device":
            device = self.devices.get(key)
            return None if device is None else device.fields(now, device_interval)
        if kind == "sim":
            sim = self.sims.get(key)
            return None if sim is None else sim.fields(now)
        if kind == "account":
            return self.account.fields(now)
        return None

    # --- summaries ----------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Entities by kind and state, for /metrics and `status`."""
        devices = {"online": 0, "offline": 0, "unknown": 0, "failing": 0}
        for d in self.devices.values():
            if d.consecutive_failures:
                devices["failing"] += 1
            online = d.obs.online if d.obs else None
            devices["unknown" if online is None else "online" if online else "offline"] += 1
        sims = {"tracked": len(self.sims), "polled": sum(1 for s in self.sims.values() if s.obs)}
        return {"device": devices, "sim": sims}
