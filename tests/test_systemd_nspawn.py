"""tests/nspawn.py says why a container cannot be booted here, so the boot tests skip with a reason
an operator can act on."""

from __future__ import annotations

import shutil

import pytest

from tests import nspawn


def test_not_root_is_the_reason_to_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nspawn.os, "geteuid", lambda: 1000)
    assert nspawn.unavailable() == "booting a container with systemd-nspawn needs root"


def test_a_missing_nspawn_names_the_package_that_brings_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nspawn.os, "geteuid", lambda: 0)
    monkeypatch.setattr(nspawn.shutil, "which", lambda name: None if name == "systemd-nspawn" else shutil.which(name))
    reason = nspawn.unavailable()
    assert reason is not None and "apt-get install systemd-container" in reason
