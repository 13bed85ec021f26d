"""Typed settings read from ORION_* environment variables (pydantic-settings): each field
`name` is read from `ORION_<NAME>`, checked against its type and, for the enumerated ones,
its allowed values; a wrong value stops the process with the variable's name."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

DEV_JWT_SECRET = "orion-development-secret-do-not-use-in-production"
ENV_PREFIX = "ORION_"
# Settings that may be read from a file instead (ORION_<NAME>_FILE), as container platforms
# mount secrets: the file's content, without a final newline, is the value.
FROM_FILES = (
    "jwt_secret", "jwt_public_key", "kafka_sasl_password", "kafka_ssl_key_password",
    "database_url", "database_password", "smtp_url", "smtp_fallback_url", "smtp_password",
)


LogFormat = Literal["json", "console"]


def _default_log_format() -> LogFormat:
    return "console" if sys.stderr.isatty() else "json"


class Settings(BaseSettings):
    """Everything a worker needs to know about its surroundings. `Settings()` reads the
    environment; keyword arguments win over it."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    kafka_bootstrap: str = "127.0.0.1:9092"
    # How every Kafka client of Orion's connects (the worker, its admin clients, the live
    # feed, the projection, the mailer, the CLI and the benchmarks): PLAINTEXT, SSL,
    # SASL_PLAINTEXT or SASL_SSL; with SASL, a mechanism and its credentials.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # OAUTHBEARER: the token is read from this file, or printed by this command, each time
    # the client needs one (so a sidecar or the command can refresh it).
    kafka_oauth_token_file: Path | None = None
    kafka_oauth_token_command: str | None = None
    # TLS (SSL and SASL_SSL): the CA bundle to trust (the system's when unset), a client
    # certificate and key for mutual TLS, and whether the broker's name is checked.
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    database_url: str = ""
    # PostgreSQL's password when it is not in ORION_DATABASE_URL (ORION_DATABASE_PASSWORD_FILE
    # for a mounted secret), and TLS with libpq's sslmode meanings: disable, prefer, require
    # (encrypted, any certificate), verify-ca (signed by ORION_DATABASE_SSLROOTCERT) or
    # verify-full (and issued to the host connected to); a client certificate and key.
    database_password: SecretStr | None = None
    database_sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] | None = None
    database_sslrootcert: Path | None = None
    database_sslcert: Path | None = None
    database_sslkey: Path | None = None
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
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
    # The SMTP password when it is not in the URL (ORION_SMTP_PASSWORD_FILE for a mounted
    # secret); the CA bundle that STARTTLS and implicit TLS trust (the system's when unset);
    # whether AUTH may be sent over a connection that is not encrypted (never by default).
    smtp_password: SecretStr | None = None
    smtp_ca_file: Path | None = None
    smtp_allow_plain_auth: bool = False
    mail_from: str = "orders@orion.local"
    # Who gets low-stock alerts (comma-separated in ORION_ALERT_EMAILS).
    alert_emails: Annotated[tuple[str, ...], NoDecode] = ("ops@orion.local",)
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
    state_dir: Path = Field(default_factory=lambda: Path.cwd() / ".orion")
    log_format: LogFormat = Field(default_factory=_default_log_format)
    log_level: Literal["debug", "info", "warning", "warn", "error", "critical"] = "info"
    # Per-order info lines a second at most (placed, reserved, stored...); 0 logs every one.
    log_order_lines: float = 20.0
    # The worker's event loop: "uvloop" (faster sockets and callbacks) or "asyncio".
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Where the worker's projection (PostgreSQL read model and email queue) runs: "process",
    # a child process of the worker (a core of its own); "inline", in the worker's event
    # loop; "off", not at all (run `orion projection` yourself).
    projection: Literal["process", "inline", "off"] = "process"
    # Seconds at least between two projection transactions while records come in a few at a
    # time (they gather meanwhile); a full batch goes at once. The read model may lag by it.
    projection_interval: float = 0.05
    app_id: str = "orion"
    # Partitions of every Orion topic, fixed once the topics exist: the most workers that can
    # share the work. 12 leaves room to grow (README, "Running more workers").
    partitions: int = Field(default=12, ge=1)
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
    payment_gateway: Literal["sandbox", "http"] = "sandbox"
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
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # A mounted secret wins over an empty variable of the same name (a base compose file's).
        return init_settings, _FromFiles(settings_cls), env_settings

    @field_validator("alert_emails", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(a.strip() for a in value.split(",") if a.strip())
        return value

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @field_validator("log_format", "log_level", "event_loop", "projection", "payment_gateway", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of this process; a wrong value raises ValueError naming its variable."""
        try:
            return cls()
        except ValidationError as exc:
            raise ValueError("; ".join(_problem(error) for error in exc.errors())) from None

    def to_env(self) -> dict[str, str]:
        """These settings as ORION_* variables, for a child process to read back with
        `from_env` (None is left out: the default)."""
        out = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            out[f"{ENV_PREFIX}{name.upper()}"] = text
        return out

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some settings changed (checked like the others)."""
        return type(self).model_validate({**self.model_dump(), **changes})


class _FromFiles(PydanticBaseSettingsSource):
    """ORION_<NAME>_FILE for each setting in FROM_FILES: the value is the file's content.
    Setting both the variable and its _FILE, or naming a file that cannot be read, is an
    error that names the variable (and never shows the content)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # every value comes from __call__

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in FROM_FILES:
            variable = f"{ENV_PREFIX}{name.upper()}"
            path = os.environ.get(f"{variable}_FILE")
            if not path:
                continue
            if os.environ.get(variable):
                raise ValueError(f"{variable} and {variable}_FILE are both set: set one")
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ValueError(f"{variable}_FILE: cannot read {path}: {exc.strerror}") from None
            values[name] = text[:-1] if text.endswith("\n") else text
        return values


def _problem(error: Any) -> str:
    """One invalid setting as people read it: the variable, the value and what it must be."""
    name = ENV_PREFIX + "_".join(str(part) for part in error["loc"]).upper()
    if error["type"] == "bool_parsing":
        return f"{name} must be true or false, not {error['input']!r}"
    return f"{name}: {error['msg']}, not {error['input']!r}"
