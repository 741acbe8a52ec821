"""The catalogue of sign recipes `probe` tries when the platform rejects the configured one: the
families common in Chinese open APIs, each a `platform.sign` value (`SignConfig`), likeliest first.

Families (docs/first-contact.md lists them for operators):

* concatenations of appID, timestamp and the secret in the usual orders, with and without traceID,
  with and without the sorted form (`{body}`);
* the sorted form parameters as `k=v&...` with the secret appended as `&key=`, `&secret=` or bare
  (the WeChat-Pay style, usually upper-case MD5), alone or merged with the header values;
* our default `k=v` template, with and without the body;
* HMAC recipes (the secret is the key) over the same strings without the secret.

Each shape is tried with md5, sha256 and sha1 (hmac-sha256 and hmac-md5 for the HMAC family), in
lower- and upper-case hex, with the timestamp in seconds and in milliseconds. The order is a score
(template rank + a cost per less common hash, per upper case outside MD5, per the less likely
timestamp unit), so a bounded search tries the likeliest recipes first.
"""

from __future__ import annotations

from collector.config import DEFAULT_TEMPLATE, HashName, SignConfig, TimestampUnit

# Templates for plain hashes (the secret is part of the hashed text), likeliest first.
PLAIN_TEMPLATES: tuple[str, ...] = (
    "{appID}{timestamp}{secret}",
    "{body}&key={secret}",
    DEFAULT_TEMPLATE,
    "{appID}{traceID}{timestamp}{secret}",
    "{appID}{body}{timestamp}{secret}",
    "{body}&secret={secret}",
    "{secret}{appID}{timestamp}",
    "{appID}{secret}{timestamp}",
    "{body}{secret}",
    "{appID}{timestamp}{traceID}{secret}",
    "appID={appID}&timestamp={timestamp}&secret={secret}",
    # Header values and form fields sorted together (the form's names sort between appID and timestamp).
    "apiVersion={apiVersion}&appID={appID}&{body}&timestamp={timestamp}&traceID={traceID}&key={secret}",
    "appID={appID}&{body}&timestamp={timestamp}&key={secret}",
    "appID={appID}&timestamp={timestamp}&traceID={traceID}&secret={secret}",
    "{secret}{appID}{timestamp}{secret}",
    "{appID}{timestamp}{body}{secret}",
    "{secret}{body}{secret}",
    "{appID}{apiVersion}{timestamp}{traceID}{secret}",
)

# Templates for HMAC recipes (the secret is the key), likeliest first.
HMAC_TEMPLATES: tuple[str, ...] = (
    "{appID}{timestamp}",
    "{body}",
    "appID={appID}&body={body}&timestamp={timestamp}&traceID={traceID}",
    "{appID}{traceID}{timestamp}",
    "apiVersion={apiVersion}&appID={appID}&{body}&timestamp={timestamp}&traceID={traceID}",
    "{appID}{body}{timestamp}",
    DEFAULT_TEMPLATE,
)

# Added to a template's rank: how much less common a hash (or the upper case of its hex) is.
_PLAIN_HASH_COST: dict[HashName, float] = {"md5": 0.0, "sha256": 4.0, "sha1": 8.0}
_HMAC_HASH_COST: dict[HashName, float] = {"hmac-sha256": 3.0, "hmac-md5": 7.0}
_UPPER_COST_MD5 = 0.5  # upper-case MD5 is as common as lower-case on these platforms
_UPPER_COST = 6.0
_OTHER_UNIT_COST = 10.0


def other_unit(unit: TimestampUnit) -> TimestampUnit:
    return "milliseconds" if unit == "seconds" else "seconds"


def catalogue(preferred_unit: TimestampUnit = "seconds") -> list[SignConfig]:
    """Every recipe of the catalogue, likeliest first; `preferred_unit` is the timestamp unit tried
    first (the other one follows the likeliest shapes of the first)."""
    scored: list[tuple[float, int, SignConfig]] = []
    for unit in (preferred_unit, other_unit(preferred_unit)):
        unit_cost = 0.0 if unit == preferred_unit else _OTHER_UNIT_COST
        for costs, templates in ((_PLAIN_HASH_COST, PLAIN_TEMPLATES), (_HMAC_HASH_COST, HMAC_TEMPLATES)):
            for rank, template in enumerate(templates):
                for hash_name, hash_cost in costs.items():
                    for case in ("lower", "upper"):
                        case_cost = 0.0 if case == "lower" else _UPPER_COST_MD5 if hash_name == "md5" else _UPPER_COST
                        recipe = SignConfig(hash=hash_name, template=template, case=case, timestamp=unit)
                        scored.append((rank + hash_cost + case_cost + unit_cost, len(scored), recipe))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [recipe for _score, _order, recipe in scored]


def same_recipe(a: SignConfig, b: SignConfig) -> bool:
    return (a.hash, a.template, a.case, a.timestamp) == (b.hash, b.template, b.case, b.timestamp)


def describe(recipe: SignConfig) -> str:
    """One line naming a recipe: `md5(upper hex) of "{appID}{timestamp}{secret}", timestamp in seconds`."""
    return f'{recipe.hash} ({recipe.case}-case hex) of "{recipe.template}", timestamp in {recipe.timestamp}'


def as_setting(recipe: SignConfig) -> dict[str, str]:
    """The recipe as the `platform.sign` mapping of a configuration file."""
    return {"hash": recipe.hash, "template": recipe.template, "case": recipe.case, "timestamp": recipe.timestamp}


def summary(tried: list[SignConfig]) -> str:
    """What a list of recipes covered, for a message: hashes, hex cases, units and the number of
    canonical strings."""
    if not tried:
        return "no recipe"
    hashes = sorted({r.hash for r in tried})
    cases = sorted({r.case for r in tried})
    units = sorted({r.timestamp for r in tried})
    templates = list(dict.fromkeys(r.template for r in tried))
    return (f"{len(tried)} recipe(s): hashes {', '.join(hashes)}; {' and '.join(cases)}-case hex; "
            f"timestamp in {' and '.join(units)}; {len(templates)} canonical string(s)")
