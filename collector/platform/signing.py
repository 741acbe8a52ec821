"""Request signing, shared by the platform client (which signs) and the simulator (which verifies).

The vendor's sign recipe is on a page we do not have, so the recipe is data: a hash, a canonical
string template and a hex case, all set in `platform.sign`. The default (documented in
docs/configuration.md) is::

    hash: md5
    template: "appID={appID}&body={body}&timestamp={timestamp}&traceID={traceID}&secret={secret}"
    case: lower

`{body}` is the form body with its keys sorted, as `k1=v1&k2=v2` (values not URL-encoded), so the
signature does not depend on the order a client happens to write its fields in. For `hmac-sha256`
the secret is the HMAC key (and may also appear in the template).
"""

from __future__ import annotations

import hashlib
import hmac
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

HashName = Literal["md5", "sha256", "hmac-sha256"]
DEFAULT_TEMPLATE = "appID={appID}&body={body}&timestamp={timestamp}&traceID={traceID}&secret={secret}"
TEMPLATE_FIELDS = frozenset({"appID", "apiVersion", "traceID", "timestamp", "body", "secret"})


def template_fields(template: str) -> set[str]:
    """The `{names}` a template refers to (used by the config validator)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def canonical_body(form: Mapping[str, str]) -> str:
    """The form fields sorted by key, joined as `k=v&k=v`."""
    return "&".join(f"{k}={form[k]}" for k in sorted(form))


@dataclass(frozen=True, slots=True)
class Signer:
    """Computes the `sign` header for a request. Holds the secret: never log or repr it."""

    secret: str
    hash: HashName = "md5"
    template: str = DEFAULT_TEMPLATE
    uppercase: bool = False

    def __repr__(self) -> str:
        return f"Signer(hash={self.hash!r}, template={self.template!r}, secret=<redacted>)"

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
        if self.hash == "md5":
            digest = hashlib.md5(text, usedforsecurity=False).hexdigest()
        elif self.hash == "sha256":
            digest = hashlib.sha256(text).hexdigest()
        else:
            digest = hmac.new(self.secret.encode(), text, hashlib.sha256).hexdigest()
        return digest.upper() if self.uppercase else digest

    def verify(self, headers: Mapping[str, str], form: Mapping[str, str], sign: str) -> bool:
        """Constant-time check of a received sign (hex case-insensitive)."""
        return hmac.compare_digest(self.sign(headers, form).lower(), sign.lower())
