"""Fetches Apache Kafka with Maven and runs a single-node KRaft broker for development."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import (
    DevServiceError,
    ManagedProcess,
    cmdline,
    default_cache_dir,
    pid_alive,
    read_pid,
    run_coro,
)
from .certs import Certs
from .ports import LOOPBACK, free_port, port_open

log = logging.getLogger("orion.devstack.kafka")

KAFKA_VERSION = "4.1.1"
_HERE = Path(__file__).resolve().parent
POM_PATH = _HERE / "kafka_pom.xml"
LOG4J2_CONFIG = _HERE / "kafka_log4j2.yaml"
_COMPLETE_MARKER = ".complete"
_MAIN_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
_CLUSTER_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
MECHANISM = "SCRAM-SHA-512"


# --------------------------------------------------------------------------- fetching


def fetch_kafka(cache_dir: Path | None = None) -> Path:
    """Download the Kafka broker jars once and return the ``libs`` directory.

    Maven resolves ``kafka_pom.xml`` into ``<cache>/kafka-<version>/libs``. The folder is
    assembled in a temporary sibling and renamed into place, so an interrupted download
    never leaves a half-filled folder that looks usable.
    """
    cache = (cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
    home = cache / f"kafka-{KAFKA_VERSION}"
    if _is_complete(home):
        return home / "libs"

    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevServiceError("Maven ('mvn') is needed to download Kafka but is not on PATH")
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".kafka-{KAFKA_VERSION}-", dir=cache))
    try:
        started = time.monotonic()
        jars = _maven_copy_dependencies(mvn, staging)
        (staging / _COMPLETE_MARKER).write_text("\n".join(jars) + "\n")
        _publish(staging, home)
        log.info(
            "fetched Kafka %s (%d jars) in %.1fs",
            KAFKA_VERSION,
            len(jars),
            time.monotonic() - started,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return home / "libs"


def _maven_copy_dependencies(mvn: str, staging: Path) -> list[str]:
    libs = staging / "libs"
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM_PATH),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        "-DincludeScope=runtime",
    ]
    log.info("downloading Kafka %s with Maven into %s", KAFKA_VERSION, libs)
    # cwd=staging: keeps any stray Maven output away from the (possibly read-only) package.
    result = subprocess.run(cmd, cwd=staging, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-40:]
        raise DevServiceError(
            f"Maven failed to fetch Kafka (exit {result.returncode}):\n" + "\n".join(output)
        )
    jars = sorted(p.name for p in libs.glob("*.jar"))
    if _MAIN_JAR not in jars:
        raise DevServiceError(f"Maven finished but {_MAIN_JAR} is missing from {libs}")
    return jars


def _is_complete(home: Path) -> bool:
    """The marker exists and every jar it lists is still there."""
    try:
        jars = (home / _COMPLETE_MARKER).read_text().split()
    except OSError:
        return False
    return _MAIN_JAR in jars and all((home / "libs" / jar).is_file() for jar in jars)


def _publish(staging: Path, home: Path) -> None:
    if home.exists() and not _is_complete(home):
        # Damaged (files removed by hand) or foreign layout: replace it.
        shutil.rmtree(home)
    try:
        os.rename(staging, home)
    except OSError as exc:
        # A concurrent fetch may have won the rename; its result is just as good.
        if not _is_complete(home):
            raise DevServiceError(f"cannot move Kafka jars into {home}: {exc}") from exc


# --------------------------------------------------------------------------- broker


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise DevServiceError("Java 17+ ('java') is needed to run Kafka but is not on PATH")
    return java


@dataclass(frozen=True)
class SecureKafka:
    """A broker that accepts clients only over SASL_SSL with SCRAM-SHA-512: its certificate
    is `certs`' server certificate, and `users` (name: password) may log in. The broker
    talks to itself over the same listener as `broker_user`."""

    certs: Certs
    users: Mapping[str, str]
    broker_user: str = "broker"
    broker_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    def client_settings(self, user: str) -> dict[str, str]:
        """The ORION_* variables a client of `user` needs (the password inline: tests and
        the local stack; production reads it from ORION_KAFKA_SASL_PASSWORD_FILE)."""
        return {
            "ORION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "ORION_KAFKA_SASL_MECHANISM": MECHANISM,
            "ORION_KAFKA_SASL_USERNAME": user,
            "ORION_KAFKA_SASL_PASSWORD": self.users[user],
            "ORION_KAFKA_SSL_CAFILE": str(self.certs.ca),
        }

    def client_options(self, user: str) -> dict[str, Any]:
        """aiokafka's keyword arguments for a client of `user`."""
        context = ssl.create_default_context(cafile=str(self.certs.ca))
        return {
            "security_protocol": "SASL_SSL", "ssl_context": context, "sasl_mechanism": MECHANISM,
            "sasl_plain_username": user, "sasl_plain_password": self.users[user],
        }

    def properties(self, port: int, cport: int) -> dict[str, str]:
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required '
                f'username="{self.broker_user}" password="{self.broker_password}";')
        return {
            "listeners": f"SASL_SSL://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{cport}",
            "advertised.listeners": f"SASL_SSL://{LOOPBACK}:{port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            # PEM files: the key and its certificate chain in one, the CA in the other.
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.certs.server_chain),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.certs.ca),
            "ssl.endpoint.identification.algorithm": "https",
            # A client certificate is optional, and checked when one is shown (mutual TLS).
            "listener.name.sasl_ssl.ssl.client.auth": "requested",  # (unprefixed, SASL_SSL ignores it)
        }

    def scram_arguments(self) -> list[str]:
        """StorageTool's --add-scram for every user, the broker's own included: a KRaft
        cluster learns its SCRAM credentials when its storage is formatted."""
        users = {**self.users, self.broker_user: self.broker_password}
        out = []
        for name, password in users.items():
            out += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
        return out


async def _probe_metadata(bootstrap: str, options: Mapping[str, Any] | None = None) -> bool:
    """True once the broker answers Metadata and lists itself as a live broker."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, **(options or {}))
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        await admin.list_topics()
        return bool(cluster.get("brokers"))
    finally:
        await admin.close()


class KafkaBroker(ManagedProcess):
    """Single-node KRaft Kafka (combined broker and controller) bound to 127.0.0.1.

    State lives in ``state_dir``: ``server.properties``, ``data/`` (log.dirs),
    ``broker.log`` (JVM stdout/stderr) and ``broker.pid``. ``reuse`` and ``stop_at_exit``:
    see ManagedProcess.
    """

    name = "Kafka broker"

    def __init__(
        self,
        state_dir: Path,
        port: int = 9092,
        controller_port: int | None = None,
        partitions_default: int = 1,
        *,
        reuse: bool = False,
        stop_at_exit: bool | None = None,
        cache_dir: Path | None = None,
        secure: SecureKafka | None = None,
    ) -> None:
        super().__init__(state_dir, port, reuse=reuse, stop_at_exit=stop_at_exit)
        self.secure = secure
        self.controller_port = controller_port
        self.partitions_default = partitions_default
        self.cache_dir = cache_dir

    # -- public API ------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def props_path(self) -> Path:
        return self.state_dir / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "broker.log"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "broker.pid"

    def start(self, timeout: float = 90) -> None:
        """Start (or, with ``reuse``, adopt) the broker and wait until it serves metadata."""
        if self.running:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self._adopt_previous():
            return
        if port_open(self.port):
            raise DevServiceError(f"cannot start Kafka: 127.0.0.1:{self.port} is already in use")

        # The one-off download is not part of the startup budget (it logs its own time).
        libs = fetch_kafka(self.cache_dir)
        started = time.monotonic()
        cport = self.controller_port if self.controller_port is not None else free_port()
        self.controller_port = cport  # a restart on the same data keeps the quorum's address
        self._write_properties(cport)
        self._format_storage(libs)
        self._launch(libs)
        self._wait_ready(started + timeout, timeout, interval=0.25)
        log.info(
            "Kafka broker up on %s (pid %s) in %.1fs",
            self.bootstrap,
            self._pid,
            time.monotonic() - started,
        )

    # -- internals -------------------------------------------------------------------

    def _stopped(self, pid: int) -> None:
        if read_pid(self.pid_path) == pid:
            self.pid_path.unlink(missing_ok=True)

    def _running_pid(self) -> int | None:
        """Pid of a live broker started for this state_dir, guarding against pid reuse."""
        pid = read_pid(self.pid_path)
        if pid is None or not pid_alive(pid):
            return None
        args = cmdline(pid)
        if "kafka.Kafka" in args and str(self.props_path) in args:
            return pid
        return None

    def _adopt_previous(self) -> bool:
        pid = self._running_pid()
        if pid is None:
            return False
        usable = self.reuse and port_open(self.port) and self._probe()
        return self._adopt(pid, usable, f"it does not answer on {self.bootstrap}")

    def _write_properties(self, cport: int) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{cport}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.state_dir / "data"),
            "num.partitions": str(self.partitions_default),
            "offsets.topic.replication.factor": "1",
            # Few internal partitions: creating 50 of them dominates a cold start.
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            # Topics must be declared (Faust/admin), as in production.
            "auto.create.topics.enable": "false",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
        }
        if self.secure is not None:
            props.update(self.secure.properties(self.port, cport))
        text = "".join(f"{key}={value}\n" for key, value in props.items())
        self.props_path.write_text("# generated by orion_devstack.kafka\n" + text)

    def _java_cmd(self, libs: Path, *args: str, heap: tuple[str, ...] = ()) -> list[str]:
        return [
            _java(),
            *heap,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def _run_tool(self, libs: Path, *args: str) -> str:
        # C1-only JIT: these one-shot tools finish faster without the optimizing compiler.
        cmd = self._java_cmd(
            libs, "kafka.tools.StorageTool", *args, heap=("-XX:TieredStopAtLevel=1",)
        )
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DevServiceError(
                f"kafka StorageTool {args[0]} failed (exit {result.returncode}):\n"
                + (result.stdout + result.stderr)[-4000:]
            )
        return result.stdout

    def _format_storage(self, libs: Path) -> None:
        if (self.state_dir / "data" / "meta.properties").is_file():
            return
        lines = self._run_tool(libs, "random-uuid").split()
        # WARN log lines may precede it on stdout; the id is the last token.
        cluster_id = lines[-1] if lines else ""
        if not _CLUSTER_ID.match(cluster_id):
            raise DevServiceError(f"unexpected output from StorageTool random-uuid: {lines!r}")
        # No --standalone: the quorum is static (controller.quorum.voters).
        scram = self.secure.scram_arguments() if self.secure is not None else []
        self._run_tool(libs, "format", "-t", cluster_id, "-c", str(self.props_path), *scram)
        log.info(
            "formatted Kafka storage in %s (cluster id %s)", self.state_dir / "data", cluster_id
        )

    def _launch(self, libs: Path) -> None:
        cmd = self._java_cmd(
            libs, "kafka.Kafka", str(self.props_path), heap=("-Xms256m", "-Xmx768m")
        )
        self._spawn(cmd, f"Kafka {KAFKA_VERSION}")
        self.pid_path.write_text(f"{self._pid}\n")

    def _probe(self) -> bool:
        try:
            options = self.secure.client_options(next(iter(self.secure.users))) if self.secure is not None else None
            return run_coro(lambda: _probe_metadata(self.bootstrap, options), timeout=10)
        except Exception as exc:  # any failure just means "not ready yet"
            log.debug("Kafka not ready yet: %r", exc)
            return False

    def _ready(self) -> bool:
        return port_open(self.port) and self._probe()
