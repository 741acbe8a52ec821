"""Request signing: the client computes the `sign` header of each request from `platform.sign`.

The vendor's sign recipe is on a page we do not have, so the recipe is data (`SignConfig`): a hash,
a canonical string template, a hex case and the unit of the `timestamp` header. The default
(documented in docs/configuration.md) is::

    hash: md5
    template: "appID={appID}&body={body}&timestamp={timestamp}&traceID={traceID}&secret={secret}"
    case: lower
    timestamp: seconds

`{body}` is the form body with its keys sorted, as `k1=v1&k2=v2` (values not URL-encoded, empty
values left out), so the signature does not depend on the order a client writes its fields in. For
the `hmac-*` hashes the secret is the HMAC key (and may also appear in the template).

The simulator verifies signatures with its own implementation of the same recipe space, so a wrong
guess here shows up as a failure against it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from collector.config import DEFAULT_TEMPLATE, HashName, SignConfig, TimestampUnit

_DIGESTS: dict[str, Callable[..., Any]] = {
    "md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256,
}


def canonical_body(form: Mapping[str, str]) -> str:
    """The non-empty form fields sorted by key, joined as `k=v&k=v`."""
    return "&".join(f"{k}={form[k]}" for k in sorted(form) if form[k] != "")


@dataclass(frozen=True, slots=True)
class Signer:
    """Computes the `sign` header for a request. Holds the secret: never log or repr it."""

    secret: str
    hash: HashName = "md5"
    template: str = DEFAULT_TEMPLATE
    uppercase: bool = False
    timestamp_unit: TimestampUnit = "seconds"

    @classmethod
    def from_config(cls, sign: SignConfig, secret: str) -> Signer:
        return cls(secret=secret, hash=sign.hash, template=sign.template, uppercase=sign.case == "upper",
                   timestamp_unit=sign.timestamp)

    def __repr__(self) -> str:
        return (f"Signer(hash={self.hash!r}, template={self.template!r}, timestamp={self.timestamp_unit!r}, "
                "secret=<redacted>)")

    def timestamp(self, now: float) -> str:
        """The `timestamp` header for the Unix time `now`, in this recipe's unit."""
        return str(int(now * 1000) if self.timestamp_unit == "milliseconds" else int(now))

    def sign(self, headers: Mapping[str, str], form: Mapping[str, str]) -> str:
        """The sign value for these header values (appID, apiVersion, traceID, timestamp) and form."""
        text = self.template.format(
            appID=headers.get("appID", ""),
            apiVersion=headers.get("apiVersion", ""),
            traceID=headers.get("traceID", ""),
            timestamp=headers.get("timestamp", ""),
            body=canonical_body(form),
            secret=self.secret,
        ).encode()
        if self.hash.startswith("hmac-"):
            digest = hmac.new(self.secret.encode(), text, self.hash.removeprefix("hmac-")).hexdigest()
        else:
            digest = _DIGESTS[self.hash](text, usedforsecurity=False).hexdigest()
        return digest.upper() if self.uppercase else digest
