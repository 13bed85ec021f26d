"""`orion mailer`: the process that sends the emails the email agent queued.

Workers only queue emails (rows in `notifications`); mailers claim due rows with
`FOR UPDATE SKIP LOCKED` and a lease, render, send over SMTP (primary, then fallback), retry
with backoff and dead-letter what cannot be delivered. A separate process keeps rendering
and SMTP off the workers' CPU and event loop, and any number of mailers may run.

A mailer LISTENs on the `orion_notifications` channel, which every commit that queues
emails NOTIFYs, so new emails go out at once; it also polls, for retries that come due and
in case the listening connection is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
from aiohttp import web
from aiokafka import AIOKafkaProducer
from sqlalchemy.engine import make_url

from . import logs, metrics, records, topics, tracing
from .adapters import kafka_auth
from .adapters.email import EmailRenderer, SmtpSender, SmtpServer
from .adapters.notification_store import CHANNEL, Claimed, NotificationStore
from .adapters.pg_connect import check_at_start
from .adapters.postgres import SqlAlchemyStore
from .config import Settings
from .domain.notifications import RetryPolicy
from .domain.retry import Backoff
from .services.notifications import NotificationDispatcher, dead_letter_record

log = logging.getLogger("orion.mailer")


def asyncpg_dsn(database_url: str) -> str:
    """A SQLAlchemy URL (postgresql+asyncpg://...) as a plain DSN for asyncpg."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(
    dsn: str, wake: Callable[[], None], stop: asyncio.Event, listening: asyncio.Event | None = None,
    connect_args: Mapping[str, Any] | None = None,
) -> None:
    """Wake the dispatcher on every NOTIFY; reconnect with backoff when the connection drops.
    `listening` is set while the LISTEN connection is up; `connect_args` (TLS, password) are
    the store's (pg_params)."""
    listening = listening or asyncio.Event()
    backoff = Backoff(0.5, 30.0)
    first = True
    while not stop.is_set():
        conn: Any = None
        try:
            conn = await asyncpg.connect(dsn, **{"timeout": 10, **(connect_args or {})})
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            await conn.add_listener(CHANNEL, lambda *_args: wake())
            listening.set()
            if first:
                log.info("listening for queued emails on %s", CHANNEL)
                first = False
            else:
                log.info("listening again for queued emails on %s", CHANNEL)
            backoff.reset()
            wake()  # whatever was queued while not listening
            waiters = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            listening.clear()
            if not stop.is_set():
                log.warning("lost the LISTEN connection; polling until it is back")
        except Exception as exc:  # PostgreSQL away: polling carries on meanwhile
            pause = backoff.next()
            log.warning("cannot LISTEN (%s); again in %.1fs", exc, pause)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):  # backoff, cut short by stop
                    await stop.wait()
        finally:
            listening.clear()
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)


class KafkaDeadLetters:
    """Publishes emails given up on to `dead-letters`; the producer starts on first use."""

    def __init__(self, bootstrap: str, options: Mapping[str, Any] | None = None) -> None:
        self.bootstrap, self.options = bootstrap, dict(options or {})
        self._producer: AIOKafkaProducer | None = None

    async def __call__(self, message: Claimed, reason: str) -> None:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, acks="all", request_timeout_ms=10_000, **self.options)
            await producer.start()
            self._producer = producer
        key, value, headers = dead_letter_record(message, reason, records.utc_iso(time.time(), "milliseconds"))
        await self._producer.send_and_wait(topics.DEAD_LETTERS.name, value, key=key, headers=headers)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


def dispatcher_for(settings: Settings, queue: NotificationStore, dead_letter: Any) -> NotificationDispatcher:
    return NotificationDispatcher(
        queue,
        EmailRenderer(),
        SmtpSender.from_settings(settings),
        sender=settings.mail_from,
        policy=RetryPolicy(settings.email_max_attempts, settings.email_retry_base, settings.email_retry_max),
        dead_letter=dead_letter,
        # Retries come due between NOTIFYs: look at least twice per base delay.
        poll=max(0.1, min(1.0, settings.email_retry_base / 2)),
        # Primary and fallback, each up to a timeout per SMTP step: the lease outlasts both.
        lease=max(60.0, 12 * settings.smtp_timeout),
    )


async def run_mailer(settings: Settings, stop: asyncio.Event) -> None:
    """Send queued emails until `stop` is set."""
    if not settings.database_url:
        raise SystemExit("ORION_DATABASE_URL must be set for the mailer")
    try:  # a Kafka security setting that cannot work stops the mailer now, naming it
        await kafka_auth.check_connection(settings)
    except kafka_auth.KafkaSecurityError as exc:
        raise SystemExit(f"orion mailer: {exc}") from None
    # A wrong CA, certificate or password stops the mailer here, naming the setting.
    params = await check_at_start(settings, must_connect=False)
    try:
        await SmtpSender.from_settings(settings).check()
    except ValueError as exc:
        raise SystemExit(f"orion mailer: {exc}") from None
    store = SqlAlchemyStore.from_settings(settings, pool_size=4)
    dead_letters = KafkaDeadLetters(settings.kafka_bootstrap, kafka_auth.client_options(settings))
    dispatcher = dispatcher_for(settings, NotificationStore(store.engine), dead_letters)
    log.info(
        "mailer sending through %s%s", SmtpServer.from_url(settings.smtp_url).label,
        f", fallback {SmtpServer.from_url(settings.smtp_fallback_url).label}" if settings.smtp_fallback_url else "",
    )
    listening = asyncio.Event()
    web = None
    if settings.mailer_metrics_port:
        web = await _serve_metrics(settings.web_host, settings.mailer_metrics_port, listening)
    tasks = [
        asyncio.ensure_future(dispatcher.run()),
        asyncio.ensure_future(
            listen(asyncpg_dsn(settings.database_url), dispatcher.wake, stop, listening, params.connect_args)
        ),
    ]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await dead_letters.close()
        await store.close()
        if web is not None:
            await web.cleanup()
        metrics.process_exited()
        await asyncio.to_thread(tracing.shutdown)  # flushes buffered spans
        log.info("mailer stopped")


async def _serve_metrics(host: str, port: int, listening: asyncio.Event) -> web.AppRunner:
    """`/metrics`, `/health` and `/ready` (200 while LISTENing for new emails) of this mailer."""

    async def scrape(request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        if listening.is_set():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "unavailable", "missing": ["postgresql (LISTEN)"]}, status=503)

    app = web.Application()
    app.add_routes([web.get("/metrics", scrape), web.get("/health", health), web.get("/ready", ready)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("mailer metrics on http://%s:%d/metrics", host, port)
    return runner


def main(settings: Settings) -> None:
    """Run a mailer in this process until SIGINT or SIGTERM."""
    logs.configure(settings.log_format, settings.log_level, f"mailer-{settings.worker_id}")
    try:  # SMTP settings a mailer cannot send with: say which, no traceback
        SmtpSender.from_settings(settings)
    except ValueError as exc:
        raise SystemExit(f"orion mailer: {exc}") from None
    tracing.configure("orion-mailer", f"mailer-{settings.worker_id}")

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_mailer(settings, stop)

    asyncio.run(serve())
