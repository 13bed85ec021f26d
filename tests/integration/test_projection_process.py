"""The projection runs in a child process of the worker (ORION_PROJECTION=process): started
again when it dies, and never outliving the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from orion_devstack.stack import Worker, wait_until

from .harness import Api, eventually


def projection_children(pid: int) -> list[int]:
    """Processes whose parent is `pid` and that run `orion projection`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and b"projection" in cmdline:
            found.append(int(stat.parent.name))
    return found


async def test_a_killed_projection_process_is_started_again_and_orders_are_still_written(
    api: Api, worker: Worker, admin: str, customer: str, fresh_sku: Any
) -> None:
    assert worker.proc is not None

    async def one_child() -> int | None:
        children = projection_children(worker.proc.pid)  # type: ignore[union-attr]
        return children[0] if len(children) == 1 else None

    first = await eventually(one_child, 30, "the worker's projection process")
    os.kill(first, signal.SIGKILL)

    async def another() -> int | None:
        child = await one_child()
        return child if child not in (None, first) else None

    await eventually(another, 30, "a new projection process")
    sku = fresh_sku()
    await api.restock(admin, sku, 5)
    status, body, _ = await api.place(customer, [{"sku": sku, "quantity": 1}])
    assert status == 202, body
    # The order's status is read from PostgreSQL: the new projection process wrote it.
    assert (await api.decided(customer, body["order_id"]))["status"] == "CONFIRMED"
    assert "projection process exited" in worker.log_path.read_text(errors="replace")


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_projection_process_dies_with_its_worker(tmp_path: Path) -> None:
    """The child is started with PR_SET_PDEATHSIG: killing the worker outright (SIGKILL, no
    chance to stop it) takes it down too."""
    pid_file = tmp_path / "child"
    parent = subprocess.Popen([
        sys.executable, "-c",
        "import subprocess, sys, time\n"
        "from orion_streams.agents.projection import _die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], preexec_fn=_die_with_parent)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n",
    ])
    try:
        wait_until(lambda: pid_file.exists() and bool(pid_file.read_text()), 60, "the child to start", 0.05)
        child = int(pid_file.read_text())
        parent.kill()
        parent.wait(10)
        wait_until(lambda: not running(child), 10, "the child to die with its parent", 0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
