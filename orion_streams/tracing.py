"""OpenTelemetry spans for HTTP requests, agent steps and database statements, exported over
OTLP/HTTP when an endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, plus the other standard `OTEL_*` variables) and the
`tracing` extra is installed; otherwise every call here is a cheap no-op.

Spans are linked by the correlation id: a span opened with no parent joins the trace whose
id is derived from the correlation id bound in the log context (a 32-hex-digit id is used as
it is, anything else is hashed), so the HTTP request, the saga, the reservation, the payment,
the projection, the email agent and the mailer of one order land in one trace although they
run in different processes and only the correlation id travels with the events. Every span
also carries it as the `orion.correlation_id` attribute.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from . import logs

log = logging.getLogger("orion.tracing")

_tracer: Any = None
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def enabled() -> bool:
    return _tracer is not None


def configure(service: str, instance: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Export spans if an OTLP endpoint is configured; returns whether tracing is on."""
    global _tracer
    if not any(environ.get(name) for name in _ENDPOINT_VARS) or environ.get("OTEL_SDK_DISABLED") == "true":
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("an OTLP endpoint is set but OpenTelemetry is not installed (pip install 'orion-streams[tracing]')")
        return False
    resource = Resource.create({
        "service.name": environ.get("OTEL_SERVICE_NAME", service), "service.instance.id": instance,
    })
    provider = TracerProvider(resource=resource)
    # Exports from a thread of its own, in batches: nothing blocks the event loop.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("orion")
    log.info("tracing: spans go to %s", next(environ[n] for n in _ENDPOINT_VARS if environ.get(n)))
    return True


def shutdown() -> None:
    """Flush what is buffered (on process exit)."""
    global _tracer
    if _tracer is None:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()
    _tracer = None


def trace_id_for(correlation_id: str) -> int:
    """The trace id every span of this correlation id joins."""
    text = correlation_id.lower()
    if _HEX32.match(text) and int(text, 16):
        return int(text, 16)
    return int.from_bytes(hashlib.sha256(correlation_id.encode()).digest()[:16], "big") or 1


def _parent(correlation_id: str | None) -> Any:
    """A remote parent in the correlation id's trace, unless a span is already open here."""
    from opentelemetry import trace

    if trace.get_current_span().get_span_context().is_valid or not correlation_id:
        return None
    parent = trace.SpanContext(
        trace_id=trace_id_for(correlation_id), span_id=random.getrandbits(64) or 1, is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def _attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    fields = logs.context()
    out = {f"orion.{k}": v for k, v in fields.items()}
    out.update({k: v for k, v in attributes.items() if v is not None})
    return out


def _links(correlation_ids: Iterable[str | None]) -> list[Any]:
    from opentelemetry import trace

    return [
        trace.Link(trace.SpanContext(trace_id_for(cid), random.getrandbits(64) or 1, is_remote=True))
        for cid in dict.fromkeys(c for c in correlation_ids if c)
    ]


@contextmanager
def span(
    name: str, kind: str = "internal", *, links: Iterable[str | None] = (), attributes: Mapping[str, Any] | None = None
) -> Iterator[Any]:
    """A span around a block (the current one's child); yields it, or None when tracing is off.

    `links`: correlation ids of the orders a batch step works for; the span links to their traces.
    """
    if _tracer is None:
        yield None
        return
    from opentelemetry import trace

    with _tracer.start_as_current_span(
        name, context=_parent(logs.context().get("correlation_id")),
        kind=getattr(trace.SpanKind, kind.upper()), attributes=_attributes(attributes or {}), links=_links(links),
    ) as current:
        yield current


@contextmanager
def current(started: Any) -> Iterator[None]:
    """Make a span from `start` the parent of the spans opened inside."""
    if started is None:
        yield
        return
    from opentelemetry import trace

    with trace.use_span(started, end_on_exit=False):
        yield


def start(name: str, kind: str = "internal", *, attributes: Mapping[str, Any] | None = None) -> Any:
    """A span started now and ended by `finish` (for event hooks that cannot wrap a block)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    return _tracer.start_span(
        name, context=_parent(logs.context().get("correlation_id")),
        kind=getattr(trace.SpanKind, kind.upper()), attributes=_attributes(attributes or {}),
    )


def finish(current: Any, error: BaseException | None = None, *, failed: bool = False) -> None:
    """End a span from `start`; an error (or `failed`) marks it failed."""
    if current is None:
        return
    if error is not None or failed:
        from opentelemetry.trace import Status, StatusCode

        if error is not None:
            current.record_exception(error)
        current.set_status(Status(StatusCode.ERROR, type(error).__name__ if error else None))
    current.end()
