"""The adapters a worker (and the projection's process) uses, as long-lived resources with
their lifecycle: `Runtime`, built by `app.create_app`. The mailer, a process of its own,
picks its adapters in `mailer.run_mailer`."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from .adapters import kafka_auth
from .adapters.apikeys import ApiKeyStore
from .adapters.dead_letter_store import DeadLetterStore
from .adapters.notification_store import NotificationStore
from .adapters.payments import HttpPaymentGateway, SandboxPaymentGateway
from .adapters.postgres import SqlAlchemyStore
from .config import Settings
from .domain.catalog import Catalog
from .services.admission import Admission
from .services.ports import PaymentGateway

log = logging.getLogger("orion.runtime")


def tune_gc() -> None:
    """Collect garbage less often in a long-running process: the objects loaded at start are
    set aside for good (`gc.freeze`), and the youngest generation is collected every 50,000
    allocations instead of 700. An order allocates hundreds of objects, so the default ran a
    collection every few orders (python -m bench.hotpath, flash sale, same commit: 500 and 637
    decisions/s with the default, 667 and 781 with this). Cycles still go at the first
    collection after they are dropped."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class Runtime:
    """Resources shared by agents and views, started on first use and closed on stop.

    Faust starts agents before user services and the web server only after table recovery,
    so every user awaits `ready()` instead of relying on start order.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = Catalog()
        # The door of POST /v1/orders: the saga counts decisions, the web layer reads the load.
        self.admission = Admission(max_decision_delay=settings.max_decision_delay, max_in_flight=settings.max_in_flight)
        self._store: SqlAlchemyStore | None = None
        self._gateway: PaymentGateway | None = None
        self._lock = asyncio.Lock()
        self._started = False
        self._catalog_loaded_at = 0.0
        self._admin: AIOKafkaAdminClient | None = None
        self._coordinator: int | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._notifications: NotificationStore | None = None
        self._api_keys: ApiKeyStore | None = None
        self._dead_letters: DeadLetterStore | None = None

    @property
    def store(self) -> SqlAlchemyStore:
        if self._store is None:
            raise RuntimeError("runtime not started")
        return self._store

    @property
    def payments(self) -> PaymentGateway:
        if self._gateway is None:
            raise RuntimeError("runtime not started")
        return self._gateway

    @property
    def api_keys(self) -> ApiKeyStore:
        if self._api_keys is None:
            raise RuntimeError("runtime not started")
        return self._api_keys

    @property
    def notifications(self) -> NotificationStore:
        if self._notifications is None:
            raise RuntimeError("runtime not started")
        return self._notifications

    @property
    def dead_letters(self) -> DeadLetterStore:
        if self._dead_letters is None:
            raise RuntimeError("runtime not started")
        return self._dead_letters

    async def ready(self) -> Runtime:
        if self._started:
            return self
        async with self._lock:
            if not self._started:
                await self._start()
                self._started = True
        return self

    async def _start(self) -> None:
        s = self.settings
        if not s.database_url:
            raise RuntimeError("ORION_DATABASE_URL is not set (orion run/worker sets it)")
        self._store = SqlAlchemyStore.from_settings(s)
        self._notifications = NotificationStore(self._store.engine)
        self._api_keys = ApiKeyStore(self._store.engine)
        self._dead_letters = DeadLetterStore(self._store.engine)
        if s.payment_gateway == "http":
            if not s.payment_url:
                raise RuntimeError("ORION_PAYMENT_GATEWAY=http needs ORION_PAYMENT_URL")
            self._gateway = HttpPaymentGateway(
                s.payment_url, void_url=s.payment_void_url, refund_url=s.payment_refund_url,
                attempt_timeout=min(s.payment_attempt_timeout, s.payment_timeout),
                # Retries go on until the caller's budget (payment_timeout) runs out.
                attempts=1_000,
            )
        else:
            self._gateway = SandboxPaymentGateway()
        await self.refresh_catalog()

    async def refresh_catalog(self) -> None:
        """Reload products; retried by the caller's schedule if PostgreSQL is away."""
        products = await self.store.products()
        self.catalog = Catalog(products)
        self._catalog_loaded_at = time.monotonic()
        log.debug("catalog loaded: %d products", len(products))

    async def refresh_catalog_if_stale(self, min_age: float = 1.0) -> bool:
        """Reload when a SKU is unknown, at most once per `min_age` seconds, so new
        products are orderable at once and unknown SKUs cannot hammer the database."""
        if time.monotonic() - self._catalog_loaded_at < min_age:
            return False
        await self.refresh_catalog()
        return True

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_ms=2000,
                **kafka_auth.client_options(self.settings),
            )
            await admin.start()
            self._admin = admin
        return self._admin

    async def kafka_ping(self) -> None:
        """Ask the cluster for its brokers; raises when Kafka cannot be reached."""
        await (await self._admin_client()).describe_cluster()

    async def committed_offsets(self, tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The consumer group's committed offsets (the next offset to process; 0 when the
        group never committed one), in one request to the group's coordinator."""
        admin = await self._admin_client()
        if self._coordinator is None:
            self._coordinator = await admin.find_coordinator(self.settings.app_id)
        try:
            got = await admin.list_consumer_group_offsets(
                self.settings.app_id, self._coordinator, partitions=[TopicPartition(t, p) for t, p in tps]
            )
        except Exception:
            self._coordinator = None  # it may have moved; ask again next time
            raise
        return {(tp.topic, tp.partition): max(meta.offset, 0) for tp, meta in got.items()}

    async def end_offsets(self, tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The log end offsets of some partitions, in one request per leader."""
        if self._offsets is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                request_timeout_ms=5000, **kafka_auth.client_options(self.settings),
            )
            await consumer.start()
            self._offsets = consumer
        got = await self._offsets.end_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): offset for tp, offset in got.items()}

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
        if self._offsets is not None:
            await self._offsets.stop()
        if isinstance(self._gateway, HttpPaymentGateway):
            await self._gateway.close()
        if self._store is not None:
            await self._store.close()
        self._started = False
