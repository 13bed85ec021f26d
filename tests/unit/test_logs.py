"""Structured log lines: bound fields, JSON shape, console shape and redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from orion_streams import logs

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzYXJhaCIsInJvbGVzIjpbImN1c3RvbWVyIl19."
    "1qyPffNA81RYx9lcmb53nwzwkbKz4Tcs6fK1dIV95VE"
)
API_KEY = "orion_3mR0dYw7gq0Zk2Yl1qv5o8bC9xT4nJ6hA2sD7fG1kLz"


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter("w7"))
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("orion.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_carries_the_bound_fields_the_worker_and_extras(capture) -> None:  # type: ignore[no-untyped-def]
    logger, stream, _ = capture
    with logs.bound(correlation_id="c-1", order_id="o-1"):
        with logs.bound(sku="SKU-1", order_id=None):
            logger.info("reserved %d", 2, extra={"duration_ms": 1.5})
        logger.warning("after")
    logger.info("outside")
    inner, after, outside = lines(stream)
    assert inner["message"] == "reserved 2" and inner["level"] == "info" and inner["logger"] == "orion.test-logs"
    assert (inner["correlation_id"], inner["order_id"], inner["sku"]) == ("c-1", "o-1", "SKU-1")
    assert inner["worker_id"] == "w7" and inner["duration_ms"] == 1.5
    assert str(inner["ts"]).endswith("Z") and len(str(inner["ts"])) == 24
    assert after["correlation_id"] == "c-1" and "sku" not in after
    assert "correlation_id" not in outside and "order_id" not in outside


def test_an_explicit_extra_wins_over_the_bound_value(capture) -> None:  # type: ignore[no-untyped-def]
    logger, stream, _ = capture
    with logs.bound(correlation_id="request"):
        logger.info("x", extra={"correlation_id": "event"})
    assert lines(stream)[0]["correlation_id"] == "event"


async def test_each_task_has_its_own_fields(capture) -> None:  # type: ignore[no-untyped-def]
    logger, stream, _ = capture

    both_bound = asyncio.Barrier(2)

    async def handle(cid: str) -> None:
        with logs.bound(correlation_id=cid):
            await both_bound.wait()  # the other task has bound its own id by now
            logger.info(cid)

    await asyncio.gather(handle("one"), handle("two"))
    assert all(line["message"] == line["correlation_id"] for line in lines(stream))


def test_exceptions_are_one_line_with_the_traceback(capture) -> None:  # type: ignore[no-untyped-def]
    logger, stream, _ = capture
    try:
        raise ValueError(f"bad token={API_KEY}")
    except ValueError:
        logger.exception("failed")
    (line,) = lines(stream)
    assert "ValueError" in str(line["exc"]) and API_KEY not in str(line["exc"])


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"Authorization: Bearer {JWT}", JWT),
        (f"GET /v1/ws?token={JWT}", JWT),
        (f"key {API_KEY} used", API_KEY),
        ("postgresql+asyncpg://orion:s3cr3t-pw@db:5432/orion", "s3cr3t-pw"),
        ("smtp://mailer:hunter22@smtp.example.com:587", "hunter22"),
        ('{"password": "pa55word!"}', "pa55word!"),
        ("api_key=abcdef123456&x=1", "abcdef123456"),
        ("payment_token=tok_live_4242", "tok_live_4242"),
    ],
)
def test_secrets_never_reach_a_line(capture, text: str, secret: str) -> None:  # type: ignore[no-untyped-def]
    logger, stream, _ = capture
    logger.info("saw %s", text, extra={"detail": text})
    out = stream.getvalue()
    assert secret not in out
    assert "[redacted" in out


def test_ordinary_text_is_left_alone() -> None:
    text = "order 44a314e0 -> CONFIRMED via smtp://127.0.0.1:1025 in orion_streams/agents (tokens: 3)"
    assert logs.redact(text) == text


def test_the_console_format_is_one_readable_line() -> None:
    record = logging.LogRecord("orion.saga", logging.INFO, __file__, 1, "order %s", ("CONFIRMED",), None)
    record.correlation_id = "c-9"
    out = logs.ConsoleFormatter().format(record)
    assert "INFO" in out and "orion.saga: order CONFIRMED" in out and "correlation_id=c-9" in out
    assert "\n" not in out


def test_the_process_config_writes_json_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("json", "info", "mailer-1")
        logging.getLogger("orion.mailer").info("listening")
        logging.getLogger("aiokafka").info("chatter")  # libraries stay at warning
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(o["logger"], o["message"], o["worker_id"]) for o in out] == [("orion.mailer", "listening", "mailer-1")]
