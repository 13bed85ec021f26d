"""Structured logs: one JSON object per line (a readable line in a terminal) carrying the
correlation id, order id and SKU of whatever is being handled and the worker's id.

Code binds what it knows with `bound(...)`; every line logged inside, by any logger, carries
it. Tokens, API keys and passwords are scrubbed from every line before it is written.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The fields a line carries when the code handling it knows them, in this order.
FIELDS = ("correlation_id", "order_id", "sku", "notification_id")

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("orion_log_context", default=None)


def context() -> dict[str, str]:
    """What the current task has bound so far."""
    return dict(_context.get() or {})


def bind(**fields: str | None) -> contextvars.Token[dict[str, str] | None]:
    """Add fields for the rest of this task (or until `unbind` with the token)."""
    merged = {**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v}}
    return _context.set(merged)


def unbind(token: contextvars.Token[dict[str, str] | None]) -> None:
    _context.reset(token)


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Lines logged inside carry these fields (None values are left out)."""
    token = bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


# What must never reach a log line, and what it becomes.
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # JSON Web Tokens (three base64url parts, the first always starts with '{"' encoded)
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    # Orion API keys: orion_ and 43 URL-safe characters
    (re.compile(r"\borion_[A-Za-z0-9_-]{20,}"), "[redacted-api-key]"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1[redacted]"),
    # user:password@ in URLs (database, SMTP)
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@"), r"\1[redacted]@"),
    # password=..., token: ..., api_key=..., secret=... in text or query strings
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|authorization|payment_token)"
            r"(\"?'?\s*[=:]\s*\"?'?)(?!\[redacted)[^\s&\"',;}]+"
        ),
        r"\1\2[redacted]",
    ),
)


def redact(text: str) -> str:
    """The text with every token, key and password replaced."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


# LogRecord attributes that are not extra fields.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "worker_id"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_") or key in FIELDS:
            continue
        if isinstance(value, str):
            out[key] = redact(value)
        elif isinstance(value, bool | int | float) or value is None:
            out[key] = value
    return out


class ContextFilter(logging.Filter):
    """Stamps each record with the bound fields and the worker id."""

    def __init__(self, worker_id: str = "") -> None:
        super().__init__()
        self.worker_id = worker_id

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        record.worker_id = self.worker_id
        return True


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, worker_id, the bound fields, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        worker_id = getattr(record, "worker_id", None)
        if worker_id:
            line["worker_id"] = worker_id
        for key in FIELDS:
            value = getattr(record, key, None)
            if value:
                line[key] = str(value)
        line.update(_extras(record))
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            line["stack"] = redact(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class ConsoleFormatter(logging.Formatter):
    """`[time] LEVEL logger: message  key=value ...` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s] %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        fields = {k: getattr(record, k, None) for k in FIELDS}
        tail = " ".join(f"{k}={v}" for k, v in fields.items() if v)
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        return "  ".join(part for part in (text, tail, extras) if part)


def dict_config(log_format: str, level: str, worker_id: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for every Orion process (Faust takes it as `logging_config`)."""
    formatter = JsonFormatter if log_format == "json" else ConsoleFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter, "worker_id": worker_id}},
        "formatters": {"orion": {"()": formatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "orion",
                "filters": ["context"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
        # Library chatter that says nothing an operator needs at info.
        "loggers": {
            "aiokafka": {"level": "WARNING"},
            "kafka": {"level": "WARNING"},
            "asyncio": {"level": "WARNING"},
            "mail.log": {"level": "WARNING"},
        },
    }


def configure(log_format: str, level: str, worker_id: str) -> None:
    """Set up logging for a process that is not a Faust worker (the mailer, the CLI)."""
    logging.config.dictConfig(dict_config(log_format, level, worker_id))


class PerOrderLines:
    """Lines logged for every order (placed, reserved, stored, queued): all of them at a
    normal pace, at most `rate` a second (bursts of `burst`) under load, where writing them
    would cost more CPU than deciding the orders. Lines left out are counted
    (`orion_log_lines_sampled_out_total`); warnings and errors are never sampled."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._at = burst, time.monotonic()
        self.left_out = 0

    def allow(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.left_out += 1
        return False


per_order = PerOrderLines(rate=20.0, burst=100.0)


def order_info(logger: logging.Logger, msg: str, *args: Any) -> None:
    """Log a per-order line at info, unless the per-order lines run over their rate."""
    if logger.isEnabledFor(logging.INFO) and per_order.allow():
        logger.info(msg, *args, stacklevel=2)
