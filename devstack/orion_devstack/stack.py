"""A whole Orion stack as processes: Kafka, PostgreSQL and workers, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orion_streams.config import Settings
from orion_streams.domain.catalog import DEMO_PRODUCTS, Product
from orion_streams.web.auth import issue_token

from .certs import make_certs
from .kafka import KafkaBroker, SecureKafka
from .ports import free_port
from .postgres import LocalPostgres


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll a condition until it holds; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)  # poll until the deadline
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Services:
    """Where the broker and database of one stack are, and the settings workers share."""

    bootstrap: str
    database_url: str
    state_dir: Path
    app_id: str
    partitions: int
    payment_timeout: float
    # The stack's own database server and broker, for tests that take them away and back.
    postgres: LocalPostgres | None = field(default=None, repr=False)
    broker: KafkaBroker | None = field(default=None, repr=False)
    # ORION_* variables every process of the stack gets beside these (how to reach a secure
    # broker: protocol, SASL user, CA).
    env: dict[str, str] = field(default_factory=dict, repr=False)
    settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        secure: dict[str, Any] = {name[len("ORION_"):].lower(): value for name, value in self.env.items()}
        self.settings = Settings.model_validate({
            "kafka_bootstrap": self.bootstrap, "database_url": self.database_url,
            "partitions": self.partitions, "app_id": self.app_id, **secure,
        })

    def token(self, subject: str, roles: tuple[str, ...] = ("customer",), ttl: float = 3600) -> str:
        return issue_token(self.settings, subject, roles, ttl=ttl)


@contextmanager
def running_services(
    root: Path,
    *,
    partitions: int = 4,
    payment_timeout: float = 2.0,
    products: Iterable[Product] = (),
    secure_kafka: bool = False,
    secure_postgres: bool = False,
) -> Iterator[Services]:
    """A fresh Kafka broker and PostgreSQL server on free ports, migrated, topics created,
    catalog loaded; both stopped on exit whatever happens. `secure_kafka`: the broker
    accepts only SASL_SSL (SCRAM-SHA-512, a CA made for the stack); `secure_postgres`: the
    database accepts only TLS, and its clients check its certificate (verify-full). Every
    process of the stack is told how to reach them."""
    secure = None
    env: dict[str, str] = {}
    certs = make_certs(root / "certs") if secure_kafka or secure_postgres else None
    if secure_kafka and certs is not None:
        secure = SecureKafka(certs, {"orion": secrets.token_urlsafe(16)})
        env.update(secure.client_settings("orion"))
    if secure_postgres and certs is not None:
        env.update({"ORION_DATABASE_SSLMODE": "verify-full", "ORION_DATABASE_SSLROOTCERT": str(certs.ca)})
    broker = KafkaBroker(root / "kafka", port=free_port(), secure=secure)
    pg = LocalPostgres(root / "postgres", port=free_port(), tls=certs if secure_postgres else None)
    broker.start()
    try:
        pg.start()
        try:
            from orion_streams.adapters.kafka_admin import ensure_topics
            from orion_streams.adapters.postgres import SqlAlchemyStore
            from orion_streams.cli import _migrate

            setup = Services(broker.bootstrap, pg.url, root, "setup", partitions, payment_timeout, env=env).settings
            _migrate(setup)
            options = secure.client_options("orion") if secure is not None else None
            asyncio.run(ensure_topics(broker.bootstrap, partitions, options=options))

            async def seed() -> None:
                store = SqlAlchemyStore.from_settings(setup, pool_size=1)
                try:
                    await store.upsert_products([*DEMO_PRODUCTS, *products])
                finally:
                    await store.close()

            asyncio.run(seed())
            app_id = f"orion-{uuid.uuid4().hex[:8]}"
            yield Services(
                broker.bootstrap, pg.url, root, app_id, partitions, payment_timeout, postgres=pg, broker=broker,
                env=env,
            )
        finally:
            pg.stop()
    finally:
        broker.stop()


class OrionProcess:
    """An `orion <command>` process with its own state dir and log, stopped with its group."""

    command = ""
    kind = ""
    port: int  # its HTTP port (/health, /ready, /metrics), chosen by the subclass

    def __init__(self, services: Services, name: str, env: dict[str, str]) -> None:
        self.services = services
        self.name = name
        self.dir = services.state_dir / f"{self.kind}-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{self.kind}.log"
        self.env = {
            **os.environ,
            "ORION_KAFKA_BOOTSTRAP": services.bootstrap,
            "ORION_DATABASE_URL": services.database_url,
            "ORION_STATE_DIR": str(self.dir),
            "ORION_LOG_LEVEL": "info",
            **services.env,
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orion_streams.cli", self.command],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        try:
            wait_until(ready, timeout, f"{self.kind} {self.name} {what}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"{self.kind} {self.name} did not start:\n{self.tail()}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answers(self, path: str) -> bool:
        """The process is running and `path` answers 200."""
        self._check_alive()
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.kind} {self.name} exited:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class Worker(OrionProcess):
    """One `orion worker` process with its own web port and state dir."""

    command = "worker"
    kind = "worker"

    def __init__(self, services: Services, name: str, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        super().__init__(services, name, {
            "ORION_WEB_PORT": str(self.port),
            "ORION_APP_ID": services.app_id,
            "ORION_PARTITIONS": str(services.partitions),
            "ORION_PAYMENT_TIMEOUT": str(services.payment_timeout),
            "ORION_WORKER_ID": name,
            # Test and benchmark clients place orders far faster than shoppers do.
            "ORION_ORDER_RATE_PER_MINUTE": "600000",
            "ORION_ORDER_BURST": "10000",
            **(extra_env or {}),
        })

    def start(self, timeout: float = 90, *, until: str = "ready") -> Worker:
        """Start and wait until /ready says 200 (or, with until="alive", /health does)."""
        self._spawn(self.ready if until == "ready" else self.alive, f"/{until}", timeout)
        return self

    def alive(self) -> bool:
        return self._answers("/health")

    def ready(self) -> bool:
        return self._answers("/ready")


class Mailer(OrionProcess):
    """One `orion mailer` process: sends the emails the workers queue."""

    command = "mailer"
    kind = "mailer"

    def __init__(self, services: Services, name: str, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        super().__init__(services, name, {
            "ORION_WORKER_ID": name, "ORION_MAILER_METRICS_PORT": str(self.port), **(extra_env or {}),
        })

    def start(self, timeout: float = 30) -> Mailer:
        self._spawn(self.listening, "to listen", timeout)
        return self

    def listening(self) -> bool:
        """/ready: the mailer LISTENs for new emails."""
        return self._answers("/ready")
