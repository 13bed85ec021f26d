"""OpenTelemetry: with an OTLP endpoint configured, a worker and a mailer export spans for the
HTTP request, each agent step and each database statement, and one order's spans share the
trace derived from its correlation id, across both processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from orion_devstack.ports import free_port
from orion_devstack.smtp import MailCatcher
from orion_streams.tracing import trace_id_for

from ..integration.harness import Api, Mailer, Services, Worker, eventually


@dataclass
class Span:
    service: str
    name: str
    trace_id: int
    span_id: int
    parent_id: int
    attributes: dict[str, Any]
    link_traces: set[int] = field(default_factory=set)


class Collector:
    """An OTLP/HTTP trace receiver: what the worker and mailer export."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.port = free_port()

    async def receive(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    attrs = {a.key: _value(a.value) for a in s.attributes}
                    self.spans.append(Span(
                        resource.get("service.name", ""), s.name, int.from_bytes(s.trace_id, "big"),
                        int.from_bytes(s.span_id, "big"), int.from_bytes(s.parent_span_id, "big"), attrs,
                        {int.from_bytes(link.trace_id, "big") for link in s.links},
                    ))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    c = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", c.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", c.port).start()
    try:
        yield c
    finally:
        await runner.cleanup()


@pytest.fixture
def traced(fresh_services: Services, collector: Collector, tmp_path: Any) -> Iterator[Worker]:
    catcher = MailCatcher(tmp_path / "mail", port=free_port())
    catcher.start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "ORION_SMTP_URL": f"smtp://{catcher.host}:{catcher.port}",
    }
    worker = Worker(fresh_services, "t", extra_env=env)
    mailer = Mailer(fresh_services, "t", extra_env=env)
    try:
        worker.start()
        mailer.start()
        yield worker
    finally:
        mailer.stop()
        worker.stop()
        catcher.stop()


async def test_one_orders_spans_share_the_trace_of_its_correlation_id(
    fresh_services: Services, collector: Collector, traced: Worker
) -> None:
    admin = fresh_services.token("mike", ("admin",))
    customer = fresh_services.token("sarah", ("customer",))
    cid = "trace-order-42"
    async with aiohttp.ClientSession() as session:
        api = Api(traced.url, session)
        await api.restock(admin, "SKU-002", 10)
        status, body, _ = await api.place(
            customer, [{"sku": "SKU-002", "quantity": 1}], headers={"X-Correlation-ID": cid}
        )
        assert status == 202, body
        assert (await api.decided(customer, body["order_id"]))["status"] == "CONFIRMED"

    trace_id = trace_id_for(cid)
    wanted = {
        ("orion-worker", "POST /v1/orders"), ("orion-worker", "order saga"),
        ("orion-worker", "reservation agent"), ("orion-worker", "payment"),
        ("orion-worker", "projection"), ("orion-worker", "email agent"),
        ("orion-mailer", "email send"), ("orion-worker", "db insert"), ("orion-mailer", "db update"),
    }

    async def in_trace() -> list[Span] | None:
        spans = [s for s in collector.spans if s.trace_id == trace_id]
        return spans if wanted <= {(s.service, s.name) for s in spans} else None

    spans = await eventually(in_trace, 30, f"spans of every step in the trace of {cid}")
    by_id = {s.span_id: s for s in spans}
    for s in spans:
        assert s.attributes.get("orion.correlation_id") == cid, (s.name, s.attributes)
    # The web's database insert is a child of its HTTP span; statements carry no parameters.
    http = next(s for s in spans if s.name == "POST /v1/orders")
    assert http.attributes["http.response.status_code"] == 202 and http.attributes["http.route"] == "/v1/orders"
    inserts = [s for s in spans if s.name == "db insert" and s.service == "orion-worker"]
    assert any(by_id.get(s.parent_id) is http for s in inserts)
    assert all("sarah@example.com" not in str(s.attributes.get("db.query.text")) for s in inserts)
    # Batch writes are linked to the traces of the orders they carry.
    assert any(s.name == "projection write" and trace_id in s.link_traces for s in collector.spans)
