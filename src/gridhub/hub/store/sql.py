"""The store logic both SQL backends share (SQLAlchemy 2 Core over :mod:`gridhub.hub.store.schema`).

A backend subclass supplies what differs between the databases: the dialect's INSERT (for
ON CONFLICT), JSON path expressions for selectors, the bulk sample path, the range read through
the raw driver, the time-bucket expression of aggregates and the work done before samples of
new times are written (PostgreSQL creates the month partitions).
"""

from __future__ import annotations

import abc
import itertools
import logging
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gridhub.hub.model import (
    MEASUREMENTS,
    Aggregate,
    Asset,
    Event,
    EventState,
    Layer,
    ModelError,
    Reading,
    Resource,
    Sample,
    Series,
    Statistic,
    check_field_names,
    format_time,
    geometry_positions,
    measurement_series_key,
    normalise_dates,
    parse_time,
    utc_now,
)
from gridhub.hub.store import (
    DocumentError,
    InsertReport,
    NotFoundError,
    Readings,
    Selector,
    SelectorError,
    Store,
    StoreError,
)
from gridhub.hub.store import schema as s
from gridhub.hub.store.migrations import upgrade

logger = logging.getLogger(__name__)

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
_METRES_PER_DEGREE = math.pi * EARTH_RADIUS_M / 180
_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
_SQL_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_SUPPORTED = "$eq, $ne, $gt, $gte, $lt, $lte, $in, $nin, $exists, $and, $or"
_FLAT_TERMS = 16  # terms an AND/OR joins flat; longer lists are joined as a balanced tree (see _joined)
_MAX_NESTING = 32  # $and/$or inside each other, at most (deeper: SelectorError, not a database error)
_INSERT_CHUNK = 500  # documents per INSERT statement (SQLite allows 32,766 bound parameters)
Scalar = str | int | float | bool | None


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Return the great-circle distance in metres between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7396 JSON merge patch: objects merge member by member, null removes a member."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def redact_url(url: str) -> str:
    """Return url without its password."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _patch_times(changes: Mapping[str, Any]) -> list[datetime]:
    """Return the measurement times a patch carries (those it can read; the rest are checked later)."""
    out = []
    measurements = changes.get(MEASUREMENTS)
    if isinstance(measurements, Mapping):
        for item in measurements.values():
            stamp = item.get("timestamp", changes.get("measurementsTimestamp")) if isinstance(item, Mapping) else None
            try:
                out.append(parse_time(stamp, "timestamp"))
            except ModelError:
                continue
    return out


_MEASUREMENTS_TIME = "measurementsTimestamp"


def _measurement_times(document: Mapping[str, Any]) -> dict[str, datetime]:
    """Return the time of each real-time measurement of a stored document."""
    if not isinstance(document.get(MEASUREMENTS), Mapping):
        return {}
    return {m.name: m.timestamp for m in Asset.from_document(document).measurements()}


def _stamp_measurements(document: dict[str, Any], times: Mapping[str, datetime]) -> None:
    """Write each measurement's time into its item (in place), so a later write cannot shift it.

    An item without its own timestamp would otherwise read measurementsTimestamp or _updated,
    which later writes change.
    """
    items = document.get(MEASUREMENTS)
    if not isinstance(items, Mapping):
        return
    stamped = dict(items)
    for name, item in items.items():
        if isinstance(item, Mapping) and item.get("timestamp") is None and name in times:
            stamped[name] = {**item, "timestamp": format_time(times[name])}
    document[MEASUREMENTS] = stamped


def _patch_measurements(
    current: Mapping[str, Any], merged: dict[str, Any], changes: Mapping[str, Any], now: datetime, where: str
) -> dict[str, Any]:
    """Apply a patch's ``measurements`` to merged (the document merge-patched with the rest of the patch).

    Each patched item replaces the current one whole, and only when its timestamp is not older
    than the current one's (a late, older value goes to the history alone); an item without a
    timestamp takes the patch's measurementsTimestamp, else the write time; null removes an item.
    A patched measurementsTimestamp older than the document's is not applied either. Returns the
    items (with their timestamps) to append to the series history.
    """
    known = _measurement_times(current)
    state = merged.get(MEASUREMENTS)
    state = dict(state) if isinstance(state, Mapping) else {}
    fallback = changes.get(_MEASUREMENTS_TIME)
    if fallback is None:
        fallback = format_time(now)
    history: dict[str, Any] = {}
    for name, item in changes[MEASUREMENTS].items():
        if item is None:
            state.pop(name, None)
            continue
        if not isinstance(item, Mapping):
            state[name] = item  # refused when the document is validated
            continue
        new = dict(item)
        if new.get("timestamp") is None:
            new["timestamp"] = fallback
        stamp = parse_time(new["timestamp"], f"{where}: {MEASUREMENTS}.{name}.timestamp")
        history[name] = new
        if name not in known or stamp >= known[name]:
            state[name] = new
    merged[MEASUREMENTS] = state
    patched_time, current_time = changes.get(_MEASUREMENTS_TIME), current.get(_MEASUREMENTS_TIME)
    if patched_time is not None and current_time is not None:
        try:
            if parse_time(patched_time, _MEASUREMENTS_TIME) < parse_time(current_time, _MEASUREMENTS_TIME):
                merged[_MEASUREMENTS_TIME] = current_time
        except ModelError:
            pass  # not a time: an ordinary attribute, merged as written
    return history


def _joined(
    combine: Callable[..., sa.ColumnElement[bool]], parts: Sequence[sa.ColumnElement[bool]]
) -> sa.ColumnElement[bool]:
    """Join parts with combine (sa.and_ or sa.or_) as a balanced tree of parenthesised halves.

    SQLite parses a flat chain of n terms n levels deep and refuses an expression deeper than 1000
    (an $or of 1000 selectors would answer 503 for ever); halves nest about log2(n) levels deep.
    """
    if len(parts) <= _FLAT_TERMS:
        return combine(*parts)
    half = len(parts) // 2
    # type_coerce(...).self_group() keeps the parentheses: SQLAlchemy flattens a bare same-operator group
    return combine(
        *(sa.type_coerce(_joined(combine, p), sa.Boolean).self_group() for p in (parts[:half], parts[half:]))
    )


class SqlStore(Store):
    """A :class:`Store` over a SQLAlchemy engine; subclasses fill in the dialect hooks."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = redact_url(url)
        self.engine = engine
        self._writer = engine.execution_options(gridhub_write=True)
        self._reader = self._sample_reader(engine)
        self._series_ids: dict[str, int] = {}
        try:
            with self._writer.begin() as conn:
                self._revision = upgrade(conn, self.url)
        except BaseException:
            engine.dispose()
            raise
        logger.info("store %s open at schema revision %s", self.url, self._revision)

    def _sample_reader(self, engine: Engine) -> Engine:
        """Return the engine single-statement sample reads use (default: the engine itself)."""
        return engine

    def close(self) -> None:
        """Release the store's connections."""
        self.engine.dispose()

    def schema_revision(self) -> str:
        """Return the database's Alembic schema revision."""
        return self._revision

    # -- dialect hooks --------------------------------------------------------------------------

    @abc.abstractmethod
    def _insert(self, table: sa.Table) -> Any:
        """Return the dialect's INSERT construct (with on_conflict_do_nothing / on_conflict_do_update)."""

    @abc.abstractmethod
    def _json_eq(self, keys: list[str], value: Scalar) -> sa.ColumnElement[bool]:
        """Return: the document's value at keys equals value (same JSON type); null matches missing."""

    @abc.abstractmethod
    def _json_in(self, keys: list[str], values: Sequence[str | int | float | bool]) -> sa.ColumnElement[bool]:
        """Return: the value at keys equals one of values (same JSON type), the list bound as one parameter.

        One parameter whatever the list's length: one OR term per value would nest one level deeper
        per value (SQLite refuses a depth over 1000) and bound parameters per value are capped too.
        """

    @abc.abstractmethod
    def _id_in(self, ids: Sequence[str]) -> sa.ColumnElement[bool]:
        """Return: the document's _id is one of ids, the list bound as one parameter."""

    @abc.abstractmethod
    def _json_cmp(self, keys: list[str], op: str, value: str | float) -> sa.ColumnElement[bool]:
        """Return: the value at keys is of value's JSON type and compares to it with op (>, >=, <, <=)."""

    @abc.abstractmethod
    def _json_exists(self, keys: list[str]) -> sa.ColumnElement[bool]:
        """Return: the document has a member at keys (possibly null)."""

    @abc.abstractmethod
    def _json_sort(self, keys: list[str]) -> list[sa.ColumnElement[Any]]:
        """Return the keys documents are sorted by for a field: [type rank, number, string].

        The rank orders types as MongoDB does: missing or null 0, numbers 1, strings 2, objects 3,
        arrays 4, booleans 5. The number key holds numbers (and booleans as 0/1), the string key
        strings compared by code point; both are NULL for other types, so objects and arrays tie
        within their rank (the _id that :meth:`_order` appends decides).
        """

    @abc.abstractmethod
    def _bulk_write(self, conn: Connection, samples: Sequence[Sample], ids: Mapping[str, int]) -> None:
        """Write samples (replacing existing keys) inside the open transaction of conn."""

    @abc.abstractmethod
    def _read_range(self, series_id: int, start: datetime, end: datetime, limit: int | None, detail: bool) -> Readings:
        """Read one series' samples in [start, end) through the raw driver."""

    @abc.abstractmethod
    def _bucket(
        self, interval: timedelta, origin: datetime, start: datetime
    ) -> tuple[sa.ColumnElement[Any], Callable[[Any], datetime]]:
        """Return the SQL bucket key of samples.ts (for times >= start) and the function turning it into a time."""

    def _prepare_times(self, times: Iterable[datetime]) -> None:
        """Get ready for samples at these times (outside any transaction)."""

    # -- layers ---------------------------------------------------------------------------------

    def put_layer(self, layer: Layer) -> bool:
        """Create or replace a layer; return True when it was created."""
        with self._writer.begin() as conn:
            exists = conn.execute(sa.select(s.layers.c.id).where(s.layers.c.id == layer.id)).first() is not None
            row = {"document": layer.to_document(), "updated": utc_now()}
            if exists:
                conn.execute(sa.update(s.layers).where(s.layers.c.id == layer.id).values(**row))
            else:
                conn.execute(sa.insert(s.layers).values(id=layer.id, **row))
        logger.info("layer %s %s", layer.id, "replaced" if exists else "created")
        return not exists

    def get_layer(self, layer_id: str) -> Layer:
        """Return a layer (NotFoundError when absent)."""
        with self.engine.connect() as conn:
            return self._layer(conn, layer_id)

    def _layer(self, conn: Connection, layer_id: str) -> Layer:
        doc = conn.execute(sa.select(s.layers.c.document).where(s.layers.c.id == layer_id)).scalar()
        if doc is None:
            raise NotFoundError(f"layer {layer_id!r} does not exist")
        return Layer.from_document(doc, where=f"stored layer {layer_id!r}")

    def list_layers(self) -> list[Layer]:
        """Return every layer, ordered by id."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(s.layers.c.id, s.layers.c.document).order_by(s.layers.c.id)).all()
        return [Layer.from_document(doc, where=f"stored layer {lid!r}") for lid, doc in rows]

    def delete_layer(self, layer_id: str) -> None:
        """Delete a layer with its documents, series, samples and events."""
        with self._writer.begin() as conn:
            self._layer(conn, layer_id)
            layer_series = sa.select(s.series.c.id).where(s.series.c.layer == layer_id)
            conn.execute(sa.delete(s.samples).where(s.samples.c.series_id.in_(layer_series)))
            for table in (s.series, s.assets, s.events):
                conn.execute(sa.delete(table).where(table.c.layer == layer_id))
            conn.execute(sa.delete(s.layers).where(s.layers.c.id == layer_id))
        self._series_ids.clear()
        logger.info("layer %s deleted", layer_id)

    def _collection(self, conn: Connection, layer: str, collection: str) -> Layer:
        found = self._layer(conn, layer)
        if found.collection(collection) is None:
            raise NotFoundError(f"collection {collection!r} is not listed in layer {layer!r}")
        return found

    # -- selectors ------------------------------------------------------------------------------

    def _path(self, field: str, where: str) -> list[str]:
        keys = field.split(".")
        if not field or any(not k or k.startswith("$") or '"' in k or "\\" in k for k in keys):
            raise SelectorError(f"{where}: field {field!r} is not a plain dotted field name")
        return keys

    def _value(self, value: Any, where: str) -> Scalar:
        value = normalise_dates(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise SelectorError(f"{where}: expected a finite number, got {value!r}")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise SelectorError(f"{where}: comparing with an object or array is not supported, got {value!r}")
        return value

    def _compile(self, selector: Selector | None, where: str = "selector", depth: int = 0) -> sa.ColumnElement[bool]:
        if selector is None:
            return sa.true()
        if not isinstance(selector, Mapping):
            raise SelectorError(f"{where}: expected a JSON object, got {selector!r}")
        clauses: list[sa.ColumnElement[bool]] = []
        for key, cond in selector.items():
            here = f"{where}.{key}"
            if key in ("$and", "$or"):
                if not isinstance(cond, list) or not cond:
                    raise SelectorError(f"{here}: expected a non-empty list of selectors, got {cond!r}")
                if depth >= _MAX_NESTING:
                    raise SelectorError(f"{where.split('.')[0]}: $and/$or nested more than {_MAX_NESTING} deep")
                parts = [self._compile(c, f"{here}[{i}]", depth + 1) for i, c in enumerate(cond)]
                clauses.append(_joined(sa.and_ if key == "$and" else sa.or_, parts))
            elif key.startswith("$"):
                raise SelectorError(f"{here}: operator {key} is not supported (supported: {_SUPPORTED})")
            else:
                clauses.append(self._field(key, cond, here))
        return _joined(sa.and_, [sa.true(), *clauses])

    def _field(self, field: str, cond: Any, where: str) -> sa.ColumnElement[bool]:
        keys = self._path(field, where)
        if isinstance(cond, Mapping) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond):
            parts: list[sa.ColumnElement[bool]] = []
            for op, operand in cond.items():
                here = f"{where}.{op}"
                if op == "$eq":
                    parts.append(self._eq(keys, self._value(operand, here)))
                elif op == "$ne":
                    parts.append(sa.not_(self._eq(keys, self._value(operand, here))))
                elif op in ("$in", "$nin"):
                    if not isinstance(operand, list):
                        raise SelectorError(f"{here}: expected a list, got {operand!r}")
                    any_of = self._in(keys, [self._value(v, f"{here}[{i}]") for i, v in enumerate(operand)])
                    parts.append(any_of if op == "$in" else sa.not_(any_of))
                elif op in _COMPARISONS:
                    value = self._value(operand, here)
                    if isinstance(value, bool) or not isinstance(value, str | int | float):
                        raise SelectorError(f"{here}: expected a number, a string or a date, got {operand!r}")
                    parts.append(self._cmp(keys, _SQL_OPS[op], value))
                elif op == "$exists":
                    if not isinstance(operand, bool):
                        raise SelectorError(f"{here}: expected true or false, got {operand!r}")
                    present = self._exists(keys)
                    parts.append(present if operand else sa.not_(present))
                else:
                    raise SelectorError(f"{here}: operator {op} is not supported (supported: {_SUPPORTED})")
            return sa.and_(*parts)
        return self._eq(keys, self._value(cond, where))

    def _eq(self, keys: list[str], value: Scalar) -> sa.ColumnElement[bool]:
        if keys == ["_id"]:
            return s.assets.c.id == value if isinstance(value, str) else sa.false()
        return sa.func.coalesce(self._json_eq(keys, value), sa.false(), type_=sa.Boolean)

    def _in(self, keys: list[str], values: list[Scalar]) -> sa.ColumnElement[bool]:
        """Return: the value at keys equals one of values (what an OR of _eq would say, without the nesting)."""
        if keys == ["_id"]:
            ids = list(dict.fromkeys(v for v in values if isinstance(v, str)))
            return self._id_in(ids) if ids else sa.false()
        parts: list[sa.ColumnElement[bool]] = []
        if any(v is None for v in values):
            parts.append(self._eq(keys, None))
        present = list(dict.fromkeys((type(v), v) for v in values if v is not None))  # 1 and True stay apart
        if present:
            found = self._json_in(keys, [v for _, v in present])
            parts.append(sa.func.coalesce(found, sa.false(), type_=sa.Boolean))
        return sa.or_(sa.false(), *parts)

    def _cmp(self, keys: list[str], op: str, value: str | float) -> sa.ColumnElement[bool]:
        if keys == ["_id"]:
            return s.assets.c.id.op(op)(value) if isinstance(value, str) else sa.false()
        return sa.func.coalesce(self._json_cmp(keys, op, value), sa.false(), type_=sa.Boolean)

    def _exists(self, keys: list[str]) -> sa.ColumnElement[bool]:
        if keys == ["_id"]:
            return sa.true()
        return self._json_exists(keys)

    def _order(self, sort: Sequence[tuple[str, int]]) -> list[sa.ColumnElement[Any]]:
        out: list[sa.ColumnElement[Any]] = []
        for i, item in enumerate(sort):
            if not isinstance(item, tuple | list) or len(item) != 2 or item[1] not in (1, -1):
                raise SelectorError(f"sort[{i}]: expected (field, 1 or -1), got {item!r}")
            keys = self._path(item[0], f"sort[{i}]")
            exprs = [s.assets.c.id] if keys == ["_id"] else self._json_sort(keys)
            out.extend(e.asc() if item[1] == 1 else e.desc() for e in exprs)
        out.append(s.assets.c.id.asc())  # ties: by _id, so that pages never overlap or skip
        return out

    # -- documents ------------------------------------------------------------------------------

    def _in_collection(self, layer: str, collection: str) -> sa.ColumnElement[bool]:
        return sa.and_(s.assets.c.layer == layer, s.assets.c.collection == collection)

    def _asset_row(self, layer: str, collection: str, asset: Asset) -> dict[str, Any]:
        box = asset.bounding_box()
        assert asset.updated is not None
        return {
            "layer": layer,
            "collection": collection,
            "id": asset.id,
            "document": asset.to_document(),
            "updated": asset.updated,
            "expired": asset.expired,
            "min_lon": box[0] if box else None,
            "min_lat": box[1] if box else None,
            "max_lon": box[2] if box else None,
            "max_lat": box[3] if box else None,
        }

    def _measurement_samples(
        self, layer: str, collection: str, asset: Asset, names: Iterable[str] | None = None
    ) -> tuple[list[Series], list[Sample]]:
        """Return the series and samples an asset document's measurements append to."""
        wanted = None if names is None else set(names)
        raw = asset.attributes.get(MEASUREMENTS) or {}
        series: list[Series] = []
        samples: list[Sample] = []
        for m in asset.measurements(default_time=asset.updated):
            if wanted is not None and m.name not in wanted:
                continue
            key = measurement_series_key(layer, collection, asset.id, m.name)
            unit = raw.get(m.name, {}).get("unit", "")
            series.append(
                Series(
                    key=key,
                    layer=layer,
                    asset=asset.id,
                    name=m.name,
                    collection=collection,
                    unit=unit if isinstance(unit, str) else "",
                    source="document",
                )
            )
            samples.append(m.sample(key))
        return series, samples

    def _append_history(self, conn: Connection, series: list[Series], samples: list[Sample]) -> None:
        if not samples:
            return
        ids = self._ensure_series(conn, series)
        self._bulk_write(conn, samples, ids)

    def insert_documents(self, layer: str, collection: str, documents: Sequence[Mapping[str, Any]]) -> InsertReport:
        """Insert documents; each is inserted or refused on its own (duplicate _id, invalid content)."""
        with self.engine.connect() as conn:
            self._collection(conn, layer, collection)
        if not isinstance(documents, Sequence) or isinstance(documents, str | bytes | Mapping):
            raise StoreError(f"insert into {layer}/{collection}: expected a list of documents, got {documents!r}")
        now = utc_now()
        errors: list[DocumentError] = []
        accepted: list[tuple[int, Asset, list[Series], list[Sample]]] = []
        seen: dict[str, int] = {}
        for i, doc in enumerate(documents):
            guess = doc.get("_id") if isinstance(doc, Mapping) else None
            guess_id = str(guess) if isinstance(guess, str | int) and not isinstance(guess, bool) else None
            try:
                asset = replace(Asset.from_document(doc, where=f"documents[{i}]"), updated=now)
                check_field_names(asset.attributes, f"documents[{i}]")
                series, samples = self._measurement_samples(layer, collection, asset)
                if samples:
                    attributes = dict(asset.attributes)
                    _stamp_measurements(attributes, {x.name: y.ts for x, y in zip(series, samples, strict=True)})
                    asset = replace(asset, attributes=attributes)
            except ModelError as exc:
                errors.append(DocumentError(i, guess_id, str(exc)))
                continue
            if asset.id in seen:
                message = f"documents[{i}]._id: {asset.id!r} repeats documents[{seen[asset.id]}] of this request"
                errors.append(DocumentError(i, asset.id, message))
                continue
            seen[asset.id] = i
            accepted.append((i, asset, series, samples))
        self._prepare_times(sample.ts for *_, samples in accepted for sample in samples)
        inserted: set[str] = set()
        with self._writer.begin() as conn:
            for start in range(0, len(accepted), _INSERT_CHUNK):
                chunk = accepted[start : start + _INSERT_CHUNK]
                stmt = (
                    self._insert(s.assets)
                    .values([self._asset_row(layer, collection, a) for _, a, _, _ in chunk])
                    .on_conflict_do_nothing(index_elements=["layer", "collection", "id"])
                    .returning(s.assets.c.id)
                )
                inserted.update(conn.execute(stmt).scalars())
            all_series = [x for _, a, series, _ in accepted if a.id in inserted for x in series]
            all_samples = [x for _, a, _, samples in accepted if a.id in inserted for x in samples]
            self._append_history(conn, all_series, all_samples)
        for i, asset, _, _ in accepted:
            if asset.id not in inserted:
                errors.append(DocumentError(i, asset.id, f"documents[{i}]._id: {asset.id!r} already exists"))
        errors.sort(key=lambda e: e.index)
        ids = [a.id for _, a, _, _ in accepted if a.id in inserted]
        logger.debug("inserted %s documents into %s/%s (%s refused)", len(ids), layer, collection, len(errors))
        return InsertReport(inserted_ids=ids, errors=errors)

    def get_document(self, layer: str, collection: str, document_id: str) -> Asset:
        """Return one document (NotFoundError when absent)."""
        with self.engine.connect() as conn:
            self._collection(conn, layer, collection)
            doc = conn.execute(
                sa.select(s.assets.c.document).where(
                    self._in_collection(layer, collection), s.assets.c.id == document_id
                )
            ).scalar()
        if doc is None:
            raise NotFoundError(f"document {document_id!r} does not exist in {layer}/{collection}")
        return Asset.from_document(doc)

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
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise SelectorError(f"limit: expected an integer >= 0, got {limit!r}")
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise SelectorError(f"skip: expected an integer >= 0, got {skip!r}")
        query = (
            sa.select(s.assets.c.document)
            .where(self._in_collection(layer, collection), self._compile(selector))
            .order_by(*self._order(sort))
            .offset(skip)
        )
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            self._collection(conn, layer, collection)
            docs = conn.execute(query).scalars().all()
        return [Asset.from_document(doc) for doc in docs]

    def count_documents(self, layer: str, collection: str, selector: Selector | None = None) -> int:
        """Count the documents matching a selector."""
        query = sa.select(sa.func.count()).where(self._in_collection(layer, collection), self._compile(selector))
        with self.engine.connect() as conn:
            self._collection(conn, layer, collection)
            return int(conn.execute(query).scalar_one())

    def patch_document(self, layer: str, collection: str, document_id: str, changes: Mapping[str, Any]) -> Asset:
        """Merge changes into a document (RFC 7396: objects merge, null removes) and return it."""
        return self._patch(layer, collection, {"_id": document_id}, changes, one=document_id)[0]

    def patch_documents(
        self, layer: str, collection: str, selector: Selector | None, changes: Mapping[str, Any]
    ) -> int:
        """Merge changes into every matching document; return how many changed."""
        return len(self._patch(layer, collection, selector, changes))

    @staticmethod
    def _checked_changes(layer: str, collection: str, changes: object) -> dict[str, Any]:
        """Return a patch without _updated (the store sets it); SelectorError when it is no JSON object of fields."""
        if not isinstance(changes, Mapping) or not all(isinstance(k, str) for k in changes):
            raise SelectorError(f"patch of {layer}/{collection}: expected a JSON object of changes, got {changes!r}")
        checked = {k: v for k, v in changes.items() if k != "_updated"}
        try:
            check_field_names(checked, f"patch of {layer}/{collection}")
        except ModelError as exc:
            raise SelectorError(str(exc)) from None
        return checked

    def _patch(
        self,
        layer: str,
        collection: str,
        selector: Selector | None,
        changes: Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]],
        samples: Sequence[Sample] = (),
        *,
        one: str | None = None,
    ) -> list[Asset]:
        """Patch the matching documents and write samples in one transaction.

        changes is the patch, or a function of each stored document returning its patch (called
        inside the transaction, after the rows are locked and the samples written). one: the
        document id the selector names, which must exist (NotFoundError, nothing written).
        """
        static = None if callable(changes) else self._checked_changes(layer, collection, changes)
        condition = self._compile(selector)
        now = utc_now()
        with self.engine.connect() as conn:
            self._collection(conn, layer, collection)
        ids = self._series_id_map({x.series for x in samples}) if samples else {}
        self._prepare_times(itertools.chain([now], _patch_times(static or {}), (x.ts for x in samples)))
        out: list[Asset] = []
        with self._writer.begin() as conn:
            rows = conn.execute(
                sa.select(s.assets.c.id, s.assets.c.document)
                .where(self._in_collection(layer, collection), condition)
                .order_by(s.assets.c.id)
                .with_for_update()
            ).all()
            if one is not None and not rows:
                raise NotFoundError(f"document {one!r} does not exist in {layer}/{collection}")
            if samples:  # after the documents are locked: writers of the same document queue on its row
                self._bulk_write(conn, samples, ids)
            history: tuple[list[Series], list[Sample]] = ([], [])
            for doc_id, doc in rows:
                where = f"patch of {layer}/{collection}/{doc_id}"
                if static is not None:
                    patch = static
                else:
                    assert callable(changes)
                    patch = self._checked_changes(layer, collection, changes(doc))
                if "_id" in patch and patch["_id"] != doc_id:
                    raise SelectorError(f"{where}: _id cannot be changed (from {doc_id!r} to {patch['_id']!r})")
                carried = isinstance(patch.get(MEASUREMENTS), Mapping)
                rest = {k: v for k, v in patch.items() if k != MEASUREMENTS} if carried else patch
                try:
                    merged = merge_patch(doc, rest)
                    _stamp_measurements(merged, _measurement_times(doc))
                    history_items = _patch_measurements(doc, merged, patch, now, where) if carried else {}
                    merged["_id"] = doc_id
                    merged.pop("_updated", None)
                    asset = replace(Asset.from_document(merged, where=where), updated=now)
                    appended = Asset(doc_id, {MEASUREMENTS: history_items}, updated=now)
                    series, more = self._measurement_samples(layer, collection, appended)
                except ModelError as exc:
                    raise StoreError(str(exc)) from None
                history[0].extend(series)
                history[1].extend(more)
                row = self._asset_row(layer, collection, asset)
                conn.execute(
                    sa.update(s.assets)
                    .where(self._in_collection(layer, collection), s.assets.c.id == doc_id)
                    .values({k: v for k, v in row.items() if k not in ("layer", "collection", "id")})
                )
                out.append(asset)
            self._prepare_other_times(conn, history[1])
            self._append_history(conn, *history)
        return out

    def _prepare_other_times(self, conn: Connection, samples: list[Sample]) -> None:
        """Hook for times not prepared before the transaction (PostgreSQL: partitions of old measurements)."""

    def delete_documents(self, layer: str, collection: str, selector: Selector | None) -> int:
        """Delete the matching documents (their series history stays); return how many."""
        condition = self._compile(selector)
        with self._writer.begin() as conn:
            self._collection(conn, layer, collection)
            result = conn.execute(sa.delete(s.assets).where(self._in_collection(layer, collection), condition))
        return int(result.rowcount)

    def near_documents(
        self, layer: str, collection: str, lat: float, lon: float, distance: float, *, limit: int | None = None
    ) -> list[tuple[Asset, float]]:
        """Return (document, metres) for geometries within distance metres of (lat, lon), nearest first.

        The distance to a geometry is the great-circle (haversine) distance to its nearest vertex.
        """
        for name, value, low, high in (("lat", lat, -90, 90), ("lon", lon, -180, 180), ("distance", distance, 0, 2e7)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise SelectorError(f"near: {name}: expected a number in [{low}, {high}], got {value!r}")
        dlat = distance / _METRES_PER_DEGREE
        cos_lat = math.cos(math.radians(lat))
        dlon = 360.0 if cos_lat < 1e-9 else min(360.0, dlat / cos_lat)
        c = s.assets.c
        box = sa.and_(c.min_lat <= lat + dlat, c.max_lat >= lat - dlat)
        if lon - dlon >= -180 and lon + dlon <= 180:  # otherwise the box crosses the antimeridian: no lon filter
            box = sa.and_(box, c.min_lon <= lon + dlon, c.max_lon >= lon - dlon)
        with self.engine.connect() as conn:
            self._collection(conn, layer, collection)
            docs = conn.execute(
                sa.select(c.document).where(self._in_collection(layer, collection), c.min_lat.is_not(None), box)
            ).scalars()
            found: list[tuple[Asset, float]] = []
            for doc in docs:
                asset = Asset.from_document(doc)
                assert asset.geometry is not None
                metres = min(haversine(lat, lon, p_lat, p_lon) for p_lon, p_lat in geometry_positions(asset.geometry))
                if metres <= distance:
                    found.append((asset, metres))
        found.sort(key=lambda item: (item[1], item[0].id))
        return found[:limit] if limit else found

    # -- series ---------------------------------------------------------------------------------

    def _series_row(self, series: Series) -> dict[str, Any]:
        return {
            "key": series.key,
            "layer": series.layer,
            "collection": series.collection,
            "asset": series.asset,
            "name": series.name,
            "unit": series.unit,
            "phase": series.phase,
            "statistic": series.statistic.value,
            "interval_s": None if series.interval is None else series.interval.total_seconds(),
            "source": series.source,
            "attributes": dict(series.attributes),
        }

    def put_series(self, series: Series) -> int:
        """Create or update a series by key; return its id."""
        row = self._series_row(series)
        stmt = self._insert(s.series).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"], set_={k: stmt.excluded[k] for k in row if k != "key"}
        ).returning(s.series.c.id)
        with self._writer.begin() as conn:
            series_id = int(conn.execute(stmt).scalar_one())
        self._series_ids[series.key] = series_id
        return series_id

    def _ensure_series(self, conn: Connection, series: Sequence[Series]) -> dict[str, int]:
        """Create the series that do not exist yet (existing ones keep their metadata); return key -> id."""
        unique = {x.key: x for x in series}
        missing = [x for key, x in unique.items() if key not in self._series_ids]
        if missing:
            conn.execute(
                self._insert(s.series)
                .values([self._series_row(x) for x in missing])
                .on_conflict_do_nothing(index_elements=["key"])
            )
            rows = conn.execute(
                sa.select(s.series.c.key, s.series.c.id).where(s.series.c.key.in_([x.key for x in missing]))
            ).all()
            self._series_ids.update({k: int(i) for k, i in rows})
        return {key: self._series_ids[key] for key in unique}

    def _series_id_map(self, keys: Iterable[str]) -> dict[str, int]:
        wanted = set(keys)
        missing = [k for k in wanted if k not in self._series_ids]
        if missing:
            with self.engine.connect() as conn:
                for start in range(0, len(missing), 1000):
                    chunk = missing[start : start + 1000]
                    rows = conn.execute(sa.select(s.series.c.key, s.series.c.id).where(s.series.c.key.in_(chunk))).all()
                    self._series_ids.update({k: int(i) for k, i in rows})
            unknown = sorted(k for k in missing if k not in self._series_ids)
            if unknown:
                more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
                raise NotFoundError(f"series {unknown[0]!r}{more} does not exist; create it with put_series first")
        return {k: self._series_ids[k] for k in wanted}

    def _series_id(self, key: str) -> int:
        return self._series_id_map([key])[key]

    @staticmethod
    def _series_from_row(row: Any) -> Series:
        return Series(
            key=row.key,
            layer=row.layer,
            asset=row.asset,
            name=row.name,
            unit=row.unit,
            phase=row.phase,
            statistic=Statistic(row.statistic),
            interval=None if row.interval_s is None else timedelta(seconds=row.interval_s),
            source=row.source,
            collection=row.collection,
            attributes=row.attributes,
        )

    def get_series(self, key: str) -> Series:
        """Return a series (NotFoundError when absent)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s.series).where(s.series.c.key == key)).first()
        if row is None:
            raise NotFoundError(f"series {key!r} does not exist")
        return self._series_from_row(row)

    def list_series(self, layer: str | None = None, asset: str | None = None) -> list[Series]:
        """Return series, optionally of one layer and asset, ordered by key."""
        query = sa.select(s.series).order_by(s.series.c.key)
        if layer is not None:
            query = query.where(s.series.c.layer == layer)
        if asset is not None:
            query = query.where(s.series.c.asset == asset)
        with self.engine.connect() as conn:
            return [self._series_from_row(row) for row in conn.execute(query)]

    def delete_series(self, key: str) -> None:
        """Delete a series and all its samples."""
        series_id = self._series_id(key)
        with self._writer.begin() as conn:
            conn.execute(sa.delete(s.samples).where(s.samples.c.series_id == series_id))
            conn.execute(sa.delete(s.series).where(s.series.c.id == series_id))
        self._series_ids.pop(key, None)

    # -- samples --------------------------------------------------------------------------------

    @staticmethod
    def _checked_samples(samples: Iterable[Sample]) -> list[Sample]:
        batch = samples if isinstance(samples, list) else list(samples)
        for i, sample in enumerate(batch):
            if not isinstance(sample, Sample):
                raise StoreError(f"samples[{i}]: expected a Sample, got {type(sample).__name__}")
        return batch

    def write_samples(self, samples: Iterable[Sample]) -> int:
        """Write samples in one transaction (bulk path); a sample whose (series, ts) exists replaces it."""
        batch = self._checked_samples(samples)
        if not batch:
            return 0
        ids = self._series_id_map({x.series for x in batch})
        self._prepare_times(x.ts for x in batch)
        with self._writer.begin() as conn:
            self._bulk_write(conn, batch, ids)
        return len(batch)

    def write_samples_and_patch(
        self,
        samples: Iterable[Sample],
        layer: str,
        collection: str,
        document_id: str,
        changes: Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]],
    ) -> Asset:
        """Write samples and merge changes (or changes(stored document)) into one document in one transaction."""
        batch = self._checked_samples(samples)
        return self._patch(layer, collection, {"_id": document_id}, changes, batch, one=document_id)[0]

    @staticmethod
    def _check_range(start: datetime, end: datetime, where: str) -> None:
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise StoreError(f"{where}: {name}: expected a timezone-aware datetime, got {value!r}")

    def read_range(
        self, key: str, start: datetime, end: datetime, *, limit: int | None = None, detail: bool = False
    ) -> Readings:
        """Return the samples of one series in [start, end), oldest first (detail adds data, confidence, cost)."""
        self._check_range(start, end, f"range of {key!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise StoreError(f"range of {key!r}: limit: expected an integer >= 1, got {limit!r}")
        return self._read_range(self._series_id(key), start, end, limit, detail)

    def latest(self, keys: Sequence[str]) -> dict[str, Reading]:
        """Return the newest sample of each series that has one."""
        ids = self._series_id_map(keys)
        c = s.samples.c
        query = (
            sa.select(c.ts, c.value, c.quality, c.data, c.confidence, c.cost)
            .where(c.series_id == sa.bindparam("sid"))
            .order_by(c.ts.desc())
            .limit(1)
        )
        out: dict[str, Reading] = {}
        with self._reader.connect() as conn:
            for key in keys:
                row = conn.execute(query, {"sid": ids[key]}).first()
                if row is not None:
                    out[key] = Reading(tuple(row))
        return out

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
        """Return min/max/mean/sum/count of numeric values per interval bucket, computed in the database."""
        self._check_range(start, end, f"aggregate of {key!r}")
        if not isinstance(interval, timedelta) or interval < timedelta(seconds=1):
            raise StoreError(f"aggregate of {key!r}: interval: expected a timedelta of at least 1 s, got {interval!r}")
        series_id = self._series_id(key)
        bucket, to_time = self._bucket(interval, origin or s.EPOCH, start)
        c = s.samples.c
        query = (
            sa.select(
                bucket.label("bucket"),
                sa.func.count(c.value),
                sa.func.min(c.value),
                sa.func.max(c.value),
                sa.func.avg(c.value),
                sa.func.sum(c.value),
            )
            .where(c.series_id == series_id, c.ts >= start, c.ts < end, c.value.is_not(None))
            .group_by(sa.literal_column("bucket"))
            .order_by(sa.literal_column("bucket"))
        )
        if not include_invalid:
            query = query.where(c.quality.op("&")(1) == 0)
        with self._reader.connect() as conn:
            rows = conn.execute(query).all()
        return [
            Aggregate(key, to_time(b), int(n), lo, hi, None if mean is None else float(mean), total)
            for b, n, lo, hi, mean, total in rows
        ]

    def count_samples(self, key: str | None = None) -> int:
        """Count the samples of one series, or of all."""
        query = sa.select(sa.func.count()).select_from(s.samples)
        if key is not None:
            query = query.where(s.samples.c.series_id == self._series_id(key))
        with self._reader.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # -- events ---------------------------------------------------------------------------------

    def append_events(self, events: Iterable[Event]) -> list[int]:
        """Append events; return their ids."""
        ids: list[int] = []
        with self._writer.begin() as conn:
            for i, event in enumerate(events):
                if not isinstance(event, Event):
                    raise StoreError(f"events[{i}]: expected an Event, got {type(event).__name__}")
                row = {
                    "layer": event.layer,
                    "asset": event.asset,
                    "time": event.time,
                    "type": event.type,
                    "code": event.code,
                    "severity": event.severity,
                    "state": event.state.value,
                    "payload": dict(event.payload),
                }
                ids.append(int(conn.execute(sa.insert(s.events).values(row).returning(s.events.c.id)).scalar_one()))
        return ids

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
        c = s.events.c
        query = sa.select(s.events).where(c.layer == layer).order_by(c.time, c.id).limit(limit)
        if asset is not None:
            query = query.where(c.asset == asset)
        if start is not None:
            query = query.where(c.time >= parse_time(start, "events: start"))
        if end is not None:
            query = query.where(c.time < parse_time(end, "events: end"))
        if type is not None:
            query = query.where(c.type == type)
        if state is not None:
            query = query.where(c.state == EventState(state).value)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            Event(
                layer=r.layer,
                asset=r.asset,
                time=r.time,
                type=r.type,
                code=r.code,
                severity=r.severity,
                state=EventState(r.state),
                payload=r.payload,
                id=int(r.id),
            )
            for r in rows
        ]

    # -- resources ------------------------------------------------------------------------------

    def put_resource(self, resource: Resource) -> None:
        """Create or replace a resource's metadata."""
        row = {
            "id": resource.id,
            "bucket": resource.bucket,
            "filename": resource.filename,
            "content_type": resource.content_type,
            "size": resource.size,
            "sha256": resource.sha256,
            "created": resource.created or utc_now(),
            "owner": resource.owner,
            "metadata": dict(resource.metadata),
        }
        stmt = self._insert(s.resources).values(row)
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={k: stmt.excluded[k] for k in row if k != "id"})
        with self._writer.begin() as conn:
            conn.execute(stmt)

    @staticmethod
    def _resource(row: Any) -> Resource:
        return Resource(
            id=row.id,
            bucket=row.bucket,
            filename=row.filename,
            content_type=row.content_type,
            size=int(row.size),
            sha256=row.sha256,
            created=row.created,
            owner=row.owner,
            metadata=row.metadata,
        )

    def get_resource(self, resource_id: str) -> Resource:
        """Return a resource's metadata (NotFoundError when absent)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s.resources).where(s.resources.c.id == resource_id)).first()
        if row is None:
            raise NotFoundError(f"resource {resource_id!r} does not exist")
        return self._resource(row)

    def find_resources(self, bucket: str | None = None, filename: str | None = None) -> list[Resource]:
        """Return resources, optionally of one bucket and file name, newest first."""
        c = s.resources.c
        query = sa.select(s.resources).order_by(c.created.desc(), c.id)
        if bucket is not None:
            query = query.where(c.bucket == bucket)
        if filename is not None:
            query = query.where(c.filename == filename)
        with self.engine.connect() as conn:
            return [self._resource(row) for row in conn.execute(query)]

    def delete_resource(self, resource_id: str) -> bool:
        """Delete a resource's metadata; return False when it did not exist."""
        with self._writer.begin() as conn:
            result = conn.execute(sa.delete(s.resources).where(s.resources.c.id == resource_id))
        return bool(result.rowcount)

    # -- retention ------------------------------------------------------------------------------

    def apply_retention(self, now: datetime | None = None) -> dict[str, int]:
        """Delete samples older than their layer's retention; return the count deleted per layer."""
        now = parse_time(now or utc_now(), "retention: now")
        deleted: dict[str, int] = {}
        for layer in self.list_layers():
            if layer.retention is None:
                continue
            cutoff = now - layer.retention
            layer_series = sa.select(s.series.c.id).where(s.series.c.layer == layer.id)
            with self._writer.begin() as conn:
                result = conn.execute(
                    sa.delete(s.samples).where(s.samples.c.series_id.in_(layer_series), s.samples.c.ts < cutoff)
                )
            deleted[layer.id] = int(result.rowcount)
            if result.rowcount:
                cut = format_time(cutoff)
                logger.info("retention: deleted %s samples of layer %s older than %s", result.rowcount, layer.id, cut)
        return deleted
