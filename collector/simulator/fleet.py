"""The simulated fleet: which devices and SIMs exist, and what each of them looks like at any
simulated instant.

Owns the behaviour model. Nothing here ticks: identities (device numbers, ICCIDs, MSISDNs) are drawn
once from the seed, every other attribute of a device is re-derived from `(seed, device index)` when
asked (a bounded cache keeps the first 20k asked for), and every time-varying value is a closed-form
function of the simulated time. So 100k devices cost a few lists of strings and start in seconds, and
the same seed, start and time always give the same answer, whatever was asked before.

The model, per device:

* A *routine* repeats every `period` (8 hours to 3 days): the preferred SIM carries the traffic, the
  other SIMs take over for a stretch each (a switch is logged in `controlResponse`, event 251, value
  = new slot), and every `off_every`-th period the device drops offline for a window. Usage of a SIM
  is `rate x time it was effective and online`: the measure of a periodic set, so it is exact and
  O(1) at any instant, grows monotonically, and restarts at each calendar-month cycle.
* Signal is multi-octave value noise around a per-device centre, clamped to -120..-50 dBm: a bounded
  random walk that can be evaluated at any instant (about one device in seven sits in a weak area).
* Battery drains and charges on a per-device sawtooth (a quarter of devices stay plugged in).
* Some SIMs are sized to exhaust their package mid-cycle, some packages do not renew and expire soon
  after the start, some cards run out of balance and are suspended.
* The platform refreshes device status every 5 simulated minutes and flow every 10 (hourly for
  queryDeviceInfo, which the vendor says refreshes flow less promptly); answers show the values of the
  last refresh, and an offline device shows what it last reported.

Operator overrides (`/_sim/...`: force offline, pin RSSI, drain the battery, stop the platform's
refresh, suspend, set a SIM's remaining data, end a package, pin the account balance) are dated, so
the model stays a function of time; an override also counts as a refresh, so it shows at once.

Times are simulated Unix seconds throughout; the dates a profile keeps formatted (`created_text`...)
are formatted with `stamp`, the clock the answers are reported on (`collector.simulator.clock`).
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.simulator.localtime import LocalTime

# --- wire codes (inferred: the vendor's status-code page is missing; see docs/simulator.md) ---------

DEVICE_ONLINE = 1
DEVICE_OFFLINE = 0
SIM_ACTIVE = 4  # simStatus of both SIMs in the sample
SIM_SUSPENDED = 5
INTERNET_ON = 1  # the sample's effective SIM
INTERNET_OFF = 2  # the sample's other SIM, which has a breakAt
CARD_ONLINE = 3  # the sample's effective SIM
CARD_IDLE = 2
EVENT_SIM_SWITCH = 251
ACTION_SUSPEND = 1
ACTION_RESUME = 2
ACTION_SUBMITTED = 1
ACTION_DONE = 2

STATUS_REFRESH = 300.0
FLOW_REFRESH = 600.0
INFO_FLOW_REFRESH = 3600.0
ACTION_PENDING = 300.0  # a suspend/resume shows "submitted" this long, then "done"
RSSI_MIN, RSSI_MAX = -120, -50
PROFILE_CACHE = 20_000  # devices whose derived profile stays in memory (about 4.5 KB each)
DAY = 86400.0
MONTH = 30.44 * DAY
GIB = 1024 * 1024  # in KiB, the wire's flow unit
INF = math.inf

# How far before a boundary computed with float arithmetic (a refresh window, a routine offline window,
# a renewal) a state stops being known constant: far more than the rounding error, far less than a second.
STABLE_MARGIN = 1e-3

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15

MOBILE, UNICOM, TELECOM = 0, 1, 2
_ICCID_PREFIXES = {MOBILE: ("898600", "898602", "898604", "898607", "898608"),
                   UNICOM: ("898601", "898606", "898609"), TELECOM: ("898603", "898611")}
_MSISDN_PREFIXES = {MOBILE: ("1064",), UNICOM: ("1460", "1461"), TELECOM: ("1410", "1442")}
MNC = {MOBILE: "0", UNICOM: "1", TELECOM: "11"}
_TACS = ("86521407", "86493104", "86210705", "86837103", "86001602")
_PACKAGES_GIB = (10, 30, 50, 100, 100, 100, 100, 200, 300)
_CITIES = (
    ("广东省", "东莞市", "440000", "441900", 22.7617, 114.1027),
    ("广东省", "深圳市", "440000", "440300", 22.5431, 114.0579),
    ("广东省", "广州市", "440000", "440100", 23.1291, 113.2644),
    ("北京市", "北京市", "110000", "110100", 39.9042, 116.4074),
    ("上海市", "上海市", "310000", "310100", 31.2304, 121.4737),
    ("浙江省", "杭州市", "330000", "330100", 30.2741, 120.1551),
    ("四川省", "成都市", "510000", "510100", 30.5728, 104.0668),
    ("湖北省", "武汉市", "420000", "420100", 30.5928, 114.3055),
    ("江苏省", "南京市", "320000", "320100", 32.0603, 118.7969),
)
_STREETS = ("高园路", "人民路", "中山路", "解放路", "建设路", "滨江路", "新华路")
_LANDMARKS = ("石鼓广场", "地铁站", "购物中心", "人民医院", "体育馆", "火车站", "工业园")
_SOFT_VERSIONS = (
    "UZ901LD1.0_KSBC_JINANZHENGYI_SL_V2.01.01.02P42U28P1_02-250730",
    "UZ901LD1.0_KSBC_JINANZHENGYI_SL_V2.01.01.02P40U26P1_02-250412",
    "MF903_V1.3.7_CN_20250218",
)
_NETWORKS = ("1,4", "1,4", "1,2,4", "1", "1,2,3,4")
_WEB_LOGINS = ("admin", "admin", "12345678", "888888")


# --- deterministic randomness ----------------------------------------------------------------------


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of an integer."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _signed(key: int, i: int) -> float:
    """A uniform value in [-1, 1) for the lattice point `i` of noise stream `key`."""
    return _mix(key + i * _GOLDEN) / 9223372036854775808.0 - 1.0


def noise(key: int, x: float) -> float:
    """Smooth value noise in [-1, 1]: random values on the integers, eased in between."""
    i = math.floor(x)
    f = x - i
    a = _signed(key, i)
    b = _signed(key, i + 1)
    f = f * f * (3.0 - 2.0 * f)
    return a + (b - a) * f


_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _luhn(body: str) -> str:
    """The Luhn check digit of an IMEI body (14 digits)."""
    digits = [ord(ch) - 48 for ch in body]
    total = sum(_DOUBLED[d] for d in digits[-1::-2]) + sum(digits[-2::-2])
    return str((10 - total % 10) % 10)


def bucket(t: float, period: float, phase: float) -> float:
    """The start of the refresh window (`period` long, offset by `phase`) containing `t`."""
    return math.floor((t - phase) / period) * period + phase


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


# --- identities ----------------------------------------------------------------------------------------


class FleetIds:
    """The fleet's ids, drawn once from the seed. Device `i` is the same in every fleet of more than `i`
    devices with that seed (prefix-stable), so a 10k benchmark fleet is the first 10k of a 100k one."""

    def __init__(self, devices: int, seed: int) -> None:
        if devices < 1:
            raise ValueError(f"devices must be >= 1, got {devices}")
        self._draw = random.Random(seed).random
        draw = self._draw
        self.device_nos: list[str] = []
        self.device_index: dict[str, int] = {}
        self.sim_start = array("I", [0])  # device i owns SIMs sim_start[i] .. sim_start[i+1]-1
        self.iccids: list[str] = []
        self.sim_nos: list[str] = []
        self.sim_device = array("I")
        self.iccid_index: dict[str, int] = {}
        msisdns: set[str] = set()
        for index in range(devices):
            device_no = self._device_no()
            while device_no in self.device_index:
                device_no = self._device_no()
            self.device_index[device_no] = index
            self.device_nos.append(device_no)
            roll = draw()
            count = 1 if roll < 0.15 else 2 if roll < 0.80 else 3 if roll < 0.92 else 4
            for _ in range(count):
                roll = draw()
                operator = MOBILE if roll < 0.55 else UNICOM if roll < 0.80 else TELECOM
                iccid = self._iccid(operator)
                while iccid in self.iccid_index:
                    iccid = self._iccid(operator)
                msisdn = self._msisdn(operator)
                while msisdn in msisdns:
                    msisdn = self._msisdn(operator)
                msisdns.add(msisdn)
                self.iccid_index[iccid] = len(self.iccids)
                self.iccids.append(iccid)
                self.sim_nos.append(msisdn)
                self.sim_device.append(index)
            self.sim_start.append(len(self.iccids))

    def _pick(self, options: tuple[str, ...] | str) -> str:
        return options[int(self._draw() * len(options))]

    def _digits(self, count: int) -> str:
        return f"{int(self._draw() * 10**count):0{count}d}"

    def _device_no(self) -> str:
        if self._draw() < 0.05:
            # The vendor's request example uses a 10-digit device number; some start with 0.
            return self._pick("90") + self._digits(9)
        body = self._pick(_TACS) + self._digits(6)
        return body + _luhn(body)

    def _iccid(self, operator: int) -> str:
        prefix = self._pick(_ICCID_PREFIXES[operator])
        if operator == TELECOM:
            return prefix + self._digits(13)
        digits = prefix + self._digits(14)
        if operator == MOBILE and self._draw() < 0.3:
            # Like the sample's 898608841925D2210999: ICCIDs are strings, not numbers.
            digits = digits[:12] + self._pick("ABCDEF") + digits[13:]
        return digits

    def _msisdn(self, operator: int) -> str:
        return self._pick(_MSISDN_PREFIXES[operator]) + self._digits(9)


def operator_of(iccid: str) -> int:
    prefix = iccid[:6]
    for operator, prefixes in _ICCID_PREFIXES.items():
        if prefix in prefixes:
            return operator
    return MOBILE


# --- profiles: the static part of a device, re-derived from the seed on demand --------------------------


@dataclass(slots=True, eq=False)
class SimProfile:
    """What does not change about one SIM (flow values in KiB, times in Unix seconds)."""

    index: int  # global SIM index
    slot: int  # `vice`: 1 main, 2 vice1, 3 vice2, 4 usim
    iccid: str
    sim_no: str
    operator: int
    record_id: int
    imsi: str
    total: int
    rate: float  # KiB per second while this SIM carries the device's traffic
    virtual: float  # useFlow / realUseFlow (a reseller's "virtual usage" rule)
    virtual_rule: int
    dock_ratio: float  # dockUserFlow / realUseFlow (the carrier's lagging count)
    pool_id: int
    package_group: int
    gateway_id: int
    gateway_scheme: int
    robin_level: int
    recharge_times: int
    created_at: float
    activate_at: float
    auth_at: float | None
    renew_days: int
    renew_anchor: float
    fixed_end: float | None  # a package that does not renew: expires then
    suspend_at: float | None  # runs out of balance and is suspended then
    balance0: int
    arrears: int
    past_break: tuple[float, float] | None
    past_action_at: float | None
    idle_since: float
    # The static dates, formatted once.
    created_text: str
    activate_text: str
    auth_text: str | None


@dataclass(slots=True, eq=False)
class DeviceProfile:
    """What does not change about one device, and its routine (see the module docstring)."""

    index: int
    device_no: str
    imei: str
    record_id: int
    sims: tuple[SimProfile, ...]
    origin: float
    period: float
    segments: tuple[tuple[float, float, int], ...]  # (start, end, slot) offsets within the period
    switches: tuple[tuple[float, int, int], ...]  # (offset, new slot, old slot), ascending
    # The same in a period with an offline window: switches inside it are reported on reconnecting.
    offline_switches: tuple[tuple[float, int, int], ...]
    full: tuple[float, ...]  # by slot: seconds effective per period
    off_full: tuple[float, ...]  # by slot: seconds of that lost in an offline period
    off_every: int  # 0 = never offline; else periods k with k % off_every == off_residue
    off_residue: int
    off_start: float
    off_end: float
    key: int
    rssi_center: float
    plugged: bool
    battery_low: float
    battery_drain: float
    battery_charge: float
    battery_phase: float
    max_conn: int
    conn_level: float
    has_5g: bool
    wifi_name: str
    wifi_pass: str
    wifi_name_5g: str
    wifi_pass_5g: str
    mac: str
    web_login: str
    soft_version: str
    network: str
    wisdom: int
    province_code: str
    city_code: str
    region_name: str
    lat: float
    lng: float
    cell_base: int
    lac_base: int
    created_at: float
    status_phase: float
    flow_phase: float
    created_text: str

    # The routine. Offsets are within a period; `x` is a Unix time.

    def _split(self, x: float) -> tuple[int, float]:
        k = math.floor((x - self.origin) / self.period)
        return k, x - self.origin - k * self.period

    def _offline_period(self, k: int) -> bool:
        return self.off_every > 0 and k % self.off_every == self.off_residue

    def scheduled_offline_since(self, x: float) -> float | None:
        """When the current scheduled offline window began, or None if the routine has it online."""
        k, o = self._split(x)
        if self._offline_period(k) and self.off_start <= o < self.off_end:
            return self.origin + k * self.period + self.off_start
        return None

    def next_offline_change(self, x: float) -> float:
        """A time after `x` no later than the next start or end of a scheduled offline window
        (`scheduled_offline_since` is constant from `x` until shortly before it)."""
        k, o = self._split(x)
        base = self.origin + k * self.period
        end = base + self.period
        if self._offline_period(k):
            if o < self.off_start:
                return min(base + self.off_start, end)
            if o < self.off_end:
                return min(base + self.off_end, end)
        return end

    def slot_at(self, x: float) -> int:
        """The effective SIM slot at `x` per the routine (ignoring whether the device is online)."""
        o = self._split(x)[1]
        for start, end, slot in self.segments:
            if start <= o < end:
                return slot
        return self.segments[-1][2]

    def _partial(self, slot: int, o: float) -> float:
        total = 0.0
        for start, end, s in self.segments:
            if start >= o:
                break
            if s == slot:
                total += (end if end < o else o) - start
        return total

    def _partial_offline(self, slot: int, o: float) -> float:
        hi = min(o, self.off_end)
        total = 0.0
        for start, end, s in self.segments:
            if s == slot:
                lo, top = max(start, self.off_start), min(end, hi)
                if top > lo:
                    total += top - lo
        return total

    def cumulative(self, slot: int, x: float) -> float:
        """Seconds `slot` was effective with the device online, from the routine's origin to `x`."""
        k, o = self._split(x)
        result = k * self.full[slot] + self._partial(slot, o)
        m = self.off_every
        if m:
            # Offline periods j < k: j ≡ residue (mod m); their count is ceil((k - residue) / m).
            result -= ((k - self.off_residue + m - 1) // m) * self.off_full[slot]
            if k % m == self.off_residue:
                result -= self._partial_offline(slot, o)
        return result

    def switches_before(self, x: float, limit: int, periods: int = 4) -> list[tuple[float, int, int]]:
        """Up to `limit` routine SIM switches at or before `x`, newest first (a device offline at a
        switch reports it when it comes back)."""
        found: list[tuple[float, int, int]] = []
        if not self.switches:
            return found
        k, o = self._split(x)
        for j in range(k, k - periods, -1):
            base = self.origin + j * self.period
            for offset, new, old in reversed(self.offline_switches if self._offline_period(j) else self.switches):
                if j == k and offset > o:
                    continue
                found.append((base + offset, new, old))
                if len(found) >= limit:
                    return found
        return found


def _build_routine(r: Callable[[], float], slots: int) -> tuple[float, tuple[tuple[float, float, int], ...]]:
    period = math.exp(_LOG_8H + (_LOG_3D - _LOG_8H) * r())
    if slots == 1:
        return period, ((0.0, period, 1),)
    preferred = 1 if r() < 0.7 else 2
    others = [s for s in range(1, slots + 1) if s != preferred]
    if len(others) > 1 and r() < 0.5:
        others.reverse()
    first = (0.3 + 0.3 * r()) * period
    # The other SIMs share 30-90 % of the rest; the preferred one comes back before the period ends.
    away = (0.3 + 0.6 * r()) * (period - first) / len(others)
    segments = [(0.0, first, preferred)]
    cursor = first
    for slot in others:
        segments.append((cursor, cursor + away, slot))
        cursor += away
    segments.append((cursor, period, preferred))
    return period, tuple(segments)


def _slot_before(segments: tuple[tuple[float, float, int], ...], offset: float) -> int:
    """The slot in effect just before `offset` (the previous period's last one at offset 0)."""
    for start, end, slot in segments:
        if start < offset <= end:
            return slot
    return segments[-1][2]


def _reported_switches(segments: tuple[tuple[float, float, int], ...],
                       switches: tuple[tuple[float, int, int], ...], off_start: float, off_end: float,
                       period: float) -> tuple[tuple[float, int, int], ...]:
    """The switches a device reports in a period with an offline window: those inside the window
    become one switch at reconnection, if it came back on another SIM."""
    reported = [s for s in switches if not off_start <= s[0] < off_end]
    if len(reported) < len(switches) and off_end < period:
        before = _slot_before(segments, off_start)
        after = next(slot for start, end, slot in segments if start <= off_end < end)
        if before != after:
            reported.append((off_end, after, before))
    return tuple(sorted(reported))


_LOG_8H = math.log(8 * 3600)
_LOG_3D = math.log(3 * DAY)


# --- states: what the platform reports at one instant -------------------------------------------------


@dataclass(slots=True, eq=False)
class SimState:
    """One SIM as the platform reports it at one instant (flow in KiB)."""

    profile: SimProfile
    device: DeviceProfile
    cycle_start: float
    total: int
    used: int  # useFlow
    real: int  # realUseFlow
    dock: int  # dockUserFlow
    end_at: float
    sim_status: int
    internet_status: int
    online_status: int
    break_at: float | None
    break_remove_at: float | None
    status_at: float
    flow_at: float
    last_active_at: float
    last_robin_at: float
    balance: int
    arrears: int


@dataclass(slots=True, eq=False)
class DeviceState:
    """One device as the platform reports it at one instant."""

    profile: DeviceProfile
    online: bool
    status_at: float  # when the platform last heard from the device
    flow_at: float
    effective_slot: int
    rssi: int
    battery: int
    conn: int
    conn_5g: int
    terminal_mac: str
    events: list[tuple[float, int, int]]  # (time, new slot, old slot), newest first
    sims: list[SimState] = field(default_factory=list)
    # Asked again at any time in [t, until) (t: the time asked, no override in between), the device
    # reports exactly this state; until <= t when that cannot be vouched for (e.g. a balance running down).
    until: float = INF


@dataclass(slots=True, eq=False)
class Action:
    """One entry of the card operation log."""

    created_at: float
    kind: int
    remark: str


# --- the fleet -----------------------------------------------------------------------------------------


class Fleet:
    """Every device and SIM of one seed, evaluated at any simulated time, plus operator overrides."""

    def __init__(self, devices: int, seed: int, start: float, zone: str = "Asia/Shanghai",
                 profile_cache: int = PROFILE_CACHE, stamp: Callable[[float], str] | None = None) -> None:
        self.seed = seed
        self.start = float(start)
        self.face = LocalTime(zone)
        # Formats an instant as the answers report it (the profiles keep their static dates formatted).
        self.stamp = stamp or self.face.format
        self.ids = FleetIds(devices, seed)
        self._key = _mix(seed ^ 0x5EED5EED)
        self._profiles: dict[int, DeviceProfile] = {}
        self._profile_cache = profile_cache
        # Overrides, all dated: [start, end) intervals (end = INF while open).
        self._offline_holds: dict[int, list[list[float]]] = {}
        self._suspend_holds: dict[int, list[list[float]]] = {}
        self._scheduled_resume: dict[int, float] = {}
        self._adjusted: dict[int, list[tuple[float, float]]] = {}  # sim -> [(when, real KiB added)], dated
        self._ends: dict[int, tuple[float, float]] = {}  # sim -> (set when, the package's new end)
        self._rssi_pins: dict[int, tuple[float, int]] = {}
        self._batteries: dict[int, tuple[float, int, int, float]] = {}  # device -> (from, level then, to, %/s)
        self._frozen: dict[int, list[list[float]]] = {}  # device -> [start, end) without platform refresh
        self._balance: tuple[float, float] | None = None  # (from, the account balance pinned)
        self._touched: dict[int, float] = {}  # device -> last override (counts as a refresh)
        self._crossings: dict[tuple[int, float, float], float] = {}  # (sim, cycle, stretch) -> ran out
        self.generation = 0  # bumped by every override: states computed before it may be stale

    # --- ids ---------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids.device_nos)

    def device_numbers(self) -> list[str]:
        return list(self.ids.device_nos)

    def iccids(self) -> list[str]:
        return list(self.ids.iccids)

    def find_device(self, device_no: str) -> int | None:
        return self.ids.device_index.get(device_no)

    def find_sim(self, iccid: str) -> int | None:
        return self.ids.iccid_index.get(iccid)

    def device_of_sim(self, sim: int) -> int:
        return self.ids.sim_device[sim]

    def sim_profile(self, sim: int) -> SimProfile:
        device = self.profile(self.ids.sim_device[sim])
        return device.sims[sim - self.ids.sim_start[device.index]]

    # --- profiles ----------------------------------------------------------------------------------

    def profile(self, index: int) -> DeviceProfile:
        """Device `index`'s profile. The first `profile_cache` devices asked for stay cached; others
        are rebuilt on each use. Unlike an LRU, a round-robin poll of a fleet larger
        than the cache still hits for the cached share of it."""
        found = self._profiles.get(index)
        if found is None:
            found = self._build_profile(index)
            if len(self._profiles) < self._profile_cache:
                self._profiles[index] = found
        return found

    # Profiles are built on every cache miss (a 100k fleet does not fit), so the builders below draw
    # inline from one `random()` and slice cosmetic fields out of one 64-bit hash.

    def _build_profile(self, index: int) -> DeviceProfile:
        r = random.Random(_mix(self._key + index * _GOLDEN)).random
        ids = self.ids
        device_no = ids.device_nos[index]
        first_sim = ids.sim_start[index]
        slots = ids.sim_start[index + 1] - first_sim
        start = self.start
        created = self.face.midnight(start - (20 + 680 * r()) * DAY) + (8 + 14 * r()) * 3600

        period, segments = _build_routine(r, slots)
        switches = tuple((begin, slot, segments[i - 1][2]) for i, (begin, _, slot) in enumerate(segments)
                         if segments[i - 1][2] != slot)
        roll = r()
        if roll < 0.35:
            off_every, window = 0, 0.0
        elif roll < 0.96:
            off_every, window = 2 + int(7 * r()), 0.02 + 0.13 * r()
        else:  # a flaky device in a dead zone, or often switched off
            off_every, window = 1, 0.4 + 0.3 * r()
        off_start = (1.0 - window) * r() * period
        off_end = off_start + window * period
        offline_switches = _reported_switches(segments, switches, off_start, off_end, period)
        full = [0.0] * 5
        off_full = [0.0] * 5
        for begin, end, slot in segments:
            full[slot] += end - begin
            if end > off_start and begin < off_end:
                off_full[slot] += min(end, off_end) - max(begin, off_start)
        offline_share = 1.0 / off_every if off_every else 0.0
        sims = tuple(
            self._build_sim(r, first_sim + slot - 1, slot, created,
                            (full[slot] - off_full[slot] * offline_share) / period)
            for slot in range(1, slots + 1))

        h = _mix(self._key ^ (index * 0x632BE59BD9B4E019))
        mac = f"3C:68:01:{h & 0xFF:02X}:{(h >> 8) & 0xFF:02X}:{(h >> 16) & 0xFF:02X}"
        wifi_name = f"MIFI-{(h >> 8) & 0xFF:02X}{(h >> 16) & 0xFF:02X}"
        has_5g = (h >> 24) & 0xFF < 77  # 30 %
        province, city, province_code, city_code, lat, lng = _CITIES[(h >> 32) % len(_CITIES)]
        g = _mix(h)
        weak = r() < 0.15
        if len(device_no) == 15:
            imei = device_no
        else:
            body = f"{_TACS[g % len(_TACS)]}{(g >> 8) % 10**6:06d}"
            imei = body + _luhn(body)
        return DeviceProfile(
            index=index, device_no=device_no, imei=imei, record_id=1000 + index, sims=sims,
            origin=1_577_836_800.0 + period * r(),  # 2020-01-01 plus a phase
            period=period, segments=segments, switches=switches, offline_switches=offline_switches,
            full=tuple(full), off_full=tuple(off_full),
            off_every=off_every, off_residue=int(off_every * r()), off_start=off_start, off_end=off_end,
            key=h, rssi_center=-112 + 8 * r() if weak else -95 + 33 * r(),
            plugged=r() < 0.25, battery_low=5 + 30 * r(),
            battery_drain=(6 + 24 * r()) * 3600, battery_charge=(1 + 2 * r()) * 3600,
            battery_phase=33 * 3600 * r(), max_conn=(10, 10, 16, 32)[(g >> 40) & 3], conn_level=0.6 * r(),
            has_5g=has_5g, wifi_name=wifi_name, wifi_pass=str(10**9 + g % (9 * 10**9)),
            wifi_name_5g=f"{wifi_name}-5G" if has_5g else "",
            wifi_pass_5g=str(10**9 + h % (9 * 10**9)) if has_5g else "",
            mac=mac, web_login=_WEB_LOGINS[(g >> 42) & 3], soft_version=_SOFT_VERSIONS[(g >> 44) % 3],
            network=_NETWORKS[(g >> 46) % len(_NETWORKS)], wisdom=1 if slots > 1 and r() < 0.7 else 0,
            province_code=province_code, city_code=city_code,
            region_name=f"{province} {city} {_STREETS[(g >> 49) % len(_STREETS)]} "
                        f"靠近{_LANDMARKS[(g >> 52) % len(_LANDMARKS)]}",
            lat=round(lat - 0.08 + 0.16 * r(), 7), lng=round(lng - 0.08 + 0.16 * r(), 7),
            cell_base=10**7 + (h >> 36) % (29 * 10**7), lac_base=1000 + (g >> 20) % 59000,
            # Refreshes run in batches (43 status and 46 flow slots): refresh times repeat across the fleet,
            # so their text is formatted once per window, not once per device.
            created_at=created, status_phase=7.0 * int(43 * r()), flow_phase=13.0 * int(46 * r()),
            created_text=self.stamp(created),
        )

    def _build_sim(self, r: Callable[[], float], sim: int, slot: int, created: float,
                   share: float) -> SimProfile:
        start = self.start
        iccid = self.ids.iccids[sim]
        h = _mix(self._key + sim * 0xD1B54A32D192ED03)
        total = _PACKAGES_GIB[h % len(_PACKAGES_GIB)] * GIB
        roll = r()
        if roll < 0.06:
            target = 1.1 + 0.7 * r()  # exhausts mid-cycle
        elif roll < 0.16:
            target = 0.85 + 0.2 * r()  # approaches exhaustion
        else:
            target = 0.05 + 0.65 * r()
        virtual_rule = (11, 12, 23)[(h >> 8) % 3] if r() < 0.2 else 0
        virtual = 1.1 + 0.2 * r() if virtual_rule else 1.0
        # Three cards in ten were moved over from another device, activated long before this one.
        activate = (created - 400 * DAY * r() if r() < 0.3 else min(created + 5 * DAY * r(), start - DAY))
        auth = activate + 30 * DAY * r() if r() < 0.5 else None
        fixed_end = None
        if r() < 0.1:  # a package that does not renew
            fixed_end = self.face.midnight(start + (1 + 9 * r() if r() < 0.5 else 30 + 270 * r()) * DAY)
        suspend_at = start + (0.2 + 6.8 * r()) * DAY if r() < 0.03 else None
        past_break = None
        if r() < 0.15:
            broke = start - (2 + 58 * r()) * DAY
            past_break = (broke, self.face.midnight(broke) + DAY + 10 * 3600 - 1)
        return SimProfile(
            index=sim, slot=slot, iccid=iccid, sim_no=self.ids.sim_nos[sim], operator=operator_of(iccid),
            record_id=180_000 + sim, imsi=f"4600{(h >> 12) % 10**11:011d}" if (h >> 50) & 1 else "",
            total=total, rate=target * total / virtual / (max(share, 0.02) * MONTH), virtual=virtual,
            virtual_rule=virtual_rule, dock_ratio=0.1 + 0.9 * r(),
            pool_id=(3, 7)[(h >> 51) & 1] if (h >> 52) % 10 == 0 else 0,
            package_group=(63, 63, 71, 88)[(h >> 56) & 3], gateway_id=(270, 270, 312)[(h >> 58) % 3],
            gateway_scheme=(269, 269, 311)[(h >> 58) % 3], robin_level=1 + (h >> 60) % 8,
            recharge_times=(h >> 4) % 7, created_at=created, activate_at=activate, auth_at=auth,
            renew_days=(30, 90, 180, 365)[(h >> 61) & 3], renew_anchor=self.face.midnight(activate),
            fixed_end=fixed_end, suspend_at=suspend_at,
            balance0=5 + int(46 * r()) if suspend_at is not None else 0,
            arrears=1 + int(30 * r()) if suspend_at is not None else 0,
            past_break=past_break,
            past_action_at=start - (1 + 89 * r()) * DAY if r() < 0.1 else None,
            idle_since=start - (1 + 39 * r()) * DAY, created_text=self.stamp(created),
            activate_text=self.stamp(activate), auth_text=None if auth is None else self.stamp(auth),
        )

    # --- overrides (the admin endpoint) -----------------------------------------------------------

    def _changed(self, device: int, t: float) -> None:
        self._touched[device] = max(t, self._touched.get(device, t))
        self._crossings.clear()
        self.generation += 1

    @staticmethod
    def _open(holds: list[list[float]]) -> bool:
        return bool(holds) and holds[-1][1] == INF

    def force_offline(self, device: int, t: float) -> None:
        holds = self._offline_holds.setdefault(device, [])
        if not self._open(holds):
            holds.append([t, INF])
        self._changed(device, t)

    def end_forced_offline(self, device: int, t: float) -> None:
        """Back to the device's routine (which may itself have it offline right now)."""
        holds = self._offline_holds.get(device)
        if holds and self._open(holds):
            holds[-1][1] = t
        self._changed(device, t)

    def suspend(self, sim: int, t: float) -> bool:
        if self._suspended_since(self.sim_profile(sim), t) is not None:
            return False
        self._suspend_holds.setdefault(sim, []).append([t, INF])
        self._changed(self.device_of_sim(sim), t)
        return True

    def resume(self, sim: int, t: float) -> bool:
        profile = self.sim_profile(sim)
        if self._suspended_since(profile, t) is None:
            return False
        holds = self._suspend_holds.get(sim)
        if holds and self._open(holds):
            holds[-1][1] = t
        if profile.suspend_at is not None and profile.suspend_at <= t:
            self._scheduled_resume.setdefault(sim, t)
        self._changed(self.device_of_sim(sim), t)
        return True

    def exhaust(self, sim: int, t: float, remaining_ratio: float = 0.001) -> None:
        """Push this cycle's usage so that only `remaining_ratio` of the package is left at `t`."""
        self.set_remaining(sim, t, remaining_ratio)

    def top_up(self, sim: int, t: float, remaining_ratio: float = 1.0) -> None:
        """Put this cycle's data back so that `remaining_ratio` of the package is left at `t` (1: the
        usage restarts from zero); the SIM keeps consuming from there."""
        self.set_remaining(sim, t, remaining_ratio)

    def set_remaining(self, sim: int, t: float, remaining_ratio: float) -> None:
        """From `t` on, this cycle's usage is what leaves `remaining_ratio` of the package, plus what
        the SIM uses after `t` (a step up exhausts it, a step down tops it up)."""
        if not 0 <= remaining_ratio <= 1:
            raise ValueError(f"remaining_ratio must be in [0, 1], got {remaining_ratio}")
        profile = self.sim_profile(sim)
        device = self.profile(self.device_of_sim(sim))
        cycle_start, _ = self.face.cycle(t)
        now = self._real_usage(device, profile, cycle_start, t) + self._adjustment(sim, cycle_start, t)
        target = profile.total * (1.0 - remaining_ratio) / profile.virtual
        self._adjusted.setdefault(sim, []).append((t, target - now))
        self._changed(device.index, t)

    def end_package(self, sim: int, t: float, end: float | None) -> None:
        """From `t` on the SIM's package does not renew and ends at `end` (not before `t`): `endAt`
        shows it, and from then on the card is cut off. None: back to the package's own end."""
        if end is None:
            self._ends.pop(sim, None)
        else:
            self._ends[sim] = (t, max(end, t))
        self._changed(self.device_of_sim(sim), t)

    def drain_battery(self, device: int, t: float, level: int | None, rate: float | None = None) -> None:
        """From `t` the battery falls to `level` percent at `rate` percent per (simulated) hour, at once
        without one, and stays there. None: back to its own charge cycle."""
        if level is None:
            self._batteries.pop(device, None)
        else:
            current = self.battery(self.profile(device), t)
            self._batteries[device] = (t, current, level, (rate or 0.0) / 3600.0)
        self._changed(device, t)

    def freeze(self, device: int, t: float) -> None:
        """The platform stops refreshing the device's data at `t` (it stays online as its routine has
        it): its last refresh, values and `lastDeviceStatusAt` stay those of `t`."""
        holds = self._frozen.setdefault(device, [])
        if not self._open(holds):
            self._changed(device, t)  # the last refresh is now
            holds.append([t, INF])

    def unfreeze(self, device: int, t: float) -> None:
        """The platform refreshes the device again, at once."""
        holds = self._frozen.get(device)
        if holds and self._open(holds):
            holds[-1][1] = t
        self._changed(device, t)

    def pin_balance(self, t: float, balance: float | None) -> None:
        """The account's balance from `t` on (None: back to the model's)."""
        self._balance = None if balance is None else (t, float(balance))
        self.generation += 1

    def pin_rssi(self, device: int, dbm: int | None, t: float) -> None:
        if dbm is None:
            self._rssi_pins.pop(device, None)
        else:
            self._rssi_pins[device] = (t, dbm)
        self._changed(device, t)

    def reset_overrides(self) -> None:
        for holder in (self._offline_holds, self._suspend_holds, self._scheduled_resume, self._adjusted,
                       self._ends, self._rssi_pins, self._batteries, self._frozen, self._touched, self._crossings):
            holder.clear()
        self._balance = None
        self.generation += 1

    def override_counts(self) -> dict[str, int]:
        return {
            "forced_offline": sum(1 for h in self._offline_holds.values() if self._open(h)),
            "suspended_by_admin": sum(1 for h in self._suspend_holds.values() if self._open(h)),
            "usage_set_by_admin": len(self._adjusted),
            "rssi_pinned": len(self._rssi_pins),
            "battery_drained": len(self._batteries),
            "refresh_frozen": sum(1 for h in self._frozen.values() if self._open(h)),
            "package_ends_set": len(self._ends),
            "balance_pinned": int(self._balance is not None),
        }

    # --- evaluation ---------------------------------------------------------------------------------

    def _forced_since(self, device: int, t: float) -> float | None:
        for start, end in self._offline_holds.get(device, ()):
            if start <= t < end:
                return start
        return None

    def offline_since(self, device: DeviceProfile, t: float) -> float | None:
        """When the device went offline, or None if it is online at `t`."""
        scheduled = device.scheduled_offline_since(t)
        if not self._offline_holds:
            return scheduled
        forced = self._forced_since(device.index, t)
        if scheduled is None or forced is None:
            return scheduled if forced is None else forced
        return min(scheduled, forced)

    def _suspension_intervals(self, sim: SimProfile) -> list[tuple[float, float]]:
        intervals = [(a, b) for a, b in self._suspend_holds.get(sim.index, ())]
        if sim.suspend_at is not None:
            intervals.append((sim.suspend_at, self._scheduled_resume.get(sim.index, INF)))
        return intervals

    def _suspended_since(self, sim: SimProfile, t: float) -> float | None:
        if sim.suspend_at is None and sim.index not in self._suspend_holds:
            return None
        for start, end in _merge(self._suspension_intervals(sim)):
            if start <= t < end:
                return start
        return None

    def _package_ends(self, sim: SimProfile) -> list[tuple[float, float]]:
        """Intervals in which the SIM's package has ended (it does not renew, or an end was set)."""
        set_end = self._ends.get(sim.index)
        if set_end is None:
            return [] if sim.fixed_end is None else [(sim.fixed_end, INF)]
        since, end = set_end
        # A package that had ended before the new end was set counts as renewed until then.
        ended = [(sim.fixed_end, since)] if sim.fixed_end is not None and sim.fixed_end < since else []
        return [*ended, (end, INF)]

    def fixed_end(self, sim: SimProfile, t: float) -> float | None:
        """When the package current at `t` ends for good (None: it renews)."""
        set_end = self._ends.get(sim.index)
        if set_end is not None and set_end[0] <= t:
            return set_end[1]
        return sim.fixed_end

    def _blocked(self, device: DeviceProfile, sim: SimProfile) -> list[tuple[float, float]]:
        """Intervals in which this SIM carries no traffic beyond the routine's offline windows."""
        if (sim.suspend_at is None and sim.fixed_end is None and sim.index not in self._suspend_holds
                and device.index not in self._offline_holds and sim.index not in self._ends):
            return []
        intervals = self._suspension_intervals(sim)
        intervals.extend((a, b) for a, b in self._offline_holds.get(device.index, ()))
        intervals.extend(self._package_ends(sim))
        return _merge(intervals)

    def _adjustment(self, sim: int, cycle_start: float, t: float) -> float:
        """Real KiB added to (or taken from) the cycle starting at `cycle_start` by `t`."""
        return sum(delta for at, delta in self._adjusted.get(sim, ()) if cycle_start <= at <= t)

    def _real_usage(self, device: DeviceProfile, sim: SimProfile, cycle_start: float, t: float,
                    blocked: list[tuple[float, float]] | None = None) -> float:
        """realUseFlow (KiB, uncapped, without admin top-ups) accrued in [cycle_start, t)."""
        lo = max(cycle_start, sim.activate_at)
        if t <= lo:
            return 0.0
        slot = sim.slot
        seconds = device.cumulative(slot, t) - device.cumulative(slot, lo)
        for a, b in blocked if blocked is not None else self._blocked(device, sim):
            a, b = max(a, lo), min(b, t)
            if b > a:
                seconds -= device.cumulative(slot, b) - device.cumulative(slot, a)
        return max(seconds, 0.0) * sim.rate

    def usage(self, device: DeviceProfile, sim: SimProfile, cycle_start: float,
              t: float) -> tuple[float, float | None]:
        """(realUseFlow in KiB, when the package ran out or None) for the cycle starting at
        `cycle_start`, as of `t`. Usage stops at the package size (the card is cut off)."""
        blocked = self._blocked(device, sim)
        adjusted = self._adjusted.get(sim.index)
        real = self._real_usage(device, sim, cycle_start, t, blocked)
        if adjusted:
            real += self._adjustment(sim.index, cycle_start, t)
        limit = sim.total / sim.virtual
        if real < limit:
            return real, None
        # Usage only grows between two steps down (top-ups): it ran out in the stretch holding `t`.
        downs = sorted(at for at, delta in adjusted or () if delta < 0 and cycle_start <= at)
        lo = max([cycle_start, sim.activate_at, *(at for at in downs if at <= t)])
        key = (sim.index, cycle_start, lo)
        crossed = self._crossings.get(key)
        if crossed is None:
            # Bisect over the whole stretch, not up to `t`, so the answer never depends on the query time.
            hi = min([self.face.cycle(cycle_start)[1], *(at for at in downs if at > lo)])
            for _ in range(32):
                mid = (lo + hi) / 2
                value = self._real_usage(device, sim, cycle_start, mid, blocked)
                if adjusted:
                    value += self._adjustment(sim.index, cycle_start, mid)
                lo, hi = (lo, mid) if value >= limit else (mid, hi)
            crossed = hi
            if len(self._crossings) > 100_000:
                self._crossings.clear()
            self._crossings[key] = crossed
        return limit, crossed

    def end_at(self, sim: SimProfile, t: float) -> float:
        """When the current package ends: the next renewal, or the fixed end of one that does not renew."""
        fixed = self.fixed_end(sim, t)
        if fixed is not None:
            return fixed
        days = sim.renew_days * DAY
        return sim.renew_anchor + (math.floor((t - sim.renew_anchor) / days) + 1) * days

    def rssi(self, device: DeviceProfile, t: float) -> int:
        pin = self._rssi_pins.get(device.index)
        if pin is not None and pin[0] <= t:
            return pin[1]
        key = device.key
        value = (device.rssi_center + 3.0 * noise(key, t / 900.0) + 6.0 * noise(key + 1, t / 10800.0)
                 + 9.0 * noise(key + 2, t / 129600.0))
        return max(RSSI_MIN, min(RSSI_MAX, round(value)))

    def battery(self, device: DeviceProfile, t: float) -> int:
        drain = self._batteries.get(device.index)
        if drain is not None and drain[0] <= t:
            since, start_level, target, rate = drain
            if not rate or start_level <= target:
                return target
            return max(target, round(start_level - rate * (t - since)))
        if device.plugged:
            return 100
        cycle = device.battery_drain + device.battery_charge
        pos = (t - device.battery_phase) % cycle
        low = device.battery_low
        if pos < device.battery_drain:
            level = 100.0 - (100.0 - low) * pos / device.battery_drain
        else:
            level = low + (100.0 - low) * (pos - device.battery_drain) / device.battery_charge
        return max(0, min(100, round(level)))

    def _switch_events(self, device: DeviceProfile, t: float) -> list[tuple[float, int, int]]:
        events = device.switches_before(t, 8)
        holds = self._offline_holds.get(device.index)
        if holds:
            # Forced offline: switches in between are reported on reconnecting, as one.
            kept = [e for e in events if not any(a <= e[0] < b for a, b in holds)]
            for a, b in holds:
                if b <= t and device.slot_at(b) != device.slot_at(a):
                    kept.append((b, device.slot_at(b), device.slot_at(a)))
            events = sorted(kept, reverse=True)
        return [e for e in events if e[0] >= device.created_at]

    def device_state(self, index: int, t: float, *, info: bool = False) -> DeviceState:
        """The device and its SIMs as queryDeviceFlow (or, with `info`, queryDeviceInfo) reports them."""
        device = self.profile(index)
        raw_touched = self._touched.get(index, -INF)
        touched = raw_touched if raw_touched <= t else -INF
        status_window = bucket(t, STATUS_REFRESH, device.status_phase)
        status_at = max(status_window, touched)
        # The hourly grid of queryDeviceInfo is a subset of the 10-minute one: never fresher.
        flow_refresh = INFO_FLOW_REFRESH if info else FLOW_REFRESH
        flow_window = bucket(t, flow_refresh, device.flow_phase)
        flow_at = max(flow_window, touched)
        since = self.offline_since(device, t)
        online = since is None
        # Until when every input read at `t` below stays the same (see DeviceState.until).
        until = min(status_window + STATUS_REFRESH, flow_window + flow_refresh,
                    device.next_offline_change(t)) - STABLE_MARGIN
        if raw_touched > t:
            until = min(until, raw_touched)
        for start, end in self._offline_holds.get(index, ()):
            if start > t:
                until = min(until, start)
            if end > t:
                until = min(until, end)
        if status_at > t:  # a window start rounded past `t`: the SIMs read min(status_at, t)
            until = t
        if since is None:
            # A device reports when it reconnects: a refresh from before that is not its latest word.
            seen_at = status_at if self.offline_since(device, status_at) is None else t
            if seen_at == t:
                until = t
        else:  # what the device reported last: the last refresh (or override) before it went offline
            seen_at = max(bucket(since, STATUS_REFRESH, device.status_phase), touched if touched <= since else -INF)
        frozen = self._frozen_since(index, t) if self._frozen else None
        if frozen is not None:  # the platform stopped refreshing: it shows its last refresh, whatever happened since
            seen_at, status_at, flow_at = min(seen_at, frozen), min(status_at, frozen), min(flow_at, frozen)
        effective = device.slot_at(seen_at)
        events = self._switch_events(device, seen_at) if device.switches else []
        key = device.key
        if online:
            level = max(0.0, device.conn_level + 0.4 * noise(key + 3, seen_at / 1800.0))
            conn = min(device.max_conn, round(level * device.max_conn))
            conn_5g = min(10, round(level * 10)) if device.has_5g else 0
        else:
            conn = conn_5g = 0
        terminal = ""
        if conn:
            h = _mix(key + int(seen_at // 3600))
            terminal = (f"{h & 0xFF:02X}:{h >> 8 & 0xFF:02X}:{h >> 16 & 0xFF:02X}:"
                        f"{h >> 24 & 0xFF:02X}:{h >> 32 & 0xFF:02X}:{h >> 40 & 0xFF:02X}")
        state = DeviceState(
            profile=device, online=online, status_at=seen_at, flow_at=flow_at, effective_slot=effective,
            rssi=self.rssi(device, seen_at), battery=self.battery(device, seen_at), conn=conn,
            conn_5g=conn_5g, terminal_mac=terminal, events=events,
        )
        state.sims = [self._sim_state(device, sim, t, status_at, flow_at, online, effective, events)
                      for sim in device.sims]
        for sim in device.sims:
            until = min(until, self._sim_until(sim, t))
        state.until = until
        return state

    def _frozen_since(self, device: int, t: float) -> float | None:
        for start, end in self._frozen.get(device, ()):
            if start <= t < end:
                return start
        return None

    def _sim_until(self, sim: SimProfile, t: float) -> float:
        """Until when what `_sim_state` reads of `t` itself (suspension, expiry, renewal, balance) holds."""
        if sim.suspend_at is not None and t < sim.suspend_at:
            return t  # the balance runs down continuously until the card is suspended
        until = INF
        if sim.suspend_at is not None or sim.index in self._suspend_holds:
            for start, end in self._suspension_intervals(sim):
                if start > t:
                    until = min(until, start)
                if end > t:
                    until = min(until, end)
        fixed = self.fixed_end(sim, t)
        if fixed is not None:
            if fixed > t:
                until = min(until, fixed)
        else:
            until = min(until, self.end_at(sim, t) - STABLE_MARGIN)
        return until

    def sim_state(self, sim_index: int, t: float) -> SimState:
        """One card as the card endpoints report it: the same values as inside its device's answer."""
        return self.device_state(self.ids.sim_device[sim_index], t).sims[
            sim_index - self.ids.sim_start[self.ids.sim_device[sim_index]]]

    def _sim_state(self, device: DeviceProfile, sim: SimProfile, t: float, status_at: float,
                   flow_at: float, online: bool, effective: int,
                   events: list[tuple[float, int, int]]) -> SimState:
        cycle_start, cycle_end = self.face.cycle(flow_at)
        real, ran_out = self.usage(device, sim, cycle_start, flow_at)
        used = min(sim.total, int(real * sim.virtual))
        suspended = self._suspended_since(sim, t)
        end_at = self.end_at(sim, t)
        sim_status, internet = SIM_ACTIVE, INTERNET_ON
        break_at: float | None = None
        break_remove: float | None = None
        if suspended is not None:
            sim_status, internet, break_at = SIM_SUSPENDED, INTERNET_OFF, suspended
        elif (fixed := self.fixed_end(sim, t)) is not None and t >= fixed:
            internet, break_at = INTERNET_OFF, fixed
        elif ran_out is not None:
            internet, break_at, break_remove = INTERNET_OFF, ran_out, cycle_end - 1
        elif sim.past_break is not None:
            break_at, break_remove = sim.past_break
        carrying = online and effective == sim.slot
        card_online = CARD_ONLINE if carrying and internet == INTERNET_ON else CARD_IDLE
        if carrying:
            last_active = status_at
        else:
            last_active = next((at for at, _, old in events if old == sim.slot), sim.idle_since)
            if effective == sim.slot:  # the device went offline while on this SIM
                last_active = max(last_active, min(status_at, t))
        balance, arrears = sim.balance0, 0
        if sim.suspend_at is not None:
            if t >= sim.suspend_at:
                balance, arrears = 0, sim.arrears
            else:
                balance = round(sim.balance0 * (sim.suspend_at - t) / max(sim.suspend_at - self.start, 1.0))
        return SimState(
            profile=sim, device=device, cycle_start=cycle_start, total=sim.total, used=used, real=int(real),
            dock=int(real * sim.dock_ratio), end_at=end_at, sim_status=sim_status, internet_status=internet,
            online_status=card_online, break_at=break_at, break_remove_at=break_remove, status_at=status_at,
            flow_at=flow_at, last_active_at=last_active,
            last_robin_at=events[0][0] if events else sim.created_at, balance=balance, arrears=arrears,
        )

    def month_usage(self, sim_index: int, year: int, month: int, t: float) -> int:
        """useFlow (KiB) of one calendar month: final for a past month, so far for this one, 0 ahead."""
        sim = self.sim_profile(sim_index)
        device = self.profile(self.ids.sim_device[sim_index])
        start, end = self.face.month_start(year, month), self.face.month_start(year, month + 1)
        if start > t:
            return 0
        until = min(end, max(bucket(t, FLOW_REFRESH, device.flow_phase), self._touched.get(device.index, -INF)))
        frozen = self._frozen_since(device.index, t) if self._frozen else None
        if frozen is not None:
            until = min(until, frozen)
        real, _ = self.usage(device, sim, start, max(until, start))
        return min(sim.total, int(real * sim.virtual))

    def actions(self, sim_index: int, t: float) -> list[Action]:
        """The card's operation log up to `t` (suspensions and resumptions submitted to the carrier)."""
        sim = self.sim_profile(sim_index)
        found = []
        if sim.past_action_at is not None and sim.past_action_at <= t:
            found.append(Action(sim.past_action_at, ACTION_RESUME, ""))
        if sim.suspend_at is not None and sim.suspend_at <= t:
            found.append(Action(sim.suspend_at, ACTION_SUSPEND, "欠费停机"))
            resumed = self._scheduled_resume.get(sim_index)
            if resumed is not None and resumed <= t:
                found.append(Action(resumed, ACTION_RESUME, "复机"))
        for start, end in self._suspend_holds.get(sim_index, ()):
            if start <= t:
                found.append(Action(start, ACTION_SUSPEND, "停机"))
            if end <= t:
                found.append(Action(end, ACTION_RESUME, "复机"))
        found.sort(key=lambda action: action.created_at, reverse=True)
        return found

    def account(self, t: float) -> tuple[float, float, float]:
        """(balance, arrearsBalance, frozenBalance): spent down over ten days, then topped up; or the
        balance an operator pinned."""
        top = 2000.0 + 20.0 * len(self)
        cycle = 10 * DAY
        spent = ((t - self.start) % cycle) / cycle * 0.9 * top
        balance = round(top - spent, 2)
        if self._balance is not None and self._balance[0] <= t:
            balance = self._balance[1]
        return balance, 0.0, round(0.02 * top, 2)
