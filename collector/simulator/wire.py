"""The simulator's wire format: fleet states turned into exactly the JSON the platform sends.

Owns the keys, their order and their JSON types. A device answer has the keys and types of the
vendor's sample (`collector/data/sample-queryDeviceFlow.json`, pinned by tests/test_simulator_wire.py),
nulls and empty strings and the `2000-01-01 00:00:00` sentinel included, ids always strings, secrets
(wifiPass, wifiPass5G, webPassword, payPassword) present as upstream sends them. The card and account
shapes are the inferred ones the platform client parses (collector/platform/parse.py).

Flow values leave in the configured `platform.flow_unit` (KiB by default), times as zone-less local
time in `platform.timezone`, each instant on the clock the answers are reported on (`stamp`: the wall
clock by default, see `collector.simulator.clock`). Keys are the platform's defaults; a configuration's
`platform.fields` renames them afterwards (`collector.simulator.contract.Renamer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from collector.simulator.contract import OK_MESSAGE
from collector.simulator.fleet import (
    DEVICE_OFFLINE,
    DEVICE_ONLINE,
    EVENT_SIM_SWITCH,
    MNC,
    Action,
    DeviceState,
    SimState,
)
from collector.simulator.localtime import SENTINEL, LocalTime

__all__ = ["OK_MESSAGE", "WireFormat"]
_SLOT_KEYS = (("mainSimNo", "mainIccid"), ("vice1SimNo", "vice1Iccid"), ("vice2SimNo", "vice2Iccid"),
              ("usimNo", "usimIccid"))
_SHOWN_EVENTS = 3
_FLOW_KEYS = ("totalFlow", "useFlow", "realUseFlow", "dockUserFlow")


class WireFormat:
    """Builds `data` payloads; flow values go out in units of `flow_unit_bytes` (1024: KiB), instants
    formatted by `stamp` (default: as they are, in `face`'s zone)."""

    def __init__(self, face: LocalTime, flow_unit_bytes: int = 1024,
                 stamp: Callable[[float], str] | None = None) -> None:
        self.face = face
        self.stamp = stamp or face.format
        self._unit = flow_unit_bytes

    def flow(self, kib: int) -> int:
        """A flow value the model holds in KiB, in the wire's unit."""
        return kib if self._unit == 1024 else kib * 1024 // self._unit

    def device(self, state: DeviceState) -> dict[str, Any]:
        """`data` of queryDeviceFlow / queryDeviceInfo: `{"device": {...}, "sims": [...]}`."""
        fmt = self.stamp
        p = state.profile
        slots = {}
        for sim in p.sims:
            no_key, iccid_key = _SLOT_KEYS[sim.slot - 1]
            slots[no_key] = sim.sim_no
            slots[iccid_key] = sim.iccid
        status_at = fmt(state.status_at)
        effective = p.sims[state.effective_slot - 1].operator if state.effective_slot <= len(p.sims) else 0
        device = {
            "id": p.record_id,
            "memberId": 1,
            "deviceNo": p.device_no,
            "imei": p.imei,
            "mainSimNo": slots.get("mainSimNo", ""),
            "mainIccid": slots.get("mainIccid", ""),
            "vice1SimNo": slots.get("vice1SimNo", ""),
            "vice1Iccid": slots.get("vice1Iccid", ""),
            "vice2SimNo": slots.get("vice2SimNo", ""),
            "vice2Iccid": slots.get("vice2Iccid", ""),
            "usimIccid": slots.get("usimIccid", ""),
            "usimNo": slots.get("usimNo", ""),
            "effectiveSim": state.effective_slot,
            "wisdomNetwork": p.wisdom,
            "deviceNetwork": p.network,
            "customDeviceNetwork": "",
            "rssi": state.rssi,
            "electric": state.battery,
            "onlineStatus": DEVICE_ONLINE if state.online else DEVICE_OFFLINE,
            "openAt": None,
            "wifiName": p.wifi_name,
            "wifiPass": p.wifi_pass,
            "showWifi": 1,
            "connCount": state.conn,
            "switchWifi": 1,
            "maxConnCount": p.max_conn,
            "wifiEncrypt": "WPA2PSK",
            "wifiName5G": p.wifi_name_5g,
            "wifiPass5G": p.wifi_pass_5g,
            "showWifi5G": 1 if p.has_5g else 0,
            "connCount5G": state.conn_5g,
            "switchWifi5G": 1 if p.has_5g else 0,
            "maxConnCount5G": 10 if p.has_5g else 0,
            "wifiEncrypt5G": "WPA2PSK" if p.has_5g else "",
            "mac": p.mac,
            "lastTerminalMac": state.terminal_mac,
            "webPassword": p.web_login,
            "position": {
                "cellId": str(p.cell_base + 7919 * state.effective_slot),
                "cityCode": p.city_code,
                "lac": str(p.lac_base + state.effective_slot),
                "lat": p.lat,
                "lng": p.lng,
                "mcc": "460",
                "mnc": MNC[effective],
                "provinceCode": p.province_code,
                "regionName": p.region_name,
                "updateAt": None,
            },
            "softVersion": p.soft_version,
            "deviceStatus": 3,
            "conned": None,
            "history": None,
            "controlResponse": [
                {"controlAt": fmt(at), "eventType": EVENT_SIM_SWITCH, "eventValue1": str(new), "eventValue2": ""}
                for at, new, _ in reversed(state.events[:_SHOWN_EVENTS])
            ],
            "lastDeviceStatusAt": status_at,
            "lastDeviceFlowAt": fmt(state.flow_at),
            "warrantyExpire": SENTINEL,
            "status": 1,
            "remark": "",
            "createdAt": p.created_text,
            "updatedAt": status_at,
        }
        return {"device": device, "sims": [self.sim(sim, status_at) for sim in state.sims]}

    def sim(self, state: SimState, status_at: str | None = None) -> dict[str, Any]:
        """One SIM record: `data.sims[]` of a device answer, and querySimInfo's records.
        `status_at` is the formatted `state.status_at`, when the caller has it already."""
        fmt = self.stamp
        s = state.profile
        if status_at is None:
            status_at = fmt(state.status_at)
        created = s.created_text
        record = {
            "id": s.record_id,
            "memberId": 1,
            "gatewayId": s.gateway_id,
            "gatewaySchemeId": s.gateway_scheme,
            "poolId": s.pool_id,
            "packageGroupId": s.package_group,
            "rechargeGroupId": 0,
            "limitRuleId": 0,
            "virtualRuleId": s.virtual_rule,
            "breakRuleId": 0,
            "breakAt": None if state.break_at is None else fmt(state.break_at),
            "breakRemoveAt": None if state.break_remove_at is None else fmt(state.break_remove_at),
            "limitFinallyActivateAt": None,
            "couponGroupId": 0,
            "simLayoutId": 0,
            "oneCodeId": 0,
            "volumePackageId": 0,
            "simNo": s.sim_no,
            "dockNo": s.sim_no,
            "iccid": s.iccid,
            "imsi": s.imsi,
            "imei": state.device.imei,
            "deviceNo": state.device.device_no,
            "sourceType": 2,
            "vice": s.slot,
            "mobile": "",
            "balance": state.balance,
            "arrearsBalance": state.arrears,
            "integral": 0,
            "couponCoin": 0,
            "payPassword": "",
            "simStatus": state.sim_status,
            "activateStatus": 2,
            "authStatus": 2 if s.auth_at is None else 1,
            "authPlatformStatus": 1,
            "internetStatus": state.internet_status,
            "onlineStatus": state.online_status,
            "cancelStatus": 1,
            "replaceStatus": 1,
            "robinStatus": 1,
            "activateAt": s.activate_text,
            "authAt": s.auth_text,
            "authPlatformAt": None,
            "rechargeTimes": s.recharge_times,
            "speedCode": "",
            "releaseSpeedAt": None,
            "speedAt": None,
            "totalFlow": state.total,
            "useFlow": state.used,
            "realUseFlow": state.real,
            "dockUserFlow": state.dock,
            "dockResetDate": fmt(state.cycle_start),
            "endAt": fmt(state.end_at),
            "roundRobinLevel": s.robin_level,
            "robinUp": 0,
            "robinDown": 0,
            "lastRobinAt": fmt(state.last_robin_at),
            "lastSimStatusAt": status_at,
            "lastActiveAt": fmt(state.last_active_at),
            "lastLoginIp": "",
            "lastLoginCity": "",
            "subscribeUrl": "",
            "cleanAuthAt": None,
            "swipeAt": created,
            "swipeRemark": "",
            "remark": "",
            "status": 1,
            "updatedAt": status_at,
            "createdAt": created,
        }
        if self._unit != 1024:
            self._convert(record)
        return record

    def _convert(self, record: dict[str, Any]) -> None:
        for key in _FLOW_KEYS:
            record[key] = self.flow(record[key])

    def card_status(self, state: SimState) -> dict[str, Any]:
        s = state.profile
        return {"iccid": s.iccid, "simNo": s.sim_no, "simStatus": state.sim_status,
                "onlineStatus": state.online_status, "internetStatus": state.internet_status,
                "lastSimStatusAt": self.stamp(state.status_at)}

    def card_usage(self, state: SimState) -> dict[str, Any]:
        s = state.profile
        fmt = self.stamp
        return {"iccid": s.iccid, "simNo": s.sim_no, "totalFlow": self.flow(state.total),
                "useFlow": self.flow(state.used), "realUseFlow": self.flow(state.real),
                "dockUserFlow": self.flow(state.dock), "dockResetDate": fmt(state.cycle_start),
                "endAt": fmt(state.end_at), "lastFlowAt": fmt(state.flow_at)}

    def card_month_usage(self, iccid: str, sim_no: str, month: str, used_kib: int) -> dict[str, Any]:
        return {"iccid": iccid, "simNo": sim_no, "month": month, "useFlow": self.flow(used_kib)}

    def card_action(self, iccid: str, sim_no: str, sim_index: int, action: Action,
                    status: int) -> dict[str, Any]:
        stamp = self.stamp(action.created_at)
        digits = stamp.replace("-", "").replace(" ", "").replace(":", "")
        return {"serialNo": f"SA{digits}{sim_index:07d}{action.kind}", "iccid": iccid, "simNo": sim_no,
                "actionType": action.kind, "status": status, "remark": action.remark, "createdAt": stamp}

    @staticmethod
    def account(balance: float, arrears: float, frozen: float) -> dict[str, Any]:
        return {"balance": balance, "arrearsBalance": arrears, "frozenBalance": frozen}
