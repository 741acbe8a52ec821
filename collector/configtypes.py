"""Small value types shared by every part of the configuration schema: durations, byte sizes and
secrets that can come inline, from a file or from a systemd credential."""

from __future__ import annotations

import os
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer, SecretStr, model_validator

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4,
               "tib": 1024**4, "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_duration(value: Any) -> float:
    """`30s`, `5m`, `1h`, `1h30m`, `250ms`, `2d` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like 30s, 5m or 1h, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text and _DURATION_PART.sub("", text) == "":
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        try:
            return float(text)
        except ValueError:
            pass
    raise ValueError(f"must be a duration like 30s, 5m or 1h, got {value!r}")


def parse_size(value: Any) -> int:
    """`512MiB`, `2GB`, `100k` or a bare number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"must be a size like 512MiB or 2GB, got {value!r}")


def check_zone(value: str) -> str:
    """An IANA time zone name that this machine knows (`Asia/Shanghai`, `UTC`)."""
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
TimeZoneName = Annotated[str, AfterValidator(check_zone)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
Secret = Annotated[SecretStr, PlainSerializer(lambda _: "<redacted>", return_type=str)]


def read_secret_sources(data: Any, names: tuple[str, ...]) -> Any:
    """For each secret `name`, accept `name`, `name_file` (a path) or `name_credential` (a file in
    `$CREDENTIALS_DIRECTORY`, as systemd's LoadCredential= provides). Exactly one may be set."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for name in names:
        given = [k for k in (name, f"{name}_file", f"{name}_credential") if data.get(k) not in (None, "")]
        if len(given) > 1:
            raise ValueError(f"set only one of {', '.join(given)}")
        path: Path | None = None
        if f"{name}_file" in given:
            path = Path(str(data.pop(f"{name}_file")))
        elif f"{name}_credential" in given:
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ValueError(f"{name}_credential is set but $CREDENTIALS_DIRECTORY is not "
                                 "(run under systemd with LoadCredential=)")
            path = Path(directory) / str(data.pop(f"{name}_credential"))
        data.pop(f"{name}_file", None)
        data.pop(f"{name}_credential", None)
        if path is not None:
            try:
                data[name] = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"cannot read the {name} file {str(path)!r}: {exc.strerror}") from None
    return data


class Section(BaseModel):
    """Base of every configuration section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretSection(Section):
    """A section whose `secret_fields` may also come from `<name>_file` or `<name>_credential`."""

    secret_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _secret_sources(cls, data: Any) -> Any:
        return read_secret_sources(data, cls.secret_fields)
