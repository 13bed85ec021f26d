"""Shared plumbing for the dev-service launchers: errors, polling and process groups."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("orion.devservices")


class DevServiceError(RuntimeError):
    """A local development service could not be fetched, started or stopped."""


def default_cache_dir() -> Path:
    """Cache for downloaded service binaries: $ORION_CACHE_DIR or ~/.cache/orion."""
    env = os.environ.get("ORION_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "orion"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))


def tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a log file, for error messages."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def run_coro(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
    """Run a coroutine to completion from synchronous code.

    It runs on a private thread with its own event loop, so this works even when the
    caller happens to be inside a running loop (asyncio.run would refuse there).
    """
    result: list[T] = []
    error: list[BaseException] = []

    def runner() -> None:
        try:
            result.append(asyncio.run(asyncio.wait_for(factory(), timeout)))
        except BaseException as exc:  # re-raised in the calling thread
            error.append(exc)

    thread = threading.Thread(target=runner, name="orion-devservices-probe", daemon=True)
    thread.start()
    # asyncio.wait_for bounds the coroutine; the extra slack covers loop shutdown.
    thread.join(timeout + 10)
    if thread.is_alive():
        raise TimeoutError(f"coroutine did not finish within {timeout}s")
    if error:
        raise error[0]
    return result[0]


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Our own unreaped children still answer kill(0); /proc tells zombies apart.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def cmdline(pid: int) -> list[str]:
    """Arguments of a running process ([] if unknown), used to guard against pid reuse."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _signal_group(pid: int, sig: int) -> None:
    # Services are started with start_new_session=True, so pid is also the group id;
    # signalling the group also reaches helpers the service may have forked.
    try:
        if _is_group_leader(pid):
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_exit(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    return wait_until(lambda: not pid_alive(pid), timeout, interval=0.1)


def stop_process_group(
    pid: int,
    proc: subprocess.Popen[bytes] | None,
    *,
    graceful: int = signal.SIGTERM,
    timeout: float = 30,
    name: str = "process",
) -> None:
    """Ask a service to shut down with ``graceful``, escalating to SIGKILL after ``timeout``.

    ``proc`` is the Popen handle when this process started the service (so it gets
    reaped); it is None for a service adopted from an earlier run.
    """
    if proc is not None and proc.poll() is not None:
        return  # already exited (e.g. stopped through another handle); poll() reaped it
    if not pid_alive(pid):
        return
    leads_group = _is_group_leader(pid)
    _signal_group(pid, graceful)
    if not _wait_exit(pid, proc, timeout):
        log.warning("%s (pid %d) ignored %s for %.0fs; killing it", name, pid, graceful, timeout)
        _signal_group(pid, signal.SIGKILL)
        if not _wait_exit(pid, proc, 10):
            raise DevServiceError(f"{name} (pid {pid}) survived SIGKILL")
    if leads_group:
        # Leader is gone; sweep up any group member it left behind.
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
