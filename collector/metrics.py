"""The collector's own Prometheus metrics: one registry, every metric defined here so names stay
consistent (naming guide: `iot_collector_` prefix, base units, `_total` for counters), plus the
standard `process_*` and `python_*` collectors every exporter has. No `_created` series: they double
the series of every counter and histogram and no dashboard reads them.

Per-entity gauges (RSSI, battery, ...) are not here: they are read from the fleet state at scrape time
by a custom collector (see `collector.telemetry`)."""

from __future__ import annotations

import platform as _platform

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from collector import __version__

prometheus_client.disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
P = "iot_collector"

# process_* (CPU, memory, open files, start time), python_info and python_gc_*, as on every exporter.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

BUILD_INFO = Info(f"{P}_build", "Version of the collector", registry=REGISTRY)
BUILD_INFO.info({"version": __version__, "python": _platform.python_version()})

# --- upstream platform ------------------------------------------------------------------------------
UPSTREAM_REQUESTS = Counter(f"{P}_upstream_requests_total", "Requests to the platform by endpoint and outcome",
                            ["endpoint", "outcome"], registry=REGISTRY)
UPSTREAM_LATENCY = Histogram(f"{P}_upstream_request_duration_seconds", "Platform request latency",
                             ["endpoint"], registry=REGISTRY,
                             buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
UPSTREAM_API_ERRORS = Counter(f"{P}_upstream_api_errors_total",
                              "Non-zero envelope codes returned by the platform", ["endpoint", "code"],
                              registry=REGISTRY)
UPSTREAM_RETRIES = Counter(f"{P}_upstream_retries_total", "Retried platform requests", ["endpoint"],
                           registry=REGISTRY)
UPSTREAM_PARSE_ERRORS = Counter(f"{P}_upstream_parse_errors_total",
                                "Platform answers (or records in them) that could not be parsed and were skipped",
                                ["endpoint"], registry=REGISTRY)
RATE_LIMIT_CURRENT = Gauge(f"{P}_upstream_rate_limit_requests_per_second",
                           "Request rate currently allowed (lowered after the platform throttles us)",
                           registry=REGISTRY)
RATE_LIMIT_CONFIGURED = Gauge(f"{P}_upstream_rate_limit_configured_requests_per_second",
                              "Request rate configured in platform.rate_limit", registry=REGISTRY)
RATE_LIMITED = Counter(f"{P}_upstream_throttled_total", "Times the platform said we were over its rate",
                       registry=REGISTRY)
REQUESTS_IN_FLIGHT = Gauge(f"{P}_upstream_requests_in_flight", "Platform requests in flight", registry=REGISTRY)

# --- jobs -------------------------------------------------------------------------------------------
JOB_RUNS = Counter(f"{P}_job_runs_total", "Job runs by outcome", ["poll_job", "outcome"], registry=REGISTRY)
JOB_DURATION = Histogram(f"{P}_job_duration_seconds", "How long one run of a job took", ["poll_job"],
                         registry=REGISTRY, buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 900, 3600))
JOB_OVERRUNS = Counter(f"{P}_job_overruns_total",
                       "Runs skipped because the previous cycle of the same job was still dispatching",
                       ["poll_job"], registry=REGISTRY)
JOB_SKIPPED_IN_FLIGHT = Counter(f"{P}_job_polls_skipped_in_flight_total",
                                "Entities not polled at their turn because their previous poll was still in flight "
                                "(a slow answer being retried)", ["poll_job"], registry=REGISTRY)
JOB_FIRST_POLLS = Counter(f"{P}_job_first_polls_total",
                          "Entities polled ahead of their job's cycle because they were tracked for the first time "
                          "(SIMs found inside a device)", ["poll_job"], registry=REGISTRY)
JOB_INTERVAL = Gauge(f"{P}_job_interval_seconds",
                     "The interval a job runs at: the configured one, stretched to fit the request budget",
                     ["poll_job"], registry=REGISTRY)
BUDGET_NEEDED = Gauge(f"{P}_request_budget_needed_requests_per_second",
                      "Requests per second the jobs need at their configured intervals (SIMs not discovered "
                      "yet estimated)", registry=REGISTRY)
BUDGET_PLANNED = Gauge(f"{P}_request_budget_planned_requests_per_second",
                       "Requests per second the jobs make at the intervals they run at", registry=REGISTRY)
BUDGET_STRETCH = Gauge(f"{P}_request_budget_stretch_ratio",
                       "Factor by which every interval is stretched to fit 90% of platform.rate_limit "
                       "(1: as configured)", registry=REGISTRY)
POLLS_IN_FLIGHT = Gauge(f"{P}_polls_in_flight",
                        "Polls started and not finished (at most twice platform.max_concurrency)", registry=REGISTRY)
JOB_DISPATCH_WAIT = Counter(f"{P}_job_dispatch_wait_seconds_total",
                            "Seconds a job's dispatching waited because the most polls allowed were in flight "
                            "(the platform answers slower than the plan)", ["poll_job"], registry=REGISTRY)
JOB_LAG = Gauge(f"{P}_job_lag_seconds", "How late the last run of a job started", ["poll_job"], registry=REGISTRY)
JOB_LAST_SUCCESS = Gauge(f"{P}_job_last_success_timestamp_seconds", "When a job last finished without error",
                         ["poll_job"], registry=REGISTRY)
POLLS = Counter(f"{P}_entity_polls_total",
                "Entities polled by kind and outcome (ok, error, not_found: the platform does not know it)",
                ["kind", "outcome"], registry=REGISTRY)

# --- sinks and spool -----------------------------------------------------------------------------------
POINTS_COLLECTED = Counter(f"{P}_points_collected_total", "Points accepted into the spool", registry=REGISTRY)
POINTS_WRITTEN = Counter(f"{P}_points_written_total", "Points accepted by a sink", ["sink"], registry=REGISTRY)
POINTS_FAILED = Counter(f"{P}_points_failed_total", "Points a sink rejected for good (dead-lettered)",
                        ["sink", "reason"], registry=REGISTRY)
POINTS_DROPPED = Counter(f"{P}_points_dropped_total", "Points dropped before any sink took them",
                         ["reason"], registry=REGISTRY)
SINK_WRITE_ERRORS = Counter(f"{P}_sink_write_errors_total", "Failed write attempts (to be retried)",
                            ["sink", "reason"], registry=REGISTRY)
SINK_UP = Gauge(f"{P}_sink_up", "1 when the last write to the sink succeeded", ["sink"], registry=REGISTRY)

# --- alerts and notifications ----------------------------------------------------------------------------
NOTIFICATIONS = Counter(f"{P}_notifications_total", "Notifications by notifier and outcome (sent, failed, dropped)",
                        ["notifier", "outcome"], registry=REGISTRY)
ALERT_TRANSITIONS = Counter(f"{P}_alert_transitions_total", "Alert state changes", ["rule", "to"],
                            registry=REGISTRY)
ALERT_EVAL_DURATION = Histogram(f"{P}_alert_evaluation_duration_seconds", "Time spent in each sweep of alert rules",
                                registry=REGISTRY, buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5))
ALERT_EVALUATION_ERRORS = Counter(f"{P}_alert_evaluation_errors_total",
                                  "Rule conditions that failed to evaluate for an entity (read as false)", ["rule"],
                                  registry=REGISTRY)

# --- process -------------------------------------------------------------------------------------------
# process_* and python_gc_* (registered above) show memory creep and garbage collections from outside;
# the loop's lag shows what they cost.
EVENT_LOOP_LAG = Histogram(f"{P}_event_loop_lag_seconds",
                           "How late a timer on the event loop fires: the time nothing else could run "
                           "(a long garbage collection, a blocking call)",
                           registry=REGISTRY,
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5))
CONFIG_RELOADS = Counter(f"{P}_config_reloads_total", "Configuration reloads by outcome", ["outcome"],
                         registry=REGISTRY)

# --- HTTP API --------------------------------------------------------------------------------------------
HTTP_REFUSED = Counter(f"{P}_http_requests_refused_total",
                       "Requests to the HTTP API refused (host, origin, cross_site, no_token, bad_token, "
                       "no_api_token, content_type)", ["reason"], registry=REGISTRY)
