"""Typed settings read from ORION_* environment variables."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEV_JWT_SECRET = "orion-development-secret-do-not-use-in-production"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _flag(name: str, default: bool) -> bool:
    value = _env(name, "true" if default else "false").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ValueError(f"{name} must be true or false, not {value!r}")
    return value in ("true", "1", "yes", "on")


def _default_state_dir() -> Path:
    return Path(_env("ORION_STATE_DIR", str(Path.cwd() / ".orion"))).resolve()


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to know about its surroundings."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: str = ""
    jwt_secret: str = DEV_JWT_SECRET
    jwt_algorithm: str = "HS256"
    jwt_public_key: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # RS/PS/ES keys as a local JWKS file (the token's `kid` picks the key); instead of a PEM key.
    jwt_jwks_file: str | None = None
    # Clock leeway (seconds) when checking a token's exp, nbf and iat.
    jwt_leeway: float = 5.0
    smtp_url: str = "smtp://127.0.0.1:1025"
    smtp_fallback_url: str | None = None
    mail_from: str = "orders@orion.local"
    # Who gets low-stock alerts (comma-separated in ORION_ALERT_EMAILS).
    alert_emails: tuple[str, ...] = ("ops@orion.local",)
    smtp_timeout: float = 10.0
    # Email retries: attempts in all, first delay and cap (seconds); delays grow x2 with jitter.
    email_max_attempts: int = 6
    email_retry_base: float = 2.0
    email_retry_max: float = 300.0
    # WebSocket: messages queued per socket before a slow client is dropped; ping interval.
    ws_queue_size: int = 256
    ws_heartbeat: float = 20.0
    ws_max_per_user: int = 10
    # Order creation per caller, per worker: sustained rate and burst, for users and for
    # services (API keys and service tokens place orders for many people).
    order_rate_per_minute: float = 120.0
    order_burst: int = 30
    service_order_rate_per_minute: float = 12_000.0
    service_order_burst: int = 1_000
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    state_dir: Path = field(default_factory=_default_state_dir)
    log_format: str = "json"
    log_level: str = "info"
    # Per-order info lines a second at most (placed, reserved, stored...); 0 logs every one.
    log_order_lines: float = 20.0
    # The worker's event loop: "uvloop" (faster sockets and callbacks) or "asyncio".
    event_loop: str = "uvloop"
    # Where the worker's projection (PostgreSQL read model and email queue) runs: "process",
    # a child process of the worker (a core of its own); "inline", in the worker's event
    # loop; "off", not at all (run `orion projection` yourself).
    projection: str = "process"
    # Seconds at least between two projection transactions while records come in a few at a
    # time (they gather meanwhile); a full batch goes at once. The read model may lag by it.
    projection_interval: float = 0.05
    app_id: str = "orion"
    # Partitions of every Orion topic, fixed once the topics exist: the most workers that can
    # share the work. 12 leaves room to grow (README, "Running more workers").
    partitions: int = 12
    # Seconds one authorisation may take at the provider, retries included, counted from
    # when the payment agent takes the request (never time spent in Kafka queues).
    payment_timeout: float = 10.0
    # One HTTP attempt's limit (the adapter retries within payment_timeout).
    payment_attempt_timeout: float = 5.0
    # How long the payment agent keeps trying to void (or refund) before it gives up loudly.
    payment_void_timeout: float = 60.0
    # Payment requests waiting on the provider at once, per worker.
    payment_concurrency: int = 32
    # Ask for an order's payment alongside its reservations (decided two hops sooner; an
    # authorisation for an order then rejected for stock is voided), except for contended
    # SKUs or ones that just turned orders away; false: only once every line is held.
    pay_with_reservation: bool = True
    payment_gateway: str = "sandbox"
    payment_url: str | None = None
    payment_void_url: str | None = None
    payment_refund_url: str | None = None
    # Admission control: refuse new orders (503) while orders wait longer than this for a
    # decision, or while this many are being decided.
    max_decision_delay: float = 5.0
    max_in_flight: int = 5000
    # Seconds a finished order's saga and holds are kept to absorb repeats, then removed.
    order_retention: float = 3600.0
    worker_id: str = "w1"
    processing_guarantee: str = "at_least_once"
    db_pool_size: int = 10
    # The mailer serves /metrics and /health on this port; 0 for none.
    mailer_metrics_port: int = 0
    # SQL statements slower than this (milliseconds) are logged, without their parameters.
    db_slow_query_ms: float = 200.0
    # A worker that stops heartbeating loses its partitions after this long (heartbeats every
    # tenth of it): a killed worker's orders move to the others within seconds.
    session_timeout: float = 10.0
    # Faust's consumer in a thread of its own (Faust's default) instead of on the worker's
    # event loop (orion_streams/inline_consumer.py).
    consumer_thread: bool = False
    standby_replicas: int = 1
    # /health fails when a rebalance's table recovery has not finished after this long, so an
    # orchestrator restarts the worker (faust-streaming can stall in recovery).
    recovery_stall: float = 300.0

    @property
    def jwt_secret_is_default(self) -> bool:
        return self.jwt_secret == DEV_JWT_SECRET

    @classmethod
    def from_env(cls) -> Settings:
        default_format = "console" if sys.stderr.isatty() else "json"
        return cls(
            kafka_bootstrap=_env("ORION_KAFKA_BOOTSTRAP", cls.kafka_bootstrap),
            database_url=_env("ORION_DATABASE_URL", ""),
            jwt_secret=_env("ORION_JWT_SECRET", DEV_JWT_SECRET),
            jwt_algorithm=_env("ORION_JWT_ALGORITHM", "HS256"),
            jwt_public_key=os.environ.get("ORION_JWT_PUBLIC_KEY"),
            jwt_issuer=os.environ.get("ORION_JWT_ISSUER"),
            jwt_audience=os.environ.get("ORION_JWT_AUDIENCE"),
            jwt_jwks_file=os.environ.get("ORION_JWT_JWKS_FILE"),
            jwt_leeway=float(_env("ORION_JWT_LEEWAY", str(cls.jwt_leeway))),
            smtp_url=_env("ORION_SMTP_URL", cls.smtp_url),
            smtp_fallback_url=os.environ.get("ORION_SMTP_FALLBACK_URL"),
            mail_from=_env("ORION_MAIL_FROM", cls.mail_from),
            alert_emails=tuple(
                a.strip() for a in _env("ORION_ALERT_EMAILS", ",".join(cls.alert_emails)).split(",") if a.strip()
            ),
            smtp_timeout=float(_env("ORION_SMTP_TIMEOUT", str(cls.smtp_timeout))),
            email_max_attempts=int(_env("ORION_EMAIL_MAX_ATTEMPTS", str(cls.email_max_attempts))),
            email_retry_base=float(_env("ORION_EMAIL_RETRY_BASE", str(cls.email_retry_base))),
            email_retry_max=float(_env("ORION_EMAIL_RETRY_MAX", str(cls.email_retry_max))),
            ws_queue_size=int(_env("ORION_WS_QUEUE_SIZE", str(cls.ws_queue_size))),
            ws_heartbeat=float(_env("ORION_WS_HEARTBEAT", str(cls.ws_heartbeat))),
            ws_max_per_user=int(_env("ORION_WS_MAX_PER_USER", str(cls.ws_max_per_user))),
            order_rate_per_minute=float(_env("ORION_ORDER_RATE_PER_MINUTE", str(cls.order_rate_per_minute))),
            order_burst=int(_env("ORION_ORDER_BURST", str(cls.order_burst))),
            service_order_rate_per_minute=float(
                _env("ORION_SERVICE_ORDER_RATE_PER_MINUTE", str(cls.service_order_rate_per_minute))
            ),
            service_order_burst=int(_env("ORION_SERVICE_ORDER_BURST", str(cls.service_order_burst))),
            web_host=_env("ORION_WEB_HOST", cls.web_host),
            web_port=int(_env("ORION_WEB_PORT", str(cls.web_port))),
            state_dir=_default_state_dir(),
            log_format=_env("ORION_LOG_FORMAT", default_format),
            log_level=_env("ORION_LOG_LEVEL", "info"),
            log_order_lines=float(_env("ORION_LOG_ORDER_LINES", str(cls.log_order_lines))),
            event_loop=_env("ORION_EVENT_LOOP", cls.event_loop),
            projection=_env("ORION_PROJECTION", cls.projection),
            projection_interval=float(_env("ORION_PROJECTION_INTERVAL", str(cls.projection_interval))),
            app_id=_env("ORION_APP_ID", cls.app_id),
            partitions=int(_env("ORION_PARTITIONS", str(cls.partitions))),
            payment_timeout=float(_env("ORION_PAYMENT_TIMEOUT", str(cls.payment_timeout))),
            payment_attempt_timeout=float(_env("ORION_PAYMENT_ATTEMPT_TIMEOUT", str(cls.payment_attempt_timeout))),
            payment_void_timeout=float(_env("ORION_PAYMENT_VOID_TIMEOUT", str(cls.payment_void_timeout))),
            payment_concurrency=int(_env("ORION_PAYMENT_CONCURRENCY", str(cls.payment_concurrency))),
            pay_with_reservation=_flag("ORION_PAY_WITH_RESERVATION", cls.pay_with_reservation),
            consumer_thread=_flag("ORION_CONSUMER_THREAD", cls.consumer_thread),
            payment_gateway=_env("ORION_PAYMENT_GATEWAY", cls.payment_gateway),
            payment_url=os.environ.get("ORION_PAYMENT_URL"),
            payment_void_url=os.environ.get("ORION_PAYMENT_VOID_URL"),
            payment_refund_url=os.environ.get("ORION_PAYMENT_REFUND_URL"),
            max_decision_delay=float(_env("ORION_MAX_DECISION_DELAY", str(cls.max_decision_delay))),
            max_in_flight=int(_env("ORION_MAX_IN_FLIGHT", str(cls.max_in_flight))),
            order_retention=float(_env("ORION_ORDER_RETENTION", str(cls.order_retention))),
            worker_id=_env("ORION_WORKER_ID", cls.worker_id),
            processing_guarantee=_env("ORION_PROCESSING_GUARANTEE", cls.processing_guarantee),
            db_pool_size=int(_env("ORION_DB_POOL_SIZE", str(cls.db_pool_size))),
            mailer_metrics_port=int(_env("ORION_MAILER_METRICS_PORT", "0")),
            db_slow_query_ms=float(_env("ORION_DB_SLOW_QUERY_MS", str(cls.db_slow_query_ms))),
            standby_replicas=int(_env("ORION_STANDBY_REPLICAS", str(cls.standby_replicas))),
            session_timeout=float(_env("ORION_SESSION_TIMEOUT", str(cls.session_timeout))),
            recovery_stall=float(_env("ORION_RECOVERY_STALL", str(cls.recovery_stall))),
        )
