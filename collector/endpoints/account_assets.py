"""queryAccountAssets (查询账户资产): the reseller account's money, one request and no id. Inferred:
`data: {balance, arrearsBalance, frozenBalance}` (values may be strings); every other top-level JSON
number is kept under its wire name as an extra (never a secret field, never a bool, never a string:
a numeric-looking string could be anything) and written as a float field of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from collector.endpoints.base import EndpointSpec, Query, ReadEndpoint
from collector.platform.models import AccountAssets
from collector.platform.wire import FLOAT, SECRET_FIELDS, ParseContext, Parsed, Record, WireTable, record
from collector.sinks.points import Measurement, float_field
from collector.state import Change, FleetState, merge

POINTS = Measurement("account", (), {
    "balance": float_field("currency (unknown unit)", "account balance"),
    "arrears_balance": float_field("currency (unknown unit)", "arrears"),
    "frozen_balance": float_field("currency (unknown unit)", "frozen money"),
}, "one point per account assets poll", open_fields="float")


def account_line(assets: AccountAssets, labels: Mapping[str, str]) -> str | None:
    """The `account` line. Extras become float fields under their name (skipped when the name is not a
    plain identifier or clashes with a fixed field)."""
    fields = POINTS.read(assets)
    for key, value in assets.extra.items():
        if key.isidentifier() and key.isascii() and key not in fields:
            fields[key] = value
    return POINTS.line({}, labels, fields, assets.polled_at)


def _finite(value: Any) -> bool:
    """A JSON number a float can hold (an integer wider than a float is not one)."""
    if value.__class__ is float:
        return math.isfinite(value)
    return value.__class__ is int and abs(value) <= 1e308


class AccountAssetsEndpoint(ReadEndpoint[AccountAssets]):
    name = job = "account_assets"
    call, interval, entity = EndpointSpec("/openapi/iot/queryAccountAssets", "", 0), 3600.0, "account"
    wire = WireTable((Record("account", (("balance", "balance", FLOAT), ("arrears_balance", "arrearsBalance", FLOAT),
                                         ("frozen_balance", "frozenBalance", FLOAT))),))
    measurements = (POINTS,)

    def parse(self, data: Any, ctx: ParseContext, query: Query) -> Parsed[AccountAssets]:
        account = self.table(ctx)["account"]
        rec = record(data, "data", self.name)
        read = {key for _name, key, _c in account.fields}
        extra = {key: float(value) for key, value in rec.items()
                 if key not in read and key not in SECRET_FIELDS and _finite(value)}
        return Parsed([AccountAssets(**account.read(rec, ctx), polled_at=ctx.polled_at, extra=extra)])

    def observe(self, state: FleetState, items: Sequence[AccountAssets]) -> Change:
        return merge([state.observe_account(assets) for assets in items])

    def points(self, state: FleetState, items: Sequence[AccountAssets], change: Change) -> list[str]:
        lines = [account_line(assets, state.account.labels) for assets in items]
        return [line for line in lines if line is not None]


ENDPOINT = AccountAssetsEndpoint()
