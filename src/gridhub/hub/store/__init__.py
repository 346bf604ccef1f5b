"""The hub store: one interface, two backends (SQLite by default, PostgreSQL for scale).

``open_store(url)`` opens (and migrates) a store: ``sqlite:///path/hub.sqlite`` (a plain path is
read as a SQLite file) or ``postgresql://user@host:5432/db``. Faces and services call only the
:class:`Store` methods, never SQL. Behaviour both backends share:

- Times are timezone-aware UTC; ranges are ``start <= ts < end``.
- Samples are keyed by (series, ts). Writing a sample whose key exists **replaces** it (last
  write wins), so a re-sent batch never duplicates anything and a corrected value overrides.
- Asset documents are free JSON queried with a MongoDB-like selector subset (:data:`Selector`):
  equality and ``$gt/$gte/$lt/$lte/$in/$nin/$ne/$exists`` on top-level or dotted fields, and
  ``$and/$or``; comparisons match only values of the same JSON type (numbers with numbers,
  strings with strings), like MongoDB; equality with an object or array is refused; a dotted
  path never reaches into arrays.
- Writing a document that carries ``measurements`` updates the document and appends each
  measurement to the series ``<layer>/<collection>/<_id>/<name>`` in the same transaction.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, overload

from gridhub.hub.model import (
    Aggregate,
    Asset,
    Event,
    EventState,
    Layer,
    Reading,
    Resource,
    Sample,
    Series,
)

__all__ = [
    "DocumentError",
    "InsertReport",
    "NotFoundError",
    "Readings",
    "SchemaVersionError",
    "Selector",
    "SelectorError",
    "Store",
    "StoreError",
    "open_store",
]

Selector = Mapping[str, Any]
"""A MongoDB-like query document, e.g. ``{"voltage": {"$gte": 230}, "site.name": "Bristol"}``."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StoreError(Exception):
    """A store operation failed; the message says what and where."""


class NotFoundError(StoreError, LookupError):
    """The named layer, collection, document, series or resource does not exist."""


class SelectorError(StoreError, ValueError):
    """A selector, sort or patch uses something the store does not support."""


class SchemaVersionError(StoreError):
    """The database schema is at a revision this version of gridhub does not know (refused)."""


@dataclass(frozen=True)
class DocumentError:
    """Why one document of an insert was refused."""

    index: int
    id: str | None
    message: str


@dataclass(frozen=True)
class InsertReport:
    """What an insert of many documents did: X-FLEX ``ok``/``insertedIds``/``err``/``errorIds``."""

    inserted_ids: list[str] = field(default_factory=list)
    errors: list[DocumentError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class Readings(Sequence[Reading]):
    """The rows of a range read, decoded lazily (the store returns what the driver fetched).

    Indexing or iterating yields :class:`~gridhub.hub.model.Reading` tuples: (ts, value, quality),
    or (ts, value, quality, data, confidence, cost) for a detailed read; :meth:`values` gives the
    numbers without building datetimes.
    """

    __slots__ = ("_decode", "_rows")

    def __init__(self, rows: Sequence[tuple[Any, ...]], decode: Any = None) -> None:
        self._rows = rows
        self._decode = decode

    @classmethod
    def from_columns(cls, times: list[Any], values: list[Any], qualities: list[Any]) -> Readings:
        """Wrap three equally long columns (ts, value, quality) without building a tuple per row."""
        if not len(times) == len(values) == len(qualities):
            raise StoreError(f"range columns differ in length: {len(times)}, {len(values)}, {len(qualities)}")
        readings = cls(_Columns(times, values, qualities))
        return readings

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Reading: ...
    @overload
    def __getitem__(self, index: slice) -> list[Reading]: ...
    def __getitem__(self, index: int | slice) -> Reading | list[Reading]:
        if isinstance(index, slice):
            return [self._reading(row) for row in self._rows[index]]
        return self._reading(self._rows[index])

    def __iter__(self) -> Iterator[Reading]:
        return map(self._reading, self._rows)

    def _reading(self, row: tuple[Any, ...]) -> Reading:
        return Reading(self._decode(row) if self._decode is not None else row)

    def values(self) -> list[float | None]:
        """Return the numeric values in time order."""
        if isinstance(self._rows, _Columns):
            return list(self._rows.columns[1])
        return [row[1] for row in self._rows]

    def timestamps(self) -> list[datetime]:
        """Return the sample times in order."""
        return [reading.ts for reading in self]


class _Columns(Sequence[tuple[Any, ...]]):
    """Rows presented over parallel columns, each row built only when asked for."""

    __slots__ = ("columns",)

    def __init__(self, *columns: list[Any]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    @overload
    def __getitem__(self, index: int) -> tuple[Any, ...]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[Any, ...]]: ...
    def __getitem__(self, index: int | slice) -> tuple[Any, ...] | list[tuple[Any, ...]]:
        if isinstance(index, slice):
            return list(zip(*(c[index] for c in self.columns), strict=True))
        return tuple(c[index] for c in self.columns)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return zip(*self.columns, strict=True)


class Store(abc.ABC):
    """The hub's persistent state: layers, asset documents, series, samples, events, resources."""

    url: str
    backend: str

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def schema_revision(self) -> str:
        """Return the database's Alembic schema revision."""

    # -- layers
    @abc.abstractmethod
    def put_layer(self, layer: Layer) -> bool:
        """Create or replace a layer; return True when it was created."""

    @abc.abstractmethod
    def get_layer(self, layer_id: str) -> Layer:
        """Return a layer (NotFoundError when absent)."""

    @abc.abstractmethod
    def list_layers(self) -> list[Layer]:
        """Return every layer, ordered by id."""

    @abc.abstractmethod
    def delete_layer(self, layer_id: str) -> None:
        """Delete a layer with its documents, series, samples and events."""

    # -- asset documents
    @abc.abstractmethod
    def insert_documents(self, layer: str, collection: str, documents: Sequence[Mapping[str, Any]]) -> InsertReport:
        """Insert documents; each is inserted or refused on its own (duplicate _id, invalid content)."""

    @abc.abstractmethod
    def get_document(self, layer: str, collection: str, document_id: str) -> Asset:
        """Return one document (NotFoundError when absent)."""

    @abc.abstractmethod
    def find_documents(
        self,
        layer: str,
        collection: str,
        selector: Selector | None = None,
        *,
        sort: Sequence[tuple[str, int]] = (),
        limit: int | None = None,
        skip: int = 0,
    ) -> list[Asset]:
        """Return the documents matching a selector; sort is [(field, 1 or -1)], default by _id."""

    @abc.abstractmethod
    def count_documents(self, layer: str, collection: str, selector: Selector | None = None) -> int:
        """Count the documents matching a selector."""

    @abc.abstractmethod
    def patch_document(self, layer: str, collection: str, document_id: str, changes: Mapping[str, Any]) -> Asset:
        """Merge changes into a document (RFC 7396: objects merge, null removes) and return it."""

    @abc.abstractmethod
    def patch_documents(
        self, layer: str, collection: str, selector: Selector | None, changes: Mapping[str, Any]
    ) -> int:
        """Merge changes into every matching document; return how many changed."""

    @abc.abstractmethod
    def delete_documents(self, layer: str, collection: str, selector: Selector | None) -> int:
        """Delete the matching documents (their series history stays); return how many."""

    def delete_document(self, layer: str, collection: str, document_id: str) -> bool:
        """Delete one document; return False when it did not exist."""
        return self.delete_documents(layer, collection, {"_id": document_id}) == 1

    def range_documents(
        self,
        layer: str,
        collection: str,
        start: datetime,
        end: datetime,
        field: str = "timestamp",
        *,
        limit: int | None = None,
    ) -> list[Asset]:
        """Return documents whose time field is in [start, end) (canonical dates or epoch ms), by that field."""
        start_ms = (start - _EPOCH) / timedelta(milliseconds=1)
        end_ms = (end - _EPOCH) / timedelta(milliseconds=1)
        selector = {
            "$or": [
                {field: {"$gte": start, "$lt": end}},
                {field: {"$gte": start_ms, "$lt": end_ms}},
            ]
        }
        return self.find_documents(layer, collection, selector, sort=[(field, 1)], limit=limit)

    @abc.abstractmethod
    def near_documents(
        self, layer: str, collection: str, lat: float, lon: float, distance: float, *, limit: int | None = None
    ) -> list[tuple[Asset, float]]:
        """Return (document, metres) for geometries within distance metres of (lat, lon), nearest first."""

    # -- series and samples
    @abc.abstractmethod
    def put_series(self, series: Series) -> int:
        """Create or update a series by key; return its id."""

    @abc.abstractmethod
    def get_series(self, key: str) -> Series:
        """Return a series (NotFoundError when absent)."""

    @abc.abstractmethod
    def list_series(self, layer: str | None = None, asset: str | None = None) -> list[Series]:
        """Return series, optionally of one layer and asset, ordered by key."""

    @abc.abstractmethod
    def delete_series(self, key: str) -> None:
        """Delete a series and all its samples."""

    @abc.abstractmethod
    def write_samples(self, samples: Iterable[Sample]) -> int:
        """Write samples in one transaction (bulk path); a sample whose (series, ts) exists replaces it.

        Samples repeating a (series, ts) within one call are allowed: the last of them is stored.
        Every series must exist (NotFoundError names the first unknown one; nothing is written).
        Returns the number of samples written.
        """

    @abc.abstractmethod
    def write_samples_and_patch(
        self,
        samples: Iterable[Sample],
        layer: str,
        collection: str,
        document_id: str,
        changes: Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]],
    ) -> Asset:
        """Write samples and merge changes into one document in one transaction: both or neither.

        Samples behave as in :meth:`write_samples`, changes as in :meth:`patch_document`. changes may
        be a function of the stored document (as read inside the transaction, the document's row
        locked where the backend can), returning the patch: counters kept in a document are then
        exact with several writers. When the document (or a series) does not exist, NotFoundError is
        raised and nothing is written; so is nothing when the patch is refused. Returns the document.
        """

    @abc.abstractmethod
    def read_range(
        self, key: str, start: datetime, end: datetime, *, limit: int | None = None, detail: bool = False
    ) -> Readings:
        """Return the samples of one series in [start, end), oldest first.

        Each reading is (ts, value, quality); detail=True adds data, confidence and cost (structured
        values such as spectra are in data), at about 10 % more time per added column.
        """

    @abc.abstractmethod
    def latest(self, keys: Sequence[str]) -> dict[str, Reading]:
        """Return the newest sample of each series that has one."""

    @abc.abstractmethod
    def aggregate(
        self,
        key: str,
        start: datetime,
        end: datetime,
        interval: timedelta,
        *,
        origin: datetime | None = None,
        include_invalid: bool = False,
    ) -> list[Aggregate]:
        """Return min/max/mean/sum/count of numeric values per interval bucket, computed in the database.

        Buckets start at origin + k * interval (origin defaults to the Unix epoch, so daily buckets
        start at midnight UTC); empty buckets are omitted; INVALID samples count only when asked.
        """

    @abc.abstractmethod
    def count_samples(self, key: str | None = None) -> int:
        """Count the samples of one series, or of all."""

    # -- events
    @abc.abstractmethod
    def append_events(self, events: Iterable[Event]) -> list[int]:
        """Append events; return their ids."""

    @abc.abstractmethod
    def query_events(
        self,
        layer: str,
        *,
        asset: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        type: str | None = None,
        state: EventState | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Return a layer's events, oldest first, filtered by asset, time range, type and state."""

    # -- resources
    @abc.abstractmethod
    def put_resource(self, resource: Resource) -> None:
        """Create or replace a resource's metadata."""

    @abc.abstractmethod
    def get_resource(self, resource_id: str) -> Resource:
        """Return a resource's metadata (NotFoundError when absent)."""

    @abc.abstractmethod
    def find_resources(self, bucket: str | None = None, filename: str | None = None) -> list[Resource]:
        """Return resources, optionally of one bucket and file name, newest first."""

    @abc.abstractmethod
    def delete_resource(self, resource_id: str) -> bool:
        """Delete a resource's metadata; return False when it did not exist."""

    # -- maintenance
    def compact(self, now: datetime | None = None, *, force: bool = False) -> list[str]:
        """Re-sort the samples of closed months by (series, time) where the backend needs it; return what was done.

        Samples arrive time-major (every series for one minute, then the next minute); a backend
        whose table is a heap then scatters one series over every page of a month. SQLite keeps
        samples in key order by construction and does nothing here.
        """
        return []

    # -- retention
    @abc.abstractmethod
    def apply_retention(self, now: datetime | None = None) -> dict[str, int]:
        """Delete samples older than their layer's retention; return the count deleted per layer."""


def open_store(url: str) -> Store:
    """Open the store at url (``sqlite:///file``, a file path, or ``postgresql://...``), migrating it forward.

    Raises SchemaVersionError when the database is at a newer schema revision than this code knows.
    """
    if url.startswith(("postgresql:", "postgresql+psycopg:", "postgres:")):
        from gridhub.hub.store.postgresql import PostgresStore

        return PostgresStore(url)
    if url.startswith(("sqlite:", "sqlite+")) or "://" not in url:
        from gridhub.hub.store.sqlite import SqliteStore

        return SqliteStore(url)
    raise StoreError(f"store url {url!r}: expected sqlite:///PATH, a file path or postgresql://USER@HOST/DB")
