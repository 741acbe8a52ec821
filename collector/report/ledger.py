"""The month ledger: what the running collector keeps for the report beyond its fleet state, per
calendar month in the platform's time zone: the days on which a poll saw each device offline, the
range of each SIM's cycle counters per billing cycle, whether a SIM's data ran out, and the
platform's month figures. The fleet state feeds it with every observation (`FleetState.recorder`);
it is saved in the state directory (`report-ledger.json`) so a restart in the middle of a month
loses nothing, and it keeps the current and the previous month (the previous one is the baseline
of cycles that began before the current month).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any, TypeVar

import orjson
import structlog

from collector.pacing import in_slices
from collector.platform.models import SimObservation
from collector.report.model import CycleRange, Month, cycle_key

log = structlog.get_logger("collector.report")

LEDGER_FILE = "report-ledger.json"
VERSION = 1
KEPT_MONTHS = 2


@dataclass(slots=True)
class SimMonth:
    cycles: dict[str, CycleRange] = field(default_factory=dict)
    ran_out: bool = False
    cycle: str = ""  # the cycle of the latest observation (a card reporting none keeps it)
    device_no: str = ""  # the device it was last seen in (the fleet state forgets it at a restart)


@dataclass(slots=True)
class MonthLedger:
    offline: dict[str, set[int]] = field(default_factory=dict)
    sims: dict[str, SimMonth] = field(default_factory=dict)
    month_figures: dict[str, int] = field(default_factory=dict)


class Ledger:
    """Per month: offline days of devices, counters of SIMs, month figures. Single-threaded (the
    daemon's event loop), like the fleet state that feeds it."""

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self.months: dict[str, MonthLedger] = {}
        self._current: Month | None = None
        self._bounds = (0.0, 0.0)
        self.dirty = False

    def month_of(self, at: float) -> tuple[Month, MonthLedger]:
        lo, hi = self._bounds
        if not lo <= at < hi or self._current is None:
            month = Month.of(at, self.tz)
            if self._current is None or month.key >= self._current.key:
                self._current, self._bounds = month, (month.start, month.end)
                self._prune()
        else:
            month = self._current
        entry = self.months.get(month.key)
        if entry is None:
            entry = self.months[month.key] = MonthLedger()
        return month, entry

    def _prune(self) -> None:
        assert self._current is not None
        keep = {self._current.key}
        m = self._current
        for _ in range(KEPT_MONTHS - 1):
            m = m.previous()
            keep.add(m.key)
        for key in [k for k in self.months if k not in keep]:
            del self.months[key]

    # --- fed by the fleet state -----------------------------------------------------------------

    def device(self, device_no: str, online: bool | None, at: float) -> None:
        """A poll of a device: offline (`online` False) marks the day."""
        if online is False:
            month, entry = self.month_of(at)
            days = entry.offline.setdefault(device_no, set())
            day = month.day_of(at)
            if day not in days:
                days.add(day)
                self.dirty = True

    def sim(self, iccid: str, obs: SimObservation, device_no: str = "") -> None:
        """A SIM's counters as observed at `obs.polled_at`, inside device `device_no` ("" unknown)."""
        used, real = obs.used_bytes, obs.real_used_bytes
        if used is None and real is None and obs.remaining_bytes is None:
            return
        _month, entry = self.month_of(obs.polled_at)
        sim = entry.sims.get(iccid)
        if sim is None:
            sim = entry.sims[iccid] = SimMonth()
        key = cycle_key(obs.cycle_start) if obs.cycle_start is not None else sim.cycle
        sim.cycle = key
        sim.device_no = device_no or obs.device_no or sim.device_no
        if used is not None or real is not None:
            cycle = sim.cycles.get(key)
            if cycle is None:
                cycle = sim.cycles[key] = CycleRange()
            cycle.add(used, real)
        if obs.remaining_bytes == 0 and obs.total_bytes:
            sim.ran_out = True
        self.dirty = True

    def month_figure(self, iccid: str, month: str, used: int | None) -> None:
        """The platform's own usage of a card in `month` (YYYYMM)."""
        if used is None or len(month) != 6:
            return
        key = f"{month[:4]}-{month[4:]}"
        entry = self.months.get(key)
        if entry is None:
            if self._current is not None and key < self._current.previous().key:
                return
            entry = self.months[key] = MonthLedger()
        entry.month_figures[iccid] = used
        self.dirty = True

    def usage_table(self, iccid: str) -> dict[str, dict[str, CycleRange]]:
        return {key: entry.sims[iccid].cycles for key, entry in self.months.items() if iccid in entry.sims}

    def forget(self, device_nos: set[str], iccids: set[str]) -> None:
        """Drops what is kept about entities that left the inventory."""
        for entry in self.months.values():
            for device_no in device_nos & entry.offline.keys():
                del entry.offline[device_no]
            for iccid in iccids & entry.sims.keys():
                del entry.sims[iccid]

    # --- persistence --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "months": {
            key: {"offline": {d: sorted(days) for d, days in entry.offline.items()},
                  "sims": {i: _sim_json(s) for i, s in entry.sims.items()},
                  "month_figures": entry.month_figures}
            for key, entry in self.months.items()}}

    def load_json(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError("not a report ledger of this version")
        months: dict[str, MonthLedger] = {}
        for key, raw in data["months"].items():
            entry = MonthLedger()
            entry.offline = {str(d): {int(day) for day in days} for d, days in raw["offline"].items()}
            entry.sims = {str(i): SimMonth({str(c): CycleRange.from_list(r) for c, r in s["cycles"].items()},
                                           bool(s["ran_out"]), str(s.get("cycle", "")),
                                           str(s.get("device_no", "")))
                          for i, s in raw["sims"].items()}
            entry.month_figures = {str(i): int(v) for i, v in raw["month_figures"].items()}
            months[str(key)] = entry
        self.months = months

    def save(self, state_dir: str | os.PathLike[str]) -> bool:
        """Writes the ledger (atomically); False, logged, when the disk refuses."""
        self.dirty = False
        return self._write(Path(state_dir), [json.dumps(self.to_json(), separators=(",", ":")).encode()])

    async def save_in_slices(self, state_dir: str | os.PathLike[str]) -> bool:
        """`save` for the running daemon: the same file, its text made a slice of entities at a time
        on the event loop (200,000 SIMs are over a second of Python) and written, in those pieces,
        by a worker thread. A change made meanwhile leaves the ledger dirty for the next save."""
        self.dirty = False
        try:
            chunks = [b'{"version":%d,"months":{' % VERSION]
            for n, (key, entry) in enumerate(list(self.months.items())):
                chunks += [b"," if n else b"", orjson.dumps(key), b':{"offline":']
                chunks += await _object_in_slices(entry.offline, sorted)
                chunks.append(b',"sims":')
                chunks += await _object_in_slices(entry.sims, _sim_json)
                chunks += [b',"month_figures":', orjson.dumps(entry.month_figures), b"}"]
            chunks.append(b"}}")
            return await asyncio.to_thread(self._write, Path(state_dir), chunks)
        except BaseException:  # cancelled by a stop, say: the save at stop must still happen
            self.dirty = True
            raise

    def _write(self, state_dir: Path, chunks: list[bytes]) -> bool:
        path = state_dir / LEDGER_FILE
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("wb") as out:
                out.writelines(chunks)
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self.dirty = True
            log.warning("report ledger not saved", path=str(path), error=exc.strerror or str(exc))
            return False
        return True

    def load(self, state_dir: str | os.PathLike[str]) -> None:
        """Reads a saved ledger; a missing one is an empty ledger, an unreadable one is set aside."""
        path = Path(state_dir) / LEDGER_FILE
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("report ledger not read", path=str(path), error=exc.strerror or str(exc))
            return
        try:
            self.load_json(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = path.with_suffix(".bad")
            log.error("report ledger unreadable, starting an empty one", path=str(path), kept_as=str(aside),
                      error=str(exc))
            with contextlib.suppress(OSError):
                path.replace(aside)


def _sim_json(sim: SimMonth) -> dict[str, Any]:
    return {"cycles": {c: r.to_list() for c, r in sim.cycles.items()}, "ran_out": sim.ran_out, "cycle": sim.cycle,
            "device_no": sim.device_no}


_V = TypeVar("_V")


async def _object_in_slices(items: dict[str, _V], convert: Callable[[_V], Any]) -> list[bytes]:
    """A JSON object of `items` with its values converted, in pieces made a slice at a time on the
    event loop. (A list of keys, not of items: 200,000 new tuples would make the garbage collector's
    next full collection walk them all.) A key removed meanwhile is left out."""
    chunks = [b"{"]
    async for part in in_slices(list(items)):
        text = orjson.dumps({key: convert(items[key]) for key in part if key in items})
        if len(text) > 2:
            chunks += [b"," if len(chunks) > 1 else b"", text[1:-1]]
    chunks.append(b"}")
    return chunks
