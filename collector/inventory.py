"""Which devices and standalone cards exist, with their labels, and which of them this collector
instance owns (sharding).

Devices come from the configuration (`inventory.devices`) and/or an inventory file: CSV with a
`device_no` column (or `deviceNo`) and any label columns, an optional `iccid` column for standalone
cards; or YAML with `devices:` and `cards:` lists shaped like the configuration's. Inline entries win
over file entries for the same id. An id listed twice in one list is a mistake the operator is told
about (`Inventory.warnings`); the last entry wins. SIMs inside devices are discovered by polling, not
listed here.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from collector.config import (
    CardEntry,
    ConfigError,
    DeviceEntry,
    InventoryConfig,
    ShardingConfig,
    check_labels,
    validation_problems,
    yaml_load,
)


class InventoryError(ConfigError):
    """The inventory file cannot be used; `problems` name the line or entry."""


@dataclass(frozen=True, slots=True)
class Inventory:
    devices: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    cards: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # ids listed more than once in one list, by list


Placed = tuple[DeviceEntry | CardEntry, str]  # an entry and where it was written ("line 4", "devices[3]")
MAX_NAMED = 10  # duplicate ids named in one warning; the rest are counted


def duplicates(source: str, kind: str, entries: list[tuple[str, str]]) -> str | None:
    """A warning naming the ids that `entries` ((id, where) in order) lists more than once, or None."""
    places: dict[str, list[str]] = {}
    for entity_id, where in entries:
        places.setdefault(entity_id, []).append(where)
    repeated = [(entity_id, where) for entity_id, where in places.items() if len(where) > 1]
    if not repeated:
        return None
    named = ", ".join(f"{entity_id} ({', '.join(where)})" for entity_id, where in repeated[:MAX_NAMED])
    more = f" and {len(repeated) - MAX_NAMED} more" if len(repeated) > MAX_NAMED else ""
    ids = f"{kind} id" + ("s" if len(repeated) > 1 else "")
    return f"{source}: {ids} listed more than once, the last entry of each is used: {named}{more}"


def shard_of(entity_id: str, total: int) -> int:
    """The shard (0..total-1) owning an entity: a stable hash, the same on every host and Python run."""
    digest = hashlib.blake2b(entity_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % total


def _read_csv(path: Path, text: str) -> tuple[list[Placed], list[Placed]]:
    devices: list[Placed] = []
    cards: list[Placed] = []
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    id_col = next((c for c in ("device_no", "deviceNo") if c in columns), None)
    if id_col is None and "iccid" not in columns:
        raise InventoryError(["header: needs a device_no (or deviceNo) or an iccid column"], str(path))
    problems: list[str] = []
    for line, raw in enumerate(reader, start=2):
        if raw.get(None):  # DictReader keeps the fields past the header's under None
            problems.append(f"line {line}: more fields than the header has")
            continue
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        device_no = row.pop(id_col, "") if id_col else ""
        iccid = row.pop("iccid", "")
        labels = {k: v for k, v in row.items() if k and v}
        try:
            check_labels(labels)
        except ValueError as exc:
            problems.append(f"line {line}: {exc}")
            continue
        if device_no:
            devices.append((DeviceEntry(device_no=device_no, labels=labels), f"line {line}"))
        elif iccid:
            cards.append((CardEntry(iccid=iccid, labels=labels), f"line {line}"))
        elif any(row.values()):
            problems.append(f"line {line}: no device_no or iccid")
    if problems:
        raise InventoryError(problems, str(path))
    return devices, cards


def _read_yaml(path: Path, text: str) -> tuple[list[Placed], list[Placed]]:
    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError([f"not valid YAML ({exc})"], str(path)) from None
    data = data or {}
    if isinstance(data, list):
        data = {"devices": data}
    if not isinstance(data, dict) or set(data) - {"devices", "cards"}:
        raise InventoryError(["(top level): must be a list of devices or a mapping with devices: and cards:"],
                             str(path))
    try:
        parsed = InventoryConfig.model_validate({"devices": data.get("devices") or [],
                                                 "cards": data.get("cards") or []})
    except ValidationError as exc:
        raise InventoryError(validation_problems(exc), str(path)) from None
    return ([(d, f"devices[{i}]") for i, d in enumerate(parsed.devices)],
            [(c, f"cards[{i}]") for i, c in enumerate(parsed.cards)])


def load_inventory(config: InventoryConfig, sharding: ShardingConfig | None = None) -> Inventory:
    """The devices and cards this instance polls. Raises InventoryError for a bad file."""
    devices: dict[str, dict[str, str]] = {}
    cards: dict[str, dict[str, str]] = {}
    found: list[str | None] = []
    if config.file:
        path = Path(config.file)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise InventoryError([f"cannot read: {exc.strerror}"], str(path)) from None
        reader = _read_csv if path.suffix.lower() == ".csv" else _read_yaml
        file_devices, file_cards = reader(path, text)
        found.append(duplicates(str(path), "device", [(_id(d), where) for d, where in file_devices]))
        found.append(duplicates(str(path), "card", [(_id(c), where) for c, where in file_cards]))
        for entry, _where in (*file_devices, *file_cards):
            target = devices if isinstance(entry, DeviceEntry) else cards
            target[_id(entry)] = {**config.labels, **entry.labels}
    found.append(duplicates("inventory.devices", "device",
                            [(d.device_no, f"[{i}]") for i, d in enumerate(config.devices)]))
    found.append(duplicates("inventory.cards", "card", [(c.iccid, f"[{i}]") for i, c in enumerate(config.cards)]))
    for d in config.devices:
        devices[d.device_no] = {**config.labels, **d.labels}
    for c in config.cards:
        cards[c.iccid] = {**config.labels, **c.labels}
    if sharding is not None and sharding.total > 1:
        devices = {k: v for k, v in devices.items() if shard_of(k, sharding.total) == sharding.index}
        cards = {k: v for k, v in cards.items() if shard_of(k, sharding.total) == sharding.index}
    return Inventory(devices=devices, cards=cards, warnings=tuple(w for w in found if w))


def _id(entry: DeviceEntry | CardEntry) -> str:
    return entry.device_no if isinstance(entry, DeviceEntry) else entry.iccid


def file_mtime(config: InventoryConfig) -> float | None:
    """Modification time of the inventory file (None without one, or when it cannot be read)."""
    if not config.file:
        return None
    try:
        return Path(config.file).stat().st_mtime
    except OSError:
        return None
