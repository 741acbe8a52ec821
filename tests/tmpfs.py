"""Small real filesystems for full-disk tests: a tmpfs of a given size mounted on a temporary
directory (needs root and mount(8); `mounted()` skips the test with the reason otherwise), and a
filler file that takes every free byte of it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted(path: Path, size: str, *options: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "2m") on `path` for the block; unmounted after it."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small real filesystem needs root and mount(8) (mount -t tmpfs)")
    opts = ",".join([f"size={size}", "mode=0755", *options])
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, name: str = "filler", leave: int = 0) -> Path:
    """A file that takes every free byte of `directory`'s filesystem but `leave` (rounded to pages)."""
    reserve = directory / f"{name}.reserve"
    if leave:
        reserve.write_bytes(b"r" * leave)
    path = directory / name
    chunk = b"f" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, chunk[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    reserve.unlink(missing_ok=True)
    return path


def free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize
