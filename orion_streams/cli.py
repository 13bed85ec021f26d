"""The `orion` command: run everything, run a worker, migrate, create topics, seed, mint tokens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import DEV_JWT_SECRET, Settings


def _migrate(database: Settings | str) -> None:
    """Apply the migrations to the database of these settings (TLS and password too) or of a
    bare URL; a wrong CA, password or address stops here with one line naming the setting."""
    from alembic import command
    from alembic.config import Config

    from .adapters.pg_connect import PgParams, check_at_start_sync

    given = PgParams.from_url(database) if isinstance(database, str) else database
    params = check_at_start_sync(given, must_connect=True)
    # alembic.ini and migrations/ are package data: found next to this module wherever the
    # package is installed (wheel or editable), never at the repository root.
    package_dir = Path(__file__).resolve().parent
    cfg = Config(str(package_dir / "alembic.ini"))
    cfg.set_main_option("script_location", str(package_dir / "migrations").replace("%", "%%"))
    cfg.attributes["pg_params"] = params  # migrations/env.py connects with them
    command.upgrade(cfg, "head")


async def _seed(settings: Settings) -> None:
    from .adapters import kafka_auth
    from .adapters.kafka_admin import publish_seed_stock
    from .adapters.postgres import SqlAlchemyStore
    from .domain.catalog import DEMO_PRODUCTS, DEMO_STOCK

    store = SqlAlchemyStore.from_settings(settings, pool_size=2)
    try:
        await store.upsert_products(DEMO_PRODUCTS)
    finally:
        await store.close()
    await publish_seed_stock(settings.kafka_bootstrap, list(DEMO_STOCK), kafka_auth.client_options(settings))


async def _apikey(settings: Settings, args: argparse.Namespace) -> str:
    import json

    from .adapters.apikeys import ApiKeyStore
    from .adapters.postgres import SqlAlchemyStore

    store = SqlAlchemyStore.from_settings(settings, pool_size=1)
    try:
        keys = ApiKeyStore(store.engine)
        if args.action == "create":
            scopes = [x.strip() for x in args.scopes.split(",") if x.strip()]
            try:
                key, record = await keys.create(args.name, scopes, f"cli:{os.environ.get('USER', 'unknown')}")
            except ValueError as exc:
                raise SystemExit(str(exc)) from exc
            return f"{json.dumps(record, indent=2)}\nkey (shown once, store it now): {key}"
        if args.action == "revoke":
            revoked = await keys.revoke(args.key_id)
            if revoked is None:
                raise SystemExit(f"no API key {args.key_id}")
            return json.dumps(revoked, indent=2)
        return json.dumps(await keys.list(), indent=2)
    finally:
        await store.close()


def _prepare(settings: Settings, *, seed: bool) -> None:
    from .adapters import kafka_auth
    from .adapters.kafka_admin import ensure_topics

    _migrate(settings)
    check_kafka(settings)
    created = asyncio.run(ensure_topics(
        settings.kafka_bootstrap, settings.partitions, options=kafka_auth.client_options(settings)))
    if created:
        print(f"created topics: {', '.join(created)}", flush=True)
    if seed:
        asyncio.run(_seed(settings))


def run_worker(settings: Settings, loglevel: str | None = None) -> None:
    """Build a worker from `settings` and run it in this process (blocks until it stops)."""
    if loglevel:
        settings = settings.with_changes(log_level=loglevel.lower())
    from .adapters.pg_connect import check_at_start_sync

    # A wrong CA, certificate or password stops the worker here, naming the setting.
    check_at_start_sync(settings, must_connect=False)
    # Before the app exists: Faust takes the event loop when the app is built.
    if settings.event_loop == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")
    if settings.projection == "process":
        # The projection's process counts its metrics (dead letters, database) where the
        # worker's /metrics reads them.
        _share_metrics(settings.state_dir / "metrics" / settings.worker_id)
    from . import tracing
    from .app import create_app
    from .bootstrap import tune_gc

    check_kafka(settings)
    # A bad JWT configuration stops the worker here rather than failing every request.
    app = create_app(settings).app
    tracing.configure("orion-worker", settings.worker_id)
    # Faust creates only the last level of its data directory.
    Path(app.conf.datadir).parent.mkdir(parents=True, exist_ok=True)
    # JSON logs are for machines: no banner on stdout between the lines.
    quiet = ["--quiet"] if settings.log_format == "json" else []
    tune_gc()
    _faust_main(app, [
        *quiet, "worker", "--loglevel", settings.log_level,
        "--web-host", settings.web_host, "--web-port", str(settings.web_port),
    ])


def check_kafka(settings: Settings) -> None:
    """Stop with one line naming the setting when Kafka's TLS or SASL settings cannot work
    (a wrong CA, a refused password, a protocol the listener does not speak), instead of a
    worker that retries forever. Its own event loop: the caller's is Faust's."""
    from .adapters import kafka_auth

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(kafka_auth.check_connection(settings))
    except kafka_auth.KafkaSecurityError as exc:
        raise SystemExit(f"orion: {exc}") from None
    finally:
        loop.close()


def _faust_main(app: Any, args: list[str]) -> None:
    """What `app.main()` does, with the command line given here instead of read from
    sys.argv."""
    from faust.cli.faust import cli

    app.finalize()
    app.worker_init()
    app.worker_init_post_autodiscover()
    cli.main(args=args, prog_name="orion", app=app)


@contextlib.contextmanager
def local_services(settings: Settings) -> Iterator[Settings]:
    """Start the local broker, database and mail catcher unless the environment names other
    ones (the orion-devstack package, installed by `make`: never in a production install)."""
    if "ORION_KAFKA_BOOTSTRAP" in os.environ and settings.database_url and "ORION_SMTP_URL" in os.environ:
        yield settings
        return
    try:
        from orion_devstack.local import local_services as start
    except ImportError as exc:
        raise SystemExit(
            "starting a local Kafka, PostgreSQL or mail catcher needs the orion-devstack package "
            "(pip install -e ./devstack from the repository; `make run` installs it), or set "
            "ORION_KAFKA_BOOTSTRAP, ORION_DATABASE_URL and ORION_SMTP_URL to your own services"
        ) from exc
    with start(settings) as ready:
        yield ready


def _share_metrics(directory: Path) -> None:
    """The worker and the mailer count into one directory, so the worker's /metrics shows
    both (set before prometheus_client is imported; emptied so old runs do not add up)."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.db"):
            old.unlink()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


@contextlib.contextmanager
def _mailer_process(settings: Settings) -> Iterator[None]:
    """`orion mailer` beside the worker, stopped when the worker stops."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "orion_streams.cli", "mailer"], env={**os.environ, **settings.to_env()})
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _banner(settings: Settings) -> None:
    from .web.auth import issue_token

    try:
        customer = issue_token(settings, "sarah", ["customer"])
        admin = issue_token(settings, "mike", ["admin"])
    except ValueError:  # RS*/ES*: tokens come from the identity provider, not from here
        customer = admin = "<a token from your identity provider>"
    base = f"http://{settings.web_host}:{settings.web_port}"
    warn = (
        "\n!!! ORION_JWT_SECRET is not set: tokens are signed with a DEVELOPMENT secret."
        "\n!!! Never expose this worker; set ORION_JWT_SECRET for anything real.\n"
        if settings.jwt_secret.get_secret_value() == DEV_JWT_SECRET
        else ""
    )
    print(
        f"""{warn}
Orion is starting on {base}
  Kafka:      {settings.kafka_bootstrap}
  PostgreSQL: {settings.database_url.split('@')[-1]}
  SMTP:       {settings.smtp_url.split('@')[-1]}

Demo customer token (sarah):
  export TOKEN={customer}
Demo admin token (mike):
  export ADMIN_TOKEN={admin}

Place an order and wait for the decision:
  curl -s -X POST '{base}/v1/orders?wait=10' \\
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
    -d '{{"lines":[{{"sku":"SKU-001","quantity":2}}],"payment":{{"token":"tok_ok"}},"email":"sarah@example.com"}}'

Ops console: {base}/console (sign in with the admin token)

Health {base}/health, readiness {base}/ready, Prometheus metrics {base}/metrics
(worker and mailer counted together); alert rules and a Grafana dashboard are in ops/.
""",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="orion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start Kafka, PostgreSQL, migrate, seed and run one worker")
    worker = sub.add_parser("worker", help="run one worker against configured services")
    worker.add_argument("--loglevel", default=None)
    sub.add_parser("mailer", help="send the queued emails (run one or more next to the workers)")
    sub.add_parser(
        "projection", help="write orders, audit and stock to PostgreSQL and queue emails (a worker runs one itself "
        "unless ORION_PROJECTION=off)",
    )
    apikey = sub.add_parser("apikey", help="create, list or revoke service API keys")
    apikey_sub = apikey.add_subparsers(dest="action", required=True)
    create = apikey_sub.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("name")
    create.add_argument("--scopes", required=True, help="comma-separated, e.g. orders:write,orders:read")
    apikey_sub.add_parser("list", help="list keys (never the keys themselves)")
    revoke = apikey_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser("topics", help="create Orion's topics")
    sub.add_parser("seed", help="load the demo catalog and stock")
    sub.add_parser("services", help="start Kafka and PostgreSQL and wait (Ctrl-C stops them)")
    token = sub.add_parser("token", help="print a signed development token")
    token.add_argument("subject")
    token.add_argument("--roles", default="customer")
    token.add_argument("--ttl", type=float, default=24 * 3600)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        from .adapters import kafka_auth

        kafka_auth.client_options(settings)  # a Kafka security setting that cannot work
    except ValueError as exc:  # a setting out of its range: say which, no traceback
        parser.exit(2, f"orion: {exc}\n")

    if args.command == "run":
        _share_metrics(settings.state_dir / "metrics")
        with local_services(settings) as ready:
            _prepare(ready, seed=True)
            _banner(ready)
            with _mailer_process(ready):
                run_worker(ready)
    elif args.command == "services":
        with local_services(settings) as ready:
            _prepare(ready, seed=False)
            print(f"ORION_KAFKA_BOOTSTRAP={ready.kafka_bootstrap}\nORION_DATABASE_URL={ready.database_url}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                import signal

                signal.sigwait({signal.SIGINT, signal.SIGTERM})
    elif args.command == "worker":
        if not settings.database_url:
            parser.error("ORION_DATABASE_URL must be set for a worker")
        run_worker(settings, args.loglevel)
    elif args.command == "mailer":
        from .mailer import main as mailer_main

        if not settings.database_url:
            parser.error("ORION_DATABASE_URL must be set for a mailer")
        mailer_main(settings)
    elif args.command == "projection":
        if not settings.database_url:
            parser.error("ORION_DATABASE_URL must be set for a projection")
        from .adapters.pg_connect import check_at_start_sync
        from .agents.projection import main as projection_main

        check_at_start_sync(settings, must_connect=False)
        projection_main(settings)
    elif args.command == "apikey":
        if not settings.database_url:
            parser.error("ORION_DATABASE_URL must be set")
        print(asyncio.run(_apikey(settings, args)))
    elif args.command == "migrate":
        if not settings.database_url:
            parser.error("ORION_DATABASE_URL must be set to migrate")
        _migrate(settings)
    elif args.command == "topics":
        from .adapters import kafka_auth
        from .adapters.kafka_admin import ensure_topics

        check_kafka(settings)
        print(asyncio.run(ensure_topics(
            settings.kafka_bootstrap, settings.partitions, options=kafka_auth.client_options(settings))))
    elif args.command == "seed":
        asyncio.run(_seed(settings))
    elif args.command == "token":
        from .web.auth import issue_token

        print(issue_token(settings, args.subject, args.roles.split(","), ttl=args.ttl))


if __name__ == "__main__":
    main()
