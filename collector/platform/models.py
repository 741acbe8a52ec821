"""The typed observations several endpoints share: a device with its SIMs (queryDeviceFlow and
queryDeviceInfo) and a SIM card (also the card info endpoint's record). An observation that belongs
to one endpoint only is declared in that endpoint's module (`collector.endpoints`).

Everything downstream (fleet state, points, alert rules, metrics) reads these objects, never a raw
dict from the wire. Times are Unix seconds (UTC floats); `None` means "unknown" (null, empty string,
or the `2000-01-01 00:00:00` sentinel upstream). Flow values are bytes, converted with the configured
unit. Secret fields (wifiPass, wifiPass5G, webPassword, payPassword) do not exist here: they are
never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Location:
    """Cell-based location, cut to the precision `privacy.location` allows (region or exact)."""

    province_code: str = ""
    city_code: str = ""
    region_name: str = ""
    # Only with privacy.location: exact.
    lat: float | None = None
    lng: float | None = None
    cell_id: str = ""
    lac: str = ""
    mcc: str = ""
    mnc: str = ""


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """One entry of a device's `controlResponse` log (eventType 251 looks like a SIM switch)."""

    device_no: str
    at: float
    event_type: int
    value1: str = ""
    value2: str = ""


@dataclass(frozen=True, slots=True)
class SimObservation:
    """A SIM card as seen inside a device (`data.sims[]`), through the card info endpoint, or in part
    through the card status and usage endpoints (the fields they do not report are None)."""

    iccid: str
    sim_no: str = ""
    imsi: str = ""
    device_no: str = ""
    slot: int | None = None  # `vice`: 1 main, 2 vice1, 3 vice2, 4 usim
    total_bytes: int | None = None
    used_bytes: int | None = None  # useFlow: billed to the end customer
    real_used_bytes: int | None = None  # realUseFlow
    carrier_used_bytes: int | None = None  # dockUserFlow
    cycle_start: float | None = None  # dockResetDate
    expires_at: float | None = None  # endAt
    sim_status: int | None = None
    activate_status: int | None = None
    auth_status: int | None = None
    internet_status: int | None = None
    online_status: int | None = None
    cancel_status: int | None = None
    pool_id: int | None = None
    balance: float | None = None
    speed_code: str = ""
    break_at: float | None = None
    break_remove_at: float | None = None
    status_at: float | None = None  # lastSimStatusAt: when the platform last refreshed the card
    last_active_at: float | None = None
    flow_at: float | None = None  # lastFlowAt of the card usage endpoint: when the usage was refreshed
    polled_at: float = 0.0

    @property
    def remaining_bytes(self) -> int | None:
        if self.total_bytes is None or self.used_bytes is None:
            return None
        return max(self.total_bytes - self.used_bytes, 0)

    @property
    def remaining_ratio(self) -> float | None:
        remaining = self.remaining_bytes
        if remaining is None or not self.total_bytes:
            return None
        return remaining / self.total_bytes


@dataclass(frozen=True, slots=True)
class DeviceObservation:
    """One device as returned by queryDeviceFlow / queryDeviceInfo, with its SIMs."""

    device_no: str
    imei: str = ""
    online_status: int | None = None  # 1 online; anything else offline or unknown
    rssi_dbm: int | None = None
    battery_percent: int | None = None
    effective_sim: int | None = None
    device_status: int | None = None
    wisdom_network: int | None = None
    wifi_clients: int | None = None
    wifi_clients_max: int | None = None
    wifi_clients_5g: int | None = None
    wifi_clients_5g_max: int | None = None
    wifi_name: str = ""
    soft_version: str = ""
    mac: str = ""
    status_at: float | None = None  # lastDeviceStatusAt
    flow_at: float | None = None  # lastDeviceFlowAt
    warranty_expires_at: float | None = None
    location: Location | None = None
    events: tuple[DeviceEvent, ...] = ()
    sims: tuple[SimObservation, ...] = ()
    polled_at: float = 0.0

    @property
    def online(self) -> bool | None:
        return None if self.online_status is None else self.online_status == 1


@dataclass(frozen=True, slots=True)
class AccountAssets:
    """The reseller account's money (queryAccountAssets); currency unit unknown (as upstream). Kept by
    the fleet state's account record."""

    balance: float | None = None
    arrears_balance: float | None = None
    frozen_balance: float | None = None
    polled_at: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
