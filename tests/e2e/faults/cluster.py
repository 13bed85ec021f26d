"""A whole Orion deployment as processes, and the faults done to it.

Kafka, PostgreSQL, a local SMTP server, N `orion worker` processes and a mailer, each a
real process the harness can kill -9, stop (SIGSTOP), resume, add or remove; the broker,
the database and SMTP can be taken away and brought back. Every process ends when the
cluster does, pass or fail.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from orion_devstack.ports import free_port
from orion_devstack.smtp import MailCatcher
from orion_streams import topics

from ...integration.harness import Mailer, Services, Worker, running_services
from .history import History

# The shipped failover settings: a dead worker's partitions move after the session timeout
# (10 s), and a standby copy of each table partition is kept warm.
FAST = {
    "ORION_STANDBY_REPLICAS": "1",
    "ORION_LOG_LEVEL": "info",
}


class Cluster:
    def __init__(
        self, services: Services, mail: MailCatcher, history: History, env: dict[str, str]
    ) -> None:
        self.services = services
        self.mail = mail
        self.history = history
        self.env = {
            **FAST,
            "ORION_SMTP_URL": f"smtp://{mail.host}:{mail.port}",
            "ORION_SMTP_TIMEOUT": "3",
            # retries for about 2 minutes (1 + 2 + 4 ... s): an SMTP outage delays, not loses
            "ORION_EMAIL_RETRY_BASE": "1",
            "ORION_EMAIL_MAX_ATTEMPTS": "8",
            **env,
        }
        self.workers: dict[str, Worker] = {}
        self.stopped: set[str] = set()  # SIGSTOPped: up, but answering nothing
        self.mailers: list[Mailer] = []
        self._names = iter(f"w{i}" for i in range(1, 1000))

    # --- processes --------------------------------------------------------------------------

    def start_worker(self, name: str | None = None, timeout: float = 120) -> Worker:
        """A new worker, or (with `name`) one started again on its own state dir."""
        name = name or next(self._names)
        w = Worker(self.services, name, extra_env=self.env)
        self.workers[name] = w
        w.start(timeout)
        self.history.note(f"started {name}")
        return w

    def start_mailer(self) -> Mailer:
        m = Mailer(self.services, f"m{len(self.mailers) + 1}", extra_env=self.env).start()
        self.mailers.append(m)
        return m

    def up(self) -> list[Worker]:
        return [
            w
            for n, w in self.workers.items()
            if w.proc is not None and w.proc.poll() is None and n not in self.stopped
        ]

    def urls(self) -> list[str]:
        return [w.url for w in self.up()]

    def kill(self, worker: Worker) -> None:
        worker.kill()
        self.history.note(f"kill -9 {worker.name}")

    def remove(self, worker: Worker) -> None:
        worker.stop()
        self.workers.pop(worker.name, None)
        self.history.note(f"stopped {worker.name}")

    def pause(self, worker: Worker) -> None:
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGSTOP)
        self.stopped.add(worker.name)
        self.history.note(f"SIGSTOP {worker.name}")

    def resume(self, worker: Worker) -> None:
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGCONT)
        self.stopped.discard(worker.name)
        self.history.note(f"SIGCONT {worker.name}")

    def close(self) -> None:
        for w in list(self.workers.values()):
            if w.proc is not None and w.proc.poll() is None:
                os.killpg(w.proc.pid, signal.SIGCONT)  # a paused worker cannot take SIGTERM
            w.stop()
        for m in self.mailers:
            m.stop()

    def logs(self, lines: int = 40) -> str:
        out = []
        for w in self.workers.values():
            out.append(f"--- worker {w.name} ---\n{w.tail(lines)}")
        return "\n".join(out)

    # --- faults on a schedule ---------------------------------------------------------------

    # --- Kafka from outside -----------------------------------------------------------------

    async def reset_group_to_earliest(self) -> None:
        """Commit offset 0 on every source partition for Orion's groups, the agents' and the
        projection's (workers down): the next workers consume every topic from the start, a
        full replay."""
        projected = {topics.ORDER_STATUS.name, topics.ORDER_AUDIT.name, topics.STOCK_LEVELS.name}
        sources = [spec.name for spec in topics.PIPELINE if spec is not topics.DEAD_LETTERS]
        groups = {
            self.services.app_id: [name for name in sources if name not in projected],
            f"{self.services.app_id}-projection": [name for name in sources if name in projected],
        }
        for group, names in groups.items():
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.services.bootstrap, group_id=group, enable_auto_commit=False,
            )
            await consumer.start()
            try:
                tps = [TopicPartition(name, p) for name in names for p in range(self.services.partitions)]
                consumer.assign(tps)
                await consumer.commit({tp: 0 for tp in tps})
            finally:
                await consumer.stop()
        self.history.note("consumer group reset to earliest")


@contextmanager
def cluster(
    root: Path,
    history: History,
    *,
    workers: int = 1,
    mailer: bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """Services, an SMTP server, `workers` workers and a mailer; all stopped on exit."""
    with ExitStack() as stack:
        services = stack.enter_context(running_services(root / "stack"))
        mail = MailCatcher(root / "mail", port=free_port())
        mail.start()
        stack.callback(mail.stop)
        c = Cluster(services, mail, history, env or {})
        stack.callback(c.close)
        for _ in range(workers):
            c.start_worker()
        if mailer:
            c.start_mailer()
        yield c
