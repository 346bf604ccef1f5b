"""The first hub schema: layers, assets, series, samples (partitioned by month on PostgreSQL), events, resources.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from gridhub.hub.store.schema import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# This revision is a frozen snapshot: later schema changes go into new revisions, never here.
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "layers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("document", Json, nullable=False),
        sa.Column("updated", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "assets",
        sa.Column("layer", sa.String(128), primary_key=True),
        sa.Column("collection", sa.String(128), primary_key=True),
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("document", Json, nullable=False),
        sa.Column("updated", UtcDateTime(), nullable=False),
        sa.Column("expired", sa.Boolean(), nullable=False),
        sa.Column("min_lon", sa.Float(), nullable=True),
        sa.Column("min_lat", sa.Float(), nullable=True),
        sa.Column("max_lon", sa.Float(), nullable=True),
        sa.Column("max_lat", sa.Float(), nullable=True),
    )
    op.create_index("ix_assets_box", "assets", ["layer", "collection", "min_lat", "max_lat"])
    op.create_table(
        "series",
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
        sa.Column("attributes", Json, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_series_asset", "series", ["layer", "asset"])
    # Keyed (series_id, ts): WITHOUT ROWID on SQLite; on PostgreSQL the parent of monthly range
    # partitions (created on demand by the store), each partition inheriting the primary key.
    op.create_table(
        "samples",
        sa.Column("series_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("ts", UtcDateTime(), primary_key=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("data", Json, nullable=True),
        sa.Column("quality", sa.SmallInteger(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=True),
        sqlite_with_rowid=False,
        postgresql_partition_by="RANGE (ts)",
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("layer", sa.String(128), nullable=False),
        sa.Column("asset", sa.String(256), nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("code", sa.String(128), nullable=False),
        sa.Column("severity", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("payload", Json, nullable=False),
    )
    op.create_index("ix_events_asset_time", "events", ["layer", "asset", "time"])
    op.create_index("ix_events_time", "events", ["layer", "time"])
    op.create_table(
        "resources",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("bucket", sa.String(128), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("content_type", sa.String(256), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created", UtcDateTime(), nullable=False),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("metadata", Json, nullable=False),
    )
    op.create_index("ix_resources_bucket_filename", "resources", ["bucket", "filename"])


def downgrade() -> None:
    raise NotImplementedError("gridhub refuses schema downgrades")
