"""queryDeviceInfo (查询设备信息): per the vendor's table of contents the same data as queryDeviceFlow,
with flow numbers refreshed less promptly. It reads, observes and writes exactly as `device_flow`;
its path (inferred) and its job (`device_status`, polled more often for signal, battery and online
state) are its own.
"""

from __future__ import annotations

from collector.endpoints.base import EndpointSpec
from collector.endpoints.device_flow import DeviceFlow


class DeviceInfo(DeviceFlow):
    name, job = "device_info", "device_status"
    call, interval = EndpointSpec("/openapi/iot/queryDeviceInfo", "deviceNo", 1), 300.0


ENDPOINT = DeviceInfo()
