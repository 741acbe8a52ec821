"""`iot-collector once`: poll each device once with queryDeviceFlow and print what came back, as a
table for people or as JSON for scripts. Exit code 0 when every device answered, 1 otherwise.

The CLI (collector/cli.py) parses the arguments and calls `run_once`; this module owns the polling
loop and the rendering.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import orjson

from collector.config import Config
from collector.formats import human_bytes, short_duration
from collector.platform.client import PlatformClient
from collector.platform.errors import ApiError, AuthError, HttpStatusError, PlatformError
from collector.platform.models import DeviceObservation

Result = DeviceObservation | PlatformError

# Progress is worth a line on stderr only for fleets that take a while, and only for a person.
PROGRESS_MIN_DEVICES = 20
_PROGRESS_EVERY = 0.25  # seconds between progress redraws


class _SkippedAfterAuth(PlatformError):
    """A device not polled because an earlier request was refused for bad credentials: every later
    request would be refused too, and each would cost budget."""

    def __init__(self, cause: AuthError) -> None:
        super().__init__(f"not polled: {cause.message}", endpoint=cause.endpoint, trace_id="")
        self.code = cause.code


async def run_once(config: Config, devices: list[str] | None, as_json: bool, out: TextIO,
                   base_url: str | None = None) -> int:
    """Poll `devices` (default: `config.inventory.devices`) once, write the report to `out`, and
    return the exit code (0 all answered, 1 any failed or nothing to poll)."""
    wanted = list(dict.fromkeys(
        d.strip() for d in (devices or [e.device_no for e in config.inventory.devices]) if d.strip()))
    if not wanted:
        print("iot-collector once: no devices to poll (inventory.devices is empty and no --device given)",
              file=sys.stderr)
        return 1
    show_progress = len(wanted) > PROGRESS_MIN_DEVICES and sys.stderr.isatty()
    async with PlatformClient(config.platform, config.privacy, base_url=base_url) as client:
        results = await poll_devices(client, wanted, workers=config.platform.max_concurrency,
                                     progress=sys.stderr if show_progress else None)
    now = time.time()
    out.write(render_json(wanted, results, now) if as_json else render_table(wanted, results, now))
    return 0 if all(isinstance(r, DeviceObservation) for r in results) else 1


async def poll_devices(client: PlatformClient, device_nos: Sequence[str], *, workers: int = 16,
                       progress: TextIO | None = None) -> list[Result]:
    """device_flow for every device, `workers` at a time (the client's limiter paces them further).
    Results come back in the order of `device_nos`. After an AuthError nothing more is sent."""
    results: list[Result | None] = [None] * len(device_nos)
    indexes = iter(range(len(device_nos)))  # shared by the workers: each index is taken once
    auth_failure: list[AuthError] = []
    done = failed = 0
    last_draw = 0.0

    async def worker() -> None:
        nonlocal done, failed, last_draw
        for i in indexes:
            result: Result
            if auth_failure:
                result = _SkippedAfterAuth(auth_failure[0])
            else:
                try:
                    result = await client.device_flow(device_nos[i])
                except PlatformError as error:
                    result = error
                    if isinstance(error, AuthError):
                        auth_failure.append(error)
            results[i] = result
            done += 1
            failed += not isinstance(result, DeviceObservation)
            if progress is not None and (time.monotonic() - last_draw >= _PROGRESS_EVERY
                                         or done == len(device_nos)):
                last_draw = time.monotonic()
                progress.write(f"\rpolled {done}/{len(device_nos)}, {failed} failed")
                progress.flush()

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, min(workers, len(device_nos)))):
            group.create_task(worker())
    if progress is not None:
        progress.write("\n")
    return [r for r in results if r is not None]


# --- rendering ----------------------------------------------------------------------------------------


def _error_fields(error: PlatformError) -> dict[str, Any]:
    code: int | None = None
    if isinstance(error, ApiError | _SkippedAfterAuth):
        code = error.code
    elif isinstance(error, HttpStatusError):
        code = error.status
    return {"type": "AuthError" if isinstance(error, _SkippedAfterAuth) else type(error).__name__,
            "code": code, "message": error.message, "trace_id": error.trace_id}


def _age(obs: DeviceObservation, now: float) -> float | None:
    return None if obs.status_at is None else now - obs.status_at


def render_table(device_nos: Sequence[str], results: Sequence[Result], now: float) -> str:
    """One line per device; failures show the error type, code and message in place of the values."""
    # The per-SIM column varies most in width: it goes last.
    header = ("DEVICE", "ONLINE", "RSSI dBm", "BATT %", "SIM", "AGE", "USED/TOTAL PER SIM")
    rows: list[tuple[str, ...]] = []
    failures: list[tuple[str, str]] = []
    for device_no, result in zip(device_nos, results, strict=True):
        if isinstance(result, PlatformError):
            e = _error_fields(result)
            # An ApiError's message already starts "platform error <code>:".
            code = f" {e['code']}" if e["code"] is not None and not isinstance(result, ApiError) else ""
            failures.append((device_no, f"{e['type']}{code}: {e['message']}"))
            continue
        online = {True: "yes", False: "no", None: "?"}[result.online]
        sims = "  ".join(
            f"{'*' if s.slot is not None and s.slot == result.effective_sim else ''}{s.slot or '?'}: "
            f"{human_bytes(s.used_bytes) or '?'}/{human_bytes(s.total_bytes) or '?'}" for s in result.sims) or "-"
        rows.append((device_no, online, _text(result.rssi_dbm), _text(result.battery_percent),
                     _text(result.effective_sim), short_duration(_age(result, now)) or "?", sims))
    lines = []
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    if rows:
        for row in (header, *rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for device_no, message in failures:
        lines.append(f"{device_no.ljust(widths[0])}  FAILED  {message}")
    ok = len(rows)
    lines.append(f"{ok + len(failures)} device(s): {ok} ok, {len(failures)} failed"
                 + ("  (* = SIM in use, AGE = since the platform last refreshed the device)" if rows else ""))
    return "\n".join(lines) + "\n"


def _text(value: object) -> str:
    return "?" if value is None else str(value)


def render_json(device_nos: Sequence[str], results: Sequence[Result], now: float) -> str:
    """A JSON array: each observation's fields (bytes, Unix seconds) plus `online` and
    `status_age_seconds`, or `{device_no, error: {type, code, message, trace_id}}` for a failure."""
    items: list[dict[str, Any]] = []
    for device_no, result in zip(device_nos, results, strict=True):
        if isinstance(result, PlatformError):
            items.append({"device_no": device_no, "error": _error_fields(result)})
            continue
        item = dataclasses.asdict(result)
        item["device_no"] = device_no
        item["online"] = result.online
        item["status_age_seconds"] = _age(result, now)
        items.append(item)
    return orjson.dumps(items, option=orjson.OPT_INDENT_2).decode() + "\n"
