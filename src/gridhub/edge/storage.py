"""The Data Storage Application (LV-CAP Public API sections 7, 8.2.4, 8.4, 8.5 and 8.6).

Two layers:

- ``StorageDB`` is the database alone (SQLite, no MQTT): one table per Application Instance
  (Table 3: ID, Timestamp, SubTopic, Data) plus the effective Priority (4.9) and the upload
  queue state, an errors table, queries with the Table 16 keys and Table 18 statuses, the
  per-upload-app virtual queues of 8.5, purge by age and size quota, and an integrity check
  on open that moves a damaged file aside instead of crashing.
- ``StorageService`` connects it to the Data Marketplace: it stores algorithm/data messages
  with ``"ToStore": true``, everything on storage/data, the operator's ``store`` filters and the
  error reports of storage/data/error, and answers storage/request (8.6) and
  storage/request/newdata (8.5) and applies storage/uploaded notices.

Durability: the database runs in WAL mode with ``synchronous=FULL``, so a committed record
survives kill -9 and power loss, and the service uses a persistent MQTT session
(``clean_session=False``) with manual acknowledgement: a message is acknowledged to the broker
only after the transaction holding it has committed.

Schema (version 1, ``PRAGMA user_version``):

- ``"<IID>"``: ``ID INTEGER PRIMARY KEY AUTOINCREMENT`` (never re-used, so a stale ID held by an
  upload app cannot mark a newer record), ``Timestamp`` (unix seconds when stored), ``SubTopic``
  (NULL when none), ``Data`` (the payload bytes exactly as received), ``Priority`` (effective
  priority 1..6) and ``Pending`` (bit *n* set while upload app *n* has not confirmed the row).
  Indexes: ``(Timestamp)`` for time ranges, ordering and age purge; ``(Priority, Timestamp)``
  for priority queries; and the partial index ``(Timestamp) WHERE Pending != 0``, which holds
  only rows some upload app still waits for, so a newdata query walks the upload backlog in
  time order and never the rows already uploaded, however many there are.
- ``iid_tables`` (the per-IID tables), ``uploaders`` (upload app -> bit), ``upload_grants``
  (which upload app's bit is maintained in which table), ``errors`` (error reports and the
  manager's and storage's own errors).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridhub.edge.settings import (
    ConfigError,
    get_int,
    get_number,
    get_path,
    get_str_list,
    get_table,
    reject_unknown,
)
from gridhub.formats import lvcap
from gridhub.formats.lvcap import (
    DEFAULT_MAX_LENGTH,
    MAX_MAX_LENGTH,
    MAX_PAYLOAD_BYTES,
    NO_PRIORITY,
    Errno,
    ErrorReport,
    LvcapError,
    QueryResponse,
    QueryStatus,
    StorageQuery,
    TableResult,
    TableRow,
    UploadedNotice,
)
from gridhub.sdk.mqtt import BrokerAddress, MarketplaceClient, Message

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STORAGE_SOURCE = "gridhub-storage"  # Source IID of the errors the storage records about itself
ALL_TABLES = "*"
MAX_UPLOADERS = 62  # one bit each in a signed 64-bit Pending column
_DAY = 86_400
_FETCH_CHUNK = 500


class StorageError(RuntimeError):
    """The database cannot be used (e.g. written by a newer gridhub)."""


def _quote(name: str) -> str:
    """Quote an SQL identifier (table or index name)."""
    return '"' + name.replace('"', '""') + '"'


def _now() -> int:
    return int(time.time())


# -- settings ----------------------------------------------------------------------------


def _iid_grants(data: Mapping[str, Any], key: str, where: str) -> dict[str, tuple[str, ...]]:
    table = get_table(data, key, where)
    grants: dict[str, tuple[str, ...]] = {}
    for iid, tables in table.items():
        place = f"{where} {key}.{iid}"
        try:
            lvcap.validate_iid(iid)
        except LvcapError as exc:
            raise ConfigError(f"{place}: not an Instance ID: {exc}") from None
        if not isinstance(tables, list) or not all(isinstance(item, str) for item in tables):
            raise ConfigError(f'{place}: expected a list of Instance IDs or "*", got {tables!r}')
        for item in tables:
            if item == ALL_TABLES:
                continue
            try:
                lvcap.validate_iid(item)
            except LvcapError as exc:
                raise ConfigError(f'{place}: {item!r} is neither "*" nor an Instance ID: {exc}') from None
        grants[iid] = tuple(dict.fromkeys(tables))
    return grants


def _topic_filters(data: Mapping[str, Any], key: str, default: list[str], where: str) -> tuple[str, ...]:
    filters = get_str_list(data, key, default, where)
    for item in filters:
        try:
            lvcap.validate_topic_filter(item, where=f"{where} {key}")
        except LvcapError as exc:
            raise ConfigError(str(exc)) from None
    return tuple(filters)


@dataclass(frozen=True)
class StorageSettings:
    """The ``[storage]`` section of the edge configuration."""

    database: Path = Path("storage.sqlite")
    max_length: int = DEFAULT_MAX_LENGTH  # largest MaxLength accepted (8.5.1), 1..15000
    max_age_days: float = 0.0  # 0 = no age limit for queries and purge
    quota_mb: float = 1024.0
    purge_interval: float = 60.0
    store: tuple[str, ...] = ("sensor/data/+/#",)  # stored regardless of ToStore
    refuse: tuple[str, ...] = ()  # never stored
    upload: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # upload app IID -> tables ("*" = all)
    read: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # app IID -> other tables it may read

    KEYS = ("database", "max_length", "max_age_days", "quota_mb", "purge_interval", "store", "refuse", "upload", "read")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str, base_dir: Path) -> StorageSettings:
        """Read and check the ``[storage]`` table; relative paths are taken from base_dir."""
        reject_unknown(data, cls.KEYS, where)
        settings = cls(
            database=get_path(data, "database", "storage.sqlite", where, base_dir),
            max_length=get_int(data, "max_length", DEFAULT_MAX_LENGTH, where, minimum=1, maximum=MAX_MAX_LENGTH),
            max_age_days=get_number(data, "max_age_days", 0, where, minimum=0),
            quota_mb=get_number(data, "quota_mb", 1024, where, minimum=0.001),
            purge_interval=get_number(data, "purge_interval", 60.0, where, minimum=0.01),
            store=_topic_filters(data, "store", ["sensor/data/+/#"], where),
            refuse=_topic_filters(data, "refuse", [], where),
            upload=_iid_grants(data, "upload", where),
            read=_iid_grants(data, "read", where),
        )
        if len(settings.upload) > MAX_UPLOADERS:
            raise ConfigError(f"{where} upload: at most {MAX_UPLOADERS} upload apps, got {len(settings.upload)}")
        return settings

    def readable_tables(self, iid: str) -> tuple[str, ...]:
        """Tables the app may read with storage/request: its own and those in [storage.read]."""
        return (iid, *self.read.get(iid, ()))


# -- database ----------------------------------------------------------------------------

_Row = tuple[int, int, str, bytes]  # ID, Timestamp, SubTopic in response form, Data as stored


def _encode_response(status: int, groups: Sequence[tuple[str, Sequence[_Row]]]) -> bytes:
    """Encode a query response (Table 17) exactly as ``QueryResponse.encode`` does, only faster.

    Building validated TableRow objects re-parses every stored payload; the stored Data was
    checked to be a JSON object when it was stored, so here it is spliced in as it is.
    """
    tables = []
    for table, rows in groups:
        encoded = b",".join(
            b'{"ID":%d,"Timestamp":%d,"SubTopic":%s,"Data":%s}' % (record_id, ts, json.dumps(sub).encode(), data)
            for record_id, ts, sub, data in rows
        )
        tables.append(b'{"TableName":%s,"TableRows":[%s]}' % (json.dumps(table).encode(), encoded))
    return b'{"Status":%d,"Response":[%s]}' % (int(status), b",".join(tables))


@dataclass(frozen=True, slots=True)
class StoreRecord:
    """One message to store in the table of ``iid``."""

    iid: str
    sub_topic: str | None
    data: bytes
    priority: int = NO_PRIORITY
    timestamp: int | None = None  # when stored; now when None


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One error to store in the errors table."""

    source_iid: str
    errno: int
    message: str | None
    reported: int | None = None  # the Timestamp the reporter gave, if any
    timestamp: int | None = None  # when stored; now when None


@dataclass(frozen=True)
class StoredError:
    """A row of the errors table."""

    id: int
    timestamp: int
    source_iid: str
    errno: int
    message: str | None
    reported: int | None


@dataclass(frozen=True)
class PurgeResult:
    """What one purge deleted."""

    expired: int  # records older than max_age_days
    over_quota: int  # records deleted to bring the file under quota_mb
    not_uploaded: int  # of those over quota, records some upload app had not confirmed


def _can_upload(grants: tuple[str, ...], table: str) -> bool:
    return ALL_TABLES in grants or table in grants


def check_record(record: StoreRecord, where: str = "record") -> None:
    """Raise ValueError unless ``record`` can be stored: valid IID, priority, sub-topic, JSON object Data."""
    try:
        lvcap.validate_iid(record.iid)
    except LvcapError as exc:
        raise ValueError(f"{where}: table name: {exc}") from None
    if not 1 <= record.priority <= NO_PRIORITY:
        raise ValueError(f"{where}: priority must be 1..{NO_PRIORITY}, got {record.priority!r}")
    check_destination(record.iid, record.sub_topic, where)
    try:
        # Queries splice Data into their responses unparsed: it must be a JSON object.
        lvcap.decode_json_object(record.data, where=f"{where} data")
    except LvcapError as exc:
        raise ValueError(str(exc)) from None


def check_destination(iid: str, sub_topic: str | None, where: str = "record") -> None:
    """Raise ValueError unless ``iid`` names a table and ``sub_topic`` is None or a valid topic."""
    try:
        lvcap.validate_iid(iid)
    except LvcapError as exc:
        raise ValueError(f"{where}: table name: {exc}") from None
    if sub_topic == "":
        raise ValueError(f"{where}: sub-topic must be None (not '') when there is none")
    if sub_topic is not None:
        try:
            lvcap.validate_topic(sub_topic, where=f"{where} sub-topic")
        except LvcapError as exc:
            raise ValueError(str(exc)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every message: json.loads(text, parse_constant=...) builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _errno_for(payload: bytes) -> Errno:
    """Return the Errno for a data payload that is not a JSON object (Table 11).

    Not JSON at all: ERRNO_JSON_INVALID ("failed to parse"). Valid JSON of the wrong shape (an
    array, a number; section 9: every message is a JSON object): ERRNO_SENSOR, Table 11's errno
    for a data payload that is valid JSON with the wrong types.
    """
    try:
        _DECODER.decode(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return Errno.JSON_INVALID
    return Errno.SENSOR


def _decode_object(payload: bytes, where: str) -> dict[str, Any]:
    """``lvcap.decode_json_object`` with a fast path for the common case of a valid object.

    Whatever the fast path does not accept (not UTF-8, not JSON, NaN, too deep, not an object)
    goes to ``lvcap.decode_json_object``, which refuses it with its own message.
    """
    try:
        data = _DECODER.decode(payload.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        data = None
    if type(data) is dict:
        return data
    return lvcap.decode_json_object(payload, where=where)


# The storage subscribes to the QoS 2 topics (storage/data, Table 19; newdata requests, Table 15)
# at QoS 1, so the broker delivers them to it at QoS 1 (publishers still get exactly-once to the
# broker). paho-mqtt answers a QoS 2 PUBLISH with PUBREC at once, before the commit, and the broker
# never resends a message after PUBREC: a kill -9 would lose those in flight. Worse, with manual
# acknowledgement paho never answers a PUBREL it does not know (one resent after a reconnect), so
# each such message would hold one of the broker's in-flight slots for the session for good, and
# the storage would starve once all were held. At QoS 1 the PUBACK follows the commit: nothing is
# lost; a message committed just before a kill -9 (or a disconnect) can be delivered twice.
_QOS_ACK_AFTER_COMMIT = 1

_INSERT_ERROR = "INSERT INTO errors (Timestamp, SourceIID, Errno, Message, Reported) VALUES (?, ?, ?, ?, ?)"


def _id_runs(ids: Iterable[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Split IDs into runs of consecutive values (first, last; two or more IDs) and IDs that stand alone."""
    runs: list[tuple[int, int]] = []
    single: list[int] = []
    ordered = sorted(set(ids))
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            if i - start > 1:
                runs.append((ordered[start], ordered[i - 1]))
            else:
                single.append(ordered[start])
            start = i
    return runs, single


def _error_row(record: ErrorRecord, now: int) -> tuple[int, str, int, str | None, int | None]:
    return (
        now if record.timestamp is None else record.timestamp,
        record.source_iid,
        record.errno,
        record.message,
        record.reported,
    )


class StorageDB:
    """The storage database: per-IID tables, errors, upload queues, queries and purge.

    Thread-safe: writes are serialised on one connection, queries run on a second one
    (WAL lets them read while a write commits).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        max_age_days: float = 0.0,
        quota_mb: float = 1024.0,
        upload: Mapping[str, Sequence[str]] | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.path = Path(path)
        self.max_length = max_length
        self.max_age_days = max_age_days
        self.quota_bytes = int(quota_mb * 1024 * 1024)
        self.max_payload_bytes = max_payload_bytes
        self.upload: dict[str, tuple[str, ...]] = {iid: tuple(tables) for iid, tables in (upload or {}).items()}
        if len(self.upload) > MAX_UPLOADERS:
            raise StorageError(f"at most {MAX_UPLOADERS} upload apps are supported, got {len(self.upload)}")
        self._write_lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._tables: set[str] = set()
        self._masks: dict[str, int] = {}  # table -> bits of the upload apps granted on it
        self._staged: dict[str, int] = {}  # tables created by the open transaction, with their masks
        self._bits: dict[str, int] = {}  # upload app -> its bit value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        quarantined = self._check_integrity()
        self._conn = self._connect()
        self._reader = self._connect()
        self._reader.execute("PRAGMA query_only = ON")
        self._init_schema()
        self._sync_uploaders()
        if quarantined is not None:
            self.store_error(
                STORAGE_SOURCE, Errno.IO, f"database {self.path} was damaged; moved aside to {quarantined}"
            )

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> StorageDB:
        """Open the database the settings name."""
        return cls(
            settings.database,
            max_length=settings.max_length,
            max_age_days=settings.max_age_days,
            quota_mb=settings.quota_mb,
            upload=settings.upload,
        )

    # -- opening -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: the WAL is synced at every commit, so a stored record survives power loss.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA cache_size = -16384")
        return conn

    def _check_integrity(self) -> Path | None:
        """Run ``PRAGMA quick_check``; move a damaged file aside. Return where it went."""
        if not self.path.exists():
            return None
        problem: str | None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            try:
                rows = conn.execute("PRAGMA quick_check").fetchall()
                problem = None if rows == [("ok",)] else "; ".join(str(row[0]) for row in rows[:5])
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            problem = str(exc)
        if problem is None:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        counter = 1
        while target.exists():
            counter += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{counter}")
        os.replace(self.path, target)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                if suffix == "-wal":
                    os.replace(side, Path(f"{target}{suffix}"))
                else:
                    side.unlink()
        log.error(
            "storage database %s failed its integrity check (%s); moved it to %s and started afresh",
            self.path,
            problem,
            target,
        )
        return target

    def _init_schema(self) -> None:
        with self._write_lock:
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path}: schema version {version} was written by a newer gridhub (this one knows "
                    f"{SCHEMA_VERSION}); refusing to downgrade"
                )
            with self._transaction():
                for statement in _BASE_SCHEMA:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._tables = {row[0] for row in self._conn.execute("SELECT name FROM iid_tables")}

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Run the block in one IMMEDIATE transaction on the write connection."""
        with self._write_lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                self._staged.clear()
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            # Tables created in the transaction become visible to queries only once committed.
            if self._staged:  # copy-on-write: queries read these without taking the write lock
                self._masks = {**self._masks, **self._staged}
                self._tables = self._tables | self._staged.keys()
                self._staged.clear()

    def _sync_uploaders(self) -> None:
        """Make the Pending bits match the configured upload apps and their tables."""
        with self._transaction():
            known = dict(self._conn.execute("SELECT name, bit FROM uploaders").fetchall())
            for name, bit in known.items():
                if name not in self.upload:
                    log.info("upload app %s is no longer configured: dropping its upload queue", name)
                    for table in self._tables:
                        self._conn.execute(
                            f"UPDATE {_quote(table)} SET Pending = Pending & ~? WHERE Pending & ?", (bit, bit)
                        )
                    self._conn.execute("DELETE FROM upload_grants WHERE uploader = ?", (name,))
                    self._conn.execute("DELETE FROM uploaders WHERE name = ?", (name,))
            used = {bit for name, bit in known.items() if name in self.upload}
            for name in self.upload:
                if name in known:
                    self._bits[name] = known[name]
                    continue
                bit = next(1 << n for n in range(MAX_UPLOADERS) if (1 << n) not in used)
                used.add(bit)
                self._conn.execute("INSERT INTO uploaders (name, bit) VALUES (?, ?)", (name, bit))
                self._bits[name] = bit
            grants = set(self._conn.execute("SELECT uploader, tbl FROM upload_grants").fetchall())
            for table in self._tables:
                for name, bit in self._bits.items():
                    wanted = _can_upload(self.upload[name], table)
                    if wanted and (name, table) not in grants:
                        # A newly granted table: everything already stored in it is queued for upload.
                        self._conn.execute(f"UPDATE {_quote(table)} SET Pending = Pending | ?", (bit,))
                        self._conn.execute("INSERT INTO upload_grants (uploader, tbl) VALUES (?, ?)", (name, table))
                    elif not wanted and (name, table) in grants:
                        self._conn.execute(
                            f"UPDATE {_quote(table)} SET Pending = Pending & ~? WHERE Pending & ?", (bit, bit)
                        )
                        self._conn.execute("DELETE FROM upload_grants WHERE uploader = ? AND tbl = ?", (name, table))
            self._masks = {table: self._mask_for(table) for table in self._tables}

    def _mask_for(self, table: str) -> int:
        mask = 0
        for name, bit in self._bits.items():
            if _can_upload(self.upload[name], table):
                mask |= bit
        return mask

    def close(self) -> None:
        """Close both connections (committed data is already on disk)."""
        with self._write_lock, self._read_lock:
            self._reader.close()
            self._conn.close()

    # -- tables --------------------------------------------------------------------------

    def tables(self) -> list[str]:
        """Names (IIDs) of the per-application tables, sorted."""
        return sorted(self._tables)

    def create_table(self, iid: str) -> None:
        """Create the table of an Application Instance (section 7) if it does not exist yet."""
        lvcap.validate_iid(iid)
        with self._transaction():
            self._ensure_table(iid)

    def _ensure_table(self, iid: str) -> None:
        if iid in self._tables or iid in self._staged:
            return
        table = _quote(iid)
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "ID INTEGER PRIMARY KEY AUTOINCREMENT, Timestamp INTEGER NOT NULL, SubTopic TEXT, "
            "Data BLOB NOT NULL, Priority INTEGER NOT NULL, Pending INTEGER NOT NULL DEFAULT 0)"
        )
        self._conn.execute(f"CREATE INDEX IF NOT EXISTS {_quote(iid + '.ts')} ON {table} (Timestamp)")
        self._conn.execute(f"CREATE INDEX IF NOT EXISTS {_quote(iid + '.prio')} ON {table} (Priority, Timestamp)")
        self._conn.execute(
            f"CREATE INDEX IF NOT EXISTS {_quote(iid + '.pending')} ON {table} (Timestamp) WHERE Pending != 0"
        )
        self._conn.execute("INSERT OR IGNORE INTO iid_tables (name, created) VALUES (?, ?)", (iid, _now()))
        for name in self._bits:
            if _can_upload(self.upload[name], iid):
                self._conn.execute("INSERT OR IGNORE INTO upload_grants (uploader, tbl) VALUES (?, ?)", (name, iid))
        self._staged[iid] = self._mask_for(iid)

    # -- writing -------------------------------------------------------------------------

    def store(
        self, iid: str, sub_topic: str | None, data: bytes, priority: int = NO_PRIORITY, *, timestamp: int | None = None
    ) -> int:
        """Store one message in the table of ``iid``; return its ID."""
        ids = self.write_batch([StoreRecord(iid, sub_topic, data, priority, timestamp)])
        return ids[0]

    def store_error(
        self,
        source_iid: str,
        errno: int,
        message: str | None,
        *,
        reported: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Store one error record (an error report, a manager error or the storage's own)."""
        self.write_batch([ErrorRecord(source_iid, int(errno), message, reported, timestamp)])

    def write_batch(self, records: Sequence[StoreRecord | ErrorRecord]) -> list[int]:
        """Store several records in one transaction; return the IDs of the StoreRecords in order.

        Nothing is stored when any record is invalid (the error says which).
        """
        for index, record in enumerate(records):
            if isinstance(record, StoreRecord):
                check_record(record, f"record {index}")
        ids: list[int] = []
        now = _now()
        with self._transaction():
            for record in records:
                if isinstance(record, StoreRecord):
                    self._ensure_table(record.iid)
                    cursor = self._conn.execute(
                        f"INSERT INTO {_quote(record.iid)} (Timestamp, SubTopic, Data, Priority, Pending) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (
                            now if record.timestamp is None else record.timestamp,
                            record.sub_topic,
                            sqlite3.Binary(record.data),
                            record.priority,
                            self._masks[record.iid] if record.iid in self._masks else self._staged[record.iid],
                        ),
                    )
                    assert cursor.lastrowid is not None
                    ids.append(cursor.lastrowid)
                else:
                    self._conn.execute(_INSERT_ERROR, _error_row(record, now))
        return ids

    def write_checked(self, records: Sequence[StoreRecord | ErrorRecord]) -> None:
        """Store records that already passed ``check_record``, in one transaction.

        The Data Storage Application's path: it checks each record as the message arrives
        (with what it knows of the topic cached), so the writer does not parse every payload
        again. The rows of one table go in with one ``executemany``, in the order given; no IDs
        are returned.
        """
        now = _now()
        rows: dict[str, list[tuple[int, str | None, bytes, int, int]]] = {}
        errors: list[tuple[int, str, int, str | None, int | None]] = []
        with self._transaction():
            for record in records:
                if isinstance(record, StoreRecord):
                    table_rows = rows.get(record.iid)
                    if table_rows is None:
                        self._ensure_table(record.iid)
                        table_rows = rows[record.iid] = []
                    table_rows.append(
                        (
                            now if record.timestamp is None else record.timestamp,
                            record.sub_topic,
                            record.data,
                            record.priority,
                            0,
                        )
                    )
                else:
                    errors.append(_error_row(record, now))
            for iid, table_rows in rows.items():
                mask = self._masks[iid] if iid in self._masks else self._staged[iid]
                if mask:
                    table_rows = [(ts, sub, data, prio, mask) for ts, sub, data, prio, _ in table_rows]
                self._conn.executemany(
                    f"INSERT INTO {_quote(iid)} (Timestamp, SubTopic, Data, Priority, Pending) VALUES (?, ?, ?, ?, ?)",
                    table_rows,
                )
            if errors:
                self._conn.executemany(_INSERT_ERROR, errors)

    def mark_uploaded(self, uploader: str, notice: UploadedNotice) -> int:
        """Remove the listed records from ``uploader``'s queue (8.5 storage/uploaded); return how many."""
        bit = self._bits.get(uploader)
        if bit is None:
            log.warning("uploaded notice from %s, which is not a configured upload app: ignored", uploader)
            return 0
        marked = 0
        with self._transaction():
            for table, ids in notice.new_data:
                if table not in self._tables or not self._masks.get(table, 0) & bit:
                    log.warning(
                        "uploaded notice from %s names table %s, which it may not upload: ignored", uploader, table
                    )
                    continue
                # One statement per run of consecutive IDs instead of one per ID: an uploader's batch is
                # mostly a few long runs (15,000 IDs: ~40 ms -> ~20 ms with the commit); IDs that stand alone (a
                # priority-first drain) go together in IN lists.
                runs, single = _id_runs(ids)
                sql = f"UPDATE {_quote(table)} SET Pending = Pending & ~? WHERE ID BETWEEN ? AND ? AND Pending & ?"
                for first, last in runs:
                    marked += self._conn.execute(sql, (bit, first, last, bit)).rowcount
                for offset in range(0, len(single), _FETCH_CHUNK):
                    chunk = single[offset : offset + _FETCH_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    sql = f"UPDATE {_quote(table)} SET Pending = Pending & ~? WHERE ID IN ({marks}) AND Pending & ?"
                    marked += self._conn.execute(sql, (bit, *chunk, bit)).rowcount
        return marked

    # -- reading -------------------------------------------------------------------------

    def errors(self, limit: int = 100) -> list[StoredError]:
        """The newest ``limit`` error records, newest first."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT ID, Timestamp, SourceIID, Errno, Message, Reported FROM errors ORDER BY ID DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [StoredError(*row) for row in rows]

    def count(self, iid: str) -> int:
        """Number of records in the table of ``iid`` (0 when there is none)."""
        if iid not in self._tables:
            return 0
        with self._read_lock:
            return int(self._reader.execute(f"SELECT count(*) FROM {_quote(iid)}").fetchone()[0])

    def query(
        self,
        requester_iid: str,
        request: StorageQuery,
        allowed_tables: Iterable[str],
        *,
        for_upload: str | None = None,
        now: int | None = None,
    ) -> QueryResponse:
        """Answer a storage query (Tables 16-18); never raises.

        ``allowed_tables`` are the tables the requester may see ("*" = all); for a plain query
        (``for_upload`` None) its own table is always allowed. With ``for_upload`` set to an
        upload app's IID only records that app has not yet confirmed are returned (its virtual
        queue, 8.5). The query never modifies the database, so repeating it returns the same data.
        StartTime/EndTime select ``StartTime <= Timestamp < EndTime``.
        """
        response = self._answer(requester_iid, request, allowed_tables, for_upload, now, True)[0]
        assert response is not None
        return response

    def query_payload(
        self,
        requester_iid: str,
        request: StorageQuery,
        allowed_tables: Iterable[str],
        *,
        for_upload: str | None = None,
        now: int | None = None,
    ) -> bytes:
        """Answer a storage query like ``query``, as the encoded response payload."""
        return self._answer(requester_iid, request, allowed_tables, for_upload, now, False)[1]

    def _answer(
        self,
        requester: str,
        request: StorageQuery,
        allowed_tables: Iterable[str],
        for_upload: str | None,
        now: int | None,
        want_object: bool,
    ) -> tuple[QueryResponse | None, bytes]:
        try:
            status, groups = self._query(
                requester, request, set(allowed_tables), for_upload, _now() if now is None else now
            )
            payload = _encode_response(status, groups)
            if len(payload) > self.max_payload_bytes:
                status, groups = QueryStatus.TOO_BIG, []
                payload = _encode_response(status, groups)
            if not want_object:
                return None, payload
            return (
                QueryResponse(
                    status,
                    [
                        TableResult(
                            table_name=table,
                            rows=[
                                TableRow(id=i, timestamp=ts, sub_topic=sub, data_raw=data) for i, ts, sub, data in rows
                            ],
                        )
                        for table, rows in groups
                    ],
                ),
                payload,
            )
        except Exception:
            log.exception("storage query from %s failed unexpectedly; answering UNAVAILABLE", requester)
            response = QueryResponse(QueryStatus.UNAVAILABLE, [])
            return response, response.encode()

    def _query(
        self, requester: str, request: StorageQuery, allowed: set[str], for_upload: str | None, now: int
    ) -> tuple[QueryStatus, list[tuple[str, list[_Row]]]]:
        def fail(status: QueryStatus) -> tuple[QueryStatus, list[tuple[str, list[_Row]]]]:
            return status, []

        max_length = DEFAULT_MAX_LENGTH if request.max_length is None else request.max_length
        if max_length < 1:
            return fail(QueryStatus.INVALID)
        if max_length > self.max_length:
            return fail(QueryStatus.TOO_LONG)
        for value in (request.min_priority, request.max_priority):
            if value is not None and not 1 <= value <= NO_PRIORITY:
                return fail(QueryStatus.INVALID)
        start = request.start_time
        if self.max_age_days > 0:
            oldest = now - int(self.max_age_days * _DAY)
            if start is not None and start < oldest:
                return fail(QueryStatus.TOO_OLD)
            if start is None:
                start = oldest
        bit = 0
        if for_upload is None:
            allowed.add(requester)
        else:
            bit = self._bits.get(for_upload, 0)
            if not bit:
                return fail(QueryStatus.TABLE_DENIED)
        existing, masks = self._tables, self._masks
        everything = ALL_TABLES in allowed
        if request.instance_id:
            if not (everything or request.instance_id in allowed):
                return fail(QueryStatus.TABLE_DENIED)
            candidates = [request.instance_id] if request.instance_id in existing else []
        else:
            candidates = sorted(existing if everything else existing & allowed)
        if bit:
            candidates = [table for table in candidates if masks.get(table, 0) & bit]

        conditions: list[str] = []
        params: list[Any] = []
        if bit:
            conditions.append("Pending != 0 AND (Pending & ?) != 0")
            params.append(bit)
        if start is not None:
            conditions.append("Timestamp >= ?")
            params.append(start)
        if request.end_time is not None:
            conditions.append("Timestamp < ?")
            params.append(request.end_time)
        if request.sub_topic is not None:
            sub_topic = request.sub_topic.removeprefix("/")
            if sub_topic:
                conditions.append("SubTopic = ?")
                params.append(sub_topic)
            else:
                conditions.append("SubTopic IS NULL")
        if request.min_priority is not None:
            conditions.append("Priority >= ?")
            params.append(request.min_priority)
        if request.max_priority == NO_PRIORITY:
            conditions.append("Priority = ?")
            params.append(NO_PRIORITY)
        elif request.max_priority is not None:
            conditions.append("Priority <= ?")
            params.append(request.max_priority)
        where = " AND ".join(conditions) or "1"
        order = "ASC" if request.prefer_oldest else "DESC"
        want = max_length + 1

        with self._read_lock:
            self._reader.execute("BEGIN")
            try:
                if len(candidates) == 1:
                    table = candidates[0]
                    rows = self._reader.execute(
                        f"SELECT ID, Timestamp, SubTopic, Data FROM {self._source(table, bit)} WHERE {where} "
                        f"ORDER BY Timestamp {order}, ID {order} LIMIT ?",
                        (*params, want),
                    ).fetchall()
                    chosen = [(table, row) for row in rows]
                else:
                    chosen = self._merge_tables(candidates, bit, where, params, order, want, request.prefer_oldest)
            finally:
                self._reader.execute("COMMIT")
        if not chosen:
            return fail(QueryStatus.EMPTY)
        more = len(chosen) > max_length
        grouped: dict[str, list[_Row]] = {}
        for table, (record_id, ts, sub, data) in chosen[:max_length]:
            grouped.setdefault(table, []).append(
                (record_id, ts, "/" + (sub or ""), data if isinstance(data, bytes) else str(data).encode())
            )
        return (QueryStatus.MORE if more else QueryStatus.OK), list(grouped.items())

    @staticmethod
    def _source(table: str, bit: int) -> str:
        """The table, forced onto its pending index for a newdata query (walk the backlog only)."""
        return _quote(table) + (f" INDEXED BY {_quote(table + '.pending')}" if bit else "")

    def _merge_tables(
        self,
        tables: list[str],
        bit: int,
        where: str,
        params: list[Any],
        order: str,
        want: int,
        oldest: bool,
    ) -> list[tuple[str, tuple[int, int, str | None, bytes]]]:
        """The first ``want`` matches over several tables, in time order (call with the read lock)."""
        # Phase 1: the keys of the first `want` matches of each table, merged in time order.
        keyed: list[tuple[int, int, str]] = []
        for table in tables:
            rows = self._reader.execute(
                f"SELECT Timestamp, ID FROM {self._source(table, bit)} WHERE {where} "
                f"ORDER BY Timestamp {order}, ID {order} LIMIT ?",
                (*params, want),
            ).fetchall()
            keyed.extend((ts, record_id, table) for ts, record_id in rows)
        merged = heapq.nsmallest(want, keyed) if oldest else heapq.nlargest(want, keyed)
        # Phase 2: fetch the records chosen. Those of one table are the first of its matches in the
        # same order (a merge takes a prefix of each input), so one query per table, with the same
        # WHERE and ORDER BY and a LIMIT of its count, fetches them in order. It runs in the read
        # transaction of phase 1, on the same data. (Fetching by IN lists of 500 IDs: ~10 % slower.)
        counts: dict[str, int] = {}
        for _, _, table in merged:
            counts[table] = counts.get(table, 0) + 1
        fetched: dict[str, Iterator[tuple[int, int, str | None, bytes]]] = {}
        for table, count in counts.items():
            fetched[table] = iter(
                self._reader.execute(
                    f"SELECT ID, Timestamp, SubTopic, Data FROM {self._source(table, bit)} WHERE {where} "
                    f"ORDER BY Timestamp {order}, ID {order} LIMIT ?",
                    (*params, count),
                ).fetchall()
            )
        chosen: list[tuple[str, tuple[int, int, str | None, bytes]]] = []
        for _, record_id, table in merged:
            row = next(fetched[table])
            if row[0] != record_id:  # not possible within one read transaction: never answer other rows
                raise StorageError(f"table {table}: record {row[0]} read where {record_id} was chosen")
            chosen.append((table, row))
        return chosen

    # -- purge ---------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes of the database in use (pages minus free pages)."""
        with self._write_lock:
            page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
            pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
            free = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * page_size

    def purge(self, now: int | None = None) -> PurgeResult:
        """Delete records older than max_age_days, then the oldest until under quota_mb.

        When the quota forces deleting records not yet confirmed by every upload app allowed
        to upload them, an error record says how many.
        """
        now = _now() if now is None else now
        expired = 0
        if self.max_age_days > 0:
            cutoff = now - int(self.max_age_days * _DAY)
            with self._transaction():
                for table in sorted(self._tables):
                    expired += self._conn.execute(
                        f"DELETE FROM {_quote(table)} WHERE Timestamp < ?", (cutoff,)
                    ).rowcount
                self._conn.execute("DELETE FROM errors WHERE Timestamp < ?", (cutoff,))
            if expired:
                log.info("purged %d records older than %g days", expired, self.max_age_days)
        over_quota, not_uploaded = self._purge_quota()
        if over_quota:
            log.warning(
                "storage quota of %s bytes reached: deleted the %d oldest records", self.quota_bytes, over_quota
            )
        if not_uploaded:
            message = (
                f"storage quota of {self.quota_bytes / 1048576:g} MB reached: deleted {not_uploaded} records not "
                f"yet confirmed by every upload app ({over_quota} records deleted in all)"
            )
            log.error("%s", message)
            self.store_error(STORAGE_SOURCE, Errno.IO, message)
        return PurgeResult(expired, over_quota, not_uploaded)

    def _purge_quota(self) -> tuple[int, int]:
        deleted = 0
        not_uploaded = 0
        with self._write_lock:
            while True:
                excess = self.used_bytes() - self.quota_bytes
                if excess <= 0 or not self._tables:
                    break
                candidates: list[tuple[int, int, str, int, int]] = []
                for table in self._tables:
                    rows = self._conn.execute(
                        "SELECT Timestamp, ID, Pending, length(Data) + ifnull(length(SubTopic), 0) "
                        f"FROM {_quote(table)} ORDER BY Timestamp, ID LIMIT ?",
                        (_FETCH_CHUNK,),
                    ).fetchall()
                    candidates.extend((ts, rid, table, pending, size or 0) for ts, rid, pending, size in rows)
                if not candidates:
                    log.warning("storage database over quota but holds no records to delete")
                    break
                candidates.sort()
                victims: list[tuple[str, int]] = []
                freed = 0
                for _, rid, table, pending, size in candidates:
                    victims.append((table, rid))
                    freed += size + 64
                    if pending & self._masks.get(table, 0):
                        not_uploaded += 1
                    if freed >= excess:
                        break
                with self._transaction():
                    for table, rid in victims:
                        self._conn.execute(f"DELETE FROM {_quote(table)} WHERE ID = ?", (rid,))
                deleted += len(victims)
        return deleted, not_uploaded


_BASE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS iid_tables (name TEXT PRIMARY KEY, created INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS uploaders (name TEXT PRIMARY KEY, bit INTEGER NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS upload_grants (uploader TEXT NOT NULL, tbl TEXT NOT NULL, "
    "PRIMARY KEY (uploader, tbl)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS errors (ID INTEGER PRIMARY KEY AUTOINCREMENT, Timestamp INTEGER NOT NULL, "
    "SourceIID TEXT NOT NULL, Errno INTEGER NOT NULL, Message TEXT, Reported INTEGER)",
    "CREATE INDEX IF NOT EXISTS errors_ts ON errors (Timestamp)",
)


# -- service -----------------------------------------------------------------------------


def storage_client(address: BrokerAddress, client_id: str = "gridhub-storage") -> MarketplaceClient:
    """Build the marketplace client the storage service needs.

    ``clean_session=False`` keeps the session (subscriptions and unacknowledged QoS 1/2 messages)
    at the broker while the service is down, and ``defer_ack=True`` leaves each message
    unacknowledged until the service calls ``message.ack()``, which the writer does only after
    the transaction holding its record has committed.
    """
    return MarketplaceClient(client_id, address, clean_session=False, defer_ack=True)


class _Job:
    """A record for the writer, with the message's ack or (for a caller who waits) an Event."""

    __slots__ = ("ack", "checked", "done", "record")

    def __init__(
        self,
        record: StoreRecord | ErrorRecord,
        ack: Callable[[], None] | None = None,
        *,
        checked: bool = False,
        wait: bool = False,
    ) -> None:
        self.record = record
        self.ack = ack
        self.checked = checked  # a StoreRecord that already passed check_record
        self.done = threading.Event() if wait else None


@dataclass(frozen=True, slots=True)
class _DataTopic:
    """What the topic of a data message decides, worked out once per topic (cached)."""

    store: bool  # False: refused, or not a data topic at all
    explicit: bool  # stored whatever ToStore says (storage/data/... or a [storage] store filter)
    iid: str
    sub_topic: str | None
    invalid: str | None  # why a record for this topic cannot be stored, if it cannot


_STOP = None
_WRITE_RETRIES = (0.1, 0.5, 2.0)
_MAX_BATCH = 1000
# Bounded: the writer's queue holds at most this many hand-overs, each of at most _MAX_GATHER
# jobs; a full queue holds the dispatcher, whose full inbox holds the network thread and so the
# broker (which keeps the messages: none is acknowledged before its commit).
_MAX_PENDING_BATCHES = 40  # x _MAX_GATHER: at most ~20,000 jobs, as the single-job queue allowed
_MAX_GATHER = 512
_GROW_BELOW = 50  # a hand-over smaller than this makes the writer wait _GROW_WAIT for more
_GROW_WAIT = 0.002  # at most, in steps of _GROW_STEP
_GROW_STEP = 0.0005
_MAX_TOPICS = 10_000  # data topics whose analysis is cached (cleared whole when full)


class StorageService:
    """The Data Storage Application on the marketplace (sections 7, 8.2.4, 8.4, 8.5, 8.6).

    Give it a client made by ``storage_client`` (persistent session, manual acknowledgement):
    every message that leads to a write is acknowledged only after that write has committed.
    Writes go through one writer thread that commits whatever is waiting together in one
    transaction (a batch), and that also runs the periodic purge.
    """

    def __init__(self, settings: StorageSettings, db: StorageDB, client: MarketplaceClient) -> None:
        self.settings = settings
        self.db = db
        self.client = client
        self._jobs: queue.Queue[list[_Job] | None] = queue.Queue(maxsize=_MAX_PENDING_BATCHES)
        self._gathered: list[_Job] = []  # jobs of the dispatcher's current run of messages
        self._topics: dict[str, _DataTopic] = {}
        self._owners: dict[str, str | None] = {}  # topic -> the first listed filter matching it
        self._writer: threading.Thread | None = None
        self._stopping = False
        self._filters: list[tuple[str, int]] = [
            ("algorithm/data/#", lvcap.QOS_ALGORITHM),
            ("storage/data/#", _QOS_ACK_AFTER_COMMIT),
            ("storage/data/error/+", lvcap.QOS_ERROR),
            ("storage/request/+", lvcap.QOS_STORAGE_REQUEST),
            ("storage/request/newdata/+", _QOS_ACK_AFTER_COMMIT),
            ("storage/uploaded/+", lvcap.QOS_UPLOADED),
        ]
        for topic_filter in settings.store:
            if all(topic_filter != known for known, _ in self._filters):
                self._filters.append((topic_filter, lvcap.QOS_SENSOR))

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the writer, subscribe to the storage topics and connect."""
        self._stopping = False
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="storage-writer", daemon=True)
            self._writer.start()
        self.client.set_after_batch(self._flush)
        for topic_filter, qos in self._filters:
            self.client.subscribe(topic_filter, qos, self._handler_for(topic_filter), timeout)
        self.client.start(timeout)
        log.info("data storage application started on %s", self.db.path)

    def stop(self) -> None:
        """Disconnect, then finish the pending writes (the database stays open)."""
        self._stopping = True
        self.client.stop()
        self._flush()
        writer = self._writer
        if writer is not None:
            self._jobs.put(_STOP)
            writer.join(timeout=30)
            self._writer = None

    def record_error(self, source_iid: str, errno: int, message: str | None) -> None:
        """Store an error record (the manager's errors, e.g. an app stopped for good)."""
        self._submit(ErrorRecord(source_iid, int(errno), message))

    # -- writer --------------------------------------------------------------------------

    def _submit(
        self, record: StoreRecord | ErrorRecord, ack: Callable[[], None] | None = None, *, checked: bool = False
    ) -> None:
        """Queue a record for the writer.

        With ``ack`` (the message's acknowledgement; message handlers, on the dispatcher thread)
        return at once: the job is gathered with those of the other messages the dispatcher
        took together, handed to the writer in one piece after them (``_flush``), and the writer
        acknowledges after the commit, so records arriving together share one transaction.
        Without it, wait until the record is committed.
        """
        writer = self._writer
        if writer is None or not writer.is_alive():
            self._flush()
            self._write([_Job(record, ack, checked=checked)])
            return
        if ack is not None:
            self._gathered.append(_Job(record, ack, checked=checked))
            if len(self._gathered) >= _MAX_GATHER:
                self._flush()
            return
        job = _Job(record, checked=checked, wait=True)
        self._jobs.put([job])
        assert job.done is not None
        job.done.wait()

    def _flush(self) -> None:
        """Hand the gathered jobs to the writer (the client calls this after each run of messages)."""
        if not self._gathered:
            return
        jobs, self._gathered = self._gathered, []
        writer = self._writer
        if writer is None or not writer.is_alive():
            self._write(jobs)
            return
        self._jobs.put(jobs)

    def _write_loop(self) -> None:
        next_purge = time.monotonic() + self.settings.purge_interval
        stopping = False
        while not stopping:
            try:
                first = self._jobs.get(timeout=max(0.0, next_purge - time.monotonic()))
            except queue.Empty:
                self._purge()
                next_purge = time.monotonic() + self.settings.purge_interval
                continue
            if first is None:
                break
            batch = first
            stopping = self._drain(batch)
            if not stopping and len(batch) < _GROW_BELOW:
                # Under load more arrives within a few ms: wait for it, in short steps while the
                # steps bring more, so that one commit (an fsync, and the writer's fixed cost per
                # transaction) holds more rows. Nothing is acknowledged before its commit anyway;
                # a broker that keeps few messages in flight (mosquitto's default: 20) stops
                # sending until the acks come, and then the first empty step ends the wait.
                deadline = time.monotonic() + _GROW_WAIT
                while not stopping and len(batch) < _GROW_BELOW and time.monotonic() < deadline:
                    time.sleep(_GROW_STEP)
                    before = len(batch)
                    stopping = self._drain(batch)
                    if len(batch) == before:
                        break
            self._write(batch)
            if time.monotonic() >= next_purge:
                self._purge()
                next_purge = time.monotonic() + self.settings.purge_interval

    def _drain(self, batch: list[_Job]) -> bool:
        """Add the jobs waiting in the queue to ``batch`` (up to _MAX_BATCH); True at the stop sentinel."""
        while len(batch) < _MAX_BATCH:
            try:
                jobs = self._jobs.get_nowait()
            except queue.Empty:
                return False
            if jobs is None:
                return True
            batch.extend(jobs)
        return False

    def _write(self, batch: list[_Job]) -> None:
        """Commit a batch in one transaction; release every waiter whatever happens."""
        try:
            for delay in (*_WRITE_RETRIES, None):
                try:
                    if all(job.checked or isinstance(job.record, ErrorRecord) for job in batch):
                        self.db.write_checked([job.record for job in batch])
                    else:
                        self.db.write_batch([job.record for job in batch])
                    return
                except ValueError:
                    if len(batch) == 1:
                        log.exception("record not stored: %r", batch[0].record)
                        return
                    for job in batch:  # isolate the bad record, store the others
                        self._write([job])
                    return
                except sqlite3.Error:
                    if delay is None:
                        log.exception("storage write of %d records failed; records lost", len(batch))
                        return
                    log.warning("storage write failed; retrying in %g s", delay, exc_info=True)
                    time.sleep(delay)
        finally:
            # Only now, committed (or given up on): acknowledge the messages, their PUBACKs in bulk.
            acks: list[Callable[[], None]] = []
            for job in batch:
                if job.done is not None:
                    job.done.set()
                if job.ack is not None:
                    acks.append(job.ack)
            if acks:
                self.client.ack_many(acks)

    def _purge(self) -> None:
        try:
            self.db.purge()
        except Exception:
            log.exception("storage purge failed")

    # -- message handling ----------------------------------------------------------------

    def _owner(self, topic: str) -> str | None:
        owner = self._owners.get(topic, "")
        if owner == "":
            owner = next((f for f, _ in self._filters if lvcap.topic_matches(f, topic)), None)
            if len(self._owners) >= _MAX_TOPICS:
                self._owners.clear()
            self._owners[topic] = owner
        return owner

    def _handler_for(self, topic_filter: str) -> Callable[[Message], None]:
        def handle(message: Message) -> None:
            # Overlapping filters call every matching handler: only the first one listed acts.
            if self._owner(message.topic) != topic_filter:
                return
            handed_over = False
            try:
                handed_over = self._handle(message)
            finally:
                if not handed_over:
                    message.ack()

        return handle

    def _handle(self, message: Message) -> bool:
        """Act on one message; return True when its acknowledgement went to the writer."""
        levels = message.topic.split("/")
        if levels[0] == "storage" and len(levels) >= 3:
            kind = levels[1]
            if kind == "data" and levels[2] == "error" and len(levels) == 4:
                return self._on_error_report(message, levels[3])
            if kind == "request" and len(levels) == 3:
                self._flush()  # what arrived before the request goes to the writer first
                return self._on_request(message, levels[2], newdata=False)
            if kind == "request" and len(levels) == 4 and levels[2] == "newdata":
                self._flush()
                return self._on_request(message, levels[3], newdata=True)
            if kind == "uploaded" and len(levels) == 3:
                self._flush()
                return self._on_uploaded(message, levels[2])
            if kind != "data":
                return False
        return self._on_data(message)

    def _data_topic(self, topic: str) -> _DataTopic:
        """Work out what a data message's topic decides (refused? explicit? IID, sub-topic)."""
        levels = topic.split("/")
        if any(lvcap.topic_matches(f, topic) for f in self.settings.refuse):
            return _DataTopic(False, False, "", None, None)
        explicit = levels[:2] == ["storage", "data"]
        forced = any(lvcap.topic_matches(f, topic) for f in self.settings.store)
        if not (explicit or forced or levels[:2] == ["algorithm", "data"]):
            return _DataTopic(False, False, "", None, None)
        iid = levels[2] if len(levels) > 2 else ""
        sub_topic = "/".join(levels[3:]) or None
        invalid = None
        try:
            lvcap.validate_iid(iid)
        except LvcapError as exc:
            invalid = f"{topic} has no valid Instance ID after its data prefix: {exc}"
        else:
            try:
                check_destination(iid, sub_topic, where=topic)
            except ValueError as exc:
                invalid = str(exc)
        return _DataTopic(True, explicit or forced, iid, sub_topic, invalid)

    def _on_data(self, message: Message) -> bool:
        topic = message.topic
        route = self._topics.get(topic)
        if route is None:
            route = self._data_topic(topic)
            if len(self._topics) >= _MAX_TOPICS:
                self._topics.clear()
            self._topics[topic] = route
        if not route.store:
            return False
        try:
            payload = _decode_object(message.payload, topic)
        except LvcapError as exc:
            log.warning("not stored: %s", exc)
            self._submit(ErrorRecord(route.iid or topic, _errno_for(message.payload), str(exc)), message.ack)
            return True
        if not (route.explicit or payload.get("ToStore") is True):
            return False
        if route.invalid is not None:
            log.warning("not stored: %s", route.invalid)
            return False
        priority = lvcap.effective_priority(payload.get("Priority"))
        self._submit(StoreRecord(route.iid, route.sub_topic, message.payload, priority), message.ack, checked=True)
        return True

    def _on_error_report(self, message: Message, iid: str) -> bool:
        try:
            report = ErrorReport.from_json(
                lvcap.decode_json_object(message.payload, where=message.topic), where=message.topic
            )
        except LvcapError as exc:
            log.warning("invalid error report: %s", exc)
            self._submit(ErrorRecord(iid, Errno.JSON_INVALID, f"invalid error report: {exc}"), message.ack)
            return True
        if report.code is None:
            log.warning("%s: Errno %d is not in Table 11; stored as given", message.topic, report.errno)
        self._submit(ErrorRecord(iid, report.errno, report.message, reported=report.timestamp), message.ack)
        return True

    def _parse_query(self, message: Message) -> StorageQuery | None:
        if not message.payload.strip():
            return None
        try:
            data = lvcap.decode_json_object(message.payload, where=message.topic)
            if not data:
                return None
            return StorageQuery.from_json(data, where=message.topic)
        except LvcapError as exc:
            log.info("invalid storage query: %s", exc)
            return None

    def _on_request(self, message: Message, iid: str, *, newdata: bool) -> bool:
        """Answer a request; return True when its acknowledgement went to the writer (with an error record)."""
        try:
            topic = lvcap.newdata_response_topic(iid) if newdata else lvcap.storage_response_topic(iid)
        except LvcapError as exc:
            log.warning("storage request on %s ignored: %s", message.topic, exc)
            return False
        qos = lvcap.QOS_NEWDATA if newdata else lvcap.QOS_STORAGE_RESPONSE
        payload = self._answer(message, iid, newdata=newdata)
        self.client.publish(topic, payload, qos=qos)
        try:
            lvcap.decode_json_object(message.payload, where=message.topic)
        except LvcapError as exc:
            # "Invalid JSON anywhere": answered DSC_QUERY_INVALID above, and an ERRNO_JSON_INVALID record.
            self._submit(ErrorRecord(iid, Errno.JSON_INVALID, f"invalid storage query: {exc}"), message.ack)
            return True
        return False

    def _answer(self, message: Message, iid: str, *, newdata: bool) -> bytes:
        try:
            if self._stopping:
                return QueryResponse(QueryStatus.UNAVAILABLE, []).encode()
            request = self._parse_query(message)
            if request is None:
                return QueryResponse(QueryStatus.INVALID, []).encode()
            if newdata:
                grants = self.settings.upload.get(iid)
                if grants is None:
                    log.warning("newdata request from %s, which is not a configured upload app", iid)
                    return QueryResponse(QueryStatus.TABLE_DENIED, []).encode()
                return self.db.query_payload(iid, request, grants, for_upload=iid)
            return self.db.query_payload(iid, request, self.settings.readable_tables(iid))
        except Exception:
            log.exception("storage request on %s failed unexpectedly; answering UNAVAILABLE", message.topic)
            return QueryResponse(QueryStatus.UNAVAILABLE, []).encode()

    def _on_uploaded(self, message: Message, iid: str) -> bool:
        if iid not in self.settings.upload:
            log.warning("uploaded notice from %s, which is not a configured upload app: ignored", iid)
            return False
        try:
            notice = UploadedNotice.from_json(
                lvcap.decode_json_object(message.payload, where=message.topic), where=message.topic
            )
        except LvcapError as exc:
            log.warning("invalid uploaded notice: %s", exc)
            self._submit(ErrorRecord(iid, Errno.JSON_INVALID, f"invalid uploaded notice: {exc}"), message.ack)
            return True
        self.db.mark_uploaded(iid, notice)
        return False
