"""docs/operations.md covers what an operator installing the collector needs, and its numbers are the
ones the code and the tools give: the exposure score of the unit, the request budget table, the
shipped file names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collector.config import parse_config
from tests.test_deploy_systemd import MAIN, exposure

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "operations.md"


def sections() -> list[str]:
    return re.findall(r"^## (.+)$", DOC.read_text(), flags=re.M)


def test_operations_covers_every_topic_of_the_issue() -> None:
    assert sections() == ["Install", "Configure", "Upgrade", "Back up the state", "Failure modes",
                          "Read the dashboards", "Tune the request budget", "Shard across hosts", "Sizing"]


def test_every_file_the_doc_names_exists() -> None:
    named = set(re.findall(r"`((?:deploy|grafana)/[\w./@-]+)`", DOC.read_text()))
    assert named
    missing = [n for n in named if not any(REPO.glob(n))]
    assert not missing, missing


def test_the_exposure_score_in_the_doc_is_the_measured_one() -> None:
    stated = re.search(r"`systemd-analyze security iot-collector` rates it\s+\*\*(\d+\.\d)\*\*", DOC.read_text())
    assert stated, "the doc no longer states the exposure score"
    measured, _ = exposure(MAIN)
    assert float(stated.group(1)) == measured


def needed_rps(devices: int) -> float:
    from collector.cli import budget_summary

    config = parse_config({"platform": {"app_id": "x", "app_secret": "y"},
                           "inventory": {"devices": [str(10**14 + i) for i in range(devices)]}})
    return float(budget_summary(config)["needed_rps"])


def test_the_budget_table_is_what_check_config_computes() -> None:
    # The budget is linear in the fleet (whole batches at these sizes): two runs give every row.
    small, large = needed_rps(1000), needed_rps(10000)
    per_device = (large - small) / 9000
    rows = re.findall(r"^\| ([\d,]+) \| ([\d.]+) req/s \|.*\| ([\d.]+) \|$", DOC.read_text(), flags=re.M)
    assert len(rows) >= 5
    for devices_text, need_text, rate_text in rows:
        devices = int(devices_text.replace(",", ""))
        need = small + per_device * (devices - 1000)
        assert float(need_text) == pytest.approx(need, abs=0.05), devices_text
        assert float(rate_text) == pytest.approx(need / 0.9, abs=0.05), devices_text
