"""Local development services (Kafka, PostgreSQL, SMTP catcher) launched as plain processes."""

from ._common import DevServiceError
from .kafka import KafkaBroker, fetch_kafka
from .ports import free_port
from .postgres import LocalPostgres
from .smtp import MailCatcher

__all__ = [
    "DevServiceError",
    "KafkaBroker",
    "LocalPostgres",
    "MailCatcher",
    "fetch_kafka",
    "free_port",
]
