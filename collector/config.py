"""The whole configuration schema, validated once at load.

`load_config(path)` reads YAML, substitutes `${ENV}` / `${ENV:-default}` in string values, reads
secrets from files or systemd credentials, and validates every key. Any problem raises `ConfigError`
whose lines name the bad key by its dotted path (`platform.rate_limit: must be > 0, got -1`).
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, HttpUrl, ValidationError, create_model, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from collector.alerts.config import AlertsConfig, rule_files_relative_to
from collector.configtypes import Duration, Secret, SecretSection, Section, TimeZoneName
from collector.endpoints import ENDPOINTS
from collector.endpoints.base import EndpointSpec
from collector.platform.wire import AUTH_CODES, NOT_FOUND_CODES, RATE_LIMITED_CODES, TRANSIENT_CODES
from collector.sinks.config import SinksConfig

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration that cannot be used. `problems` are `path: reason` lines."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "invalid configuration\n  " + "\n  ".join(problems))


# --- platform -------------------------------------------------------------------------------------


HashName = Literal["md5", "sha1", "sha256", "hmac-md5", "hmac-sha256"]
TimestampUnit = Literal["seconds", "milliseconds"]
DEFAULT_TEMPLATE = "appID={appID}&body={body}&timestamp={timestamp}&traceID={traceID}&secret={secret}"
TEMPLATE_FIELDS = frozenset({"appID", "apiVersion", "traceID", "timestamp", "body", "secret"})


def template_fields(template: str) -> set[str]:
    """The `{names}` a sign template refers to. Raises ValueError for a malformed template."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class SignConfig(Section):
    """How the `sign` header is computed (the vendor's recipe is not in our documentation): the hash
    (`hmac-*` use the secret as key), the canonical string template, the hex case, and the unit of
    the `timestamp` header (and of `{timestamp}`)."""

    hash: HashName = "md5"
    template: str = DEFAULT_TEMPLATE
    case: Literal["lower", "upper"] = "lower"
    timestamp: TimestampUnit = "seconds"

    @field_validator("template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        try:
            unknown = template_fields(value) - TEMPLATE_FIELDS
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from None
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(TEMPLATE_FIELDS)}")
        return value


class EndpointOverride(Section):
    path: str | None = None
    param: str | None = None
    batch_limit: int | None = Field(default=None, ge=0)


class RetryConfig(Section):
    max_attempts: int = Field(default=4, ge=1, le=20)
    backoff_initial: Duration = Field(default=0.5, gt=0)
    backoff_max: Duration = Field(default=30.0, gt=0)


class ErrorCodesConfig(Section):
    """Which non-zero envelope codes mean what (the vendor's code page is missing: inferred defaults)."""

    rate_limited: list[int] = list(RATE_LIMITED_CODES)
    auth: list[int] = list(AUTH_CODES)
    not_found: list[int] = list(NOT_FOUND_CODES)
    transient: list[int] = list(TRANSIENT_CODES)


class PlatformConfig(SecretSection):
    """The upstream agent open API v2.0."""

    secret_fields = ("app_secret",)

    base_url: HttpUrl = HttpUrl("http://127.0.0.1:2000")
    app_id: str = ""
    app_secret: Secret | None = None
    api_version: str = "2.0"
    timeout: Duration = Field(default=10.0, gt=0)
    connect_timeout: Duration = Field(default=5.0, gt=0)
    rate_limit: float = Field(default=20.0, gt=0, description="requests per second, all endpoints")
    burst: int = Field(default=5, ge=1)
    max_concurrency: int = Field(default=16, ge=1, le=1024)
    transport: Literal["aiohttp", "httpx"] = "aiohttp"
    retries: RetryConfig = RetryConfig()
    sign: SignConfig = SignConfig()
    error_codes: ErrorCodesConfig = ErrorCodesConfig()
    endpoints: dict[str, EndpointOverride] = {}
    fields: dict[str, dict[str, str]] = {}
    flow_unit: Literal["B", "KiB", "MiB"] = "KiB"
    timezone: TimeZoneName = "Asia/Shanghai"

    @model_validator(mode="after")
    def _known_names(self) -> PlatformConfig:
        known = f"unknown endpoint; one of: {', '.join(ENDPOINTS)}"
        problems: list[tuple[tuple[str, ...], str, Any]] = [
            (("endpoints", name), known, name) for name in self.endpoints if name not in ENDPOINTS]
        for name, overrides in self.fields.items():
            endpoint = ENDPOINTS.get(name)
            problems += [(("fields", name), known, name)] if endpoint is None else [
                (("fields", name, key), why, overrides[key]) for key, why in endpoint.wire.problems(overrides).items()]
        if problems:
            raise ValidationError.from_exception_data("platform", [
                InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)
                for loc, message, value in problems])
        return self

    def endpoint_specs(self) -> dict[str, EndpointSpec]:
        """How each endpoint is called: its module's defaults with `endpoints` applied."""
        table = {name: endpoint.call for name, endpoint in ENDPOINTS.items()}
        for name, override in self.endpoints.items():
            spec = table[name]
            table[name] = EndpointSpec(
                path=override.path if override.path is not None else spec.path,
                param=override.param if override.param is not None else spec.param,
                batch_limit=override.batch_limit if override.batch_limit is not None else spec.batch_limit,
                documented=spec.documented,
            )
        return table

    @property
    def flow_unit_bytes(self) -> int:
        return {"B": 1, "KiB": 1024, "MiB": 1024**2}[self.flow_unit]


class PrivacyConfig(Section):
    location: Literal["none", "region", "exact"] = "region"


# --- inventory, jobs, sharding ----------------------------------------------------------------------

_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RESERVED_LABELS = frozenset({"device_no", "iccid", "sim_no", "slot", "kind", "alertname", "rule", "month", "event_type",
                             "action", "severity", "entity"})


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key in labels:
        if not _LABEL.match(key):
            raise ValueError(f"label name {key!r} must match [a-zA-Z_][a-zA-Z0-9_]*")
        if key in RESERVED_LABELS:
            raise ValueError(f"label name {key!r} is reserved")
    return labels


class DeviceEntry(Section):
    device_no: str = Field(min_length=1)
    labels: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _plain_id(cls, data: Any) -> Any:
        # `- 865214078636124` is short for `- {device_no: "865214078636124"}`; numbers keep their digits.
        if isinstance(data, dict) and "device_no" in data:
            return {**data, "device_no": id_text(data["device_no"])}
        return {"device_no": id_text(data)} if isinstance(data, str | int) and not isinstance(data, bool) else data

    _labels = field_validator("labels")(check_labels)


class CardEntry(Section):
    iccid: str = Field(min_length=1)
    labels: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _plain_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "iccid" in data:
            return {**data, "iccid": id_text(data["iccid"])}
        return {"iccid": id_text(data)} if isinstance(data, str | int) and not isinstance(data, bool) else data

    _labels = field_validator("labels")(check_labels)


class InventoryConfig(Section):
    """Which devices (and standalone cards) to poll: inline and/or from a CSV or YAML file."""

    devices: list[DeviceEntry] = []
    cards: list[CardEntry] = []
    file: str | None = None
    watch: bool = True
    labels: dict[str, str] = {}

    _labels = field_validator("labels")(check_labels)


class JobConfig(Section):
    enabled: bool = True
    interval: Duration = Field(gt=0)


def _job(interval: float, enabled: bool = True) -> Any:
    return Field(default_factory=lambda: JobConfig(interval=interval, enabled=enabled))


class _Jobs(Section):
    """One poll job per read endpoint (its module names the job and its default interval)."""

    def job(self, name: str) -> JobConfig:
        """The settings of job `name`."""
        job: JobConfig = getattr(self, name)
        return job


if TYPE_CHECKING:
    class JobsConfig(_Jobs):
        def __getattr__(self, name: str) -> JobConfig: ...
else:
    JobsConfig = create_model("JobsConfig", __base__=_Jobs, **{
        endpoint.job: (JobConfig, _job(endpoint.interval, endpoint.enabled)) for endpoint in ENDPOINTS.values()})


class ShardingConfig(Section):
    index: int = Field(default=0, ge=0)
    total: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _index_in_range(self) -> ShardingConfig:
        if self.index >= self.total:
            raise ValueError(f"index must be < total ({self.total}), got {self.index}")
        return self


# --- the rest -----------------------------------------------------------------------------------------


class SchedulerConfig(Section):
    """How the poll jobs treat entities the platform says it does not know (its not-found code, or a
    card left out of a batch answer): polled again after `not_found_backoff`, twice as long after
    each further not-found answer up to `not_found_backoff_max`, at full rate again once one answers."""

    not_found_backoff: Duration = Field(default=600.0, gt=0)
    not_found_backoff_max: Duration = Field(default=86400.0, gt=0)

    @model_validator(mode="after")
    def _max_not_below_first(self) -> SchedulerConfig:
        if self.not_found_backoff_max < self.not_found_backoff:
            raise ValueError("not_found_backoff_max must be at least not_found_backoff")
        return self


class HttpConfig(Section):
    """The loopback HTTP server: /metrics, /healthz, /readyz and the status API the CLI reads."""

    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)
    entity_metrics: bool = True
    entity_metrics_limit: int = Field(default=10000, ge=0)
    entity_metrics_labels: list[str] = []

    @field_validator("entity_metrics_labels")
    @classmethod
    def _label_names(cls, value: list[str]) -> list[str]:
        check_labels(dict.fromkeys(value, ""))
        if len(set(value)) != len(value):
            raise ValueError("a label is listed twice")
        return value


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    summary_interval: Duration = Field(default=300.0, ge=0)


class SimulatorConfig(Section):
    """The built-in platform simulator, run in-process when `embedded` is true (the Quick start)."""

    embedded: bool = False
    devices: int = Field(default=50, ge=1)
    seed: int = 1
    speed: float = Field(default=1.0, gt=0)
    port: int = Field(default=0, ge=0, le=65535)


class Config(Section):
    platform: PlatformConfig = PlatformConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    inventory: InventoryConfig = InventoryConfig()
    jobs: JobsConfig = JobsConfig()
    sharding: ShardingConfig = ShardingConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    sinks: SinksConfig = SinksConfig()
    alerts: AlertsConfig = AlertsConfig()
    http: HttpConfig = HttpConfig()
    logging: LoggingConfig = LoggingConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    state_dir: str = "/var/lib/iot-collector"

    @model_validator(mode="after")
    def _needs_credentials(self) -> Config:
        if not self.simulator.embedded and (not self.platform.app_id or self.platform.app_secret is None):
            raise ValueError("platform.app_id and platform.app_secret are required "
                             "unless simulator.embedded is true")
        return self


# --- loading ------------------------------------------------------------------------------------------


class _Int(int):
    """A YAML integer that remembers how it was written, so `- 0012345` stays the id "0012345"."""

    source: str


class _Loader(yaml.SafeLoader):
    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = _Int(super().construct_yaml_int(node))
        value.source = str(node.value)
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def yaml_load(text: str) -> Any:
    """YAML as plain data (safe loading), integers remembering their source text for ids."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def id_text(value: Any) -> Any:
    """An id given as a YAML number, back as the text the operator typed."""
    if isinstance(value, bool):
        return value
    if isinstance(value, _Int):
        return value.source.replace("_", "")
    if isinstance(value, int):
        return str(value)
    return value


def _substitute(value: Any, path: str, env: dict[str, str], problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable {name} is not set")
            return ""
        return _ENV.sub(repl, value)
    return value


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "model-")) and part not in ("", "[key]"):
            out += f".{part}" if out else part
    return out or "(top level)"


_SECRET_WORDS = ("secret", "token", "password", "pass")


def _describe(error: Any) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    loc = _format_loc(error["loc"])
    shown = "<redacted>" if any(w in loc.lower() for w in _SECRET_WORDS) else repr(value)
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "missing":
        return f"{loc}: required"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"{loc}: must be {bounds[kind]} {limit}, got {shown}"
    if kind == "value_error":
        return f"{loc}: {error['msg'].removeprefix('Value error, ')}"
    if kind in ("literal_error", "enum"):
        return f"{loc}: must be {ctx.get('expected')}, got {shown}"
    return f"{loc}: {error['msg'][0].lower()}{error['msg'][1:]}, got {shown}"


def validation_problems(exc: ValidationError) -> list[str]:
    """pydantic's errors as `dotted.path: reason` lines, secret values never shown."""
    return [_describe(e) for e in exc.errors(include_url=False)]


def parse_config(data: Any, source: str = "", env: dict[str, str] | None = None) -> Config:
    """Validate an already-parsed document. Raises ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping of sections"], source)
    problems: list[str] = []
    data = _substitute(data, "", dict(os.environ) if env is None else env, problems)
    if problems:
        raise ConfigError(problems, source)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc), source) from None


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    """Read and validate a YAML configuration file. Raises ConfigError."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], source) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"], source) from None
    base = Path(path).resolve().parent
    with rule_files_relative_to(base):  # alert rule files are compiled during validation
        config = parse_config(data, source, env)
    return _resolve_paths(config, base)


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths in the file are relative to the file, not to the working directory."""
    def rel(p: str | None) -> str | None:
        return None if p is None else str(base / p) if not os.path.isabs(p) else p

    inventory = config.inventory.model_copy(update={"file": rel(config.inventory.file)})
    file_sink = config.sinks.file.model_copy(update={"path": rel(config.sinks.file.path)})
    sinks = config.sinks.model_copy(update={"file": file_sink})
    return config.model_copy(update={"inventory": inventory, "sinks": sinks,
                                     "state_dir": rel(config.state_dir)})
