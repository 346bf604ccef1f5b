"""Schema migrations: an empty database is migrated to the head, a newer one is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gridhub.hub.store import SchemaVersionError, open_store
from gridhub.hub.store.migrations import head_revision
from gridhub.hub.store.schema import metadata
from tests.hub.store.conftest import create_database, drop_database, pg_url

TABLES = {"alembic_version", "assets", "events", "layers", "resources", "samples", "series"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(store URL, SQLAlchemy URL) of an empty database, once per backend."""
    if request.param == "sqlite":
        path = tmp_path / "hub.sqlite"
        yield str(path), f"sqlite:///{path}"
        return
    name = create_database("gridhub_migrate")
    try:
        yield pg_url(name), pg_url(name).replace("postgresql://", "postgresql+psycopg://")
    finally:
        drop_database(name)


def _inspect(url: str, fn: Any) -> Any:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            return fn(conn)
    finally:
        engine.dispose()


def _user_tables(conn: sa.Connection) -> set[str]:
    return {t for t in sa.inspect(conn).get_table_names() if not t.startswith("samples_y")}


def test_empty_database_is_migrated_to_head(empty_database: tuple[str, str]) -> None:
    store_url, url = empty_database
    with open_store(store_url) as store:
        assert store.schema_revision() == head_revision() == "0001"
    version = _inspect(url, lambda c: c.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all())
    assert version == [head_revision()]
    assert _inspect(url, _user_tables) == TABLES
    with open_store(store_url) as store:  # opening again migrates nothing and keeps the data
        assert store.schema_revision() == head_revision()


def test_migrated_schema_matches_the_schema_definition(empty_database: tuple[str, str]) -> None:
    store_url, url = empty_database
    open_store(store_url).close()

    def diff(conn: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_name": lambda name, kind, parent: kind != "table" or not str(name).startswith("samples_y"),
                "compare_type": False,
            },
        )
        return list(compare_metadata(context, metadata))

    assert _inspect(url, diff) == []


def test_newer_schema_is_refused_and_left_alone(empty_database: tuple[str, str]) -> None:
    store_url, url = empty_database
    open_store(store_url).close()
    _inspect(url, lambda c: c.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'")))
    with pytest.raises(SchemaVersionError, match=r"revision '9999_future'.*does not know.*downgrades are refused"):
        open_store(store_url)
    version = _inspect(url, lambda c: c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar())
    assert version == "9999_future"
