"""`orion run` (what `make run` starts) against a fresh broker and database: it starts a
worker and a mailer, and the worker's /metrics counts the mailer's emails through the
metrics directory they share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orion_devstack.ports import free_port
from orion_devstack.smtp import MailCatcher

from ..integration.harness import Api, Services, eventually, stop_group, wait_until


def _ready(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "orion run exited"
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture
def orion_run(fresh_services: Services, tmp_path: Any) -> Iterator[tuple[str, Path]]:
    """`orion run` on the fresh stack; yields its URL and log file, stopped afterwards."""
    catcher = MailCatcher(tmp_path / "mail", port=free_port())
    catcher.start()
    port = free_port()
    env = {
        **os.environ,
        "ORION_KAFKA_BOOTSTRAP": fresh_services.bootstrap,
        "ORION_DATABASE_URL": fresh_services.database_url,
        "ORION_SMTP_URL": f"smtp://{catcher.host}:{catcher.port}",
        "ORION_STATE_DIR": str(tmp_path / "state"),
        "ORION_WEB_PORT": str(port),
        "ORION_APP_ID": fresh_services.app_id,
        "ORION_PARTITIONS": str(fresh_services.partitions),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orion_streams.cli", "run"], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until(lambda: _ready(url, proc), 120, "orion run to be ready")
        except AssertionError:
            raise AssertionError(log.read_text(errors="replace")[-3000:]) from None
        yield url, log
    finally:
        stop_group(proc)
        catcher.stop()


async def test_orion_run_serves_orders_and_counts_the_mailers_emails(
    fresh_services: Services, orion_run: tuple[str, Path], tmp_path: Any
) -> None:
    url, log = orion_run
    assert (tmp_path / "state" / "metrics").is_dir()
    customer = fresh_services.token("sarah", ("customer",))
    admin = fresh_services.token("mike", ("admin",))
    async with aiohttp.ClientSession() as session:
        api = Api(url, session)
        await api.restock(admin, "SKU-001", 5)
        status, body, _ = await api.place(customer, [{"sku": "SKU-001", "quantity": 1}], wait=10)
        assert status == 200 and body["status"] == "CONFIRMED", body

        async def counted() -> bool:
            async with session.get(f"{url}/metrics") as resp:
                text = await resp.text()
            return 'orion_emails_total{outcome="sent",template="order_processing"} 1.0' in text

        await eventually(counted, 30, "the mailer's email counted in the worker's /metrics")
    # The log lines are JSON (stdout is not a terminal), the mailer's among them.
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
    assert any(json.loads(line)["logger"] == "orion.mailer" for line in lines)
