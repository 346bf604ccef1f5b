"""Store fixtures: a fresh SQLite file per test, and a PostgreSQL database per test session.

PostgreSQL is the server on 127.0.0.1:5432 (trust auth, user postgres). The session database has a
unique name and is dropped at the end; each test gets the store with every table emptied.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from gridhub.hub.store import Store, open_store
from tests.conftest import port_open, service_absent

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
TABLES = ("samples", "assets", "series", "layers", "events", "resources")


def pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    """Connect to the server's maintenance database in autocommit mode (skips when absent)."""
    if not port_open(PG_HOST, PG_PORT):
        service_absent(f"no PostgreSQL server on {PG_HOST}:{PG_PORT}")
    try:
        return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)
    except psycopg.OperationalError as exc:
        service_absent(f"cannot connect to PostgreSQL on {PG_HOST}:{PG_PORT} as {PG_USER}: {exc}")
        raise


def pg_url(database: str) -> str:
    """Return the store URL of a database on the test server."""
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def create_database(prefix: str = "gridhub_test") -> str:
    """Create an empty database with a unique name; return the name."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with pg_admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(name: str) -> None:
    """Drop a test database, closing whatever is still connected to it."""
    with pg_admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database for this test session (dropped at the end)."""
    name = create_database()
    try:
        yield name
    finally:
        drop_database(name)


@pytest.fixture
def pg_store(pg_database: str) -> Iterator[Store]:
    """A PostgreSQL store with empty tables."""
    store = open_store(pg_url(pg_database))
    with store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """A SQLite store in a fresh file."""
    store = open_store(str(tmp_path / "hub.sqlite"))
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Store:
    """The store, once per backend."""
    fixture = "sqlite_store" if request.param == "sqlite" else "pg_store"
    result: Store = request.getfixturevalue(fixture)
    return result
