"""What `capture` does to an answer before it is written: secrets removed (always) and personal ids
replaced by consistent fakes (`--pseudonymise`).

* `remove_secrets`: every key whose name says password, secret or token (wifiPass, wifiPass5G,
  webPassword, payPassword, accessToken...; `shapes.SECRET_KEY`) is dropped at any depth, and any
  other string that contains a dropped value is cut, so a password echoed elsewhere does not survive.
* `Pseudonymiser`: device numbers, ICCIDs, IMEIs, IMSIs, MSISDNs (simNo, dockNo, mobile), MACs, cell
  ids and coordinates are replaced. The same real value always becomes the same fake one (keyed by
  value, so a device number that is also its IMEI stays one value), of the same length and character
  class, keeping what makes an id recognisable and says nothing about its owner: an ICCID keeps
  `89` + country + issuer (6 characters), an IMEI its type allocation code (8) and a valid check
  digit, an IMSI its MCC and MNC (5), a mobile or IoT number its 3-digit prefix, a MAC its vendor prefix,
  a coordinate its whole degrees. The fakes come from HMAC-SHA256 under a key drawn for each
  capture and then forgotten: they cannot be traced back, and two captures do not share fakes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterator
from typing import Any

from collector.firstcontact.shapes import is_secret_key

REMOVED = "<removed>"
_MIN_ECHO = 6  # shorter removed values are not searched for elsewhere (they would match by chance)

# Keys (lower-case) whose values identify a device, a card, a subscriber or a place.
ID_KEYS = frozenset({
    "deviceno", "imei", "iccid", "imsi", "simno", "dockno", "mobile", "msisdn", "mac", "lastterminalmac",
    "mainsimno", "mainiccid", "vice1simno", "vice1iccid", "vice2simno", "vice2iccid", "usimno", "usimiccid",
    "cellid", "lac", "lastloginip", "cardno",
})
COORDINATE_KEYS = frozenset({"lat", "lng", "lon", "latitude", "longitude"})
_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}")
# Outside id keys, a learnt id is replaced when a whole value equals it (ids of at least 6 characters:
# shorter ones, a LAC of "1", would hit unrelated values) or inside longer text (at least 10).
_EXACT_MIN = 6
_SUBSTRING_MIN = 10


def remove_secrets(value: Any, removed: set[str] | None = None) -> Any:
    """`value` without secret keys at any depth; their string values are added to `removed`."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if is_secret_key(str(key)):
                if removed is not None:
                    _collect_strings(item, removed)
                continue
            out[key] = remove_secrets(item, removed)
        return out
    if isinstance(value, list):
        return [remove_secrets(item, removed) for item in value]
    return value


def _collect_strings(value: Any, into: set[str]) -> None:
    if isinstance(value, str) and value:
        into.add(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        into.add(str(value))
    elif isinstance(value, dict):
        for item in value.values():
            _collect_strings(item, into)
    elif isinstance(value, list):
        for item in value:
            _collect_strings(item, into)


def cut_echoes(value: Any, removed: set[str]) -> Any:
    """Strings holding a removed secret value (of at least 6 characters) elsewhere, cut out."""
    needles = sorted((s for s in removed if len(s) >= _MIN_ECHO), key=len, reverse=True)
    if not needles:
        return value
    pattern = re.compile("|".join(re.escape(s) for s in needles))

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return pattern.sub(REMOVED, item)
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    return walk(value)


def _luhn_digit(body: str) -> str:
    total = 0
    for index, char in enumerate(reversed(body)):
        digit = int(char)
        if index % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


class Pseudonymiser:
    """Consistent fakes for the personal ids of a capture: `learn` every answer first, then `apply`."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)
        self.mapping: dict[str, str] = {}
        self._fakes: set[str] = set()
        self._coordinates: dict[str, float] = {}
        self._pattern: re.Pattern[str] | None = None

    # --- fakes ---------------------------------------------------------------------------------------------

    def _stream(self, text: str, attempt: int) -> Iterator[int]:
        block = 0
        while True:
            yield from hmac.new(self._key, f"{attempt}:{block}:{text}".encode(), hashlib.sha256).digest()
            block += 1

    @staticmethod
    def _kept(real: str) -> int:
        if _MAC.fullmatch(real):
            return 8
        if real.isalnum() and real[:2] == "89" and 18 <= len(real) <= 22:
            return 6  # ICCID: 89, the country code and the issuer
        if real.isdigit() and len(real) == 15:
            return 5 if real.startswith("46") else 8  # IMSI: MCC + MNC; IMEI: type allocation code
        if real.isdigit() and len(real) in (11, 13) and real.startswith("1"):
            return 3  # a mobile or IoT (13-digit) number's operator prefix
        return 0

    def fake(self, real: str) -> str:
        """The fake of an id: same length, same character class per position, consistent."""
        known = self.mapping.get(real)
        if known is not None:
            return known
        kept = self._kept(real)
        is_mac = bool(_MAC.fullmatch(real))
        mac_upper = is_mac and not any(c.islower() for c in real)
        imei = real.isdigit() and len(real) == 15 and not real.startswith("46")
        for attempt in range(1000):
            stream = self._stream(real, attempt)
            chars = list(real[:kept])
            for index, char in enumerate(real[kept:], start=kept):
                byte = next(stream)
                if is_mac and char in "0123456789abcdefABCDEF":
                    hexdigit = "0123456789abcdef"[byte % 16]
                    chars.append(hexdigit.upper() if mac_upper else hexdigit)
                elif char.isdigit():
                    # A leading non-zero digit stays non-zero: an id sent as a JSON number keeps its length.
                    chars.append(str(1 + byte % 9) if index == 0 and char != "0" else str(byte % 10))
                elif char.isascii() and char.isupper():
                    chars.append(chr(65 + byte % 26))
                elif char.isascii() and char.islower():
                    chars.append(chr(97 + byte % 26))
                else:
                    chars.append(char)
            fake = "".join(chars)
            if imei:
                fake = fake[:-1] + _luhn_digit(fake[:-1])
            if fake != real and fake not in self._fakes and fake not in self.mapping:
                break
        self.mapping[real] = fake
        self._fakes.add(fake)
        self._pattern = None
        return fake

    def coordinate(self, value: float) -> float:
        """A coordinate with its whole degrees kept and its fraction replaced (about 100 km of
        uncertainty, the precision of the region codes a capture keeps)."""
        text = repr(float(value))
        known = self._coordinates.get(text)
        if known is not None:
            return known
        whole, _, fraction = text.partition(".")
        stream = self._stream("coordinate:" + text, 0)
        digits = "".join(str(next(stream) % 10) for _ in fraction) or "0"
        fake = float(f"{whole}.{digits}")
        self._coordinates[text] = fake
        return fake

    # --- walking answers ----------------------------------------------------------------------------------

    def learn(self, value: Any) -> None:
        """Register the ids of an answer (values of id keys, at any depth)."""
        if isinstance(value, dict):
            for key, item in value.items():
                if str(key).lower() in ID_KEYS and isinstance(item, str | int) and not isinstance(item, bool):
                    text = str(item).strip()
                    if text:
                        self.fake(text)
                else:
                    self.learn(item)
        elif isinstance(value, list):
            for item in value:
                self.learn(item)

    def apply(self, value: Any, key: str = "") -> Any:
        """`value` with every learnt id replaced (whole values, and inside longer text) and the
        coordinates faked."""
        if isinstance(value, dict):
            return {k: self.apply(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.apply(v, key) for v in value]
        if isinstance(value, bool) or value is None:
            return value
        if key.lower() in COORDINATE_KEYS and isinstance(value, int | float):
            return self.coordinate(value)
        if key.lower() in COORDINATE_KEYS and isinstance(value, str):
            try:
                return str(self.coordinate(float(value)))
            except ValueError:
                return value
        is_id = key.lower() in ID_KEYS
        if isinstance(value, int):
            text = str(value)
            fake = self.fake(text) if is_id else self.mapping.get(text) if len(text) >= _EXACT_MIN else None
            return int(fake) if fake is not None and fake.isdigit() else value
        if isinstance(value, str):
            stripped = value.strip()
            if is_id and stripped:
                return value.replace(stripped, self.fake(stripped))
            return self.text(value)
        return value

    def text(self, value: str) -> str:
        """Free text with learnt ids replaced: the whole of it (ids of 6 characters or more), or
        long ids inside it."""
        stripped = value.strip()
        if len(stripped) >= _EXACT_MIN and stripped in self.mapping:
            return value.replace(stripped, self.mapping[stripped])
        if self._pattern is None:
            long_ids = sorted((r for r in self.mapping if len(r) >= _SUBSTRING_MIN), key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(r) for r in long_ids)) if long_ids else re.compile(r"(?!)")
        return self._pattern.sub(lambda m: self.mapping[m.group(0)], value)
