"""The hub's database schema: one SQLAlchemy Core definition shared by the SQLite and PostgreSQL stores.

Physical layout (see docs/hub-store.md):

- ``samples`` is keyed by ``(series_id, ts)`` so one series' range is one contiguous key range: a
  ``WITHOUT ROWID`` table on SQLite (the rows live in the primary-key B-tree), and on PostgreSQL a
  table partitioned by month on ``ts`` whose partitions each carry that primary key, so a
  one-month range read touches one partition's index and the heap pages of that month only.
- ``ts`` is :class:`UtcDateTime`: ``timestamptz`` on PostgreSQL, integer microseconds since the
  Unix epoch on SQLite (8 bytes, compares as a number).
- Documents are ``JSON`` on SQLite (queried with ``json_extract``) and ``JSONB`` on PostgreSQL.

Changing anything here needs a new Alembic revision in ``migrations/versions`` (the migration
test compares the migrated database with this definition).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.engine import Dialect

__all__ = ["EPOCH", "JsonDocument", "UtcDateTime", "metadata"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime: ``timestamptz`` on PostgreSQL, epoch microseconds elsewhere."""

    impl = sa.BigInteger
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(TIMESTAMP(timezone=True))
        return dialect.type_descriptor(sa.BigInteger())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given where a UTC time is stored")
        if dialect.name == "postgresql":
            return value
        return (value - EPOCH) // _MICROSECOND

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        return EPOCH + timedelta(microseconds=int(value))


JsonDocument = sa.JSON().with_variant(JSONB(), "postgresql")
"""A JSON value: JSONB on PostgreSQL, JSON text on SQLite."""

metadata = sa.MetaData()

layers = sa.Table(
    "layers",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("document", JsonDocument, nullable=False),
    sa.Column("updated", UtcDateTime(), nullable=False),
)

assets = sa.Table(
    "assets",
    metadata,
    sa.Column("layer", sa.String(128), primary_key=True),
    sa.Column("collection", sa.String(128), primary_key=True),
    sa.Column("id", sa.String(256), primary_key=True),
    sa.Column("document", JsonDocument, nullable=False),
    sa.Column("updated", UtcDateTime(), nullable=False),
    sa.Column("expired", sa.Boolean(), nullable=False),
    # bounding box of the GeoJSON geometry (degrees), for the near-query prefilter
    sa.Column("min_lon", sa.Float(), nullable=True),
    sa.Column("min_lat", sa.Float(), nullable=True),
    sa.Column("max_lon", sa.Float(), nullable=True),
    sa.Column("max_lat", sa.Float(), nullable=True),
    sa.Index("ix_assets_box", "layer", "collection", "min_lat", "max_lat"),
)

series = sa.Table(
    "series",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(512), nullable=False, unique=True),
    sa.Column("layer", sa.String(128), nullable=False),
    sa.Column("collection", sa.String(128), nullable=False),
    sa.Column("asset", sa.String(256), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("unit", sa.String(64), nullable=False),
    sa.Column("phase", sa.String(32), nullable=False),
    sa.Column("statistic", sa.String(16), nullable=False),
    sa.Column("interval_s", sa.Float(), nullable=True),
    sa.Column("source", sa.String(256), nullable=False),
    sa.Column("attributes", JsonDocument, nullable=False),
    sa.Index("ix_series_asset", "layer", "asset"),
    sqlite_autoincrement=True,  # never reuse a deleted series' id
)

samples = sa.Table(
    "samples",
    metadata,
    sa.Column("series_id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("ts", UtcDateTime(), primary_key=True),
    sa.Column("value", sa.Float(), nullable=True),
    sa.Column("data", JsonDocument, nullable=True),
    sa.Column("quality", sa.SmallInteger(), nullable=False),
    sa.Column("confidence", sa.Float(), nullable=True),
    sa.Column("cost", sa.Float(), nullable=True),
    sqlite_with_rowid=False,
    postgresql_partition_by="RANGE (ts)",
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("layer", sa.String(128), nullable=False),
    sa.Column("asset", sa.String(256), nullable=False),
    sa.Column("time", UtcDateTime(), nullable=False),
    sa.Column("type", sa.String(128), nullable=False),
    sa.Column("code", sa.String(128), nullable=False),
    sa.Column("severity", sa.Integer(), nullable=False),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("payload", JsonDocument, nullable=False),
    sa.Index("ix_events_asset_time", "layer", "asset", "time"),
    sa.Index("ix_events_time", "layer", "time"),
)

resources = sa.Table(
    "resources",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("bucket", sa.String(128), nullable=False),
    sa.Column("filename", sa.String(512), nullable=False),
    sa.Column("content_type", sa.String(256), nullable=False),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created", UtcDateTime(), nullable=False),
    sa.Column("owner", sa.String(256), nullable=False),
    sa.Column("metadata", JsonDocument, nullable=False),
    sa.Index("ix_resources_bucket_filename", "bucket", "filename"),
)
