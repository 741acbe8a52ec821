"""The whole configuration schema, validated once at load.

`load_config(path)` reads YAML, substitutes `${ENV}` / `${ENV:-default}` in string values, reads
secrets from files or systemd credentials, and validates every key. Any problem raises `ConfigError`
whose lines name the bad key by its dotted path (`platform.rate_limit: must be > 0, got -1`).
Reading the file as data and the error type are `collector.configfile`'s (re-exported here), which
knows no schema: the simulator reads the same files with its own.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, HttpUrl, ValidationError, create_model, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from collector.alerts.config import AlertsConfig
from collector.configfile import ConfigError as ConfigError
from collector.configfile import SettingError as SettingError
from collector.configfile import id_text as id_text
from collector.configfile import read_yaml_file
from collector.configfile import substitute_env as _substitute
from collector.configfile import validation_problems as validation_problems
from collector.configfile import yaml_load as yaml_load
from collector.configtypes import ByteSize, Duration, Secret, SecretSection, Section, TimeZoneName
from collector.endpoints import ENDPOINTS
from collector.endpoints.base import EndpointSpec
from collector.platform.wire import AUTH_CODES, NOT_FOUND_CODES, RATE_LIMITED_CODES, TRANSIENT_CODES
from collector.sinks.config import SinksConfig

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
    # A device answer is about 7 KB and a batch of 100 cards a few hundred: far below this.
    max_response_bytes: ByteSize = Field(default=4 * 1024**2, ge=1024)
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
    # Undocumented by the vendor: how often the platform refreshes a device's status
    # (lastDeviceStatusAt). Data cannot be fresher than this, whatever the poll interval.
    refresh_period: Duration = Field(default=300.0, gt=0,
                                     description="how often the platform refreshes a device's status")

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
    """One poll job per read endpoint (its module names the job and its default interval): a job
    given without an interval (`{enabled: false}`) keeps its endpoint's default one."""

    @model_validator(mode="before")
    @classmethod
    def _default_intervals(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults = {endpoint.job: endpoint.interval for endpoint in ENDPOINTS.values()}
        return {name: {**job, "interval": defaults[name]}
                if isinstance(job, dict) and "interval" not in job and name in defaults else job
                for name, job in data.items()}

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


def host_name(value: str) -> str:
    """A host as the Host header names it, compared case-blind: `[::1]` -> `::1`, `Example.COM.` ->
    `example.com`."""
    value = value.strip().lower().rstrip(".")
    return value[1:-1] if value.startswith("[") and value.endswith("]") else value


class HttpConfig(SecretSection):
    """The loopback HTTP server: /metrics, /healthz, /readyz and the status API the CLI reads. Requests
    to anything but /metrics, /healthz and /readyz must name the collector in `Host` (its listen
    address, localhost, or one of `allowed_hosts`); requests that change something (silences) need the
    API token: `api_token` (or `_file` / `_credential`), else the one the collector keeps in its state
    directory."""

    secret_fields = ("api_token",)

    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)
    entity_metrics: bool = True
    entity_metrics_limit: int = Field(default=10000, ge=0)
    allowed_hosts: list[str] = Field(default=[], description="more names or addresses clients reach the API by")
    api_token: Secret | None = None
    entity_metrics_labels: list[str] = []

    def url(self, port: int | None = None) -> str:
        """Where a client on this host reaches the server: `http://listen:port`, an IPv6 address in
        brackets, a wildcard listen address as loopback. `port`: the bound port when `port` is 0."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.listen, self.listen)
        port = self.port if port is None else port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            host = host_name(value)
            plain = host and not any(c in host for c in "/@*?# \t") and (":" not in host or _is_ip(host))
            if not plain:
                raise ValueError(f"{value!r} is not a host name or IP address (like collector.example.com or "
                                 "10.0.0.5: no scheme, port, path or wildcard)")
            out.append(host)
        return out

    @field_validator("api_token")
    @classmethod
    def _strong_token(cls, value: Any) -> Any:
        token = value.get_secret_value() if value is not None else None
        if token is not None and (len(token) < 16 or any(c.isspace() for c in token)):
            raise ValueError("must be at least 16 characters without spaces (for example the output of "
                             "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        return value


    @field_validator("entity_metrics_labels")
    @classmethod
    def _label_names(cls, value: list[str]) -> list[str]:
        check_labels(dict.fromkeys(value, ""))
        if len(set(value)) != len(value):
            raise ValueError("a label is listed twice")
        return value


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


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


def _read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The YAML document of a configuration file, which must hold settings. Raises ConfigError."""
    source = str(path)
    data = read_yaml_file(path)
    if data is None or data == {}:
        raise SettingError("the configuration file is empty (it holds no settings; deploy/collector.yaml is a "
                           "complete example, docs/configuration.md describes every key)", source)
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping of sections"], source)
    return data


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    """Read and validate a YAML configuration file. Raises ConfigError."""
    config = parse_config(_read_document(path), str(path), env)
    return _resolve_paths(config, Path(path).resolve().parent)


API_TOKEN_KEYS = ("api_token", "api_token_file", "api_token_credential")


class ClientSettings(Section):
    """What a command talking to a running collector needs from its configuration file: the HTTP
    settings, the state directory and how the API token is given (`api_token`, `api_token_file` or
    `api_token_credential`, as written). Read by `load_client_settings` without the rest of the file, so
    that a secret the client cannot read (the app secret's systemd credential) does not stop it."""

    http: HttpConfig = HttpConfig()
    state_dir: str = Config.model_fields["state_dir"].default
    api_token: dict[str, str] = {}
    source: str = ""


def load_client_settings(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> ClientSettings:
    """The `http` section and `state_dir` of a configuration file. Raises ConfigError."""
    source = str(path)
    data = _read_document(path)
    problems: list[str] = []
    wanted = {"http": data.get("http") or {}, "state_dir": data.get("state_dir", ClientSettings().state_dir)}
    wanted = _substitute(wanted, "", dict(os.environ) if env is None else env, problems)
    if problems:
        raise ConfigError(problems, source)
    http = dict(wanted["http"]) if isinstance(wanted["http"], dict) else wanted["http"]
    token = {key: str(http.pop(key)) for key in API_TOKEN_KEYS
             if isinstance(http, dict) and http.get(key) not in (None, "")}
    try:
        settings = ClientSettings.model_validate({"http": http, "state_dir": wanted["state_dir"],
                                                  "api_token": token, "source": source})
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc), source) from None
    base = Path(path).resolve().parent
    state_dir = settings.state_dir if os.path.isabs(settings.state_dir) else str(base / settings.state_dir)
    return settings.model_copy(update={"state_dir": state_dir})


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths in the file are relative to the file, not to the working directory."""
    def rel(p: str | None) -> str | None:
        return None if p is None else str(base / p) if not os.path.isabs(p) else p

    inventory = config.inventory.model_copy(update={"file": rel(config.inventory.file)})
    file_sink = config.sinks.file.model_copy(update={"path": rel(config.sinks.file.path)})
    sinks = config.sinks.model_copy(update={"file": file_sink})
    alerts = config.alerts.model_copy(update={"rule_files": [str(rel(f)) for f in config.alerts.rule_files]})
    return config.model_copy(update={"inventory": inventory, "sinks": sinks, "alerts": alerts,
                                     "state_dir": rel(config.state_dir)})
