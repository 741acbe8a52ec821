"""Inventory files, labels and sharding."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import InventoryConfig, ShardingConfig
from collector.inventory import InventoryError, load_inventory, shard_of


def test_csv_inventory_with_labels_and_standalone_cards(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text("deviceNo,iccid,customer,group\n0012345,,acme,north\n865214078636124,,globex,\n"
                    ",898608841925D2210999,acme,spare\n")
    inv = load_inventory(InventoryConfig(file=str(path), labels={"site": "hq"}))
    assert dict(inv.devices) == {"0012345": {"site": "hq", "customer": "acme", "group": "north"},
                                 "865214078636124": {"site": "hq", "customer": "globex"}}
    assert dict(inv.cards) == {"898608841925D2210999": {"site": "hq", "customer": "acme", "group": "spare"}}


def test_yaml_inventory_and_inline_entries_win(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  - {device_no: 0099, labels: {customer: a}}\n  - 42\ncards: [8986X]\n")
    inv = load_inventory(InventoryConfig(file=str(path),
                                         devices=[{"device_no": "42", "labels": {"customer": "inline"}}]))
    assert dict(inv.devices) == {"0099": {"customer": "a"}, "42": {"customer": "inline"}}
    assert list(inv.cards) == ["8986X"]


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("bad.csv", "name,customer\nx,y\n", "needs a device_no"),
    ("bad.csv", "device_no,bad-label\n1,x\n", "line 2: label name 'bad-label'"),
    ("bad.yaml", "devices: [{device_no: 1, color: red}]\n", "devices[0].color: unknown key"),
    ("bad.yaml", "devices: [1\n", "not valid YAML"),
])
def test_invalid_inventory_files_name_the_problem(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InventoryError) as info:
        load_inventory(InventoryConfig(file=str(path)))
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_sharding_splits_the_fleet_exactly_once() -> None:
    devices = [{"device_no": f"{i:010d}"} for i in range(3000)]
    config = InventoryConfig(devices=devices)
    shards = [set(load_inventory(config, ShardingConfig(index=i, total=3)).devices) for i in range(3)]
    assert sum(len(s) for s in shards) == 3000
    assert set.union(*shards) == {d["device_no"] for d in devices}
    assert all(700 < len(s) < 1300 for s in shards)  # roughly even
    assert shard_of("0000000001", 3) == shard_of("0000000001", 3)
