"""One device answer parsed outside a poll: `iot-collector alerts test --observations FILE` reads saved
queryDeviceFlow answers with `parse_device`. Polls parse through the endpoint modules
(`collector.endpoints`) and the wire format (`collector.platform.wire`).
"""

from __future__ import annotations

from typing import Any

from collector.endpoints.base import Query
from collector.endpoints.device_flow import ENDPOINT as DEVICE_FLOW
from collector.platform.models import DeviceObservation
from collector.platform.wire import ParseContext

__all__ = ["ParseContext", "parse_device"]


def parse_device(data: Any, ctx: ParseContext, *, device_no: str | None = None) -> DeviceObservation:
    """The `data` of a queryDeviceFlow answer (ParseError when its structure is wrong). `device_no`,
    when given, is the number that was asked for: it becomes the observation's id."""
    return DEVICE_FLOW.parse(data, ctx, Query((device_no,) if device_no else (), {})).items[0]
