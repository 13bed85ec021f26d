"""Shared plumbing for the local services: errors, polling, process groups and the managed
process that the broker and the database server both are."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")

log = logging.getLogger("orion.devstack")


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

    thread = threading.Thread(target=runner, name="orion-devstack-probe", daemon=True)
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


class Service:
    """What every local service does alike: `start` and `stop`, and a `with` block that
    starts it and stops it however the block ends."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ManagedProcess(Service):
    """A service run as a process group of its own, its output appended to `log_path`.

    `reuse=True` adopts a server left running for the same state directory by an earlier
    process (fast `make run` restarts); because such a server must outlive its process,
    `stop_at_exit` defaults to `not reuse`; when true an `atexit` hook stops the server so a
    crashed caller leaves no orphan behind. Subclasses give their name, how to stop them
    gracefully, their log file and when they are ready (`_ready`).
    """

    name = "process"
    graceful_signal: int = signal.SIGTERM

    def __init__(self, state_dir: Path, port: int, *, reuse: bool, stop_at_exit: bool | None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.reuse = reuse
        self.stop_at_exit = (not reuse) if stop_at_exit is None else stop_at_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """Started (or adopted) by this object and still alive."""
        return self._pid is not None and pid_alive(self._pid)

    def stop(self, timeout: float = 30) -> None:
        """Stop the process group gracefully, escalating to SIGKILL after `timeout`."""
        atexit.unregister(self._stop_at_exit)
        pid, proc = self._pid, self._proc
        self._pid = self._proc = None
        if pid is None:
            return
        stop_process_group(pid, proc, graceful=self.graceful_signal, timeout=timeout, name=self.name)
        self._stopped(pid)
        log.info("%s on 127.0.0.1:%d stopped", self.name, self.port)

    def _stopped(self, pid: int) -> None:
        """After the process `pid` is gone (e.g. forget its pid file)."""

    def _spawn(self, cmd: list[str], banner: str, **popen: Any) -> None:
        """Start `cmd` in a session of its own (Ctrl-C in a terminal does not reach it, and
        `stop` can signal the whole group), its output appended to the log."""
        with self.log_path.open("ab") as out:
            out.write(f"=== starting {banner} at {time.ctime()} ===\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.state_dir,
                start_new_session=True, **popen,
            )
        self._pid = self._proc.pid
        self._register_atexit()

    def _adopt(self, pid: int, usable: bool, unusable: str) -> bool:
        """Take over a server an earlier process left running for this state directory:
        only with `reuse` and when it is `usable`; otherwise say why it is in the way."""
        if self.reuse and usable:
            self._pid = pid
            self._register_atexit()
            log.info("reusing %s on 127.0.0.1:%d (pid %d)", self.name, self.port, pid)
            return True
        hint = unusable if self.reuse else "stop it or pass reuse=True"
        raise DevServiceError(f"{self.name} for {self.state_dir} is already running (pid {pid}); {hint}")

    def _ready(self) -> bool:
        """Whether the process just started serves (polled until it does or dies)."""
        raise NotImplementedError

    def _wait_ready(self, deadline: float, timeout: float, interval: float) -> None:
        """Poll `_ready` until `deadline` (monotonic); stop the process and raise, with the
        log's last lines, if it exits or is not ready in time (`timeout` is for the message)."""
        proc = self._proc
        assert proc is not None

        def ready() -> bool:
            return proc.poll() is not None or self._ready()  # an exit is reported below

        ok = wait_until(ready, max(deadline - time.monotonic(), 0.0), interval=interval)
        if ok and proc.poll() is None:
            return
        reason = f"exited with code {proc.returncode}" if proc.poll() is not None else f"not ready within {timeout:.0f}s"
        self.stop(timeout=10)
        raise DevServiceError(f"{self.name} {reason}; last lines of {self.log_path}:\n{tail(self.log_path)}")

    def _register_atexit(self) -> None:
        if self.stop_at_exit:
            atexit.register(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        try:
            self.stop(timeout=15)
        except Exception:  # never let cleanup mask the real exit status
            log.exception("failed to stop %s at exit", self.name)
