"""The PostgreSQL store: the hub's scale-out backend (``postgresql://user@host:port/db``).

``samples`` is partitioned by month on ``ts`` (declarative range partitions named
``samples_yYYYYmMM``, created on demand, before the write transaction, under an advisory lock);
each partition carries the primary key ``(series_id, ts)``. A live, time-major ingest scatters
one series over every heap page of a month (limits.md 3c: 43,200 pages for a 30-day range);
monthly partitions bound that to the pages of the months asked for, and the key keeps the
index walk to one series.

Bulk path: one binary ``COPY`` straight into ``samples`` inside a savepoint. When a key already
exists (a re-sent batch), the savepoint is rolled back and the batch goes through a temporary
staging table (binary ``COPY`` again) and ``INSERT ... ON CONFLICT (series_id, ts) DO UPDATE``:
a re-sent sample replaces the stored one. New data, the common case, pays for one COPY only.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from gridhub.hub.model import Sample
from gridhub.hub.store import Readings, StoreError
from gridhub.hub.store import schema as s
from gridhub.hub.store.sql import Scalar, SqlStore

__all__ = [
    "COPY_TYPES",
    "DETAIL_SQL",
    "RANGE_SQL",
    "SESSION_OPTIONS",
    "PostgresStore",
    "partition_month",
    "partition_name",
]

logger = logging.getLogger(__name__)

COPY_TYPES = ["int4", "timestamptz", "float8", "jsonb", "int2", "float8", "float8"]
_COLUMNS = "series_id, ts, value, data, quality, confidence, cost"
RANGE_SQL = (
    "SELECT array_agg(ts), array_agg(value), array_agg(quality) FROM (SELECT ts, value, quality FROM samples "
    "WHERE series_id = %s AND ts >= %s AND ts < %s ORDER BY ts{limit}) AS r"
)
"""The range read: three arrays in one row, which psycopg decodes about a quarter faster than 43,200 rows."""
DETAIL_SQL = (
    "SELECT ts, value, quality, data, confidence, cost FROM samples "
    "WHERE series_id = %s AND ts >= %s AND ts < %s ORDER BY ts{limit}"
)
_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS samples_staging (series_id int4, ts timestamptz, value float8, data jsonb, "
    "quality int2, confidence float8, cost float8) ON COMMIT DELETE ROWS"
)
_MERGE = (
    f"INSERT INTO samples ({_COLUMNS}) SELECT {_COLUMNS} FROM samples_staging "
    "ON CONFLICT (series_id, ts) DO UPDATE SET value = EXCLUDED.value, data = EXCLUDED.data, "
    "quality = EXCLUDED.quality, confidence = EXCLUDED.confidence, cost = EXCLUDED.cost"
)
SESSION_OPTIONS = "-c timezone=UTC -c random_page_cost=1.1"
"""Settings of the store's sessions: times decoded in UTC (the fast path of the driver); the planner told
that pages are cheap to reach (the usual setting for SSDs and a hot working set), so a one-series range
walks the primary key in order instead of a bitmap scan plus a sort."""
_PARTITION_LOCK = 0x67726964706172  # advisory lock key serialising partition creation across processes
_PARTITION_NAME = re.compile(r"samples_y(\d{4})m(\d{2})")
_EXACT_MONTHS_ABOVE = 24  # a batch spanning more months has its months listed exactly instead of as a span


def partition_name(year: int, month: int) -> str:
    """Return the name of the samples partition of one month."""
    return f"samples_y{year:04d}m{month:02d}"


def partition_month(name: str) -> tuple[int, int] | None:
    """Return the (year, month) of a samples partition name, or None for another table."""
    match = _PARTITION_NAME.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _months(times: Iterable[datetime]) -> set[tuple[int, int]]:
    stamps = list(times)
    if not stamps:
        return set()
    low, high = min(stamps), max(stamps)
    span = (high.year - low.year) * 12 + high.month - low.month
    if span > _EXACT_MONTHS_ABOVE:
        return {(t.year, t.month) for t in stamps}
    months, current = set(), (low.year, low.month)
    while current <= (high.year, high.month):
        months.add(current)
        current = _next_month(*current)
    return months


def postgres_url(url: str) -> str:
    """Return the SQLAlchemy URL (psycopg 3 driver) of a postgresql:// URL."""
    try:
        parsed = sa.make_url(url.replace("postgres://", "postgresql://", 1))
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"store url: cannot read it as postgresql://USER@HOST:PORT/DB ({exc})") from None
    if parsed.drivername not in ("postgresql", "postgresql+psycopg"):
        raise StoreError(f"store url: driver {parsed.drivername!r} is not supported; use postgresql://")
    if not parsed.database:
        raise StoreError("store url: the database name is missing (postgresql://USER@HOST:PORT/DB)")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


class PostgresStore(SqlStore):
    """The store in a PostgreSQL database (version 14 or newer: date_bin)."""

    backend = "postgresql"

    def __init__(self, url: str) -> None:
        engine = sa.create_engine(
            postgres_url(url),
            connect_args={"options": SESSION_OPTIONS},
        )
        self._partitions: set[tuple[int, int]] = set()
        try:
            super().__init__(url, engine)
        except sa.exc.OperationalError as exc:
            raise StoreError(f"store {self.url}: cannot connect to PostgreSQL: {exc.orig}") from None
        with self.engine.connect() as conn:
            names = conn.exec_driver_sql(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'samples'"
            ).scalars()
            self._partitions = {m for m in map(partition_month, names) if m is not None}

    def _sample_reader(self, engine: sa.Engine) -> sa.Engine:
        # one statement per read: no BEGIN/ROLLBACK round trips around it
        return engine.execution_options(isolation_level="AUTOCOMMIT")

    def partitions(self) -> list[str]:
        """Return the names of the samples partitions that exist, oldest first."""
        with self.engine.connect() as conn:
            names = conn.exec_driver_sql(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'samples' ORDER BY c.relname"
            ).scalars()
            return list(names)

    def _create_partitions(self, conn: Connection, months: Iterable[tuple[int, int]]) -> None:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PARTITION_LOCK})")
        for year, month in sorted(months):
            end = _next_month(year, month)
            conn.exec_driver_sql(
                f"CREATE TABLE IF NOT EXISTS {partition_name(year, month)} PARTITION OF samples "
                f"FOR VALUES FROM ('{year:04d}-{month:02d}-01 00:00:00+00') "
                f"TO ('{end[0]:04d}-{end[1]:02d}-01 00:00:00+00')"
            )
            logger.info("created samples partition %s", partition_name(year, month))

    def _prepare_times(self, times: Iterable[datetime]) -> None:
        missing = _months(times) - self._partitions
        if missing:
            with self._writer.begin() as conn:
                self._create_partitions(conn, missing)
            self._partitions |= missing

    def _prepare_other_times(self, conn: Connection, samples: list[Sample]) -> None:
        missing = _months(x.ts for x in samples) - self._partitions
        if missing:  # rare: a patch whose measurement times came from the stored document
            self._create_partitions(conn, missing)
            self._partitions |= missing

    def compact(self, now: datetime | None = None, *, force: bool = False) -> list[str]:
        """CLUSTER each closed month's partition on its primary key (once; force repeats it); return their names.

        A month's partition is closed when the month ended before now. CLUSTER rewrites it in
        (series_id, ts) order, so a one-series range read touches a few hundred pages instead of one
        page per sample; it locks that partition (only) while it runs. Live months are left alone.
        """
        now = (now or datetime.now(UTC)).astimezone(UTC)
        done: list[str] = []
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT c.relname, ix.relname, i.indisclustered FROM pg_inherits h "
                "JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_class p ON p.oid = h.inhparent "
                "JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary JOIN pg_class ix ON ix.oid = i.indexrelid "
                "WHERE p.relname = 'samples' ORDER BY c.relname"
            ).all()
        for table, index, clustered in rows:
            month = partition_month(table)
            if month is None or (clustered and not force):
                continue
            if _next_month(*month) > (now.year, now.month):
                continue  # the month is still open
            with self._writer.begin() as conn:
                conn.exec_driver_sql(f'CLUSTER "{table}" USING "{index}"')
                conn.exec_driver_sql(f'ANALYZE "{table}"')
            logger.info("compacted samples partition %s (clustered on %s)", table, index)
            done.append(table)
        return done

    def _insert(self, table: sa.Table) -> Any:
        return pg_insert(table)

    # -- JSON paths (jsonb_extract_path is NULL for a missing member, the jsonb 'null' for a JSON null)
    @staticmethod
    def _extract(keys: list[str]) -> sa.ColumnElement[Any]:
        return sa.func.jsonb_extract_path(s.assets.c.document, *keys, type_=JSONB)

    @staticmethod
    def _literal(value: Scalar) -> sa.ColumnElement[Any]:
        return sa.cast(sa.literal(json.dumps(value), sa.Text), JSONB)

    def _json_eq(self, keys: list[str], value: Scalar) -> sa.ColumnElement[bool]:
        found = self._extract(keys)
        if value is None:
            return sa.or_(found.is_(None), sa.func.jsonb_typeof(found) == "null")
        return found.op("=")(self._literal(value))

    def _json_in(self, keys: list[str], values: Sequence[str | int | float | bool]) -> sa.ColumnElement[bool]:
        # jsonb = as in _json_eq (same type, numbers by value: 1 = 1.0); = ANY of one array parameter, which
        # PostgreSQL (14+) matches through a hash table: a join against a set-returning function could be
        # planned as a nested loop (one pass over the list per document) while the table has no statistics.
        items = sa.cast(sa.literal([json.dumps(v) for v in values], ARRAY(sa.Text)), ARRAY(JSONB))
        return self._extract(keys).op("=")(sa.any_(items))

    def _id_in(self, ids: Sequence[str]) -> sa.ColumnElement[bool]:
        return s.assets.c.id == sa.any_(sa.literal(list(ids), ARRAY(sa.Text)))

    def _json_cmp(self, keys: list[str], op: str, value: str | float) -> sa.ColumnElement[bool]:
        found = self._extract(keys)
        kind = "string" if isinstance(value, str) else "number"
        return sa.and_(sa.func.jsonb_typeof(found) == kind, found.op(op)(self._literal(value)))

    def _json_exists(self, keys: list[str]) -> sa.ColumnElement[bool]:
        return self._extract(keys).is_not(None)

    def _json_sort(self, keys: list[str]) -> list[sa.ColumnElement[Any]]:
        kind = sa.func.jsonb_typeof(self._extract(keys))
        text = sa.func.jsonb_extract_path_text(s.assets.c.document, *keys, type_=sa.Text)
        rank = sa.case(
            (kind == "number", 1),
            (kind == "string", 2),
            (kind == "object", 3),
            (kind == "array", 4),
            (kind == "boolean", 5),
            else_=0,
        )
        number = sa.case(
            (kind == "number", sa.cast(text, sa.Numeric)),
            (kind == "boolean", sa.case((text == "true", 1), else_=0)),
        )
        # Strings compare by code point, as SQLite's BINARY collation does, whatever the database's collation.
        string = sa.case((kind == "string", text.collate("C")))
        return [rank, number, string]

    # -- samples
    def _bulk_write(self, conn: Connection, samples: Sequence[Sample], ids: Mapping[str, int]) -> None:
        rows = [
            (
                ids[x.series],
                x.ts,
                x.value,
                None if x.data is None else Jsonb(x.data),
                int(x.quality),
                x.confidence,
                x.cost,
            )
            for x in samples
        ]
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        try:
            with (
                conn.begin_nested(),
                raw.cursor() as cur,
                cur.copy(f"COPY samples ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
            return
        except psycopg.errors.UniqueViolation:
            logger.debug("bulk write of %s samples meets stored keys: merging through staging", len(rows))
        merged = list({(row[0], row[1]): row for row in rows}.values())  # the last of repeated keys wins
        with raw.cursor() as cur:
            cur.execute(_STAGING)
            with cur.copy(f"COPY samples_staging ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(COPY_TYPES)
                for row in merged:
                    copy.write_row(row)
            cur.execute(_MERGE)
            cur.execute("TRUNCATE samples_staging")

    def _read_range(self, series_id: int, start: datetime, end: datetime, limit: int | None, detail: bool) -> Readings:
        sql = (DETAIL_SQL if detail else RANGE_SQL).format(limit="" if limit is None else f" LIMIT {int(limit)}")
        with self._reader.connect() as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            with raw.cursor(binary=True) as cur:
                cur.execute(sql, (series_id, start, end))
                if detail:
                    return Readings(cur.fetchall())
                row = cur.fetchone()
        if row is None or row[0] is None:  # no sample in the range
            return Readings([])
        return Readings.from_columns(row[0], row[1], row[2])

    def _bucket(
        self, interval: timedelta, origin: datetime, start: datetime
    ) -> tuple[sa.ColumnElement[Any], Callable[[Any], datetime]]:
        key = sa.func.date_bin(
            sa.literal(interval, sa.Interval()),
            s.samples.c.ts,
            sa.literal(origin, TIMESTAMP(timezone=True)),
            type_=TIMESTAMP(timezone=True),
        )

        def to_time(bucket: Any) -> datetime:
            return bucket.astimezone(UTC)  # type: ignore[no-any-return]

        return key, to_time
