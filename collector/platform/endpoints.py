"""The names of the read endpoints the simulator serves. How each is called (path, form parameter,
batch limit: `EndpointSpec`) and the month field are declared by the endpoint modules
(`collector.endpoints`) and overridden in `platform.endpoints` of the configuration.
"""

from __future__ import annotations

from enum import StrEnum

from collector.endpoints.base import EndpointSpec
from collector.endpoints.card_month_usage import MONTH_PARAM

__all__ = ["MONTH_PARAM", "Endpoint", "EndpointSpec"]


class Endpoint(StrEnum):
    """The read endpoints the simulator answers."""

    DEVICE_FLOW = "device_flow"
    DEVICE_INFO = "device_info"
    CARD_INFO = "card_info"
    CARD_STATUS = "card_status"
    CARD_USAGE = "card_usage"
    CARD_MONTH_USAGE = "card_month_usage"
    ACCOUNT_ASSETS = "account_assets"
    CARD_ACTIONS = "card_actions"
