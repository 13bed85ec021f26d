"""The local stack of `orion run` and `orion services`: whichever of Kafka, PostgreSQL and a
mail catcher the environment does not name, started on this machine and stopped on exit."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from orion_streams.config import Settings

from ._common import DevServiceError
from .kafka import KafkaBroker
from .ports import free_port
from .postgres import LocalPostgres
from .smtp import MailCatcher


@contextlib.contextmanager
def local_services(settings: Settings) -> Iterator[Settings]:
    """Start the local broker and database unless the environment names other ones."""
    stack = contextlib.ExitStack()
    bootstrap, url = settings.kafka_bootstrap, settings.database_url
    with stack:
        if "ORION_KAFKA_BOOTSTRAP" not in os.environ:
            print("starting Apache Kafka (KRaft, single node) ...", flush=True)
            broker = KafkaBroker(settings.state_dir / "kafka", port=9092, reuse=True, stop_at_exit=True)
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
        if not url:
            print("starting PostgreSQL (embedded) ...", flush=True)
            pg = LocalPostgres(settings.state_dir / "postgres", port=5433, reuse=True, stop_at_exit=True)
            pg.start()
            stack.callback(pg.stop)
            url = pg.url
        smtp_url = settings.smtp_url
        if "ORION_SMTP_URL" not in os.environ:
            catcher = _mail_catcher(settings.state_dir)
            stack.callback(catcher.stop)
            smtp_url = f"smtp://{catcher.host}:{catcher.port}"
        yield settings.with_changes(kafka_bootstrap=bootstrap, database_url=url, smtp_url=smtp_url)


def _mail_catcher(state_dir: Path) -> MailCatcher:
    """A local SMTP server that keeps every email (port 1025, or a free one if taken)."""
    try:
        catcher = MailCatcher(state_dir, port=1025)
        catcher.start()
    except DevServiceError:
        catcher = MailCatcher(state_dir, port=free_port())
        catcher.start()
    print(f"mail catcher on smtp://{catcher.host}:{catcher.port}; emails are saved in {catcher.mail_dir}", flush=True)
    return catcher
