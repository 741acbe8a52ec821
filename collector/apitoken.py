"""The API token: the secret a request must carry (`Authorization: Bearer <token>`) to change anything
through the collector's HTTP API (silences today), where it comes from, and how the daemon makes it
and the command-line client finds it.

The token is `http.api_token` when the configuration gives one (inline, `api_token_file` or
`api_token_credential`, a systemd credential). Otherwise the daemon keeps one in its state directory,
`<state_dir>/api-token`: 32 random bytes, URL-safe, made at the first start with mode 0600 and kept
across restarts (delete the file and restart to replace it). The client reads the same sources, so
`iot-collector silence add` works for anyone who can read the state directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import structlog

from collector.config import ClientSettings, HttpConfig

log = structlog.get_logger("collector.apitoken")

TOKEN_FILE = "api-token"
# Where systemd looks for `LoadCredential=NAME` without a path: where a client outside the service finds it.
CREDSTORE_DIRS = ("/etc/credstore", "/run/credstore", "/usr/lib/credstore")
MIN_LENGTH = 16


class TokenUnavailable(Exception):
    """The client cannot read the token; the message says what to do."""


def read_token_file(path: Path) -> str:
    """The token in `path`. Raises OSError, or ValueError for an empty or damaged file."""
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < MIN_LENGTH or any(c.isspace() for c in token):
        raise ValueError(f"{path} does not hold a token (empty or damaged)")
    return token


def _write_private(path: Path, token: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(token + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename survives a power cut where the directory can be synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def provision_token(config: HttpConfig, state_dir: Path) -> str | None:
    """The daemon's token: the configured one, else the state directory's, made on first use. None when
    there is none and none can be stored (a full or read-only disk): the API then refuses every change,
    and the daemon runs on."""
    if config.api_token is not None:
        return config.api_token.get_secret_value()
    path = state_dir / TOKEN_FILE
    try:
        token = read_token_file(path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("api token file unusable: making a new one", path=str(path),
                    error=getattr(exc, "strerror", None) or str(exc))
    else:
        _keep_private(path)
        return token
    token = secrets.token_urlsafe(32)
    try:
        _write_private(path, token)
    except OSError as exc:
        log.warning("api token not stored: changes through the API (silences) are refused until it can be",
                    path=str(path), error=exc.strerror or str(exc))
        return None
    log.info("api token created", path=str(path))
    return token


def _keep_private(path: Path) -> None:
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("api token file was readable by other users: made private (delete it and restart "
                        "to replace the token)", path=str(path), mode=oct(mode & 0o777))
    except OSError as exc:
        log.warning("api token file permissions not checked", path=str(path), error=exc.strerror or str(exc))


def client_token(settings: ClientSettings, token_file: str | None = None) -> tuple[str, str]:
    """The token a command sends, and where it was found (for messages): `token_file` when given,
    else `http.api_token*` of the configuration, else the daemon's file in the state directory.
    Raises TokenUnavailable saying what to do."""
    if token_file:
        return _read_for_client(Path(token_file), "--token-file"), token_file
    keys, source = settings.api_token, settings.source or "the configuration"
    if "api_token" in keys:
        return keys["api_token"], f"http.api_token in {source}"
    if "api_token_file" in keys:
        path = Path(keys["api_token_file"])
        return _read_for_client(path, f"http.api_token_file of {source}"), str(path)
    if "api_token_credential" in keys:
        name = keys["api_token_credential"]
        given = os.environ.get("CREDENTIALS_DIRECTORY")
        folders = (given,) if given else CREDSTORE_DIRS
        closed = []
        for folder in folders:
            path = Path(folder) / name
            if path.exists():
                return _read_for_client(path, f"http.api_token_credential of {source}"), str(path)
            if os.path.isdir(folder) and not os.access(folder, os.R_OK | os.X_OK):
                closed.append(folder)
        where = " or ".join(folders)
        if closed:
            raise TokenUnavailable(f"cannot look for the API token credential {name} in {', '.join(closed)}: "
                                   "permission denied. Run the command as root (sudo), or pass --token-file FILE")
        raise TokenUnavailable(
            f"http.api_token_credential names {name}, which is not in {where}: set CREDENTIALS_DIRECTORY to "
            f"the folder holding it, or pass --token-file FILE")
    path = Path(settings.state_dir) / TOKEN_FILE
    try:
        return read_token_file(path), str(path)
    except PermissionError:
        raise TokenUnavailable(
            f"cannot read the API token {path}: permission denied. Run the command as a user who can read "
            "the collector's state directory (under systemd: sudo), or pass --token-file FILE") from None
    except FileNotFoundError:
        raise TokenUnavailable(
            f"no API token at {path}: the collector makes it at its first start in its state_dir (is this "
            "the configuration it runs with? -c FILE), or pass --token-file FILE") from None
    except (OSError, ValueError) as exc:
        raise TokenUnavailable(f"cannot read the API token {path}: {getattr(exc, 'strerror', None) or exc}. "
                               "Restart the collector to make a new one, or pass --token-file FILE") from None


def _read_for_client(path: Path, what: str) -> str:
    try:
        return read_token_file(path)
    except PermissionError:
        raise TokenUnavailable(f"cannot read the API token {path} ({what}): permission denied. Run the "
                               "command as a user who can read it (sudo)") from None
    except (OSError, ValueError) as exc:
        raise TokenUnavailable(f"cannot read the API token {path} ({what}): "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
