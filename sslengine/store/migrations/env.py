"""Alembic environment for the sslengine store.

Two ways in: :func:`sslengine.store.db.migrate` hands over an open connection through
``config.attributes["connection"]`` (it holds the migration lock); the ``alembic`` CLI with
``sslengine/store/alembic.ini`` opens its own, from ``sqlalchemy.url`` or the environment.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from sslengine.store.db import database_url, get_engine
from sslengine.store.models import Base

config = context.config
if config.config_file_name is not None and config.get_section("loggers") is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return database_url(config.get_main_option("sqlalchemy.url") or None).render_as_string(
        hide_password=False
    )


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        # Batch mode lets later migrations ALTER tables on SQLite (copy-and-move).
        render_as_batch=True,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    with get_engine(_url()).begin() as connection:
        _run_with(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
