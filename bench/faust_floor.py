"""The Faust floor: CPU per event of a Faust agent that does next to nothing.

    .venv/bin/python -m bench.faust_floor            # a broker of its own, about 2 minutes

The agent reads an order-sized JSON record, decodes it and sends one small record per event
(acks=all), acknowledging each event as Orion's agents do (`noack` stream, manual acks),
30 000 events. Three variants: Faust's `Topic.send`; straight to `app.producer.send`; and
that with the per-event bookkeeping of Faust's monitor switched off (Orion's `LeanMonitor`).
Compare with the bare aiokafka loop of bench/limits.py (the same work without Faust).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

EVENTS = 30_000


def _agent(bootstrap: str, topic: str, variant: str, port: int) -> None:
    """Runs in a child process: one Faust worker with one agent, until EVENTS are handled."""
    import faust

    from orion_streams.app import LeanMonitor

    lean, direct = variant in ("lean", "direct+lean"), variant.startswith("direct")
    app = faust.App(
        f"floor-{uuid.uuid4().hex[:6]}", broker=f"kafka://{bootstrap}", store="memory://", topic_partitions=4,
        topic_replication_factor=1, web_enabled=False, web_port=port, consumer_auto_offset_reset="earliest",
        producer_linger_ms=5, autodiscover=False, datadir=tempfile.mkdtemp(),
        **({"monitor": LeanMonitor()} if lean else {}),
    )
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    source, sink = app.topic(topic, **raw), app.topic(f"{topic}-out", **raw)
    state: dict[str, Any] = {"done": 0}

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    @app.agent(source, concurrency=1)
    async def agent(stream: Any) -> None:
        manual, pending = stream.noack(), []
        async for event in manual.events():
            state.setdefault("t0", (time.monotonic(), cpu()))
            reply = json.dumps({"order_id": json.loads(event.value)["order_id"]}).encode()
            if direct:
                pending.append(await app.producer.send(sink.get_topic_name(), event.key, reply, None, None, None))
            else:
                pending.append(await sink.send(key=event.key, value=reply))
            await manual.ack(event)
            state["done"] += 1
            if len(pending) >= 256 or state["done"] >= EVENTS:
                await asyncio.gather(*pending)
                pending = []
            if state["done"] >= EVENTS:
                wall0, cpu0 = state["t0"]
                print(json.dumps({"variant": variant, "events": EVENTS, "seconds": round(time.monotonic() - wall0, 2),
                                  "cpu_us_per_event": round((cpu() - cpu0) * 1e6 / EVENTS, 1)}), flush=True)
                os._exit(0)

    sys.argv = ["floor", "worker", "-l", "warn"]
    app.main()


def main() -> None:
    from aiokafka import AIOKafkaProducer

    from orion_devstack.kafka import KafkaBroker
    from orion_devstack.ports import free_port

    from .limits import _create_topic, _sample_order

    async def fill(bootstrap: str, topic: str) -> None:
        await _create_topic(bootstrap, topic, 4)
        await _create_topic(bootstrap, f"{topic}-out", 4)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            sends = [await producer.send(topic, _sample_order(i), key=str(i).encode()) for i in range(EVENTS)]
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    with tempfile.TemporaryDirectory(prefix="orion-floor-") as tmp:
        broker = KafkaBroker(Path(tmp) / "kafka", port=free_port())
        broker.start()
        try:
            for variant in ("topic.send", "direct", "direct+lean"):
                topic = f"floor-{uuid.uuid4().hex[:6]}"
                asyncio.run(fill(broker.bootstrap, topic))
                done = subprocess.run(
                    [sys.executable, "-m", "bench.faust_floor", "--child", broker.bootstrap, topic, variant,
                     str(free_port())], capture_output=True, text=True, timeout=600, check=False,
                )
                lines = [line for line in (done.stdout + done.stderr).splitlines() if '"cpu_us_per_event"' in line]
                print(lines[-1][lines[-1].index("{"):] if lines else f"{variant}: failed\n{done.stderr[-1500:]}")
        finally:
            broker.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _agent(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
