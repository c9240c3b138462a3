"""Engines and schema migrations.

``SSL_DATABASE_URL`` selects the database; the default is the SQLite file
``$SSL_HOME/var/ssl.db``. Hosted deployments use PostgreSQL through psycopg 3
(``postgresql+psycopg://user@host/db``; a bare ``postgresql://`` URL is rewritten to it).
The schema is owned by Alembic: call :func:`migrate` once at start-up (CLI, worker, app);
product code never calls ``metadata.create_all``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from sslengine.store.artifacts import ssl_home

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Any constant works; it only has to be the same for every process migrating one database.
PG_MIGRATION_LOCK_KEY = 0x551E7A1E

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
# Alembic keeps the running migration in module-level state (``alembic.context``): two
# threads of one process must never migrate at the same time, whatever the database.
_migrate_lock = threading.Lock()


def database_url(url: str | URL | None = None) -> URL:
    """The URL to use: ``url``, else ``SSL_DATABASE_URL``, else the default SQLite file."""
    if url is None:
        url = os.environ.get("SSL_DATABASE_URL") or None
    if url is None:
        url = f"sqlite:///{ssl_home() / 'var' / 'ssl.db'}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        # The psycopg2 default driver is not installed; psycopg 3 is.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def get_engine(url: str | URL | None = None) -> Engine:
    """One engine per database URL and process (engines own connection pools)."""
    parsed = database_url(url)
    key = parsed.render_as_string(hide_password=False)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _create_engine(parsed)
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    """Close every cached engine's connections and forget them (tests, dropping a database)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() != "sqlite":
        # pre_ping: workers live for days and the database may restart under them.
        return create_engine(url, pool_pre_ping=True)
    database = url.database
    kwargs: dict[str, Any] = {}
    if not database or database == ":memory:":
        # An in-memory database exists once per connection: share one connection.
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Concurrent writers (rank 0 logging metrics, the task's heartbeat, the app's cancel
    # button) wait for the write lock instead of failing with "database is locked". Set first:
    # switching a new file to WAL needs the lock too.
    cursor.execute("PRAGMA busy_timeout=30000")
    # WAL: the app reads while a worker writes metrics, without blocking either.
    cursor.execute("PRAGMA journal_mode=WAL")
    # SQLite ignores foreign keys, hence ON DELETE CASCADE, unless asked per connection.
    cursor.execute("PRAGMA foreign_keys=ON")
    # Safe with WAL (a crash can lose the last commits, never corrupt) and much cheaper.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _dispose_after_fork() -> None:
    # A forked child (Celery prefork, DataLoader workers) must not reuse the parent's sockets
    # or SQLite handles; close=False leaves the parent's connections to the parent.
    for engine in list(_engines.values()):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_dispose_after_fork)


def alembic_config(url: str | URL | None = None) -> Any:
    """An Alembic ``Config`` pointing at the packaged migrations, usable from any cwd."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser treats '%' as interpolation: escape it (URL-encoded passwords contain it).
    rendered = database_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def migrate(url: str | URL | None = None, revision: str = "head") -> None:
    """Bring the database schema to ``revision`` (``alembic upgrade head``).

    Safe to call from several processes at once on a fresh database: the migration runs
    under a database-wide lock (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock), so
    the second caller waits and then finds the schema already at head.
    """
    from alembic import command

    config = alembic_config(url)
    engine = get_engine(url)
    with _migrate_lock, engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY}
            )
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
