"""Alembic migrations of the hub schema, run forward on open; a database newer than the code is refused.

The revisions live in ``versions/`` (shipped as package data); ``env.py`` runs them on the
connection handed over in ``config.attributes["connection"]``. Each schema change adds one
revision; revisions only move forward (STYLE rule 8): opening a database whose revision this
code does not know raises :class:`~gridhub.hub.store.SchemaVersionError` instead of guessing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from gridhub.hub.store import SchemaVersionError

__all__ = ["MIGRATIONS_DIR", "alembic_config", "head_revision", "upgrade"]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
_LOCK_KEY = 0x67726964687562  # "gridhub": serialises migrations of concurrent hub processes on PostgreSQL


def alembic_config(connection: Connection | None = None) -> Config:
    """Return an Alembic configuration for the hub schema, bound to connection when given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """Return the newest schema revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(connection: Connection, where: str) -> str:
    """Migrate the database on connection (inside its transaction) to the head revision; return it.

    Raises SchemaVersionError when the database carries a revision this code does not know
    (a newer gridhub wrote it): downgrades are refused.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
    config = alembic_config(connection)
    scripts = ScriptDirectory.from_config(config)
    current = MigrationContext.configure(connection).get_current_revision()
    head = scripts.get_current_head()
    if current is not None:
        try:
            scripts.get_revision(current)
        except CommandError:
            raise SchemaVersionError(
                f"store {where}: the database schema is at revision {current!r}, which this version of gridhub "
                f"does not know (it knows up to {head!r}); it was written by a newer gridhub. Upgrade gridhub "
                "to open it; downgrades are refused."
            ) from None
    if current != head:
        logger.info("store %s: migrating schema from %s to %s", where, current or "empty", head)
        command.upgrade(config, "head")
    assert head is not None
    return head
