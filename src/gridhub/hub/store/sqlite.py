"""The SQLite store: the hub's default, one file, no set-up.

Samples live in a ``WITHOUT ROWID`` table keyed ``(series_id, ts)`` (``ts`` in epoch microseconds),
so one series' range is one contiguous run of B-tree pages. The bulk path is one ``executemany``
of ``INSERT OR REPLACE`` inside one ``BEGIN IMMEDIATE`` transaction per call: a re-sent sample
replaces the stored one. The connection runs in WAL mode with ``synchronous=NORMAL`` and a large
``wal_autocheckpoint`` (limits.md 3a: with 1000 series a commit touches ~1000 leaf pages, so the
default checkpoint interval would checkpoint on nearly every commit).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from gridhub.hub.model import Sample
from gridhub.hub.store import Readings, StoreError
from gridhub.hub.store import schema as s
from gridhub.hub.store.sql import Scalar, SqlStore

__all__ = ["DETAIL_SQL", "INSERT_PLAIN_SQL", "INSERT_SQL", "PRAGMAS", "RANGE_SQL", "SqliteStore"]

logger = logging.getLogger(__name__)

_MICROSECOND = timedelta(microseconds=1)
_NUMBER = ("integer", "real")
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=30000",
    "PRAGMA cache_size=-65536",  # 64 MiB
    "PRAGMA wal_autocheckpoint=16384",
    "PRAGMA foreign_keys=ON",
)
INSERT_SQL = (
    "INSERT OR REPLACE INTO samples (series_id, ts, value, data, quality, confidence, cost) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
INSERT_PLAIN_SQL = "INSERT OR REPLACE INTO samples (series_id, ts, value, quality) VALUES (?, ?, ?, ?)"
RANGE_SQL = "SELECT ts, value, quality FROM samples WHERE series_id = ? AND ts >= ? AND ts < ? ORDER BY ts"
DETAIL_SQL = (
    "SELECT ts, value, quality, data, confidence, cost FROM samples WHERE series_id = ? AND ts >= ? AND ts < ? "
    "ORDER BY ts"
)


def _micros(value: datetime) -> int:
    return (value - s.EPOCH) // _MICROSECOND


def _decode(row: tuple[Any, ...]) -> tuple[Any, ...]:
    ts, value, quality = row
    return (s.EPOCH + timedelta(microseconds=ts), value, quality)


def _decode_detail(row: tuple[Any, ...]) -> tuple[Any, ...]:
    ts, value, quality, data, confidence, cost = row
    return (
        s.EPOCH + timedelta(microseconds=ts),
        value,
        quality,
        None if data is None else json.loads(data),
        confidence,
        cost,
    )


def sqlite_url(url: str) -> str:
    """Return a SQLAlchemy URL for a sqlite: URL or a plain file path, creating the file's folder."""
    if url.startswith(("sqlite:", "sqlite+")):
        parsed = sa.make_url(url)
        if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise StoreError(f"store url {url!r}: only the built-in sqlite3 driver is supported")
        database = parsed.database
    else:
        database = url
    if not database or database == ":memory:":
        raise StoreError(f"store url {url!r}: the hub store needs a file (an in-memory database is lost on close)")
    path = Path(database).expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"store url {url!r}: cannot create the folder {path.parent}: {exc.strerror}") from None
    return f"sqlite+pysqlite:///{path}"


class SqliteStore(SqlStore):
    """The store in one SQLite file."""

    backend = "sqlite"

    def __init__(self, url: str) -> None:
        engine = sa.create_engine(sqlite_url(url), json_serializer=_dumps)

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            # Transactions are begun explicitly below (the sqlite3 module's implicit ones break SAVEPOINT
            # and would start write transactions as DEFERRED, which can fail with SQLITE_BUSY).
            dbapi_connection.isolation_level = None
            for pragma in PRAGMAS:
                dbapi_connection.execute(pragma)

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("gridhub_write") else "BEGIN")

        super().__init__(url, engine)

    def _insert(self, table: sa.Table) -> Any:
        return sqlite_insert(table)

    # -- JSON paths (json_type is NULL for a missing member, 'null' for a JSON null)
    @staticmethod
    def _json_path(keys: list[str]) -> str:
        return "$" + "".join(f'."{k}"' for k in keys)

    def _type(self, keys: list[str]) -> sa.ColumnElement[Any]:
        return sa.func.json_type(s.assets.c.document, self._json_path(keys))

    def _extract(self, keys: list[str]) -> sa.ColumnElement[Any]:
        return sa.func.json_extract(s.assets.c.document, self._json_path(keys))

    def _json_eq(self, keys: list[str], value: Scalar) -> sa.ColumnElement[bool]:
        kind = self._type(keys)
        if value is None:
            return sa.or_(kind.is_(None), kind == "null")
        if isinstance(value, bool):
            return kind == ("true" if value else "false")
        if isinstance(value, int | float):
            return sa.and_(kind.in_(_NUMBER), self._extract(keys) == value)
        return sa.and_(kind == "text", self._extract(keys) == value)

    @staticmethod
    def _each(values: Sequence[Any]) -> sa.Select[Any]:
        """Return ``SELECT value FROM json_each(?)``: the values of a list bound as one JSON parameter."""
        each = sa.func.json_each(sa.literal(_dumps(list(values)), sa.Text)).table_valued("value")
        return sa.select(each.c.value)

    def _json_in(self, keys: list[str], values: Sequence[str | int | float | bool]) -> sa.ColumnElement[bool]:
        kind = self._type(keys)
        strings = [v for v in values if isinstance(v, str)]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        booleans = sorted({"true" if v else "false" for v in values if isinstance(v, bool)})
        parts: list[sa.ColumnElement[bool]] = []
        if strings:  # json_each yields a JSON string as SQL text, a number as integer or real, as json_extract does
            parts.append(sa.and_(kind == "text", self._extract(keys).in_(self._each(strings))))
        if numbers:
            parts.append(sa.and_(kind.in_(_NUMBER), self._extract(keys).in_(self._each(numbers))))
        if booleans:
            parts.append(kind.in_(booleans))
        return sa.or_(sa.false(), *parts)

    def _id_in(self, ids: Sequence[str]) -> sa.ColumnElement[bool]:
        return s.assets.c.id.in_(self._each(ids))

    def _json_cmp(self, keys: list[str], op: str, value: str | float) -> sa.ColumnElement[bool]:
        kind = self._type(keys)
        same_type = kind == "text" if isinstance(value, str) else kind.in_(_NUMBER)
        return sa.and_(same_type, self._extract(keys).op(op)(value))

    def _json_exists(self, keys: list[str]) -> sa.ColumnElement[bool]:
        return self._type(keys).is_not(None)

    def _json_sort(self, keys: list[str]) -> list[sa.ColumnElement[Any]]:
        kind = self._type(keys)
        rank = sa.case(
            (kind.in_(_NUMBER), 1),
            (kind == "text", 2),
            (kind == "object", 3),
            (kind == "array", 4),
            (kind.in_(("true", "false")), 5),
            else_=0,
        )
        number = sa.case((kind.in_((*_NUMBER, "true", "false")), self._extract(keys)))  # booleans extract as 1, 0
        string = sa.case((kind == "text", self._extract(keys)))  # BINARY collation: by code point
        return [rank, number, string]

    # -- samples
    def _bulk_write(self, conn: Connection, samples: Sequence[Sample], ids: Mapping[str, int]) -> None:
        # A plain sample (value and quality only: nearly all of them) is written with four parameters:
        # the sqlite3 module binds each None through its adapter look-up, so the three NULLs of the full
        # INSERT doubled its time (30,000 samples: ~80 ms -> ~40 ms). Runs of each kind are written in
        # order, so of samples repeating a key the last one is still stored.
        epoch, micro, dumps = s.EPOCH, _MICROSECOND, _dumps
        raw = conn.connection.driver_connection
        assert raw is not None
        plain: list[tuple[Any, ...]] = []
        full: list[tuple[Any, ...]] = []
        for x in samples:
            if x.data is None and x.confidence is None and x.cost is None:
                if full:
                    raw.executemany(INSERT_SQL, full)
                    full = []
                plain.append((ids[x.series], (x.ts - epoch) // micro, x.value, int(x.quality)))
            else:
                if plain:
                    raw.executemany(INSERT_PLAIN_SQL, plain)
                    plain = []
                full.append(
                    (
                        ids[x.series],
                        (x.ts - epoch) // micro,
                        x.value,
                        None if x.data is None else dumps(x.data),
                        int(x.quality),
                        x.confidence,
                        x.cost,
                    )
                )
        if plain:
            raw.executemany(INSERT_PLAIN_SQL, plain)
        if full:
            raw.executemany(INSERT_SQL, full)

    def _read_range(self, series_id: int, start: datetime, end: datetime, limit: int | None, detail: bool) -> Readings:
        sql = DETAIL_SQL if detail else RANGE_SQL
        if limit is not None:
            sql = f"{sql} LIMIT {int(limit)}"
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            rows = raw.execute(sql, (series_id, _micros(start), _micros(end))).fetchall()
        return Readings(rows, _decode_detail if detail else _decode)

    def _bucket(
        self, interval: timedelta, origin: datetime, start: datetime
    ) -> tuple[sa.ColumnElement[Any], Callable[[Any], datetime]]:
        step = interval // _MICROSECOND
        base = _micros(origin)
        ts = sa.type_coerce(s.samples.c.ts, sa.BigInteger)
        key: sa.ColumnElement[Any] = (ts - base) // step  # integer division truncates toward zero: right from origin on
        if start < origin:
            key = sa.case((ts >= base, key), else_=-((base - ts + step - 1) // step))

        def to_time(bucket: Any) -> datetime:
            return s.EPOCH + timedelta(microseconds=base + int(bucket) * step)

        return key, to_time


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
