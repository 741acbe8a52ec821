"""Configuration of alerting (the `alerts:` section): rules and rule files, the thresholds of the
default rules, notifiers with their routing and grouping, silences and maintenance windows.

Validation checks the shape of every key and nothing more: rules are compiled by the engine and by
`check-config` (`collector.alerts.rules.compile_rules`), which report a bad expression with the rule's
path and name.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, HttpUrl, field_validator, model_validator

from collector.alerts.matchers import parse_matcher
from collector.configtypes import Duration, Secret, SecretSection, Section, TimeZoneName, read_secret_sources

KINDS = ("device", "sim", "account", "collector")
Kind = Literal["device", "sim", "account", "collector"]
Severity = Literal["critical", "warning", "info"]
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_LABEL = re.compile(_NAME)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

def _check_matchers(values: list[str]) -> list[str]:
    for text in values:
        parse_matcher(text)
    return values


def _check_label_names(labels: dict[str, str]) -> dict[str, str]:
    for key in labels:
        if not _LABEL.match(key):
            raise ValueError(f"label name {key!r} must match [a-zA-Z_][a-zA-Z0-9_]*")
    return labels


# --- rules ----------------------------------------------------------------------------------------------


class RuleConfig(Section):
    """One alert rule. `condition` and `clear` are expressions over the entity's fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=_NAME)
    kind: Kind
    condition: str
    clear: str | None = Field(default=None, description="hysteresis: once active, the alert stays active "
                                                         "until this holds (default: until condition stops)")
    value: str | None = Field(default=None, description="the quantity the alert reports (an expression); "
                                                         "default: the field the condition orders first")
    for_: Duration = Field(default=0.0, ge=0, alias="for")
    keep_firing_for: Duration = Field(default=0.0, ge=0)
    severity: Severity = "warning"
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}

    _labels = field_validator("labels")(_check_label_names)


# --- notifiers ---------------------------------------------------------------------------------------------


class RetryConfig(Section):
    """Delivery retries of one notifier: exponential backoff, bounded attempts."""

    max_attempts: int = Field(default=8, ge=1, le=100)
    backoff_initial: Duration = Field(default=1.0, gt=0)
    backoff_max: Duration = Field(default=300.0, gt=0)


class NotifierBase(SecretSection):
    name: str = Field(default="", pattern=r"^$|^[A-Za-z0-9_.-]+$")
    match: list[str] = Field(default=[], description="label matchers, all must hold (severity included)")
    max_queue: int = Field(default=1000, ge=1)
    timeout: Duration = Field(default=10.0, gt=0)
    retry: RetryConfig = RetryConfig()

    _match = field_validator("match")(_check_matchers)


class GroupingConfig(NotifierBase):
    """Notifiers that receive grouped messages (one per group of alerts sharing `group_by` labels)."""

    group_by: list[str] = ["alertname", "customer"]
    group_wait: Duration = Field(default=30.0, ge=0)
    group_interval: Duration = Field(default=300.0, gt=0)
    repeat_interval: Duration = Field(default=4 * 3600.0, gt=0)
    send_resolved: bool = True
    max_alerts: int = Field(default=50, ge=1, description="alerts listed in one message; the rest are counted")

    @field_validator("group_by")
    @classmethod
    def _group_labels(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _LABEL.match(value):
                raise ValueError(f"label name {value!r} must match [a-zA-Z_][a-zA-Z0-9_]*")
        return values


class LogNotifierConfig(GroupingConfig):
    """Write notifications to the collector's log."""

    type: Literal["log"]
    level: Literal["info", "warning", "error"] = "warning"


class WebhookNotifierConfig(GroupingConfig):
    """POST a JSON document (see docs/alerts.md) to a URL, optionally signed with HMAC-SHA256."""

    secret_fields = ("secret",)

    type: Literal["webhook"]
    url: HttpUrl
    secret: Secret | None = None
    headers: dict[str, str] = {}


class AppriseNotifierConfig(GroupingConfig):
    """Direct delivery through Apprise URLs (DingTalk, WeCom, Feishu, email, Slack, Telegram, json://...).
    The URLs carry tokens: they are secrets, and may come from `urls_file` (one per line)."""

    type: Literal["apprise"]
    urls: list[Secret] = Field(min_length=1)
    format: Literal["text", "markdown"] = "text"
    min_interval: Duration | None = Field(
        default=None, ge=0, description="least time between two messages to one URL (default: Apprise's "
                                        "per-service throttle, 5.5 s for most services)")

    @model_validator(mode="before")
    @classmethod
    def _urls_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("urls_file" in data or "urls_credential" in data):
            data = read_secret_sources({**data, "urls": None}, ("urls",))
            text = data.get("urls") or ""
            data["urls"] = [line.strip() for line in str(text).splitlines()
                            if line.strip() and not line.strip().startswith("#")]
        return data

    @field_validator("urls")
    @classmethod
    def _known_schemes(cls, values: list[Any]) -> list[Any]:
        for i, value in enumerate(values):
            url = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
            if "://" not in url:
                raise ValueError(f"urls[{i}]: not an Apprise URL (scheme://...)")
            from collector.alerts.notifiers.apprise import check_url

            problem = check_url(url)
            if problem:
                raise ValueError(f"urls[{i}]: {problem}")
        return values


class AlertmanagerNotifierConfig(NotifierBase):
    """Prometheus Alertmanager API v2. Alertmanager does its own grouping and routing: every firing alert
    is posted (and re-posted every `resend_interval`, as Prometheus does), resolved ones once."""

    secret_fields = ("password",)

    type: Literal["alertmanager"]
    url: HttpUrl = Field(description="Alertmanager's base URL, e.g. http://127.0.0.1:9093")
    resend_interval: Duration = Field(default=60.0, gt=0)
    username: str = ""
    password: Secret | None = None


NotifierConfig = Annotated[
    LogNotifierConfig | WebhookNotifierConfig | AppriseNotifierConfig | AlertmanagerNotifierConfig,
    Field(discriminator="type"),
]


# --- silences ---------------------------------------------------------------------------------------------


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class SilenceConfig(Section):
    """Mute alerts whose labels match, between two instants (naive times are UTC)."""

    matchers: list[str] = Field(min_length=1)
    starts_at: dt.datetime | None = None
    ends_at: dt.datetime
    comment: str = ""
    created_by: str = "config"

    _matchers = field_validator("matchers")(_check_matchers)
    _times = field_validator("starts_at", "ends_at")(lambda v: None if v is None else _aware(v))

    @model_validator(mode="after")
    def _ordered(self) -> SilenceConfig:
        if self.starts_at is not None and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class MaintenanceWindowConfig(Section):
    """A recurring silence: every listed weekday from `start` to `end` (local time in `timezone`;
    an `end` earlier than `start` runs past midnight)."""

    name: str = ""
    matchers: list[str] = Field(min_length=1)
    weekdays: list[Weekday] = list(WEEKDAYS)  # type: ignore[arg-type]
    start: dt.time
    end: dt.time
    timezone: TimeZoneName = "UTC"
    comment: str = ""

    _matchers = field_validator("matchers")(_check_matchers)

    @model_validator(mode="after")
    def _not_empty(self) -> MaintenanceWindowConfig:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self


# --- the section ---------------------------------------------------------------------------------------------

def _default_log() -> NotifierConfig:
    return LogNotifierConfig(type="log", name="log")


ParamValue = bool | int | float | str | list[int | float | str]


class AlertsConfig(Section):
    """The `alerts:` section."""

    enabled: bool = False
    evaluation_interval: Duration = Field(default=30.0, gt=0,
                                          description="how often time-based transitions are swept")
    default_rules: bool = True
    disabled_rules: list[str] = []
    params: dict[str, ParamValue] = {}
    rules: list[RuleConfig] = []
    rule_files: list[str] = []
    notifiers: list[NotifierConfig] = Field(default_factory=lambda: [_default_log()])
    silences: list[SilenceConfig] = []
    maintenance_windows: list[MaintenanceWindowConfig] = []
    external_url: str = Field(default="", description="base of generatorURL (default http://<hostname>:9108)")
    write_points: bool = True

    @field_validator("notifiers")
    @classmethod
    def _names(cls, values: list[Any]) -> list[Any]:
        seen: set[str] = set()
        out = []
        for value in values:
            name = value.name or value.type
            if name in seen:
                raise ValueError(f"two notifiers are named {name!r}: give each a distinct name")
            seen.add(name)
            out.append(value if value.name else value.model_copy(update={"name": name}))
        return out
