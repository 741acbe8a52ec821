"""The spool's configuration is checked at load: a `max_bytes` that cannot hold two segments is
refused by `check-config` (exit 2, the key's path), before any daemon starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from collector.cli import main


def check(tmp_path: Path, spool: dict[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump({"simulator": {"embedded": True}, "state_dir": str(tmp_path / "state"),
                                    "sinks": {"file": {"enabled": True}, "spool": spool}}))
    code = main(["check-config", "-c", str(path)])
    return code, capsys.readouterr().err


def test_a_spool_smaller_than_two_segments_is_refused_naming_the_key(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, err = check(tmp_path, {"max_bytes": "10MiB"}, capsys)  # default segments: 8 MiB
    assert code == 2
    assert "sinks.spool.max_bytes: must hold at least two segments (2 x segment_bytes = 16 MiB), got 10 MiB" in err


@pytest.mark.parametrize("spool", [{"max_bytes": "16MiB"}, {"max_bytes": "10MiB", "segment_bytes": "1MiB"}, {}])
def test_a_spool_of_two_segments_or_more_is_accepted(tmp_path: Path, spool: dict[str, str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, err = check(tmp_path, spool, capsys)
    assert code == 0, err
