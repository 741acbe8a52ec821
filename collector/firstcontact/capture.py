"""`iot-collector capture`: the platform's raw answers for a few devices and their cards, stored as
fixture files a user can send and the replaying simulator (`iot-collector simulate --replay DIR`)
serves. The layout (docs/first-contact.md):

    DIR/manifest.json              {"format": 1, "captured_at": <unix s>, "platform": {"flow_unit",
                                    "timezone", "api_version"}, "endpoints": {"<endpoint name>":
                                    {"path", "param", "batch_limit"}}, "pseudonymised": bool}
    DIR/<endpoint name>/<id>.json  the whole envelope the platform answered: for one device
                                   (device_flow, device_info: id = device number), or for one card
                                   (card endpoints: that card's records taken out of the batch answer,
                                   in an envelope whose data is the list of them, id = ICCID)
    DIR/account_assets/account.json

Every secret field is removed at any depth (`scrub.remove_secrets`), and the files are checked for the
app secret and every removed value before the capture counts as done; with `pseudonymise`, ids and
positions are replaced consistently across files, file names included (`scrub.Pseudonymiser`).
The folder is created private (0700, files 0600): without pseudonymising it holds personal data.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from collector.config import Config
from collector.endpoints import ENDPOINTS
from collector.endpoints.base import Query, ReadEndpoint
from collector.firstcontact.scrub import Pseudonymiser, cut_echoes, remove_secrets
from collector.firstcontact.session import AUTH_KINDS, Answer, Session
from collector.firstcontact.shapes import ShapeReport, instances
from collector.inventory import load_inventory
from collector.platform.errors import ParseError
from collector.platform.wire import ParseContext, id_text

log = structlog.get_logger("collector.capture")

FORMAT = 1
ACCOUNT_FILE = "account"
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


class CaptureError(Exception):
    """The capture cannot start (its folder) or its files failed the secret check."""


@dataclass
class Captured:
    """What one capture did: files written per endpoint, the failures, the request count."""

    out: Path
    files: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    pseudonymised: bool = False

    @property
    def exit_code(self) -> int:
        return 0 if not self.failures and self.files else 1


@dataclass
class _Fixture:
    endpoint: str
    entity_id: str
    envelope: dict[str, Any]


def prepare_folder(out: Path) -> None:
    """Create `out` (private), or accept it when empty. CaptureError otherwise."""
    if out.exists():
        if not out.is_dir():
            raise CaptureError(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()):
            raise CaptureError(f"--out {out}: the folder is not empty (choose a new or an empty one)")
    else:
        try:
            out.mkdir(parents=True, mode=0o700)
        except OSError as error:
            raise CaptureError(f"--out {out}: cannot create the folder: {error.strerror}") from None


def _records_by_card(endpoint: ReadEndpoint[Any], data: Any, fields: dict[str, str]) -> dict[str, list[Any]]:
    """The records of a batch answer grouped by the ICCID they carry (wire key from the table)."""
    table = endpoint.wire.resolve(tuple(sorted(fields.items())))
    record = table.records[1]
    key = record.key(record.identity)
    out: dict[str, list[Any]] = {}
    for instance in instances(table, data, endpoint.name, ShapeReport(endpoint.name)).get(record.name, []):
        iccid = id_text(instance.get(key))
        if iccid:
            out.setdefault(iccid, []).append(instance)
    return out


class Capturer:
    """One capture over a `Session`."""

    def __init__(self, config: Config, session: Session, devices: Sequence[str], cards: Sequence[str]) -> None:
        self.config = config
        self.platform = config.platform
        self.session = session
        self.devices = list(devices)
        self.cards = list(cards)
        self.specs = config.platform.endpoint_specs()
        self.fixtures: list[_Fixture] = []
        self.failures: list[str] = []
        self.refused = False  # the platform refused the credentials: nothing more is asked

    def enabled(self) -> list[ReadEndpoint[Any]]:
        return [e for e in ENDPOINTS.values() if self.config.jobs.job(e.job).enabled]

    async def _ask(self, endpoint: ReadEndpoint[Any], form: dict[str, str], what: str) -> Answer | None:
        spec = self.specs[endpoint.name]
        answer = await self.session.send(spec.path, form, self.platform.sign, f"capture {endpoint.name} {what}")
        if answer.kind == "rate_limited" and self.session.left:
            self.session.limiter.slow_down()
            answer = await self.session.send(spec.path, form, self.platform.sign, f"capture {endpoint.name} {what}")
        if answer.kind in AUTH_KINDS:
            self.refused = True
            self.failures.append(f"{endpoint.name}: the platform refused the credentials ({answer.outcome()}); "
                                 "run iot-collector probe and use the configuration it writes")
            return None
        if answer.kind != "ok" or answer.envelope is None:
            self.failures.append(f"{endpoint.name} {what}: {answer.outcome()}")
            return None
        return answer

    async def run(self) -> None:
        ctx = ParseContext.from_config(self.platform, self.config.privacy)
        cards = list(self.cards)
        for endpoint in self.enabled():
            if endpoint.entity != "device":
                continue
            spec = self.specs[endpoint.name]
            for device in self.devices:
                answer = await self._ask(endpoint, {spec.param: device}, f"device {device}")
                if self.refused:
                    return
                if answer is None or answer.envelope is None:
                    continue
                self.fixtures.append(_Fixture(endpoint.name, device, answer.envelope))
                try:
                    parsed = endpoint.parse(answer.data, ctx, Query((device,), {}))
                    cards.extend(sim.iccid for obs in parsed.items for sim in obs.sims)
                except ParseError as error:
                    self.failures.append(f"{endpoint.name} device {device}: the answer does not parse ({error})")
        cards = list(dict.fromkeys(cards))
        for endpoint in self.enabled():
            if self.refused:
                return
            if endpoint.entity == "card" and cards:
                await self._cards(endpoint, cards)
            elif endpoint.entity == "account":
                answer = await self._ask(endpoint, endpoint.extra_form(time.time(), ctx.tz), "")
                if answer is not None and answer.envelope is not None:
                    self.fixtures.append(_Fixture(endpoint.name, ACCOUNT_FILE, answer.envelope))

    async def _cards(self, endpoint: ReadEndpoint[Any], cards: list[str]) -> None:
        spec = self.specs[endpoint.name]
        size = spec.batch_limit if spec.batch_limit > 0 else len(cards)
        extra = endpoint.extra_form(time.time(), ParseContext.from_config(self.platform).tz)
        fields = dict(self.platform.fields.get(endpoint.name, {}))
        for start in range(0, len(cards), size):
            chunk = cards[start:start + size]
            answer = await self._ask(endpoint, {spec.param: ",".join(chunk), **extra}, f"{len(chunk)} card(s)")
            if self.refused:
                return
            if answer is None or answer.envelope is None:
                continue
            grouped = _records_by_card(endpoint, answer.data, fields)
            for iccid in chunk:
                records = grouped.get(iccid)
                if records:
                    self.fixtures.append(_Fixture(endpoint.name, iccid, {**answer.envelope, "data": records}))


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.chmod(path, 0o600)


def write_capture(out: Path, config: Config, fixtures: list[_Fixture], pseudonymise: bool,
                  requested: Sequence[str]) -> dict[str, int]:
    """Scrub and write the fixtures and the manifest; the number of files per endpoint."""
    removed: set[str] = set()
    cleaned = [(f.endpoint, f.entity_id, remove_secrets(f.envelope, removed)) for f in fixtures]
    cleaned = [(e, i, cut_echoes(envelope, removed)) for e, i, envelope in cleaned]
    pseudo: Pseudonymiser | None = None
    if pseudonymise:
        pseudo = Pseudonymiser()
        for entity_id in requested:
            pseudo.fake(entity_id)
        for _e, entity_id, envelope in cleaned:
            if entity_id != ACCOUNT_FILE:
                pseudo.fake(entity_id)
            pseudo.learn(envelope)
        cleaned = [(e, i if i == ACCOUNT_FILE else pseudo.fake(i), pseudo.apply(envelope))
                   for e, i, envelope in cleaned]
    counts: dict[str, int] = {}
    for endpoint, entity_id, envelope in cleaned:
        if not _SAFE_NAME.fullmatch(entity_id):
            raise CaptureError(f"{endpoint}: the id {entity_id!r} cannot be a file name")
        folder = out / endpoint
        folder.mkdir(mode=0o700, exist_ok=True)
        _write_json(folder / f"{entity_id}.json", envelope)
        counts[endpoint] = counts.get(endpoint, 0) + 1
    specs = config.platform.endpoint_specs()
    _write_json(out / "manifest.json", {
        "format": FORMAT,
        "captured_at": int(time.time()),
        "platform": {"flow_unit": config.platform.flow_unit, "timezone": config.platform.timezone,
                     "api_version": config.platform.api_version},
        "endpoints": {name: {"path": specs[name].path, "param": specs[name].param,
                             "batch_limit": specs[name].batch_limit}
                      for name in ENDPOINTS if name in {f.endpoint for f in fixtures}},
        "pseudonymised": pseudonymise,
    })
    secret = config.platform.app_secret.get_secret_value() if config.platform.app_secret else ""
    check_no_secrets(out, {s for s in removed if len(s) >= 4} | ({secret} if secret else set()))
    return counts


def check_no_secrets(out: Path, values: set[str]) -> None:
    """CaptureError (and the offending file deleted) if any file holds one of `values`."""
    # As written (UTF-8) and as JSON spells it inside a string (quotes and backslashes escaped).
    needles = {spelling for v in values if v
               for spelling in (v.encode(), json.dumps(v, ensure_ascii=False)[1:-1].encode())}
    for path in sorted(out.rglob("*.json")):
        data = path.read_bytes()
        for needle in needles:
            if needle in data:
                path.unlink()
                raise CaptureError(f"{path.relative_to(out)} held a secret value and was deleted")


async def run_capture(config: Config, out: Path, *, devices: int = 3, pseudonymise: bool = False,
                      base_url: str | None = None) -> Captured:
    """Capture the answers for the inventory's first `devices` devices and their cards into `out`
    (an empty or new folder: `prepare_folder` first)."""
    inventory = load_inventory(config.inventory)
    chosen = list(inventory.devices)[:devices]
    cards = list(inventory.cards)[:devices]
    enabled = [e for e in ENDPOINTS.values() if config.jobs.job(e.job).enabled]
    per_device = sum(1 for e in enabled if e.entity == "device")
    # Enough for every device answer, a few batches of their cards per card endpoint, the account.
    limit = per_device * len(chosen) + 4 * sum(1 for e in enabled if e.entity == "card") * max(1, devices) + 2
    result = Captured(out, pseudonymised=pseudonymise)
    async with Session(config.platform, limit=limit, base_url=base_url or "") as session:
        capturer = Capturer(config, session, chosen, cards)
        await capturer.run()
        result.sent = session.sent
    result.failures = capturer.failures
    if capturer.fixtures:
        result.files = write_capture(out, config, capturer.fixtures, pseudonymise, [*chosen, *cards])
    log.info("capture done", files=sum(result.files.values()), failures=len(result.failures), requests=result.sent)
    return result
