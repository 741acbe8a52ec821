"""What the simulator reads of a configuration, with its own small schema: from the `platform` section
the credentials it accepts, the sign recipe, endpoint paths and parameters, field names, flow unit,
time zone and API version; from the `simulator` section the fleet's defaults. Keys the simulator has no
use for (a collector's rate limit, sinks, alerts...) are left to the collector to check.

The same file a collector uses can configure the simulator (`iot-collector simulate -c FILE`): it is
read as data here (`collector.configfile`), never through the collector's schema, which would load the
client's endpoint table. The embedded simulator gets the daemon's validated `platform` section and
reads it the same way (`PlatformSettings.of`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from collector.configfile import ConfigError, read_yaml_file, substitute_env, validation_problems
from collector.configtypes import TimeZoneName, read_secret_sources
from collector.simulator.contract import (
    DEFAULT_ROUTES,
    DEFAULT_TEMPLATE,
    TEMPLATE_FIELDS,
    Endpoint,
    HashName,
    Renamer,
    Route,
    SignVerifier,
    TimestampUnit,
    field_problems,
    template_names,
)

# Credentials of the demo (a simulator given no platform section accepts these).
EMBEDDED_APP_ID = "demo"
EMBEDDED_APP_SECRET = "demo-secret"

FLOW_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2}
_NAMES = frozenset(e.value for e in Endpoint)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignRecipe(_Strict):
    """`platform.sign`: hash, template, hex case and the unit of the `timestamp` header."""

    hash: HashName = "md5"
    template: str = DEFAULT_TEMPLATE
    case: Literal["lower", "upper"] = "lower"
    timestamp: TimestampUnit = "seconds"

    @field_validator("template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        try:
            unknown = template_names(value) - TEMPLATE_FIELDS
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from None
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(TEMPLATE_FIELDS)}")
        return value


class RouteOverride(_Strict):
    path: str | None = None
    param: str | None = None
    batch_limit: int | None = Field(default=None, ge=0)

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must start with '/', got {value!r}")
        return value


class PlatformSettings(BaseModel):
    """The keys of the `platform` section the simulator needs (others are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    app_id: str = ""
    app_secret: SecretStr | None = None
    api_version: str = "2.0"
    sign: SignRecipe = SignRecipe()
    endpoints: dict[Endpoint, RouteOverride] = {}
    fields: dict[Endpoint, dict[str, str]] = {}
    flow_unit: Literal["B", "KiB", "MiB"] = "KiB"
    timezone: TimeZoneName = "Asia/Shanghai"
    # What the section names that the simulator does not serve (endpoints it has no answers for, field
    # names it does not know in a section a collector validated): left alone, shown in /_sim/state.
    not_served: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _secret_sources(cls, data: Any) -> Any:
        return read_secret_sources(data, ("app_secret",))

    @model_validator(mode="before")
    @classmethod
    def _served(cls, data: Any, info: ValidationInfo) -> Any:
        """Endpoints the simulator does not know are left out (a collector may poll more than it
        serves); so are field names it does not know when the collector validated the section."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        skipped: list[str] = []
        for key in ("endpoints", "fields"):
            table = data.get(key)
            if isinstance(table, dict):
                skipped.extend(f"{key}.{name}" for name in table if name not in _NAMES)
                data[key] = {name: value for name, value in table.items() if name in _NAMES}
        fields = data.get("fields")
        if (info.context or {}).get("validated") and isinstance(fields, dict):
            for name, overrides in fields.items():
                if isinstance(overrides, dict):
                    bad = field_problems(Endpoint(name), overrides)
                    skipped.extend(f"fields.{name}.{key}" for key in bad)
                    fields[name] = {k: v for k, v in overrides.items() if k not in bad}
        if skipped:
            data["not_served"] = tuple(skipped)
        return data

    @model_validator(mode="after")
    def _known_fields(self) -> PlatformSettings:
        problems = [InitErrorDetails(type=PydanticCustomError("value_error", why), loc=("fields", endpoint.value, key),
                                     input=overrides[key])
                    for endpoint, overrides in self.fields.items()
                    for key, why in field_problems(endpoint, overrides).items()]
        if problems:
            raise ValidationError.from_exception_data("platform", problems)
        return self

    @classmethod
    def demo(cls) -> PlatformSettings:
        """The built-in demo credentials with every other key at its default."""
        return cls(app_id=EMBEDDED_APP_ID, app_secret=SecretStr(EMBEDDED_APP_SECRET))

    @classmethod
    def of(cls, section: PlatformSettings | Mapping[str, Any] | object | None) -> PlatformSettings:
        """Settings from a `platform` section given as plain data (a mapping), or as any object that
        dumps to one (`model_dump`, e.g. the daemon's validated section: its secret is read with
        `get_secret_value`, as a dump redacts it). None: the demo credentials."""
        if section is None:
            return cls.demo()
        if isinstance(section, PlatformSettings):
            return section
        if isinstance(section, Mapping):
            return cls.model_validate(dict(section))
        dump = getattr(section, "model_dump", None)
        if dump is None:
            raise TypeError(f"a platform section must be a mapping, got {type(section).__name__}")
        data = dict(dump(mode="python", exclude_none=True))
        secret = getattr(section, "app_secret", None)
        reveal = getattr(secret, "get_secret_value", None)
        data["app_secret"] = reveal() if reveal is not None else secret
        return cls.model_validate(data, context={"validated": True})

    @property
    def secret(self) -> str:
        return self.app_secret.get_secret_value() if self.app_secret is not None else ""

    @property
    def flow_unit_bytes(self) -> int:
        return FLOW_UNITS[self.flow_unit]

    def verifier(self) -> SignVerifier:
        sign = self.sign
        return SignVerifier(self.secret, sign.hash, sign.template, sign.case, sign.timestamp)

    def routes(self, base: Mapping[Endpoint, Route] | None = None) -> dict[Endpoint, Route]:
        """How each endpoint is called: `base` (the built-in table by default) with `endpoints` applied."""
        table = dict(base or DEFAULT_ROUTES)
        for endpoint, override in self.endpoints.items():
            route = table[endpoint]
            table[endpoint] = Route(
                override.path if override.path is not None else route.path,
                override.param if override.param is not None else route.param,
                override.batch_limit if override.batch_limit is not None else route.batch_limit)
        return table

    def renamers(self) -> dict[Endpoint, Renamer]:
        """The endpoints whose answers `fields` renames."""
        out = {}
        for endpoint in Endpoint:
            renamer = Renamer.build(endpoint, self.fields.get(endpoint))
            if renamer is not None:
                out[endpoint] = renamer
        return out


class SimulatorDefaults(BaseModel):
    """The keys of the `simulator` section the standalone simulator takes its defaults from."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    devices: int = Field(default=50, ge=1)
    seed: int = 1
    speed: float = Field(default=1.0, ge=0)


def load_settings(path: str | os.PathLike[str],
                  env: Mapping[str, str] | None = None) -> tuple[PlatformSettings, SimulatorDefaults]:
    """The `platform` and `simulator` sections of a configuration file, `${ENV}` substituted and secrets
    read from files or credentials like a collector does. Raises ConfigError naming each bad key."""
    source = str(path)
    data = read_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping of sections"], source)
    out: list[BaseModel] = []
    problems: list[str] = []
    for name, model in (("platform", PlatformSettings), ("simulator", SimulatorDefaults)):
        section = data.get(name) or {}
        if not isinstance(section, dict):
            problems.append(f"{name}: must be a mapping")
            continue
        section = substitute_env(section, name, dict(os.environ if env is None else env), problems)
        try:
            out.append(model.model_validate(section))
        except ValidationError as exc:
            problems.extend(validation_problems(exc, name))
    if problems:
        raise ConfigError(problems, source)
    platform, defaults = out
    assert isinstance(platform, PlatformSettings) and isinstance(defaults, SimulatorDefaults)
    return platform, defaults
