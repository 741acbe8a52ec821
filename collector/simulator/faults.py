"""Faults the simulator injects on demand: what can go wrong between a client and the platform.

Owns the fault settings (`FaultConfig`, set by CLI flags, by the constructor or by `POST /_sim/faults`
mid-run) and the per-request decision (`FaultInjector`). Decisions come from a generator seeded by
the simulator's seed, so a run with the same requests in the same order sees the same faults.

Per request, in this order: the platform's QPS cap (not a fault: the platform's own limit, answered
with code 42900 in an HTTP 200, or HTTP 429 + Retry-After with `throttle_http`), then added latency,
then at most one of drop / timeout / HTTP error / malformed JSON / non-zero code, picked with one
draw so each rate is exactly that outcome's probability (the rates must add up to at most 1).
`limit` caps how many requests get those faults; after that they switch themselves off (a test can
ask for "the next two requests fail" and then see the client recover).
"""

from __future__ import annotations

import random
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from collector.simulator.contract import Endpoint

FaultKind = Literal["drop", "timeout", "http_error", "malformed", "code"]
_KINDS: tuple[tuple[FaultKind, str], ...] = (
    ("drop", "drop_rate"), ("timeout", "timeout_rate"), ("http_error", "error_rate"),
    ("malformed", "malformed_rate"), ("code", "code_rate"),
)


class FaultConfig(BaseModel):
    """Fault settings. Every rate is a probability per request; 0 everywhere means a healthy platform."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency: float = Field(default=0.0, ge=0, description="seconds added to every answer")
    latency_jitter: float = Field(default=0.0, ge=0, description="plus a uniform random 0..jitter s")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="answer HTTP error_status")
    error_status: int = Field(default=500, ge=400, le=599)
    drop_rate: float = Field(default=0.0, ge=0, le=1, description="close the connection, no answer")
    timeout_rate: float = Field(default=0.0, ge=0, le=1, description="hold the request, never answer")
    hang: float = Field(default=300.0, gt=0, description="how long a timeout holds the request")
    malformed_rate: float = Field(default=0.0, ge=0, le=1, description="HTTP 200, truncated JSON")
    code_rate: float = Field(default=0.0, ge=0, le=1, description="HTTP 200, envelope with `code`")
    code: int = Field(default=50000, description="the non-zero code of code_rate answers")
    code_message: str = "系统繁忙,请稍后再试"
    qps_cap: int = Field(default=0, ge=0, description="the platform's requests/s cap; 0 = none")
    throttle_http: bool = Field(default=False, description="over the cap: HTTP 429, not code 42900")
    endpoints: list[Endpoint] = Field(default_factory=list, description="faults only these; [] = all")
    limit: int = Field(default=0, ge=0, description="fault at most this many requests; 0 = no limit")

    @model_validator(mode="after")
    def _rates_fit(self) -> FaultConfig:
        if self.code == 0:
            raise ValueError("code must be non-zero (0 is the platform's success)")
        total = sum(getattr(self, name) for _, name in _KINDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"drop, timeout, error, malformed and code rates add up to {total:g} > 1")
        return self

    @property
    def active(self) -> bool:
        """Whether any per-request fault (not the QPS cap) is switched on."""
        return self.latency > 0 or self.latency_jitter > 0 or any(getattr(self, n) > 0 for _, n in _KINDS)


class FaultInjector:
    """Holds the current `FaultConfig` and decides, request by request, what goes wrong."""

    def __init__(self, config: FaultConfig | None = None, seed: int = 0) -> None:
        self.config = config or FaultConfig()
        self._random = random.Random(seed ^ 0xFA017).random
        self._window = -1
        self._window_count = 0
        self._faulted = 0

    @property
    def config(self) -> FaultConfig:
        return self._config

    @config.setter
    def config(self, config: FaultConfig) -> None:
        self._config = config
        self.active = config.active  # read on every request: computed once per change

    def update(self, changes: dict[str, object], *, clear: bool = False) -> FaultConfig:
        """Apply a partial update (validated as a whole; on error nothing changes)."""
        base = {} if clear else self.config.model_dump()
        self.config = FaultConfig.model_validate({**base, **changes})
        self._faulted = 0
        return self.config

    def over_cap(self) -> bool:
        """Count this request against the platform's per-second cap; True if it is over."""
        cap = self._config.qps_cap
        if not cap:
            return False
        second = int(time.monotonic())
        if second != self._window:
            self._window, self._window_count = second, 0
        self._window_count += 1
        return self._window_count > cap

    def decide(self, endpoint: Endpoint) -> tuple[float, FaultKind | None]:
        """(seconds of added latency, the fault to inject or None) for one request."""
        config = self._config
        if not self.active or (config.endpoints and endpoint not in config.endpoints):
            return 0.0, None
        if config.limit:
            if self._faulted >= config.limit:
                # Used up: the faults switch off, the platform's own QPS cap stays.
                self.config = FaultConfig(qps_cap=config.qps_cap, throttle_http=config.throttle_http)
                self._faulted = 0
                return 0.0, None
            self._faulted += 1
        delay = config.latency + (config.latency_jitter * self._random() if config.latency_jitter else 0.0)
        draw = self._random()
        for kind, name in _KINDS:
            rate = getattr(config, name)
            if draw < rate:
                return delay, kind
            draw -= rate
        return delay, None
