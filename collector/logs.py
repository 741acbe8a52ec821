"""structlog set-up: JSON lines when stdout is not a terminal (journald), colours on a terminal, and
a processor that redacts secrets (registered values, secret keys, the user-info of URLs) from every
event before it is rendered. On journald's stream each line starts with its syslog priority (`<4>`
for a warning), which journald strips and records as PRIORITY, so `journalctl -p warning` finds the
warnings. Also the one place that says how a URL is shown (`redact_url`).

Records of other libraries (apscheduler, aiohttp, httpx, apprise...) logged through the standard
`logging` module go through the same processors and renderer, on the same stream, with their
`logger` name: one format, redacted alike. Libraries speak from warning up (their info lines are per
request). Text stays as written in JSON (`设备不存在`, not `\\u8bbe\\u5907`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO
from urllib.parse import unquote

import structlog

SECRET_KEYS = frozenset({
    "app_secret", "secret", "token", "password", "sign", "wifipass", "wifipass5g", "webpassword",
    "paypassword", "authorization",
})
REDACTED = "<redacted>"

# Secret values registered at start-up (the app secret, sink tokens...): redacted wherever they appear,
# even inside an exception message or a URL.
_known_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
# `"wifiPass": "..."`, `webPassword=...` inside free text (a response body in an error message).
_INLINE = re.compile(
    r"""(?i)(["']?(?:wifiPass5G|wifiPass|webPassword|payPassword|app_?secret|token|password)["']?\s*[:=]\s*)"""
    r"""(["']?)[^"'&,\s}]*"""
)


# A URL's user-info (`scheme://user:password@host`): up to the last `@` before the path, as URL parsers
# read it, so a password with a stray `@` is still hidden whole.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s?#\"'<>]*)@")


def register_secret(value: str | None) -> None:
    """Make a secret value redactable from any log line (no-op for empty values)."""
    global _pattern
    if value and len(value) >= 3:
        _known_secrets.add(value)
        _pattern = re.compile("|".join(re.escape(s) for s in sorted(_known_secrets, key=len, reverse=True)))


def _hide_userinfo(match: re.Match[str]) -> str:
    user, colon, _password = match.group(2).partition(":")
    return f"{match.group(1)}{user}:{REDACTED}@" if colon else f"{match.group(1)}{REDACTED}@"


def redact_url(url: str) -> str:
    """`url` with its user-info hidden: `http://admin:<redacted>@host`, and `https://<redacted>@host`
    (a lone user name is often a token). In longer text, every URL is treated the same way."""
    if "://" not in url or "@" not in url:
        return url
    return _USERINFO.sub(_hide_userinfo, url)


def url_secrets(value: Any) -> set[str]:
    """The passwords (and lone user names) of the URLs anywhere in `value` (strings, mappings,
    sequences), as written and percent-decoded: what `register_secret` should learn from a configuration."""
    found: set[str] = set()
    if isinstance(value, str):
        if "://" in value and "@" in value:
            for match in _USERINFO.finditer(value):
                user, colon, password = match.group(2).partition(":")
                found.add(password if colon else user)
    elif isinstance(value, Mapping):
        for item in value.values():
            found |= url_secrets(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            found |= url_secrets(item)
    found |= {unquote(s) for s in found}
    return {s for s in found if s and s != REDACTED}


def redact_urls(value: Any) -> Any:
    """A copy of a JSON-like document (an API answer) with the user-info of every URL in it hidden."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {k: redact_urls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_urls(v) for v in value]
    return value


def redact_text(text: str) -> str:
    """Remove registered secret values, URL passwords and `secretField=value` pairs from free text."""
    if _pattern is not None:
        text = _pattern.sub(REDACTED, text)
    text = redact_url(text)
    return _INLINE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def _redact_value(key: str, value: Any) -> Any:
    if key.lower().replace("-", "_") in SECRET_KEYS or key.lower() in SECRET_KEYS:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value("", v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def redact_processor(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: secrets never reach a renderer."""
    for key in list(event):
        event[key] = _redact_value(key, event[key])
    return event


def _redact_rendered(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # After format_exc_info: a traceback may quote a secret.
    if "exception" in event and isinstance(event["exception"], str):
        event["exception"] = redact_text(event["exception"])
    return event


# sd-daemon(3) priorities by structlog method name.
_PRIORITY = {"debug": 7, "info": 6, "msg": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
             "critical": 2, "fatal": 2}


def is_journal_stream(stream: TextIO) -> bool:
    """True when `stream` is the journald stream systemd connected us to ($JOURNAL_STREAM names its
    device and inode), not a pipe or file that stdout was redirected to."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _syslog_prefix(_logger: Any, method: str, rendered: Any) -> Any:
    # After the renderer: `rendered` is the JSON line. journald reads the `<N>` prefix
    # (SyslogLevelPrefix=, on by default) and keeps MESSAGE the JSON alone.
    return f"<{_PRIORITY.get(method, 6)}>{rendered}"


def json_dumps(value: Any, **kwargs: Any) -> str:
    """JSON that keeps non-ASCII text readable; escaped only when it would not encode (a lone
    surrogate decoded from a bad answer), so a log line never fails to be written."""
    text = json.dumps(value, ensure_ascii=False, **kwargs)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(value, **kwargs)
    return text


class _LineHandler(logging.Handler):
    """Writes each formatted record through a structlog PrintLogger on the same stream: both take the
    same per-stream lock, so a record logged from a worker thread (Apprise) never splits a line."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._out = structlog.PrintLogger(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._out.msg(self.format(record))
        except Exception:
            self.handleError(record)


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None, *,
                      cache: bool = False) -> None:
    """Set up structlog, and route the standard logging of libraries through the same processors,
    renderer and stream.

    `cache` makes each module's logger build itself once (the daemon: a filtered-out debug call then
    costs nothing); left off where logging is reconfigured during the process (tests)."""
    stream = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_processor,
    ]
    tail: list[Any]
    if use_json:
        tail = [structlog.processors.format_exc_info, _redact_rendered,
                structlog.processors.JSONRenderer(serializer=json_dumps)]
        if is_journal_stream(stream):
            tail.append(_syslog_prefix)
    else:
        tail = [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    numeric = getattr(logging, level.upper())
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=cache,
    )
    handler = _LineHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    ))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
