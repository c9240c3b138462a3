"""Shared pytest fixtures, one section per area. Append a section; keep each one small."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------- __main__
# Streamlit's script runner (every AppTest) puts the script it ran in sys.modules["__main__"]
# and leaves it there. A later multiprocessing "spawn" child re-runs the parent's __main__ file
# before its target: an app page, or for AppTest.from_function a temporary script that fails
# outside the test (NameError: __args), so the child dies before it starts.


@pytest.fixture(autouse=True)
def _restore_main_module() -> Iterator[None]:
    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main


# ---------------------------------------------------------------------------- store
# ``store`` / ``store_url`` run a test against a migrated SQLite file and a migrated
# PostgreSQL database. PostgreSQL: each pytest session creates its own database
# (ssl_test_<random>) and drops it at the end, so parallel sessions never collide.
# SSL_TEST_POSTGRES_URL overrides the server to use; unreachable -> those cases skip.

_PG_ADMIN_URLS = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)


def _pg_admin_engine():  # -> sqlalchemy Engine | None
    from sqlalchemy import create_engine, text

    override = os.environ.get("SSL_TEST_POSTGRES_URL")
    for url in [override] if override else _PG_ADMIN_URLS:
        # CREATE/DROP DATABASE cannot run inside a transaction.
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return engine
        except Exception:
            engine.dispose()
    return None


@pytest.fixture(scope="session")
def pg_admin():  # -> sqlalchemy Engine
    engine = _pg_admin_engine()
    if engine is None:
        pytest.skip("no PostgreSQL reachable (set SSL_TEST_POSTGRES_URL)")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_database_factory(pg_admin):
    """``create()`` -> URL of a new empty PostgreSQL database, dropped at session end."""
    from sqlalchemy import text

    from sslengine.store import dispose_engines

    created: list[str] = []

    def create() -> str:
        name = f"ssl_test_{uuid.uuid4().hex[:12]}"
        with pg_admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return pg_admin.url.set(database=name).render_as_string(hide_password=False)

    yield create
    dispose_engines()
    with pg_admin.connect() as connection:
        for name in created:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url(pg_database_factory) -> str:
    """One migrated PostgreSQL database shared by the session's store tests."""
    from sslengine.store import migrate

    url = pg_database_factory()
    migrate(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request, tmp_path: Path) -> str:
    """URL of a fresh database with no schema yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return request.getfixturevalue("pg_database_factory")()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path: Path) -> Iterator[str]:
    """URL of a migrated database with no rows (a fresh file / a wiped shared database)."""
    from sqlalchemy import text

    from sslengine.store import dispose_engines, get_engine, migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ssl.db'}"
        migrate(url)
    else:
        url = request.getfixturevalue("postgres_url")
    yield url
    if request.param == "postgres":
        # Everything hangs off runs with ON DELETE CASCADE.
        with get_engine(url).begin() as connection:
            connection.execute(text("DELETE FROM runs"))
    dispose_engines()


@pytest.fixture
def store(store_url: str):  # -> sslengine.store.Store
    from sslengine.store import Store

    return Store(store_url)


@pytest.fixture
def ssl_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point SSL_HOME, SSL_DATABASE_URL (migrated SQLite) and SSL_ARTIFACTS into tmp_path."""
    from sslengine.store import dispose_engines, migrate

    monkeypatch.setenv("SSL_HOME", str(tmp_path))
    monkeypatch.setenv("SSL_DATABASE_URL", f"sqlite:///{tmp_path / 'var' / 'ssl.db'}")
    monkeypatch.setenv("SSL_ARTIFACTS", str(tmp_path / "var" / "artifacts"))
    migrate()
    yield tmp_path
    dispose_engines()


from services_fixtures import *  # noqa: E402,F401,F403  (Redis, worker, SSL_HOME fixtures)
