"""Hub fixtures shared by the identity and API tests: a store URL per backend, a settable clock.

``store_url`` is a fresh SQLite file, or the session's PostgreSQL database (created with a unique
name on 127.0.0.1:5432 and dropped at the end) with every table emptied; PostgreSQL tests skip
when the server is absent (fail under GRIDHUB_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.hub.store.conftest import PG_HOST, PG_PORT, PG_USER, create_database, drop_database, pg_url

TABLES_TO_EMPTY = ("samples", "assets", "series", "layers", "events", "resources")


class Clock:
    """A UTC time source tests move by hand (session expiry without waiting)."""

    def __init__(self, start: datetime = datetime(2025, 1, 1, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> Clock:
    """A clock starting at 2025-01-01T00:00Z."""
    return Clock()


@pytest.fixture(scope="session")
def hub_pg_database() -> Iterator[str]:
    """A PostgreSQL database for this session's hub tests (dropped at the end)."""
    name = create_database("gridhub_hub")
    try:
        yield name
    finally:
        drop_database(name)


def _empty(database: str) -> None:
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database, autocommit=True) as conn:
        present = {
            row[0]
            for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
        }
        tables = [t for t in TABLES_TO_EMPTY if t in present]
        if tables:
            conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty hub store, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.sqlite'}"
    database: str = request.getfixturevalue("hub_pg_database")
    _empty(database)
    return pg_url(database)
