"""Store batches of LV-CAP upload rows exactly once: parse, dedupe, map, commit, count.

Dedupe design (the key is (site, TableName, ID, Timestamp), HUB.md):

Every stored row leaves a mark in a per-(site, table) *ledger* series (key
``<site>/<IID>#upload``): one sample at ``Timestamp + (ID mod 10^6) microseconds`` whose value
is the ID and whose quality is INVALID when the row was rejected. The ledger samples are written
in the **same** ``write_samples`` transaction as the row's data samples, so a row is either
stored with its mark or not at all. A retried batch finds the marks (one range read per table
and time cluster) and is acknowledged again without storing anything twice. An ID reused by the
edge after its database was reset has another Timestamp and is a new row. The mark sits at the
row's own time, so it ages out with the layer's retention like the data it stands for.

Why not one document per row (``_system/upload_rows``): the document path inserts about 4,000
documents per second on SQLite here, a quarter of what a one-million-row backlog drain needs. Why
not a high-water mark per table: the priority-first drain sends IDs out of order, and IDs are
re-used after an edge database reset (Table 3 allows it).

Events (error records, non-standard payloads, rejected rows) cannot ride in that transaction
(``append_events`` is its own), so before appending them the batch looks up the events already
stored for the same rows (their payload names table, ID and row Timestamp) and skips those: a
crash between the events and the samples commit does not duplicate them on the retry.

Batches of one site are processed one at a time (a lock per site in this process); counters
(received, stored, rejected, duplicates, last upload) live in the site's substation document and
are written in the samples' transaction too (``Store.write_samples_and_patch``, the new counts
computed from the document as read inside it), so they stay exact whenever the hub is killed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from gridhub.formats.lvcap import LvcapError, validate_iid
from gridhub.hub.bus import LiveBus
from gridhub.hub.model import (
    CollectionSpec,
    Event,
    Layer,
    Quality,
    Sample,
    Series,
    Statistic,
    format_time,
    utc_now,
)
from gridhub.hub.pipeline.lvcap import SUBSTATIONS, UploadRow, checked_sample, map_rows, row_marker, upload_time
from gridhub.hub.store import NotFoundError, Store

__all__ = [
    "BatchError",
    "EdgeIngest",
    "SiteCounters",
    "UploadBatch",
    "UploadResult",
    "gc_paused",
    "ledger_key",
    "parse_batch",
]

log = logging.getLogger(__name__)

LEDGER_SUFFIX = "#upload"
_LEDGER_MODULUS = 1_000_000
_CLUSTER_GAP = timedelta(hours=6)
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UNIX_YEARS_1_9999 = (-62_135_596_800, 253_402_300_799)  # what upload_time accepts, in seconds


_gc_lock = threading.Lock()
_gc_holders = 0  # batches running with the cyclic GC paused by gc_paused


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a batch is decoded, parsed or stored.

    A 15,000-row batch allocates about 100,000 container objects (the JSON rows, UploadRows,
    Samples) that all live until the batch ends, so the generational collector promotes them and
    runs a full collection over the whole hub heap about every batch: measured in `gridhub hub
    run` during a drain, 13 full collections of ~0.14 s for 10 batches, nearly half of the hub's
    CPU. A batch makes no reference cycles; its objects are freed by reference counting when it
    ends. The collector is paused while at least one batch runs (threads share it) and enabled
    again when the last one ends, unless someone else had disabled it before.
    """
    global _gc_holders
    with _gc_lock:
        owner = _gc_holders > 0 or gc.isenabled()
        if owner:
            _gc_holders += 1
            gc.disable()
    try:
        yield
    finally:
        if owner:
            with _gc_lock:
                _gc_holders -= 1
                if _gc_holders == 0:
                    gc.enable()


class BatchError(ValueError):
    """The upload body is malformed; the message says where and what (HTTP 400, nothing stored)."""


@dataclass(frozen=True)
class UploadBatch:
    """A parsed upload body: the uploader's batch id and its rows, in order."""

    batch: str
    rows: list[UploadRow]


@dataclass
class UploadResult:
    """What a batch did: IDs accepted and rejected per table, and the counts of this batch."""

    accepted: dict[str, list[int]] = field(default_factory=dict)
    rejected: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stored: int = 0
    rejected_new: int = 0
    duplicates: int = 0
    samples: int = 0
    events: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return the response body of POST /upload."""
        return {"status": "success", "accepted": self.accepted, "rejected": self.rejected}


@dataclass(frozen=True)
class SiteCounters:
    """Per-site upload counters (rows): received (all, retries included), stored, rejected, duplicates."""

    site: str
    received: int = 0
    stored: int = 0
    rejected: int = 0
    duplicates: int = 0
    last_upload: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the body of GET /sites/{name}/stats."""
        return {
            "site": self.site,
            "received": self.received,
            "stored": self.stored,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "last_upload": self.last_upload,
        }


def _integer(value: object, where: str, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BatchError(f"{where}: expected an integer, got {value!r}"[:300])
    if not bounds[0] <= value <= bounds[1]:
        raise BatchError(f"{where}: {value} is out of range")
    return value


def _checked_row(table: str, row: object, where: str) -> UploadRow:
    """Check one row field by field (BatchError names the first problem) and return it."""
    if not isinstance(row, Mapping):
        raise BatchError(f"{where}: expected an object with ID, Timestamp, SubTopic and Data")
    row_id = _integer(row.get("ID"), f"{where}.ID", _INT32)
    stamp = _integer(row.get("Timestamp"), f"{where}.Timestamp", _INT64)
    if not _UNIX_YEARS_1_9999[0] <= stamp <= _UNIX_YEARS_1_9999[1]:
        raise BatchError(f"{where}.Timestamp: {stamp} is not a Unix time in years 1-9999")
    sub_topic = row.get("SubTopic", "/")
    if sub_topic is None:
        sub_topic = "/"
    if not isinstance(sub_topic, str) or len(sub_topic) > 512:
        raise BatchError(f"{where}.SubTopic: expected a string")
    if "Data" not in row:
        raise BatchError(f"{where}.Data: required")
    return UploadRow(table, row_id, stamp, sub_topic if sub_topic.startswith("/") else "/" + sub_topic, row["Data"])


def parse_batch(body: object) -> UploadBatch:
    """Check an upload body's structure and return its rows; BatchError says what is wrong where.

    Row contents (Data) are not judged here: a bad Data is a rejected row, not a bad request.
    """
    if not isinstance(body, Mapping):
        raise BatchError(f"body: expected a JSON object, got {type(body).__name__}")
    batch = body.get("Batch", "")
    if not isinstance(batch, str) or len(batch) > 200:
        raise BatchError("Batch: expected a string of at most 200 characters")
    tables = body.get("Tables")
    if not isinstance(tables, list):
        raise BatchError("Tables: required, expected an array of {TableName, TableRows}")
    rows: list[UploadRow] = []
    append = rows.append
    id_min, id_max = _INT32
    ts_min, ts_max = _UNIX_YEARS_1_9999
    for t, table in enumerate(tables):
        where = f"Tables[{t}]"
        if not isinstance(table, Mapping):
            raise BatchError(f"{where}: expected an object with TableName and TableRows")
        name = table.get("TableName")
        if not isinstance(name, str):
            raise BatchError(f"{where}.TableName: required, expected an Application Instance ID")
        try:
            validate_iid(name)
        except LvcapError as exc:
            raise BatchError(f"{where}.TableName: {exc}") from None
        table_rows = table.get("TableRows", table.get("TableRow"))
        if not isinstance(table_rows, list):
            raise BatchError(f"{where}.TableRows: required, expected an array of rows")
        # The bulk path of a drain: inline checks of a plain row (``type(x) is int`` also refuses
        # bools) accept exactly what _checked_row accepts; any other row goes through _checked_row,
        # which builds the message and the f-string placing it only then.
        for r, row in enumerate(table_rows):
            if type(row) is dict and "Data" in row:
                row_id, stamp, sub_topic = row.get("ID"), row.get("Timestamp"), row.get("SubTopic", "/")
                if sub_topic is None:
                    sub_topic = "/"
                if (
                    type(row_id) is int
                    and id_min <= row_id <= id_max
                    and type(stamp) is int
                    and ts_min <= stamp <= ts_max
                    and type(sub_topic) is str
                    and len(sub_topic) <= 512
                ):
                    if sub_topic[:1] != "/":
                        sub_topic = "/" + sub_topic
                    append(UploadRow(name, row_id, stamp, sub_topic, row["Data"]))
                    continue
            append(_checked_row(name, row, f"{where}.TableRows[{r}]"))
    return UploadBatch(batch, rows)


def ledger_key(site: str, table: str) -> str:
    """Return the key of the dedupe ledger series of one site's table."""
    return f"{site}/{table}{LEDGER_SUFFIX}"


_EPOCH = upload_time(0)
_MICROSECOND = timedelta(microseconds=1)
_VALID = Quality(0)
_CLUSTER_GAP_US = _CLUSTER_GAP // _MICROSECOND
_NEW, _REPEAT = "new", "repeat"  # a row's state in its batch besides "stored before" (True: rejected then)


def _mark_micros(row: UploadRow) -> int:
    """Return the time of a row's ledger mark in microseconds since the epoch."""
    return row.timestamp * 1_000_000 + row.id % _LEDGER_MODULUS


def _clusters(times: list[int]) -> list[tuple[int, int]]:
    """Group times (microseconds) into sorted [first, last] runs with gaps below _CLUSTER_GAP."""
    out: list[tuple[int, int]] = []
    for ts in sorted(times):
        if out and ts - out[-1][1] <= _CLUSTER_GAP_US:
            out[-1] = (out[-1][0], ts)
        else:
            out.append((ts, ts))
    return out


class EdgeIngest:
    """The upload face's work over a Store: one instance per hub process."""

    def __init__(self, store: Store, bus: LiveBus | None = None) -> None:
        self.store = store
        self.bus = bus  # new samples are published on it after their commit (live subscriptions)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._series: dict[tuple[str, str], dict[str, Series]] = {}
        self._ready: set[tuple[str, str]] = set()

    def _lock(self, site: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(site, threading.Lock())

    # -- set-up ----------------------------------------------------------------------------

    def _ensure_site(self, site: str, layer: str) -> None:
        """Create the site's layer (with a substations collection) and substation asset if missing."""
        if (site, layer) in self._ready:
            return
        try:
            found = self.store.get_layer(layer)
        except NotFoundError:
            found = Layer(id=layer, label=layer, description="Substations uploading over the edge upload API")
        if found.collection(SUBSTATIONS) is None:
            found = Layer(
                id=found.id,
                label=found.label,
                description=found.description,
                owner=found.owner,
                collections=(*found.collections, CollectionSpec(SUBSTATIONS)),
                config=found.config,
                extra=found.extra,
            )
            self.store.put_layer(found)
            log.info("created collection %s/%s for edge uploads", layer, SUBSTATIONS)
        try:
            self.store.get_document(layer, SUBSTATIONS, site)
        except NotFoundError:
            report = self.store.insert_documents(
                layer, SUBSTATIONS, [{"_id": site, "name": site, "kind": "substation", "source": "lvcap-upload"}]
            )
            if report.inserted_ids:
                log.info("created substation asset %s/%s/%s", layer, SUBSTATIONS, site)
        self._series[(site, layer)] = {s.key: s for s in self.store.list_series(layer, asset=site)}
        self._ready.add((site, layer))

    def _ensure_ledger(self, site: str, layer: str, table: str) -> str:
        key = ledger_key(site, table)
        known = self._series[(site, layer)]
        if key not in known:
            series = Series(
                key=key,
                layer=layer,
                asset=site,
                name=f"{table}{LEDGER_SUFFIX}",
                statistic=Statistic.COUNT,
                source=f"lvcap:{site}/{table}",
                collection=SUBSTATIONS,
                attributes={"internal": "edge upload dedupe ledger: value = row ID at the row Timestamp"},
            )
            self.store.put_series(series)
            known[key] = series
        return key

    # -- the batch -------------------------------------------------------------------------

    def _seen(self, key: str, rows: Sequence[UploadRow], times: list[int]) -> dict[tuple[int, int], bool]:
        """Return {(ID, Timestamp): rejected} of the rows of one table already stored (``times``: their marks)."""
        marks: dict[int, tuple[int, bool]] = {}
        for first, last in _clusters(times):
            start = _EPOCH + timedelta(microseconds=first)
            readings = self.store.read_range(key, start, _EPOCH + timedelta(microseconds=last + 1))
            for reading in readings:
                value = reading.value
                if value is not None and math.isfinite(value):
                    micros = (reading.ts - _EPOCH) // _MICROSECOND
                    marks[micros] = (int(value), bool(reading.quality & Quality.INVALID))
        seen: dict[tuple[int, int], bool] = {}
        if marks:
            for row, ts in zip(rows, times, strict=True):
                mark = marks.get(ts)
                if mark is not None and mark[0] == row.id:
                    seen[(row.id, row.timestamp)] = mark[1]
        return seen

    def _new_events(self, layer: str, site: str, events: list[Event]) -> list[Event]:
        """Drop the events whose row already has an event of the same type in the store."""
        if not events:
            return []
        start = min(e.time for e in events)
        end = max(e.time for e in events) + timedelta(microseconds=1)
        stored = self.store.query_events(layer, asset=site, start=start, end=end, limit=len(events) * 4 + 1000)
        have = {(e.type, row_marker(e)) for e in stored}
        return [e for e in events if (e.type, row_marker(e)) not in have]

    def ingest(self, site: str, layer: str, batch: UploadBatch) -> UploadResult:
        """Store a batch of one site and return what was accepted and rejected (after the commit)."""
        result = UploadResult()
        with self._lock(site), gc_paused():
            self._ensure_site(site, layer)
            by_table: dict[str, list[UploadRow]] = {}
            for row in batch.rows:
                rows_of = by_table.get(row.table)
                if rows_of is None:
                    rows_of = by_table[row.table] = []
                rows_of.append(row)
            # Per table: its ledger key, its rows (batch order), their mark times and their states:
            # _NEW, _REPEAT (a repeat of a row earlier in this batch) or stored before (True: rejected then).
            tables: list[tuple[str, str, list[UploadRow], list[int], list[str | bool]]] = []
            new_rows: list[UploadRow] = []
            for table, rows in by_table.items():
                key = self._ensure_ledger(site, layer, table)
                times = [_mark_micros(row) for row in rows]
                seen = self._seen(key, rows, times)
                fresh: set[tuple[int, int]] = set()
                states: list[str | bool] = []
                for row in rows:
                    marker = (row.id, row.timestamp)
                    if marker in seen:
                        states.append(seen[marker])
                    elif marker in fresh:
                        states.append(_REPEAT)
                    else:
                        fresh.add(marker)
                        states.append(_NEW)
                        new_rows.append(row)
                tables.append((table, key, rows, times, states))
            known = self._series[(site, layer)]
            mapped = map_rows(site, layer, new_rows, known)
            for series in mapped.series.values():
                self.store.put_series(series)
                known[series.key] = series
            events = self._new_events(layer, site, mapped.events)
            if events:
                self.store.append_events(events)
            problems = mapped.rejected
            marks: list[Sample] = []
            add_mark = marks.append
            for table, key, rows, times, states in tables:
                accepted: list[int] = []
                rejected: list[dict[str, Any]] = []
                for row, micros, state in zip(rows, times, states, strict=True):
                    problem = problems.get((table, row.id)) if problems else None
                    if state is _NEW:
                        quality = _VALID if problem is None else Quality.INVALID
                        mark_ts = _EPOCH + timedelta(microseconds=micros)
                        add_mark(checked_sample(key, mark_ts, float(row.id), quality))
                        if problem is None:
                            result.stored += 1
                        else:
                            result.rejected_new += 1
                    else:
                        result.duplicates += 1
                        if state is not _REPEAT:  # stored before: answer as then
                            problem = "already received and rejected" if state is True else None
                    if problem is None:
                        accepted.append(row.id)
                    else:
                        rejected.append({"ID": row.id, "error": problem})
                if accepted:
                    result.accepted[table] = accepted
                if rejected:
                    result.rejected[table] = rejected
            result.samples = len(mapped.samples)
            result.events = len(events)
            # One transaction: the data samples, the ledger marks and the site's counters. Repeated
            # (series, ts) keys are not merged here: the store keeps the last of them, as a dict would.
            self._commit(site, layer, mapped.samples + marks, received=len(batch.rows), result=result)
            if self.bus is not None:  # returns at once when nobody (no client, no replica) may want them
                self.bus.publish_samples(mapped.samples, known)
        log.debug(
            "site %s batch %r: %s rows, %s stored, %s duplicates, %s samples, %s events",
            site,
            batch.batch,
            len(batch.rows),
            result.stored,
            result.duplicates,
            result.samples,
            result.events,
        )
        return result

    # -- counters --------------------------------------------------------------------------

    def _commit(self, site: str, layer: str, samples: list[Sample], *, received: int, result: UploadResult) -> None:
        """Write a batch's samples and marks and add its counts to the site's counters, in one transaction.

        The counters are computed from the substation document as read inside that transaction, so
        a hub killed at any point leaves them exactly in step with the rows stored.
        """

        def counted(document: Mapping[str, Any]) -> dict[str, Any]:
            current = _site_counters(site, document)
            upload = {
                "received": current.received + received,
                "stored": current.stored + result.stored,
                "rejected": current.rejected + result.rejected_new,
                "duplicates": current.duplicates + result.duplicates,
                "last_upload": format_time(utc_now()),
            }
            return {"upload": upload}

        try:
            self.store.write_samples_and_patch(samples, layer, SUBSTATIONS, site, counted)
        except NotFoundError:  # the substation (or its layer) was deleted while this process ran: nothing written
            self._ready.discard((site, layer))
            self._ensure_site(site, layer)
            self.store.write_samples_and_patch(samples, layer, SUBSTATIONS, site, counted)

    def counters(self, site: str, layer: str) -> SiteCounters:
        """Return a site's upload counters (zeros before its first upload)."""
        try:
            doc = self.store.get_document(layer, SUBSTATIONS, site)
        except NotFoundError:
            return SiteCounters(site)
        return _site_counters(site, doc.attributes)


def _site_counters(site: str, document: Mapping[str, Any]) -> SiteCounters:
    """Return the upload counters a substation document holds (zeros where it holds none)."""
    upload = document.get("upload")
    if not isinstance(upload, Mapping):
        return SiteCounters(site)

    def number(name: str) -> int:
        value = upload.get(name, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    last = upload.get("last_upload")
    return SiteCounters(
        site,
        number("received"),
        number("stored"),
        number("rejected"),
        number("duplicates"),
        last if isinstance(last, str) else None,
    )
