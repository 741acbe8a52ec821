"""The endpoint table of the agent open API v2.0: the one source of truth for paths, parameter names
and batch limits, shared by the platform client and the simulator.

Only `queryDeviceFlow` is documented by the vendor; every other path and parameter name is inferred
(see docs/upstream-api.md) and can be overridden in `platform.endpoints` of the configuration.
No write endpoint is listed here: the collector never calls one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Endpoint(StrEnum):
    """The read endpoints the collector uses."""

    DEVICE_FLOW = "device_flow"
    DEVICE_INFO = "device_info"
    CARD_INFO = "card_info"
    CARD_STATUS = "card_status"
    CARD_USAGE = "card_usage"
    CARD_MONTH_USAGE = "card_month_usage"
    ACCOUNT_ASSETS = "account_assets"
    CARD_ACTIONS = "card_actions"


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """How one endpoint is called.

    `param` is the form field carrying the entity id(s); for batch endpoints the ids are joined with
    commas. `batch_limit` is the most ids one request may carry (1 for per-device endpoints, 0 for
    endpoints that take no id).
    """

    path: str
    param: str
    batch_limit: int
    documented: bool = False


DEFAULT_ENDPOINTS: dict[Endpoint, EndpointSpec] = {
    Endpoint.DEVICE_FLOW: EndpointSpec("/openapi/iot/queryDeviceFlow", "deviceNo", 1, documented=True),
    Endpoint.DEVICE_INFO: EndpointSpec("/openapi/iot/queryDeviceInfo", "deviceNo", 1),
    Endpoint.CARD_INFO: EndpointSpec("/openapi/iot/querySimInfo", "iccids", 100),
    Endpoint.CARD_STATUS: EndpointSpec("/openapi/iot/querySimStatus", "iccids", 10),
    Endpoint.CARD_USAGE: EndpointSpec("/openapi/iot/querySimRealFlow", "iccids", 10),
    Endpoint.CARD_MONTH_USAGE: EndpointSpec("/openapi/iot/querySimMonthFlow", "iccids", 10),
    Endpoint.ACCOUNT_ASSETS: EndpointSpec("/openapi/iot/queryAccountAssets", "", 0),
    # Published in an earlier version of the vendor's doc; queried by card number and/or serial number.
    Endpoint.CARD_ACTIONS: EndpointSpec("/openapi/iot/querySimAction", "iccids", 100),
}

# Extra form field of the month-usage endpoint (inferred): the month as YYYYMM.
MONTH_PARAM = "month"
