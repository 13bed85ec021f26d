"""Every Prometheus metric Orion exports, in one place, and how `/metrics` is rendered.

Several processes on one host (workers, mailers) share counts when they share a
`PROMETHEUS_MULTIPROC_DIR` (`orion run` sets one): each writes its own files there and any
worker's `/metrics` adds them up. The variable must be set before the process starts;
without it every process counts for itself. Metrics read from a worker's own state at scrape
time (consumer lag, low stock) are collectors registered with `register_collector`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds; from a fast HTTP answer to a slow payment provider.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ORDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
DB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# --- HTTP -----------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "orion_http_requests_total", "HTTP requests by route template, method and status",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "orion_http_request_duration_seconds", "HTTP request time by route template and method",
    ["route", "method"], buckets=LATENCY_BUCKETS,
)

# --- Orders ---------------------------------------------------------------------------------
ORDERS_ACCEPTED = Counter("orion_orders_accepted_total", "Orders acknowledged with 202 by the HTTP API")
ORDERS_PLACED = Counter("orion_orders_placed_total", "Orders opened by the saga, from HTTP or any producer")
ORDERS = Counter(
    "orion_orders_total",
    "Orders by the state they reached: CONFIRMED, REJECTED, PAYMENT_FAILED, CANCELLED, FULFILLED",
    ["state"],
)
ORDER_DECISION = Histogram(
    "orion_order_decision_seconds",
    "Time from acceptance to the decision (CONFIRMED, REJECTED or PAYMENT_FAILED)",
    ["outcome"], buckets=ORDER_BUCKETS,
)
ORDER_CONFIRMATION = Histogram(
    "orion_order_confirmation_seconds", "Time from acceptance to CONFIRMED", buckets=ORDER_BUCKETS,
)
ORDERS_REFUSED = Counter(
    "orion_orders_refused_total",
    "Orders refused at the door by admission control (503), by reason (decision_delay, in_flight)",
    ["reason"],
)
# orion_admission_open, orion_admission_in_flight, orion_admission_queue_delay_seconds are
# collected at scrape time from the worker's latest reading.
REQUESTS_RESENT = Counter(
    "orion_requests_resent_total",
    "Requests sent again by the saga on evidence that their answer was lost, by request type",
    ["request"],
)

# --- Stock ----------------------------------------------------------------------------------
RESERVATIONS = Counter(
    "orion_reservations_total", "Reservation answers by SKU class (product category) and outcome",
    ["sku_class", "outcome"],
)
LOW_STOCK_ALERTS = Counter("orion_low_stock_alerts_total", "Low-stock crossings detected")
# orion_stock_available{sku} is collected at scrape time from the stock table (low SKUs only).

# --- Dead letters, emails -------------------------------------------------------------------
DEAD_LETTERS = Counter(
    "orion_dead_letters_total", "Messages parked on dead-letters, by reason class and source topic",
    ["reason", "topic"],
)
HEADERS_DROPPED = Counter(
    "orion_headers_dropped_total",
    "Kafka headers ignored because they were unsafe (too long, control characters, not UTF-8), by header",
    ["header"],
)
EMAILS = Counter(
    "orion_emails_total", "Email attempts by template and outcome (sent, retried, failed)",
    ["template", "outcome"],
)
EMAIL_QUEUE_AGE = Histogram(
    "orion_email_delivery_seconds", "Time from queueing an email to its sending",
    ["template"], buckets=ORDER_BUCKETS,
)

# --- Kafka, tables --------------------------------------------------------------------------
# orion_consumer_lag{topic,partition} is collected at scrape time from the worker's consumer.
TABLE_RECOVERY = Histogram(
    "orion_table_recovery_seconds", "Time from a rebalance to its table recovery being done",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
STATE_RETIRED = Counter(
    "orion_state_retired_total",
    "Table entries of finished orders removed after the retention (sagas, holds, adjustments)",
    ["table"],
)
HOUSEKEEPING = Histogram(
    "orion_housekeeping_seconds",
    "Time per housekeeping round of an agent (retiring state, checking for lost requests)",
    ["agent"], buckets=DB_BUCKETS,
)
# orion_table_entries{table} and orion_requests_outstanding are collected at scrape time.
RECOVERING = Gauge(
    "orion_table_recovery_in_progress", "1 while this worker recovers its tables",
    multiprocess_mode="livemax",
)

# --- PostgreSQL -----------------------------------------------------------------------------
DB_QUERY = Histogram(
    "orion_db_query_duration_seconds", "SQL statement time by kind (select, insert, update, delete, other)",
    ["kind"], buckets=DB_BUCKETS,
)
DB_ERRORS = Counter("orion_db_errors_total", "SQL statements that failed, by kind", ["kind"])
DB_SLOW = Counter("orion_db_slow_queries_total", "SQL statements slower than the threshold, by kind", ["kind"])
DB_POOL_IN_USE = Gauge(
    "orion_db_pool_connections_in_use", "Connections checked out of the pool", multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "orion_db_pool_size", "Connections the pool keeps (not counting overflow)", multiprocess_mode="livesum",
)

# --- WebSocket ------------------------------------------------------------------------------
WS_CONNECTIONS = Gauge(
    "orion_websocket_connections", "Open WebSocket connections", multiprocess_mode="livesum",
)
WS_MESSAGES = Counter("orion_websocket_messages_total", "Messages written to WebSocket clients, by type", ["type"])
WS_DROPPED = Counter(
    "orion_websocket_dropped_total", "WebSocket clients dropped by the server (slow, expired, heartbeat, error)",
    ["reason"],
)
WS_REFUSED = Counter("orion_websocket_refused_total", "WebSocket connections refused", ["reason"])
LIVE_FEED_PARTITIONS = Gauge(
    "orion_live_feed_partitions", "Partitions the live-update consumer is assigned and positioned on",
    multiprocess_mode="livemax",
)

# Names of metrics collected at scrape time (documented for ops/ and the tests).
COLLECTED = (
    "orion_consumer_lag", "orion_stock_available", "orion_stock_low_threshold", "orion_table_entries",
    "orion_requests_outstanding", "orion_admission_open", "orion_admission_in_flight",
    "orion_admission_queue_delay_seconds",
)

_local: list[Collector] = []


@lru_cache(maxsize=4096)
def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, remembered: `labels` validates and locks on every call, a
    cost the per-order counters pay thousands of times a second. Label values here come
    from small fixed sets (statuses, SKU classes)."""
    return metric.labels(*values)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def register_collector(collector: Collector) -> None:
    """A collector that reads this process's state when scraped; it replaces one of its
    class registered before (an app built again in the same process)."""
    for old in [c for c in _local if type(c) is type(collector)]:
        _local.remove(old)
        if multiprocess_dir() is None:
            REGISTRY.unregister(old)
    _local.append(collector)
    if multiprocess_dir() is None:
        REGISTRY.register(collector)


def render() -> tuple[bytes, str]:
    """The text exposition for `/metrics` and its content type."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    for collector in _local:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def process_exited(pid: int | None = None) -> None:
    """Drop a finished process's live gauges from the shared directory."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid if pid is not None else os.getpid())  # type: ignore[no-untyped-call]


def names() -> Iterable[str]:
    """Every metric family name Orion exports (for rule and dashboard checks)."""
    for value in list(globals().values()):
        if isinstance(value, Counter | Gauge | Histogram):
            yield value._name + ("_total" if isinstance(value, Counter) else "")
    yield from COLLECTED
